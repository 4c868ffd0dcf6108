"""Statistics (mean, std, min, max, median) of the trial arrays: one streaming implementation.

`RunningStatistics` accumulates them per channel over values added piece by piece (Chan et al.'s
update of mean and squared deviations; min, max; an even subsample of each piece for the
median), leaving NaN out. It serves the statistics neurotwin computes from a session's training
tier over trials and frames (`compute_statistics`, cached in meta/statistics_neurotwin/ by
`read_cache`/`write_cache`), and those a converter ships with the folders it writes
(`trial_statistics`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurotwin.data.native.layout import (
    BEHAVIOR,
    PUPIL_CENTER,
    RESPONSES,
    STATISTIC_NAMES,
    TRIAL_ARRAYS,
    VIDEOS,
)
from neurotwin.errors import DataFormatError
from neurotwin.files import staged_folder

# Medians are exact up to this many values per channel, else taken from an even subsample.
MEDIAN_BUDGET = 1 << 22
CACHE_VERSION = 2  # 2: the key holds the trial files' sizes and times

Statistics = dict[str, dict[str, np.ndarray]]


class RunningStatistics:
    """mean/std (ddof 0)/min/max and median per channel of values added as (channels, values)
    pieces; NaN values are left out. `median_per_update` caps the values of one piece kept for
    the median (an even subsample; None: all)."""

    def __init__(self, channels: int, median_per_update: int | None = None):
        self.n = np.zeros(channels)
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)
        self.min = np.full(channels, np.inf)
        self.max = np.full(channels, -np.inf)
        self.sample: list[np.ndarray] = []
        self.median_per_update = median_per_update
        self.has_nan = False

    def update(self, x: np.ndarray) -> None:
        """x: (channels, values) float64."""
        m = x.shape[1]
        if m == 0:
            return
        valid = ~np.isnan(x)
        if valid.all():
            count: Any = m
            mean = x.mean(axis=1)
            m2 = ((x - mean[:, None]) ** 2).sum(axis=1)
            low, high = x.min(axis=1), x.max(axis=1)
        else:
            self.has_nan = True
            count = valid.sum(axis=1)
            total = np.where(valid, x, 0.0).sum(axis=1)
            mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
            m2 = np.where(valid, (x - mean[:, None]) ** 2, 0.0).sum(axis=1)
            low = np.where(valid, x, np.inf).min(axis=1)
            high = np.where(valid, x, -np.inf).max(axis=1)
        n = self.n + count
        delta = mean - self.mean
        weight = np.divide(count, n, out=np.zeros_like(n), where=n > 0)
        self.mean = self.mean + delta * weight
        self.m2 = self.m2 + m2 + delta**2 * (self.n * weight)
        self.n = n
        self.min = np.minimum(self.min, low)
        self.max = np.maximum(self.max, high)
        keep = self.median_per_update
        if keep is not None and m > keep:
            x = x[:, np.linspace(0, m - 1, keep).round().astype(np.int64)]
        self.sample.append(x.astype(np.float32))

    def result(self, scalar: bool = False) -> dict[str, np.ndarray]:
        """{stat: (channels,) float32} (NaN for a channel without values); `scalar`: channel 0
        as a 0-d array."""
        sample = np.concatenate(self.sample, axis=1) if self.sample else np.full((len(self.n), 1), np.nan)  # fmt: skip
        empty = self.n == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(self.m2 / self.n)
        if self.has_nan or empty.any():
            valid = ~np.isnan(sample)
            median = np.full(len(self.n), np.nan)
            for c in np.flatnonzero(valid.any(axis=1)):
                median[c] = np.median(sample[c][valid[c]])
        else:
            median = np.median(sample, axis=1)
        out = {"mean": self.mean, "std": std, "min": self.min, "max": self.max, "median": median}
        out = {k: np.where(empty, np.nan, v) if empty.any() else v for k, v in out.items()}
        return {k: np.asarray(v[0] if scalar else v, dtype=np.float32) for k, v in out.items()}


def trial_statistics(arrays: Iterable[np.ndarray], axis_keep: int | None) -> dict[str, np.ndarray]:
    """mean/std/min/max/median over trials and frames, keeping `axis_keep` (None: one scalar).

    Each array is (..., T); NaN frames (padding past a trial's end) are left out. For the
    statistics a writer ships in meta/statistics (exact medians)."""
    running: RunningStatistics | None = None
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        x = a.reshape(1, -1) if axis_keep is None else np.moveaxis(a, axis_keep, 0).reshape(a.shape[axis_keep], -1)  # fmt: skip
        running = running or RunningStatistics(x.shape[0])
        running.update(x)
    if running is None:
        raise ValueError("trial_statistics: no trials")
    return running.result(scalar=axis_keep is None)


def training_statistics(train: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict]:
    """The statistics a writer ships in meta/statistics for trials held in memory (a converter's
    training trials): videos one scalar, responses per neuron, behaviour and pupil per row."""
    return {
        VIDEOS: trial_statistics((t[VIDEOS] for t in train), None),
        RESPONSES: trial_statistics((t[RESPONSES] for t in train), 0),
        BEHAVIOR: trial_statistics((t[BEHAVIOR] for t in train), 0),
        PUPIL_CENTER: trial_statistics((t[PUPIL_CENTER] for t in train), 0),
    }


def compute_statistics(session: Any, trials: Sequence[int]) -> Statistics:
    """mean/std/min/max/median of each trial array of a `NativeSession` over the given trials
    and their valid frames: videos a scalar, responses (N,), behavior (2,), pupil_center (2,).

    Computed for all neurons of the folder (the neuron selection is applied by the caller).
    Medians are exact while a channel has at most MEDIAN_BUDGET values, else taken from an even
    subsample of each trial's frames. NaN within a trial's valid frames is an error.
    """
    trials = [int(t) for t in trials]
    if not trials:
        raise DataFormatError(session.path, "no trials to compute statistics from")
    per_trial = max(1, MEDIAN_BUDGET // len(trials))
    channels = {VIDEOS: 1, RESPONSES: session.n_neurons_total, BEHAVIOR: 2, PUPIL_CENTER: 2}
    running = {k: RunningStatistics(c, per_trial) for k, c in channels.items()}
    saved_index, session.neuron_index = session.neuron_index, None
    try:
        for trial in trials:
            data = session.load_trial(trial)
            length = session.trial_length(trial)
            for name, acc in running.items():
                x = np.asarray(data[name][..., :length], dtype=np.float64)
                x = x.reshape(1, -1) if name == VIDEOS else x
                if np.isnan(x).any():
                    raise DataFormatError(
                        session.path / "data" / name / f"{trial}.npy",
                        f"NaN within the trial's {length} valid frames (statistics tier)",
                        name,
                    )
                acc.update(x)
    finally:
        session.neuron_index = saved_index
    return {name: acc.result(scalar=name == VIDEOS) for name, acc in running.items()}


def read_cache(folder: Path, key: dict[str, Any]) -> Statistics | None:
    """The statistics cached in `folder` if its info.json equals `key`, else None."""
    try:
        if json.loads((folder / "info.json").read_text()) != key:
            return None
        return {
            array: {
                stat: np.load(folder / array / f"{stat}.npy", allow_pickle=False)
                for stat in STATISTIC_NAMES
            }
            for array in TRIAL_ARRAYS
        }
    except (OSError, ValueError):
        return None


def write_cache(folder: Path, key: dict[str, Any], stats: Statistics) -> None:
    """Write the cache folder under a temporary name, then rename it into place (a cache that
    another process put there meanwhile is kept)."""
    with staged_folder(folder) as tmp:
        for array, values in stats.items():
            (tmp / array).mkdir()
            for stat, value in values.items():
                np.save(tmp / array / f"{stat}.npy", value)
        (tmp / "info.json").write_text(json.dumps(key, indent=1))

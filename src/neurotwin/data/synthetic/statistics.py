"""Statistics of synthetic sessions: the shipped per-frame statistics over trials, and the
ceilings (the correlation of the noiseless rates with the noisy responses, scored like a model).

Both build on the shared implementations: `native.RunningStatistics` for the moments and
extremes, `metrics.CorrelationAccumulator` and `metrics.frames_to_skip` (the 50-frame rule of
validation and prediction) for the ceilings. `metrics` needs torch, so it is imported where a
ceiling is computed, not with this module (`neurotwin-data --help` stays fast).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurotwin.data import native
from neurotwin.data.synthetic.params import HIDDEN_TIERS
from neurotwin.errors import DataFormatError


class OverTrials:
    """The published per-frame statistics of one trial array: over trials, separately for every
    element (frame included), NaN left out. Mean, std, min and max stream through
    `native.RunningStatistics` (one channel per element, one value per trial); the median is
    over the trials kept in memory (the first ones, all of them while they fit in
    `median_bytes`)."""

    def __init__(self, median_bytes: int):
        self.median_bytes = median_bytes
        self.running: native.RunningStatistics | None = None
        self.shape: tuple[int, ...] = ()
        self.kept: list[np.ndarray] = []
        self.trials = 0

    def add(self, a: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.float64)
        if self.running is None:
            self.shape = a.shape
            # it keeps nothing for its own median (per channel, slow with NaN): ours is below
            self.running = native.RunningStatistics(a.size, median_per_update=0)
        self.running.update(a.reshape(-1, 1))
        if not self.kept or (len(self.kept) + 1) * a.size * 4 <= self.median_bytes:
            self.kept.append(a.astype(np.float32))
        self.trials += 1

    @property
    def median_exact(self) -> bool:
        return len(self.kept) == self.trials

    def result(self) -> dict[str, np.ndarray]:
        """{stat: float32 array of the trial array's shape}; NaN where no trial has a value."""
        if self.running is None:
            raise ValueError("no trials added")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # its median of nothing: NaN
            stats = {k: v.reshape(self.shape) for k, v in self.running.result().items()}
        median = _nanmedian0(np.stack(self.kept))
        # a subset median can miss frames that only longer trials reach: use the mean there
        stats["median"] = np.where(np.isnan(median), stats["mean"], median).astype(np.float32)
        return stats


def _nanmedian0(a: np.ndarray) -> np.ndarray:
    """np.nanmedian(a, axis=0), fast (sort once; NaN sort last); NaN where all are NaN."""
    a = np.sort(a, axis=0)
    n = np.isfinite(a).sum(0)
    lo = np.maximum((n - 1) // 2, 0)[None]
    hi = np.maximum(n // 2, 0)[None]
    med = 0.5 * (np.take_along_axis(a, lo, 0)[0] + np.take_along_axis(a, hi, 0)[0])
    return np.where(n > 0, med, np.nan)


def shipped_statistics(trials: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict]:
    """Statistics as published in `meta/statistics`: over trials, separately for every frame.

    For each trial array the result keeps the frame axis: videos (H, W, T), responses (N, T),
    behavior (2, T), pupil_center (2, T); NaN (frames past a trial's end) are ignored. This is
    how the Sensorium 2023 files were computed (the competition announced that they are over
    trials, not over trials and frames); `native.trial_statistics` gives the corrected ones.
    """
    acc = {name: OverTrials(median_bytes=2**62) for name in native.TRIAL_ARRAYS}
    for arrays in trials:
        for name in native.TRIAL_ARRAYS:
            acc[name].add(arrays[name])
    return {name: a.result() for name, a in acc.items()}


class Ceiling:
    """The ceiling of one set of trials, added trial by trial: per neuron, the correlation of
    the noiseless rates with the responses over the frames a model is scored on (all but the
    first `skip` of each trial's valid frames; frames NaN in either are left out), as
    `metrics.CorrelationAccumulator`."""

    def __init__(self, skip: int):
        self.skip = int(skip)
        self.accumulator: Any = None

    def add(self, noiseless: np.ndarray, responses: np.ndarray, length: int | None = None):
        """One trial: (N, T) arrays of one shape, valid for their first `length` frames (all)."""
        x, y = _trial_pair(noiseless, responses)
        if self.accumulator is None:
            from neurotwin.metrics import CorrelationAccumulator

            self.accumulator = CorrelationAccumulator(x.shape[0])
        end = x.shape[1] if length is None else int(length)
        self.accumulator.add(y[:, self.skip : end], x[:, self.skip : end], ignore_nan=True)

    def result(self) -> np.ndarray:
        """(N,) float64; 0 for a neuron without variance (or without frames)."""
        return np.zeros(0) if self.accumulator is None else self.accumulator.result().numpy()


def skip_rule(lengths: Iterable[int]) -> int:
    """`metrics.frames_to_skip`: the frames validation and prediction leave out of these trials."""
    from neurotwin.metrics import frames_to_skip

    return frames_to_skip(lengths)


def ceiling_correlation(
    noiseless: np.ndarray | Sequence[np.ndarray],
    responses: np.ndarray | Sequence[np.ndarray],
    skip_frames: int | None = None,
) -> np.ndarray:
    """Best reachable single-trial correlation of each neuron: Pearson correlation between the
    noiseless rates and the noisy responses, per neuron, over all frames of all trials given.

    `noiseless`, `responses`: one (N, T) array or a sequence of per-trial (N, T_i) arrays (same
    order). The first `skip_frames` frames of every trial are left out; None: the metrics' rule
    (`metrics.frames_to_skip` of the trials' valid lengths, a trial ending at its first frame
    that is NaN throughout either array), so that the ceiling is scored like a model. Frames
    that are NaN in either array are ignored. A neuron with no variance gets 0. Returns (N,)
    float64: a model that predicted the noiseless rates exactly would reach this correlation.
    """
    if isinstance(noiseless, np.ndarray) and noiseless.ndim == 2:
        noiseless = [noiseless]
    if isinstance(responses, np.ndarray) and responses.ndim == 2:
        responses = [responses]
    if len(noiseless) != len(responses):
        raise ValueError(f"{len(noiseless)} noiseless trials but {len(responses)} response trials")
    pairs = [_trial_pair(x, y) for x, y in zip(noiseless, responses)]
    lengths = [_valid_length(x, y) for x, y in pairs]
    ceiling = Ceiling(skip_rule(lengths) if skip_frames is None else skip_frames)
    for (x, y), length in zip(pairs, lengths):
        ceiling.add(x, y, length)
    return ceiling.result()


def _trial_pair(noiseless: Any, responses: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(noiseless), np.asarray(responses)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"expected two (N, T) arrays of one shape, got {x.shape}, {y.shape}")
    return x, y


def _valid_length(x: np.ndarray, y: np.ndarray) -> int:
    """Frames before the first one that is NaN for every neuron of `x` or of `y` (padding)."""
    first = np.flatnonzero(np.isnan(x).all(0) | np.isnan(y).all(0))
    return int(first[0]) if first.size else x.shape[1]


def session_ceiling(
    session_dir: str | Path,
    tiers: Sequence[str] = ("train",),
    skip_frames: int | None = None,
    limit_neurons: int | None = None,
) -> np.ndarray:
    """`ceiling_correlation` of a synthetic session folder over the trials of `tiers`, (N,) (the
    first `limit_neurons` neurons, as a run's `limit_neurons` reads them); `skip_frames` None:
    the metrics' rule over those trials' valid lengths."""
    hidden = set(tiers) & set(HIDDEN_TIERS)
    if hidden:
        raise ValueError(f"tiers {sorted(hidden)} have hidden responses: no ceiling")
    session = native.NativeSession(session_dir, limit_neurons=limit_neurons)
    if not session.has_noiseless:
        raise DataFormatError(
            session.path / "data" / native.NOISELESS,
            "missing: not a synthetic session (no noiseless)",
        )
    trials = [int(t) for t in session.trial_ids(list(tiers))]
    lengths = [session.trial_length(t) for t in trials]
    ceiling = Ceiling(skip_rule(lengths) if skip_frames is None else skip_frames)
    for trial, length in zip(trials, lengths):
        responses = session.load_trial(trial, frames=slice(0, length))[native.RESPONSES]
        ceiling.add(session.load_noiseless(trial)[:, :length], responses)
    return ceiling.result()

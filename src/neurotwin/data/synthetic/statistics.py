"""Statistics of synthetic sessions: the shipped per-frame statistics over trials, and the
ceiling (the correlation of the noiseless rates with the noisy responses)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from neurotwin.data import native
from neurotwin.data.synthetic.params import HIDDEN_TIERS, SKIP_FRAMES
from neurotwin.errors import DataFormatError


class OverTrials:
    """Streaming mean/std/min/max over trials of same-shaped arrays, NaN ignored; median over
    the trials kept in memory (the first ones, all of them while they fit in `median_bytes`)."""

    def __init__(self, median_bytes: int):
        self.n = self.mean = self.m2 = self.min = self.max = None
        self.median_bytes = median_bytes
        self.kept: list[np.ndarray] = []
        self.trials = 0

    def add(self, a: np.ndarray, keep: bool) -> None:
        a = np.asarray(a, dtype=np.float64)
        valid = np.isfinite(a)
        x = np.where(valid, a, 0.0)
        if self.n is None:
            self.n = np.zeros(a.shape)
            self.mean = np.zeros(a.shape)
            self.m2 = np.zeros(a.shape)
            self.min = np.full(a.shape, np.inf)
            self.max = np.full(a.shape, -np.inf)
        self.n += valid
        delta = np.where(valid, x - self.mean, 0.0)
        self.mean += delta / np.maximum(self.n, 1)
        self.m2 += delta * np.where(valid, x - self.mean, 0.0)
        self.min = np.where(valid, np.minimum(self.min, x), self.min)
        self.max = np.where(valid, np.maximum(self.max, x), self.max)
        if keep and (not self.kept or (len(self.kept) + 1) * a.size * 4 <= self.median_bytes):
            self.kept.append(a.astype(np.float32))
        self.trials += 1

    @property
    def median_exact(self) -> bool:
        return len(self.kept) == self.trials

    def result(self) -> dict[str, np.ndarray]:
        empty = self.n == 0
        nan = np.float64("nan")
        with np.errstate(invalid="ignore", divide="ignore"), _quiet():
            stats = {
                "mean": np.where(empty, nan, self.mean),
                "std": np.where(empty, nan, np.sqrt(self.m2 / np.maximum(self.n, 1))),
                "min": np.where(empty, nan, self.min),
                "max": np.where(empty, nan, self.max),
                "median": _nanmedian0(np.stack(self.kept)),
            }
            # a subset median can miss frames that only longer trials reach: use the mean there
            stats["median"] = np.where(np.isnan(stats["median"]), stats["mean"], stats["median"])
        return {k: np.asarray(v, dtype=np.float32) for k, v in stats.items()}


def _nanmedian0(a: np.ndarray) -> np.ndarray:
    """np.nanmedian(a, axis=0), fast (sort once; NaN sort last); NaN where all are NaN."""
    a = np.sort(a, axis=0)
    n = np.isfinite(a).sum(0)
    lo = np.maximum((n - 1) // 2, 0)[None]
    hi = np.maximum(n // 2, 0)[None]
    med = 0.5 * (np.take_along_axis(a, lo, 0)[0] + np.take_along_axis(a, hi, 0)[0])
    return np.where(n > 0, med, np.nan)


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


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
            acc[name].add(arrays[name], keep=True)
    return {name: a.result() for name, a in acc.items()}


class Correlation:
    """Streaming per-neuron Pearson correlation between two (N, T) series."""

    def __init__(self) -> None:
        self.sums: np.ndarray | None = None

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        valid = np.isfinite(x) & np.isfinite(y)
        x, y = np.where(valid, x, 0.0), np.where(valid, y, 0.0)
        s = np.stack([valid.sum(1), x.sum(1), y.sum(1), (x * x).sum(1), (y * y).sum(1)])
        s = np.concatenate([s, (x * y).sum(1)[None]])
        self.sums = s if self.sums is None else self.sums + s

    def result(self) -> np.ndarray:
        if self.sums is None:
            return np.zeros(0)
        n, sx, sy, sxx, syy, sxy = self.sums
        n = np.maximum(n, 1)
        cov = sxy / n - sx * sy / n**2
        vx = np.maximum(sxx / n - (sx / n) ** 2, 0.0)
        vy = np.maximum(syy / n - (sy / n) ** 2, 0.0)
        denom = np.sqrt(vx * vy)
        return np.where(denom > 1e-12, cov / np.maximum(denom, 1e-300), 0.0)


def ceiling_correlation(
    noiseless: np.ndarray | Sequence[np.ndarray],
    responses: np.ndarray | Sequence[np.ndarray],
    skip_frames: int = 0,
) -> np.ndarray:
    """Best reachable single-trial correlation of each neuron: Pearson correlation between the
    noiseless rates and the noisy responses, per neuron, over all frames of all trials given.

    `noiseless`, `responses`: one (N, T) array or a sequence of per-trial (N, T_i) arrays (same
    order). The first `skip_frames` frames of every trial are left out (the Sensorium metrics use
    50); frames that are NaN in either array (padding past a trial's end) are ignored. A neuron
    with no variance gets 0. Returns (N,) float64. A model that predicted the noiseless rates
    exactly would reach this correlation; the mean over neurons is the ceiling of the
    single-trial correlation metric.
    """
    if isinstance(noiseless, np.ndarray) and noiseless.ndim == 2:
        noiseless = [noiseless]
    if isinstance(responses, np.ndarray) and responses.ndim == 2:
        responses = [responses]
    if len(noiseless) != len(responses):
        raise ValueError(f"{len(noiseless)} noiseless trials but {len(responses)} response trials")
    acc = Correlation()
    for x, y in zip(noiseless, responses):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.ndim != 2:
            raise ValueError(f"expected two (N, T) arrays of one shape, got {x.shape}, {y.shape}")
        acc.add(x[:, skip_frames:], y[:, skip_frames:])
    return acc.result()


def session_ceiling(
    session_dir: str | Path, tiers: Sequence[str] = ("train",), skip_frames: int = SKIP_FRAMES
) -> np.ndarray:
    """`ceiling_correlation` of a synthetic session folder over the trials of `tiers`, (N,)."""
    folder = Path(session_dir)
    tiers_file = folder / native.TIERS_FILE
    noiseless_dir = folder / "data" / native.NOISELESS
    if not tiers_file.is_file():
        raise DataFormatError(tiers_file, "missing: not a session folder")
    if not noiseless_dir.is_dir():
        raise DataFormatError(noiseless_dir, "missing: not a synthetic session (no noiseless)")
    tier_of = np.load(tiers_file)
    hidden = set(tiers) & set(HIDDEN_TIERS)
    if hidden:
        raise ValueError(f"tiers {sorted(hidden)} have hidden responses: no ceiling")
    acc = Correlation()
    for trial in np.flatnonzero(np.isin(tier_of, list(tiers))):
        x = np.load(noiseless_dir / f"{trial}.npy")
        y = np.load(folder / "data" / native.RESPONSES / f"{trial}.npy")
        acc.add(x[:, skip_frames:], y[:, skip_frames:])
    return acc.result()

"""Alignment and resampling helpers shared by the ophys and ecephys converters.

- `interval_mean`: a signal sampled at `times` -> its mean over each [start, end) interval
  (the nearest sample to the interval's midpoint when no sample falls inside).
- `count_in_intervals`: exact event counts (spikes) in each [start, end) interval.
- `area_resize`: area-average image resizing (each output pixel is the overlap-weighted mean of
  the input pixels it covers), no dependency beyond numpy.
- `fill_nan`: linear interpolation over NaN samples (blinks, dropped wheel samples).
"""

from __future__ import annotations

import numpy as np


def _sorted(times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if times.size and np.any(np.diff(times) < 0):
        order = np.argsort(times, kind="stable")
        return times[order], values[..., order]
    return times, values


def interval_mean(
    times: np.ndarray, values: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Mean of `values[..., k]` over the samples k with starts[i] <= times[k] < ends[i].

    `values` is (..., n_samples); returns (..., n_intervals) float64. NaN samples are ignored;
    an interval holding no (finite) sample takes the sample nearest its midpoint.
    """
    values = np.asarray(values, dtype=np.float64)
    times, values = _sorted(times, values)
    starts = np.asarray(starts, dtype=np.float64).reshape(-1)
    ends = np.asarray(ends, dtype=np.float64).reshape(-1)
    lo = np.searchsorted(times, starts, side="left")
    hi = np.searchsorted(times, ends, side="left")
    finite = np.isfinite(values)
    zero = np.zeros(values.shape[:-1] + (1,))
    csum = np.concatenate([zero, np.cumsum(np.where(finite, values, 0.0), axis=-1)], axis=-1)
    ccount = np.concatenate([zero, np.cumsum(finite, axis=-1)], axis=-1)
    total = csum[..., hi] - csum[..., lo]
    count = ccount[..., hi] - ccount[..., lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    empty = count == 0
    if np.any(empty):
        mid = 0.5 * (starts + ends)
        idx = np.clip(np.searchsorted(times, mid), 1, max(times.size - 1, 1))
        left = np.maximum(idx - 1, 0)
        nearest = np.where(np.abs(times[left] - mid) <= np.abs(times[idx] - mid), left, idx)
        out = np.where(empty, values[..., nearest], out)
    return out


def count_in_intervals(
    sorted_times: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Number of events with starts[i] <= t < ends[i], exactly (times must be sorted)."""
    lo = np.searchsorted(sorted_times, starts, side="left")
    hi = np.searchsorted(sorted_times, ends, side="left")
    return (hi - lo).astype(np.int64)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: overlap of output cell i with input cell j, rows sum to 1."""
    edges_out = np.linspace(0.0, n_in, n_out + 1)
    lo = np.maximum(edges_out[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges_out[1:, None], np.arange(1, n_in + 1)[None, :])
    w = np.clip(hi - lo, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def area_resize(frames, size: tuple[int, int], chunk: int = 128) -> np.ndarray:
    """Resize (T, h, w) frames to (T, H, W) float32 by area averaging.

    `frames` may be an h5py dataset: it is read `chunk` frames at a time (natural_movie_three is
    3600 x 304 x 608 bytes; as float32 at once it would take 2.7 GB).
    """
    T, h, w = (int(n) for n in frames.shape)
    H, W = int(size[0]), int(size[1])
    ry = _area_matrix(h, H).astype(np.float32)
    rx = _area_matrix(w, W).astype(np.float32)
    out = np.empty((T, H, W), dtype=np.float32)
    for a in range(0, T, chunk):
        block = np.asarray(frames[a : a + chunk], dtype=np.float32)
        if (h, w) == (H, W):
            out[a : a + chunk] = block
        else:
            out[a : a + chunk] = np.einsum("Yh,thw,Xw->tYX", ry, block, rx, optimize=True)
    return out


def fill_nan(times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, bool]:
    """Linearly interpolate NaNs of a 1-d series over time; (values, had_any_finite)."""
    values = np.asarray(values, dtype=np.float64).copy()
    ok = np.isfinite(values)
    if ok.all():
        return values, True
    if not ok.any():
        return np.zeros_like(values), False
    times = np.asarray(times, dtype=np.float64)
    values[~ok] = np.interp(times[~ok], times[ok], values[ok])
    return values, True

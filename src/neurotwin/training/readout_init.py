"""Start each Gaussian readout position where its neuron's receptive field is (issue #15).

Free readout positions that start near the screen centre take hundreds of steps to travel to
their receptive fields. Before training, from the training trials of each session:

1. the response-weighted average of the stimulus (the spike-triggered average, STA) at lags
   0..`lags`-1 frames, per neuron and pixel: sum over frames of (r_t - mean r) * s_{t-lag}, with
   each trial's movie standardised;
2. a sign-free map per neuron: the STA squared and summed over lags, smoothed by a Gaussian of one
   pixel; its peak is the neuron's receptive-field estimate and max / median its strength;
3. where the session has cortical coordinates that vary, a retinotopic map: a quadratic function
   of the (x, y) cortical coordinates fitted to the peaks, weighted by strength, refitted three
   times without the peaks more than 2.5 robust s.d. away from it. Its prediction is the initial
   position of every neuron (phase-invariant cells, whose STA is flat, get theirs from their
   neighbours); without coordinates, each neuron starts at its own peak.

Positions are mapped from pixels to the readout's [-1, 1] grid as if the core's feature map
spanned the frame (exact for the conv cores' 'same' padding, within a patch for vivit). The
readout puts them in (`GaussianReadout.set_positions`: free positions, `readout_grid_mode` 0 and
3, directly; positions predicted from coordinates, 1 and 2, by fitting their MLP). Measured in bench/RESULTS.md ("Fit
quality"); on the synthetic mice the map lands within a pixel of the true centres.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neurotwin.data import native

log = logging.getLogger(__name__)

# per pass over the trials (more neurons are done in chunks, reading the trials again)
MAX_ACCUMULATOR_BYTES = {"cpu": 2**28, "cuda": 2**31}


def _gaussian_blur(maps: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """(N, H, W) blurred by a separable Gaussian (zero padding)."""
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    m = maps[:, None]
    m = F.conv2d(m, k.view(1, 1, 1, -1), padding=(0, radius))
    m = F.conv2d(m, k.view(1, 1, -1, 1), padding=(radius, 0))
    return m[:, 0]


def sta_energy(
    trials: Iterable[tuple[np.ndarray, np.ndarray]],
    n_neurons: int,
    frame_shape: tuple[int, int],
    lags: int = 10,
    device: torch.device | str = "cpu",
    neurons: slice | None = None,
) -> torch.Tensor:
    """Sum over lags of the squared response-weighted stimulus average: (N, H, W) float32.

    `trials`: (video (H, W, T), responses (N, T)) pairs of valid frames.
    """
    h, w = frame_shape
    sel = neurons or slice(None)
    n = len(range(n_neurons)[sel])
    acc = torch.zeros(lags, n, h * w, dtype=torch.float32, device=device)
    for video, responses in trials:
        t = video.shape[-1]
        if t <= lags:
            continue
        v = torch.as_tensor(np.ascontiguousarray(video), dtype=torch.float32, device=device)
        v = v.reshape(h * w, t).T  # (T, P)
        v = (v - v.mean()) / v.std().clamp_min(1e-6)
        r = torch.as_tensor(responses[sel], dtype=torch.float32, device=device)
        r = r - r.mean(1, keepdim=True)
        for lag in range(lags):
            acc[lag] += r[:, lag:] @ v[: t - lag]
    return (acc**2).sum(0).reshape(n, h, w)


def peaks(energy: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Peak (x, y) in pixels (N, 2) and strength (max / median, N) of smoothed maps (N, H, W)."""
    n, h, w = energy.shape
    smooth = _gaussian_blur(energy).reshape(n, -1)
    idx = smooth.argmax(1)
    xy = torch.stack([idx % w, idx // w], 1).double().cpu().numpy()
    strength = smooth.max(1).values / smooth.median(1).values.clamp_min(1e-12)
    return xy, strength.double().cpu().numpy()


def _design(coordinates: np.ndarray) -> np.ndarray | None:
    """[1, x, y, x^2, y^2, xy] of standardised cortical (x, y); None when they do not vary."""
    if coordinates is None:
        return None
    c = np.asarray(coordinates, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < 2 or not np.all(np.isfinite(c[:, :2])):
        return None
    xy = c[:, :2]
    std = xy.std(0)
    if np.any(std <= 0):
        return None
    xy = (xy - xy.mean(0)) / std
    return np.column_stack([np.ones(len(xy)), xy, xy**2, xy[:, :1] * xy[:, 1:]])


def retinotopic_fit(
    xy: np.ndarray, strength: np.ndarray, coordinates: np.ndarray, iterations: int = 4
) -> np.ndarray | None:
    """Positions (N, 2) predicted by a robust weighted quadratic map from cortical (x, y) to
    the peaks `xy`; None without usable coordinates or with too few neurons to fit."""
    a = _design(coordinates)
    if a is None or len(xy) < 3 * a.shape[1]:
        return None
    weight = np.clip(strength - 1.0, 0.0, None)
    keep = weight > 0
    prediction = None
    for _ in range(iterations):
        if keep.sum() < 2 * a.shape[1]:
            return prediction
        sw = np.sqrt(weight * keep)[:, None]
        coef, *_ = np.linalg.lstsq(a * sw, xy * sw, rcond=None)
        prediction = a @ coef
        residual = np.hypot(*(prediction - xy).T)
        scale = 1.4826 * np.median(residual[keep]) + 1e-9
        keep = (residual < 2.5 * scale) & (weight > 0)
    return prediction


def pixels_to_grid(xy: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Pixel-index coordinates (x, y) -> grid_sample coordinates in [-1, 1] (align_corners)."""
    h, w = frame_shape
    gx = 2 * xy[:, 0] / max(w - 1, 1) - 1
    gy = 2 * xy[:, 1] / max(h - 1, 1) - 1
    return np.clip(np.stack([gx, gy], 1), -1.0, 1.0).astype(np.float32)


def session_positions(
    session: Any,
    trial_ids: Iterable[int],
    lags: int = 10,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Initial readout positions (N, 2) in grid coordinates of one session, and what was done.

    `session`: a NativeSession; `trial_ids`: its training trials.
    """
    h, w = session.frame_shape
    n = session.n_neurons
    ids = [int(t) for t in trial_ids]
    limit = MAX_ACCUMULATOR_BYTES.get(torch.device(device).type, MAX_ACCUMULATOR_BYTES["cpu"])
    chunk = max(1, limit // (4 * lags * h * w))

    def trials():
        for trial in ids:
            t = session.trial_length(trial)
            data = session.load_trial(trial, frames=slice(0, t))
            yield data[native.VIDEOS], data[native.RESPONSES]

    maps = [
        sta_energy(trials(), n, (h, w), lags, device, slice(i, i + chunk))
        for i in range(0, n, chunk)
    ]
    xy, strength = peaks(torch.cat(maps))
    fitted = retinotopic_fit(xy, strength, session.coordinates)
    info: dict[str, Any] = {"trials": len(ids), "retinotopic_fit": fitted is not None}
    if fitted is not None:
        info["median_peak_to_map_px"] = float(np.median(np.hypot(*(fitted - xy).T)))
        xy = fitted
    return pixels_to_grid(xy, (h, w)), info


def initialise_positions(
    model: torch.nn.Module,
    datasets: Mapping[str, Any],
    lags: int = 10,
    device: torch.device | str = "cpu",
) -> list[str]:
    """Set the readout positions of every session in `datasets` (session -> training
    SessionDataset: its session and trial_ids); returns one note per session."""
    notes = []
    for name, dataset in datasets.items():
        readout = model.readouts[name]
        if not hasattr(readout, "set_positions"):
            notes.append(f"{name}: readout {type(readout).__name__} has no positions; skipped")
            continue
        grid, info = session_positions(dataset.session, dataset.trial_ids, lags, device)
        what = readout.set_positions(grid)
        how = (
            f"retinotopic fit (peaks {info['median_peak_to_map_px']:.2f} px from it, median)"
            if info["retinotopic_fit"]
            else "STA peaks (no usable cortical coordinates)"
        )
        notes.append(f"readout positions of {name} from {info['trials']} trials: {how}; {what}")
    return notes

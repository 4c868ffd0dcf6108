"""One mouse's neurons as a linear-nonlinear model: (video, behaviour, gaze) -> expected counts.

Per neuron: a spatial filter (Gabor for simple cells, a quadrature pair of Gabors as an energy
unit for complex cells, a difference of Gaussians for centre-surround cells) applied to the
gaze-shifted frame, a causal biphasic temporal filter, a softplus above a threshold (in units of
the drive's s.d. on natural clips), an optional iso-oriented divisive surround, and a
multiplicative gain from running speed and pupil dilation. `neurotwin.data.synthetic.truth`
computes the same thing in torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from neurotwin.data.synthetic.behavior import MouseBehavior
from neurotwin.data.synthetic.params import SyntheticSizes

# The frame as the neurons see it: (luminance - GREY) / CONTRAST_UNIT, grey = 0.
GREY = 128.0
CONTRAST_UNIT = 64.0
# Reference points of the behavioural gains: log gain = g_run * (speed - 5) / 8 + g_pupil *
# (pupil / baseline - 1.05) / 0.15, clipped to +-1.5.
RUNNING_REF, RUNNING_SCALE = 5.0, 8.0
PUPIL_REF, PUPIL_SCALE = 1.05, 0.15
LOG_GAIN_CLIP = 1.5


def shift_frames(frames: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """frames (T, H, W) sampled at (x + shift_x[t], y + shift_y[t]); grey (0) off the screen."""
    T, H, W = frames.shape
    pad = int(np.ceil(np.abs(shift).max())) + 2 if shift.size else 2
    padded = np.pad(frames, ((0, 0), (pad, pad), (pad, pad)))
    sx, sy = np.clip(shift[0], -pad + 1, pad - 1), np.clip(shift[1], -pad + 1, pad - 1)
    ix, iy = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = (sx - ix).astype(np.float32), (sy - iy).astype(np.float32)
    t = np.arange(T)[:, None, None]
    rows = pad + np.arange(H)[None, :, None] + iy[:, None, None]
    cols = pad + np.arange(W)[None, None, :] + ix[:, None, None]
    fx, fy = fx[:, None, None], fy[:, None, None]
    return (
        (1 - fy) * (1 - fx) * padded[t, rows, cols]
        + (1 - fy) * fx * padded[t, rows, cols + 1]
        + fy * (1 - fx) * padded[t, rows + 1, cols]
        + fy * fx * padded[t, rows + 1, cols + 1]
    )


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b through torch, whose threads `threads_for` sets (numpy's multi-threaded BLAS slows
    small products down many times on a busy machine and cannot be told otherwise)."""
    import torch  # here, so that `neurotwin-data --help` does not wait for torch to load

    return (
        torch.from_numpy(np.ascontiguousarray(a)) @ torch.from_numpy(np.ascontiguousarray(b))
    ).numpy()


@contextlib.contextmanager
def threads_for(sizes: SyntheticSizes):
    """Small sessions: torch single-threaded (many small products; threads only contend).
    Large ones keep torch's threads for their large products. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if sizes.neurons * sizes.height * sizes.width * sizes.frames < 10**8:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def causal_filter(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per-row causal convolution: y[n, t] = sum_k h[n, k] x[n, t - k] (zero before t = 0)."""
    T = x.shape[1]
    n = scipy.fft.next_fast_len(T + h.shape[1], real=True)  # zero-padded: no wrap-around
    y = scipy.fft.irfft(scipy.fft.rfft(x, n, axis=1) * scipy.fft.rfft(h, n, axis=1), n, axis=1)
    return np.ascontiguousarray(y[:, :T], dtype=np.float32)


@dataclass
class Surround:
    """Iso-oriented divisive surround of some neurons: the contrast energy of quadrature pairs of
    Gabors (the neuron's frequency, orientations around its own) under an annular envelope,
    pooled with `pool` weights, divides the neuron's stimulus-driven rate by
    (1 + weight * energy / mean energy on natural clips)."""

    index: np.ndarray  # (n_s,) neurons that have one
    rf: np.ndarray  # (n_s, K, H*W) even filters of the surround pool (unit norm), K angles
    rf_quadrature: np.ndarray  # (n_s, K, H*W) odd filters
    pool: tuple[float, ...]  # (K,) weights of the K energies
    weight: np.ndarray  # (n_s,) divisive weight
    sigma: np.ndarray  # (n_s,) outer envelope s.d., ref px
    inner_sigma: np.ndarray  # (n_s,) inner (hole) envelope s.d., ref px
    energy_mean: np.ndarray = field(default_factory=lambda: np.ones(0))  # set by calibrate


@dataclass
class Population:
    """One mouse's neurons: everything needed to turn (video, behaviour, gaze) into rates."""

    coordinates: np.ndarray  # (N, 3) micrometres
    rf_center: np.ndarray  # (N, 2) screen position, ref px (x, y)
    cell_type: np.ndarray  # (N,) 0 simple, 1 complex, 2 centre-surround
    rf: np.ndarray  # (N, H*W) spatial filters (unit norm)
    rf_quadrature: np.ndarray  # (n_complex, H*W) quadrature partners of the complex cells
    temporal: np.ndarray  # (N, L) causal temporal filters
    threshold: np.ndarray  # (N,) in drive s.d.
    mean_count: np.ndarray  # (N,) mean Poisson rate per frame
    scale: np.ndarray  # (N,) response units per count
    running_gain: np.ndarray  # (N,)
    pupil_gain: np.ndarray  # (N,)
    behavior: MouseBehavior
    sharpness: float = 3.0  # softplus sharpness
    surround: Surround | None = None
    rf_params: dict[str, np.ndarray] = field(default_factory=dict)  # sigma, freq, theta, ...
    # calibration (set by `calibrate`)
    drive_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    drive_std: np.ndarray = field(default_factory=lambda: np.ones(0))
    response_mean: np.ndarray = field(default_factory=lambda: np.ones(0))

    @property
    def n_neurons(self) -> int:
        return self.rf.shape[0]

    @staticmethod
    def frames(video: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """(T, H*W) frames as the neurons see them: grey 0, shifted by gaze (2, T)."""
        T = video.shape[0]
        frames = (video.astype(np.float32) - GREY) / CONTRAST_UNIT  # grey = 0
        return shift_frames(frames, shift).reshape(T, -1)

    def _drive(self, frames: np.ndarray) -> np.ndarray:
        """Stimulus drive (N, T) of frames (T, H*W), before standardisation."""
        lin = causal_filter(matmul(self.rf, frames.T), self.temporal)
        complex_ = self.cell_type == 1
        if complex_.any():
            quad = matmul(self.rf_quadrature, frames.T)
            quad = causal_filter(quad, self.temporal[complex_])
            lin[complex_] = np.sqrt(lin[complex_] ** 2 + quad**2)
        return lin

    def _surround_energy(self, frames: np.ndarray) -> np.ndarray:
        """Pooled contrast energy (n_s, T) of the surrounds (not yet divided by its mean)."""
        s = self.surround
        temporal = self.temporal[s.index]
        energy = np.zeros((len(s.index), frames.shape[0]), np.float32)
        for k, w in enumerate(s.pool):
            even = causal_filter(matmul(s.rf[:, k], frames.T), temporal)
            odd = causal_filter(matmul(s.rf_quadrature[:, k], frames.T), temporal)
            energy += np.float32(w) * np.sqrt(even**2 + odd**2)
        return energy

    def _nonlinearity(self, drive: np.ndarray) -> np.ndarray:
        """softplus(b (z - threshold)) / b of the standardised drive z, in place, float32."""
        b = self.sharpness
        scale = (b / self.drive_std).astype(np.float32)[:, None]
        offset = (-b * (self.drive_mean / self.drive_std + self.threshold)).astype(np.float32)
        x = drive.astype(np.float32, copy=False)
        x *= scale
        x += offset[:, None]
        np.logaddexp(np.float32(0), x, out=x)
        x *= np.float32(1 / b)
        return x

    def _suppress(self, r: np.ndarray, energy: np.ndarray) -> None:
        """Divide the surround neurons' rows of r (N, T) by 1 + weight * energy / mean, in place."""
        s = self.surround
        divisor = 1.0 + s.weight.astype(np.float32)[:, None] * (
            energy / s.energy_mean.astype(np.float32)[:, None]
        )
        r[s.index] /= divisor.astype(np.float32)

    def calibrate(self, videos: Sequence[np.ndarray]) -> None:
        """Standardise drives and set the mean rate on calibration clips (no gaze shift)."""
        frames = [self.frames(v, np.zeros((2, v.shape[0]))) for v in videos]
        drives = np.concatenate([self._drive(f) for f in frames], 1)
        self.drive_mean = drives.mean(1, dtype=np.float64)
        self.drive_std = drives.std(1, dtype=np.float64) + 1e-6
        r = self._nonlinearity(drives)
        if self.surround is not None:
            energy = np.concatenate([self._surround_energy(f) for f in frames], 1)
            self.surround.energy_mean = energy.mean(1, dtype=np.float64) + 1e-6
            self._suppress(r, energy)
        self.response_mean = r.mean(1, dtype=np.float64) + 1e-6

    def log_gain(self, behavior: np.ndarray) -> np.ndarray:
        """(N, T) log gain from behaviour (2, T), clipped to +-LOG_GAIN_CLIP, float32."""
        f32 = np.float32
        pupil_z = (behavior[0] / self.behavior.pupil_baseline - PUPIL_REF) / PUPIL_SCALE
        running_z = (behavior[1] - RUNNING_REF) / RUNNING_SCALE
        log_gain = self.running_gain.astype(f32)[:, None] * running_z.astype(f32)
        log_gain += self.pupil_gain.astype(f32)[:, None] * pupil_z.astype(f32)
        return np.clip(log_gain, -LOG_GAIN_CLIP, LOG_GAIN_CLIP, out=log_gain)

    def rates(self, video: np.ndarray, behavior: np.ndarray, gaze_shift: np.ndarray, p):
        """Expected counts per frame (N, T) for video (T, H, W), behavior (2, T), shift (2, T)."""
        f32 = np.float32
        frames = self.frames(video, gaze_shift)
        r = self._nonlinearity(self._drive(frames))
        if self.surround is not None:
            self._suppress(r, self._surround_energy(frames))
        log_gain = self.log_gain(behavior)
        gain = np.exp(log_gain, out=log_gain)
        stimulus = (self.mean_count * (1 - p.spontaneous) / self.response_mean).astype(f32)
        r *= stimulus[:, None]
        r += (self.mean_count * p.spontaneous).astype(f32)[:, None]
        r *= gain
        return r

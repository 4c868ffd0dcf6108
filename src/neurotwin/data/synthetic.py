"""Synthetic ground-truth mice, written in the native (Sensorium 2023) session layout.

A known generative model stands in for a mouse, so that a model's predictions can be compared with
the rates that really generated the data:

* **Stimuli** (shared statistics for every mouse): grey-scale movies in 0..255 made of
  spatio-temporal 1/f noise (power falling with spatial frequency, temporal bandwidth growing with
  spatial frequency as in natural movies), occluding objects (ellipses, long bars/edges) moving at
  constant velocity, and scene cuts. Some clips are shorter than the trial: their frames past the
  end are NaN, as in the published data.
* **Neurons** sit at cortical positions (`cell_motor_coordinates`, micrometres) that map smoothly
  (affine map with a mild quadratic term, plus local scatter) onto the screen. Each has a
  Gabor-like spatial receptive field (simple cells; complex cells as quadrature-pair energy units)
  or a centre-surround one, a causal biphasic temporal filter, a smooth rectifying nonlinearity
  (softplus above a per-neuron threshold), a multiplicative gain from running speed and pupil
  dilation, and Poisson noise with Gamma-distributed over-dispersion.
* **Behaviour**: smooth pupil dilation and running-speed traces (running in bouts, pupil dilating
  with locomotion); gaze (`pupil_center`, eye-camera pixels) with fixations, drifts and saccades.
  Gaze shifts every receptive field on the screen (equivalently, the image on the retina).
* **Tiers**: `train` (a new clip per trial), `oracle` (a few clips, each repeated several times),
  `live_test_main` and `final_test_main` (repeated clips; the responses of `final_test_main` are
  hidden as zeros, as in the published data). Oracle and test clips are shared by every mouse;
  trial files are numbered in random order.

Per session it writes, with `neurotwin.data.layout.write_session`: the four trial arrays
(float32), `meta/trials/tiers.npy`, `meta/neurons/unit_ids.npy`, `cell_motor_coordinates.npy`,
`meta/statistics/...` computed like the published ones (see `shipped_statistics`), the noiseless
responses `data/noiseless_responses/{trial}.npy` (N, T), `meta/trials/video_ids.npy` (which trials
show the same clip) and `meta/neurotwin.json` ({"source": "synthetic", generator parameters, seed,
ceiling correlations}). Frames past a short trial's end are NaN in every trial array (and in the
noiseless responses); hidden responses are zeros throughout.

Generation streams one trial at a time (memory does not grow with the number of trials) and is
deterministic under the seed: every trial has its own random stream derived from
(seed, mouse, trial), so the result does not depend on generation order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
from scipy.ndimage import gaussian_filter1d
from tqdm.auto import tqdm

from neurotwin.data import layout
from neurotwin.errors import ConfigError, DataFormatError, NeurotwinError

__all__ = [
    "PRESETS",
    "SyntheticSizes",
    "ModelParams",
    "generate",
    "ensure_synthetic",
    "ceiling_correlation",
    "session_ceiling",
    "shipped_statistics",
    "make_clip",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
FRAME_RATE = 30.0  # Hz, as the published recordings
REF_WIDTH = 64.0  # spatial parameters are given in pixels of a 64-pixel-wide screen ("ref px")
HIDDEN_TIERS = ("final_test_main",)  # responses shipped as zeros
VIDEO_IDS_FILE = "trials/video_ids.npy"  # under meta/: trials showing the same clip share an id
SKIP_FRAMES = 50  # the Sensorium metrics ignore the first 50 frames of each trial


# ----------------------------------------------------------------------------------------------
# Sizes and parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSizes:
    """How big each synthetic session is."""

    height: int = 18
    width: int = 32
    frames: int = 90  # frames per trial (T); short trials are NaN-padded to T
    neurons: int = 80
    train_trials: int = 60
    oracle_clips: int = 4
    oracle_repeats: int = 5
    test_clips: int = 2  # per test tier (live_test_main, final_test_main)
    test_repeats: int = 4
    short_fraction: float = 0.1  # fraction of clips shorter than `frames` (NaN-padded)


# "small": quick CPU data (3 mice in a few seconds). Frames are 18x32, half the published 36x64
# in each direction: every spatial parameter is defined relative to the screen width, so the
# model is the same at either resolution, and a CNN trains about 4x faster per frame on CPU.
# "sensorium": the published sizes (36x64 frames, 300-frame trials, ~8k neurons, 700 trials).
PRESETS: dict[str, SyntheticSizes] = {
    "small": SyntheticSizes(),
    "sensorium": SyntheticSizes(
        height=36,
        width=64,
        frames=300,
        neurons=8000,
        train_trials=520,
        oracle_clips=6,
        oracle_repeats=10,
        test_clips=6,
        test_repeats=10,
        short_fraction=0.1,
    ),
}


@dataclass(frozen=True)
class ModelParams:
    """Parameters of the generative model (spatial ones in ref px: pixels of a 64-wide screen)."""

    # stimulus
    spatial_exponent: float = 1.0  # amplitude ~ 1 / f^a
    motion_speed: float = 0.8  # ref px / frame: temporal bandwidth = speed * spatial frequency
    max_objects: int = 3
    object_speed: tuple[float, float] = (0.3, 1.5)  # ref px / frame
    cut_probability: float = 0.5  # chance of one scene cut per clip
    luminance: tuple[float, float] = (90.0, 150.0)  # clip mean, 0..255
    contrast: tuple[float, float] = (35.0, 60.0)  # clip standard deviation, 0..255
    # neurons
    fov_um: float = 630.0  # side of the imaged field of view, micrometres
    depth_um: tuple[float, float] = (180.0, 420.0)
    planes: int = 6
    magnification: tuple[float, float] = (0.04, 0.055)  # ref px per micrometre of cortex
    retinotopic_scatter: float = 1.0  # ref px
    rf_sigma: float = 4.0  # ref px, median Gaussian envelope
    spatial_frequency: float = 0.07  # cycles per ref px, median
    complex_fraction: float = 0.35
    center_surround_fraction: float = 0.15
    filter_length: int = 16  # frames
    threshold: tuple[float, float] = (0.0, 1.0)  # rectification threshold, in drive s.d.
    sharpness: float = 3.0  # softplus sharpness
    spontaneous: float = 0.1  # fraction of the mean rate independent of the stimulus
    mean_rate: float = 1.0  # median over neurons of the mean count per frame
    rate_spread: float = 0.5  # log-normal spread of the mean counts over neurons
    overdispersion: float = 0.3  # variance of the Gamma gain on the Poisson rate
    response_scale: float = 1.0  # median units per count (per neuron, log-normal spread 0.4)
    running_gain: tuple[float, float] = (0.25, 0.15)  # mean, s.d. over neurons (log gain per z)
    pupil_gain: tuple[float, float] = (0.15, 0.1)
    # behaviour and gaze
    gaze_gain: float = 0.3  # ref px of receptive-field shift per eye-camera pixel of gaze
    saccade_rate: float = 0.4  # per second, at rest (doubles when running fast)
    saccade_size: float = 4.0  # eye-camera pixels


def _dataclass_from(cls: type, values: Mapping[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown synthetic {what} {unknown}; expected some of {sorted(names)}")
    return cls(**values)


def _check_sizes(s: SyntheticSizes) -> None:
    minimum = {
        "height": 4,
        "width": 4,
        "frames": 2,
        "neurons": 1,
        "train_trials": 1,
        "oracle_clips": 0,
        "oracle_repeats": 1,
        "test_clips": 0,
        "test_repeats": 1,
    }
    for name, low in minimum.items():
        value = getattr(s, name)
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"synthetic size {name}={value!r}: expected an integer >= {low}")
    if not 0.0 <= s.short_fraction <= 1.0:
        raise ConfigError(f"synthetic size short_fraction={s.short_fraction!r}: expected 0..1")


def _rng(*keys: int) -> np.random.Generator:
    """An independent random stream for a tuple of non-negative integer keys."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


# Stream identifiers (first key after the seed).
_S_SHARED_CLIP, _S_TRAIN_CLIP, _S_MOUSE, _S_CALIBRATION, _S_PLAN, _S_TRIAL = range(6)


# ----------------------------------------------------------------------------------------------
# Stimuli
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _pink_amplitude(Tp: int, Hp: int, Wp: int, s: float, exponent: float, speed: float):
    ft = np.fft.fftfreq(Tp)[:, None, None]
    fy = np.fft.fftfreq(Hp)[None, :, None] * s  # cycles per ref px
    fx = np.fft.rfftfreq(Wp)[None, None, :] * s
    ks = np.sqrt(fx**2 + fy**2) + 1.0 / REF_WIDTH
    bandwidth = speed * ks
    amplitude = ks ** (-exponent) * bandwidth / np.sqrt(bandwidth**2 + ft**2)
    return amplitude.astype(np.float32)


def _pink_movie(rng: np.random.Generator, T: int, H: int, W: int, p: ModelParams) -> np.ndarray:
    """Spatio-temporal 1/f noise, (T, H, W), zero mean, unit s.d."""
    pad_s, pad_t = max(4, H // 3), 16  # generate larger and crop: no wrap-around at the edges
    shape = (T + pad_t, H + 2 * pad_s, W + 2 * pad_s)
    amplitude = _pink_amplitude(*shape, W / REF_WIDTH, p.spatial_exponent, p.motion_speed)
    noise = rng.standard_normal(shape, dtype=np.float32)
    movie = scipy.fft.irfftn(scipy.fft.rfftn(noise) * amplitude, s=shape)
    movie = movie[pad_t:, pad_s : pad_s + H, pad_s : pad_s + W]
    return ((movie - movie.mean()) / (movie.std() + 1e-12)).astype(np.float32)


def _add_objects(rng: np.random.Generator, movie: np.ndarray, p: ModelParams) -> None:
    """Composite 1..max_objects moving, occluding ellipses and bars onto `movie` in place."""
    T, H, W = movie.shape
    s = W / REF_WIDTH
    f32 = np.float32
    t = np.arange(T, dtype=f32)[:, None, None]
    y = np.arange(H, dtype=f32)[None, :, None] + f32(0.5)
    x = np.arange(W, dtype=f32)[None, None, :] + f32(0.5)
    for _ in range(int(rng.integers(1, p.max_objects + 1))):
        speed = rng.uniform(*p.object_speed) * s
        direction = rng.uniform(0, 2 * np.pi)
        vx, vy = speed * np.cos(direction), speed * np.sin(direction)
        # start so that the object crosses the screen around the middle of the clip
        cx0 = rng.uniform(0.1, 0.9) * W - vx * T * rng.uniform(0.2, 0.8)
        cy0 = rng.uniform(0.1, 0.9) * H - vy * T * rng.uniform(0.2, 0.8)
        angle = (rng.uniform(0, np.pi) + rng.uniform(-0.01, 0.01) * t).astype(f32)  # rotating
        cos, sin = np.cos(angle), np.sin(angle)
        dx, dy = x - (f32(cx0) + f32(vx) * t), y - (f32(cy0) + f32(vy) * t)
        u = dx * cos + dy * sin
        v = dy * cos - dx * sin
        if rng.random() < 0.5:  # ellipse
            a, b = rng.uniform(3, 10, size=2) * s
            dist = (np.sqrt((u * f32(1 / a)) ** 2 + (v * f32(1 / b)) ** 2) - 1) * f32(min(a, b))
        else:  # long bar: a moving line, or a pair of edges
            half_width, half_length = rng.uniform(1.0, 4.0) * s, rng.uniform(10, 40) * s
            dist = np.maximum(np.abs(v) - f32(half_width), np.abs(u) - f32(half_length))
        alpha = f32(0.5) - f32(0.5) * np.tanh(dist * f32(1 / 0.7))  # soft (anti-aliased) edge
        level = rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 2.0)
        movie += alpha * (f32(level) - movie)


def make_clip(
    rng: np.random.Generator,
    frames: int,
    height: int,
    width: int,
    params: ModelParams | None = None,
) -> np.ndarray:
    """One natural-like movie clip, (frames, height, width) float32 in 0..255: 1/f noise, moving
    occluding objects, and (with probability `cut_probability`) a scene cut."""
    p = params or ModelParams()
    T = frames
    movie = _pink_movie(rng, T, height, width, p)
    _add_objects(rng, movie, p)
    if T >= 8 and rng.random() < p.cut_probability:
        cut = int(rng.integers(T // 4, max(T // 4 + 1, 3 * T // 4)))
        other = _pink_movie(rng, T - cut, height, width, p)
        _add_objects(rng, other, p)
        movie[cut:] = other
    mean = rng.uniform(*p.luminance)
    sd = rng.uniform(*p.contrast)
    movie = mean + sd * movie / (movie.std() + 1e-12)
    return np.clip(movie, 0.0, 255.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Behaviour and gaze
# ----------------------------------------------------------------------------------------------


def _smooth(rng: np.random.Generator, n: int, sigma: float, size: int = 1) -> np.ndarray:
    """Smooth Gaussian noise (size, n) with unit s.d. (Gaussian-filtered white noise)."""
    margin = int(3 * sigma) + 1
    white = rng.standard_normal((size, n + 2 * margin))
    smooth = gaussian_filter1d(white, sigma, axis=-1, mode="wrap")[:, margin : margin + n]
    return smooth / (np.sqrt(1.0 / (2.0 * np.sqrt(np.pi) * sigma)) + 1e-12)


@dataclass(frozen=True)
class _MouseBehavior:
    pupil_baseline: float  # pupil dilation at rest
    eye_center: tuple[float, float]  # resting gaze, eye-camera pixels
    running_propensity: float  # mean of the latent running drive


def _behavior(rng: np.random.Generator, T: int, m: _MouseBehavior, p: ModelParams):
    """behavior (2, T): pupil dilation, running speed (cm/s); pupil_center (2, T): gaze x, y."""
    latent = m.running_propensity + rng.normal(0.0, 0.8) + 0.9 * _smooth(rng, T, 20.0)[0]
    running = 25.0 / (1.0 + np.exp(-3.0 * (latent - 0.7)))
    running = running + 0.3 * np.abs(_smooth(rng, T, 2.0)[0])
    arousal = gaussian_filter1d(running, 15.0, mode="nearest")  # pupil follows running, slowly
    slow = rng.normal(0.0, 0.6) + 0.7 * _smooth(rng, T, 40.0)[0]
    pupil = m.pupil_baseline * (1.0 + 0.1 * slow + 0.25 * arousal / 25.0)
    pupil = np.maximum(pupil, 0.2 * m.pupil_baseline)
    # gaze: fixations with slow drift, saccades (more often when running), drawn to the centre
    rate = p.saccade_rate / FRAME_RATE * (1.0 + running / 25.0)
    saccade = rng.random(T) < rate
    jumps = rng.normal(0.0, p.saccade_size, size=(2, T)) * saccade
    center = np.asarray(m.eye_center)[:, None]
    gaze = np.empty((2, T))
    pos = center[:, 0] + rng.normal(0.0, 2.0 * p.saccade_size / 3.0, size=2)
    for i in range(T):
        if saccade[i]:
            pos = pos + jumps[:, i] - 0.3 * (pos - center[:, 0])
        gaze[:, i] = pos
    gaze = gaussian_filter1d(gaze, 0.7, axis=-1, mode="nearest")  # saccades last ~2 frames
    gaze = gaze + 0.4 * _smooth(rng, T, 10.0, size=2) + 0.05 * rng.standard_normal((2, T))
    behavior = np.stack([pupil, running]).astype(np.float32)
    return behavior, gaze.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Neurons
# ----------------------------------------------------------------------------------------------


def _shift_frames(frames: np.ndarray, shift: np.ndarray) -> np.ndarray:
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


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b through torch, whose threads `_threads_for` sets (numpy's multi-threaded BLAS slows
    small products down many times on a busy machine and cannot be told otherwise)."""
    import torch  # here, so that `neurotwin-data --help` does not wait for torch to load

    return (
        torch.from_numpy(np.ascontiguousarray(a)) @ torch.from_numpy(np.ascontiguousarray(b))
    ).numpy()


@contextlib.contextmanager
def _threads_for(sizes: SyntheticSizes):
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


def _causal_filter(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per-row causal convolution: y[n, t] = sum_k h[n, k] x[n, t - k] (zero before t = 0)."""
    T = x.shape[1]
    n = scipy.fft.next_fast_len(T + h.shape[1], real=True)  # zero-padded: no wrap-around
    y = scipy.fft.irfft(scipy.fft.rfft(x, n, axis=1) * scipy.fft.rfft(h, n, axis=1), n, axis=1)
    return np.ascontiguousarray(y[:, :T], dtype=np.float32)


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
    behavior: _MouseBehavior
    sharpness: float = 3.0  # softplus sharpness
    # calibration (set by `calibrate`)
    drive_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    drive_std: np.ndarray = field(default_factory=lambda: np.ones(0))
    response_mean: np.ndarray = field(default_factory=lambda: np.ones(0))

    @property
    def n_neurons(self) -> int:
        return self.rf.shape[0]

    def _drive(self, video: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """Standardised stimulus drive (N, T) of video (T, H, W) in 0..255, gaze shift (2, T)."""
        T = video.shape[0]
        frames = (video.astype(np.float32) - 128.0) / 64.0  # grey = 0
        frames = _shift_frames(frames, shift).reshape(T, -1)
        lin = _causal_filter(_matmul(self.rf, frames.T), self.temporal)
        complex_ = self.cell_type == 1
        if complex_.any():
            quad = _matmul(self.rf_quadrature, frames.T)
            quad = _causal_filter(quad, self.temporal[complex_])
            lin[complex_] = np.sqrt(lin[complex_] ** 2 + quad**2)
        return lin

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

    def calibrate(self, videos: Sequence[np.ndarray]) -> None:
        """Standardise drives and set the mean rate on calibration clips (no gaze shift)."""
        drives = np.concatenate([self._drive(v, np.zeros((2, v.shape[0]))) for v in videos], 1)
        self.drive_mean = drives.mean(1, dtype=np.float64)
        self.drive_std = drives.std(1, dtype=np.float64) + 1e-6
        self.response_mean = self._nonlinearity(drives).mean(1, dtype=np.float64) + 1e-6

    def rates(self, video: np.ndarray, behavior: np.ndarray, gaze_shift: np.ndarray, p):
        """Expected counts per frame (N, T) for video (T, H, W), behavior (2, T), shift (2, T)."""
        f32 = np.float32
        r = self._nonlinearity(self._drive(video, gaze_shift))
        pupil_z = (behavior[0] / self.behavior.pupil_baseline - 1.05) / 0.15
        running_z = (behavior[1] - 5.0) / 8.0
        log_gain = self.running_gain.astype(f32)[:, None] * running_z.astype(f32)
        log_gain += self.pupil_gain.astype(f32)[:, None] * pupil_z.astype(f32)
        gain = np.exp(np.clip(log_gain, -1.5, 1.5, out=log_gain), out=log_gain)
        stimulus = (self.mean_count * (1 - p.spontaneous) / self.response_mean).astype(f32)
        r *= stimulus[:, None]
        r += (self.mean_count * p.spontaneous).astype(f32)[:, None]
        r *= gain
        return r


def _receptive_fields(center, sigma, aspect, freq, theta, phase, sign, cell_type, H, W):
    """Unit-norm spatial filters (n, H*W) and quadrature partners, float32, on the pixel grid
    (pixel centres in ref px). Gabor (zero mean) for simple/complex cells, difference of
    Gaussians for centre-surround cells."""
    f32 = np.float32
    s = W / REF_WIDTH
    gx = ((np.arange(W) + 0.5) / s).astype(f32)
    gy = ((np.arange(H) + 0.5) / s).astype(f32)
    col = lambda a: np.asarray(a, dtype=f32)[:, None, None]  # noqa: E731
    dx = gx[None, None, :] - col(center[:, 0])
    dy = gy[None, :, None] - col(center[:, 1])
    c, sn = col(np.cos(theta)), col(np.sin(theta))
    u, v = dx * c + dy * sn, dy * c - dx * sn
    sig2 = 2 * col(sigma) ** 2
    envelope = np.exp(-(u**2) / sig2 - (v * col(aspect)) ** 2 / sig2)
    carrier = f32(2 * np.pi) * col(freq) * u + col(phase)
    rf = envelope * np.cos(carrier)
    rf_q = envelope * np.sin(carrier)
    r2 = dx**2 + dy**2
    dog = np.exp(-r2 / (sig2 * f32(0.36))) - f32(0.3) * np.exp(-r2 / (sig2 * f32(2.25)))
    is_dog = col(cell_type == 2) > 0
    rf = np.where(is_dog, dog * col(sign), rf)
    n = len(center)
    rf, rf_q = rf.reshape(n, -1), rf_q.reshape(n, -1)
    rf = rf - rf.mean(1, keepdims=True) * (cell_type != 2)[:, None]  # Gabors: no DC response
    rf_q = rf_q - rf_q.mean(1, keepdims=True)
    rf /= np.linalg.norm(rf, axis=1, keepdims=True) + f32(1e-12)
    rf_q /= np.linalg.norm(rf_q, axis=1, keepdims=True) + f32(1e-12)
    return rf, rf_q


def _make_population(rng: np.random.Generator, sizes: SyntheticSizes, p: ModelParams):
    N, H, W = sizes.neurons, sizes.height, sizes.width
    s = W / REF_WIDTH
    # cortical positions: a field of view at a random motor offset, cells on a few planes
    offset = np.array([rng.uniform(-2000, 2000), rng.uniform(-2000, 2000), 0.0])
    plane_depths = np.linspace(*p.depth_um, max(1, p.planes))
    local = np.column_stack(
        [
            rng.uniform(0, p.fov_um, N),
            rng.uniform(0, p.fov_um, N),
            rng.choice(plane_depths, N) + rng.normal(0, 3.0, N),
        ]
    )
    coordinates = (local + offset).astype(np.float32)
    # smooth retinotopic map: rotation (with V1's field sign), anisotropic scale, quadratic warp
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mag = np.diag(rng.uniform(*p.magnification, size=2))
    rel = local[:, :2] - p.fov_um / 2
    visual = rel @ (rot @ mag).T
    visual += rng.normal(0, 0.004, size=2) * (visual**2) * np.sign(visual)  # mild warp
    screen_center = np.array([REF_WIDTH / 2, REF_WIDTH * H / W / 2])
    center = screen_center + rng.normal(0, [4.0, 2.0]) + visual
    center += rng.normal(0, p.retinotopic_scatter, size=(N, 2))
    lo = np.array([3.0, 3.0])
    hi = np.array([REF_WIDTH, REF_WIDTH * H / W]) - 3.0
    center = np.clip(center, lo, hi)
    # spatial receptive fields on the pixel grid (ref px coordinates of the pixel centres)
    cell_type = rng.choice(
        3,
        size=N,
        p=[
            1 - p.complex_fraction - p.center_surround_fraction,
            p.complex_fraction,
            p.center_surround_fraction,
        ],
    )
    sigma = p.rf_sigma * np.exp(rng.normal(0, 0.25, N))
    aspect = rng.uniform(0.6, 1.0, N)
    freq = np.minimum(p.spatial_frequency * np.exp(rng.normal(0, 0.25, N)), 0.35 * s)
    theta = rng.uniform(0, np.pi, N)
    phase = rng.uniform(0, 2 * np.pi, N)
    sign = rng.choice([-1.0, 1.0], N)  # ON or OFF centre (centre-surround cells)
    rf = np.empty((N, H * W), np.float32)
    rf_q = np.empty((N, H * W), np.float32)
    for i in range(0, N, 512):  # in chunks: bounded memory for large populations
        j = slice(i, i + 512)
        rf[j], rf_q[j] = _receptive_fields(
            center[j],
            sigma[j],
            aspect[j],
            freq[j],
            theta[j],
            phase[j],
            sign[j],
            cell_type[j],
            H,
            W,
        )
    rf_q = np.ascontiguousarray(rf_q[cell_type == 1])
    # temporal filters: difference of gamma functions, biphasic, peak 2.4-4.8 frames
    k = np.arange(p.filter_length, dtype=np.float64)[None, :]
    tau = rng.uniform(0.8, 1.6, N)[:, None]

    def gamma(tau_: np.ndarray) -> np.ndarray:
        g = (k / tau_) ** 3 * np.exp(-k / tau_)
        return g / g.sum(1, keepdims=True)

    temporal = gamma(tau) - rng.uniform(0.2, 0.8, N)[:, None] * gamma(1.7 * tau)
    temporal = (temporal / np.linalg.norm(temporal, axis=1, keepdims=True)).astype(np.float32)
    behavior = _MouseBehavior(
        pupil_baseline=float(rng.uniform(15.0, 30.0)),
        eye_center=(float(rng.uniform(150, 250)), float(rng.uniform(100, 160))),
        running_propensity=float(rng.normal(0.0, 0.4)),
    )
    pop = Population(
        coordinates=coordinates,
        rf_center=center.astype(np.float32),
        cell_type=cell_type,
        rf=rf,
        rf_quadrature=rf_q,
        temporal=temporal,
        threshold=rng.uniform(*p.threshold, N),
        mean_count=p.mean_rate * np.exp(rng.normal(0, p.rate_spread, N)),
        scale=p.response_scale * np.exp(rng.normal(0, 0.4, N)),
        running_gain=rng.normal(*p.running_gain, N),
        pupil_gain=rng.normal(*p.pupil_gain, N),
        behavior=behavior,
        sharpness=p.sharpness,
    )
    maps = {
        "rotation_rad": float(angle),
        "magnification_ref_px_per_um": [float(m) for m in np.diag(mag)],
        "motor_offset_um": [float(o) for o in offset],
    }
    return pop, maps


# ----------------------------------------------------------------------------------------------
# Statistics over trials (as shipped) and ceiling accumulators
# ----------------------------------------------------------------------------------------------


class _OverTrials:
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
    trials, not over trials and frames); `layout.trial_statistics` gives the corrected ones.
    """
    acc = {name: _OverTrials(median_bytes=2**62) for name in layout.TRIAL_ARRAYS}
    for arrays in trials:
        for name in layout.TRIAL_ARRAYS:
            acc[name].add(arrays[name], keep=True)
    return {name: a.result() for name, a in acc.items()}


class _Correlation:
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
    acc = _Correlation()
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
    tiers_file = folder / layout.TIERS_FILE
    noiseless_dir = folder / "data" / layout.NOISELESS
    if not tiers_file.is_file():
        raise DataFormatError(tiers_file, "missing: not a session folder")
    if not noiseless_dir.is_dir():
        raise DataFormatError(noiseless_dir, "missing: not a synthetic session (no noiseless)")
    tier_of = np.load(tiers_file)
    hidden = set(tiers) & set(HIDDEN_TIERS)
    if hidden:
        raise ValueError(f"tiers {sorted(hidden)} have hidden responses: no ceiling")
    acc = _Correlation()
    for trial in np.flatnonzero(np.isin(tier_of, list(tiers))):
        x = np.load(noiseless_dir / f"{trial}.npy")
        y = np.load(folder / "data" / layout.RESPONSES / f"{trial}.npy")
        acc.add(x[:, skip_frames:], y[:, skip_frames:])
    return acc.result()


# ----------------------------------------------------------------------------------------------
# One mouse: trial plan and lazy, streaming trial generation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Clip:
    key: tuple[int, ...]  # random-stream keys of the clip
    video_id: int
    length: int


class _Mouse:
    """Plans one session's trials and generates each trial on demand (deterministically)."""

    NOISELESS_CACHE_BYTES = 256 * 2**20
    MEDIAN_BYTES = 128 * 2**20

    def __init__(self, seed, index, sizes, params, shared_clips, progress):
        self.seed, self.index, self.sizes, self.p = seed, index, sizes, params
        self.pop, self.maps = _make_population(_rng(seed, _S_MOUSE, index), sizes, params)
        cal = _rng(seed, _S_CALIBRATION, index)
        T, H, W = sizes.frames, sizes.height, sizes.width
        self.pop.calibrate([make_clip(cal, max(T, 64), H, W, params) for _ in range(2)])
        # trial plan: tiers in random order over trial indices
        clips: list[tuple[str, _Clip]] = []
        n_shared = len(shared_clips)
        for j in range(sizes.train_trials):
            key = (seed, _S_TRAIN_CLIP, index, j)
            vid = n_shared + index * sizes.train_trials + j
            clips.append(("train", _Clip(key, vid, _clip_length(key, sizes))))
        for tier, clip, repeats in shared_clips:
            clips += [(tier, clip)] * repeats
        train_lengths = [c.length for t, c in clips if t == "train"]
        if max(train_lengths) < T:  # keep every frame covered by some training trial
            clips[0] = ("train", dataclasses.replace(clips[0][1], length=T))
        order = _rng(seed, _S_PLAN, index).permutation(len(clips))
        self.tiers = np.array([clips[i][0] for i in order])
        self.clips = [clips[i][1] for i in order]
        self.unit_ids = np.sort(
            _rng(seed, _S_PLAN, index, 1).choice(
                np.arange(1, 4 * sizes.neurons + 1), sizes.neurons, replace=False
            )
        ).astype(np.int64)
        # streaming state
        self.done: set[int] = set()
        train_ids = np.flatnonzero(self.tiers == layout.TRAIN_TIER)
        self.train_ids = set(int(i) for i in train_ids)
        self.stats = {n: _OverTrials(self.MEDIAN_BYTES) for n in layout.TRIAL_ARRAYS}
        self.ceilings: dict[str, _Correlation] = {}
        noiseless_bytes = len(self.clips) * sizes.neurons * T * 4
        self.cache_noiseless = noiseless_bytes <= self.NOISELESS_CACHE_BYTES
        self.noiseless: dict[int, np.ndarray] = {}
        self.spill_dir: Path | None = None  # set by the writer
        self.video_cache: dict[tuple[int, ...], np.ndarray] = {}
        self.bar = tqdm(
            total=len(self.clips),
            desc=f"mouse {index + 1}",
            unit="trial",
            disable=not progress,
            leave=False,
        )

    @property
    def n_trials(self) -> int:
        return len(self.clips)

    def _video(self, clip: _Clip) -> np.ndarray:
        """(T, H, W) clip content over all T frames (also past a short clip's end)."""
        if clip.key in self.video_cache:
            return self.video_cache[clip.key]
        s = self.sizes
        video = make_clip(_rng(*clip.key), s.frames, s.height, s.width, self.p)
        if clip.key[1] == _S_SHARED_CLIP:  # repeated: keep (few, shared by every repeat)
            self.video_cache[clip.key] = video
        return video

    def simulate(self, trial: int) -> dict[str, np.ndarray]:
        """All arrays of one trial, native shapes, frames past the clip's end NaN."""
        clip, tier = self.clips[trial], str(self.tiers[trial])
        T = self.sizes.frames
        rng = _rng(self.seed, _S_TRIAL, self.index, trial)
        video = self._video(clip)
        behavior, pupil_center = _behavior(rng, T, self.pop.behavior, self.p)
        scale = self.p.gaze_gain * self.sizes.width / REF_WIDTH
        shift = scale * (pupil_center - np.asarray(self.pop.behavior.eye_center)[:, None])
        rate = self.pop.rates(video, behavior, shift, self.p)
        d = self.p.overdispersion
        if d > 0:  # Gamma-Poisson (negative binomial) counts: mean rate, extra variance
            gain = rng.standard_gamma(1.0 / d, size=rate.shape, dtype=np.float32)
            gain *= np.float32(d)
            gain *= rate
            counts = rng.poisson(gain).astype(np.float32)
        else:
            counts = rng.poisson(rate).astype(np.float32)
        scale_n = self.pop.scale[:, None].astype(np.float32)
        responses = counts * scale_n
        noiseless = rate * scale_n
        videos = np.moveaxis(video, 0, -1).copy()  # (H, W, T)
        end = clip.length
        for a in (videos, responses, behavior, pupil_center, noiseless):
            a[..., end:] = np.nan
        if tier in HIDDEN_TIERS:
            responses = np.zeros_like(responses)
        out = {
            layout.VIDEOS: videos,
            layout.RESPONSES: responses,
            layout.BEHAVIOR: behavior,
            layout.PUPIL_CENTER: pupil_center,
            layout.NOISELESS: noiseless,
        }
        return {k: v.astype(np.float32, copy=False) for k, v in out.items()}

    def trial(self, trial: int) -> dict[str, np.ndarray]:
        arrays = self.simulate(trial)
        if trial not in self.done:
            self.done.add(trial)
            self._account(trial, arrays)
            self.bar.update(1)
        return arrays

    def _account(self, trial: int, arrays: Mapping[str, np.ndarray]) -> None:
        tier = str(self.tiers[trial])
        if trial in self.train_ids:
            keep = True  # kept for the median while the budget allows (all, for small sessions)
            for name in layout.TRIAL_ARRAYS:
                self.stats[name].add(arrays[name], keep=keep)
        if tier not in HIDDEN_TIERS:
            skip = SKIP_FRAMES if self.sizes.frames > SKIP_FRAMES else 0
            acc = self.ceilings.setdefault(tier, _Correlation())
            acc.add(arrays[layout.NOISELESS][:, skip:], arrays[layout.RESPONSES][:, skip:])
        if self.cache_noiseless:
            self.noiseless[trial] = arrays[layout.NOISELESS]
        elif self.spill_dir is not None:  # too big to keep: park on disk until written
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            np.save(self.spill_dir / f"{trial}.npy", arrays[layout.NOISELESS])

    def statistics(self) -> dict[str, dict[str, np.ndarray]]:
        for trial in sorted(self.train_ids - self.done):
            self.trial(trial)
        return {name: acc.result() for name, acc in self.stats.items()}

    def noiseless_of(self, trial: int) -> np.ndarray:
        if trial in self.noiseless:
            return self.noiseless.pop(trial)
        if self.bar.n >= self.bar.total and not self.bar.disable:  # second pass: show it
            self.bar.reset(total=self.n_trials)
            self.bar.set_description(f"mouse {self.index + 1} (noiseless rates)")
        self.bar.update(0 if self.bar.disable else 1)
        spilled = self.spill_dir / f"{trial}.npy" if self.spill_dir is not None else None
        if spilled is not None and spilled.is_file():
            a = np.load(spilled)
            spilled.unlink()
            return a
        return self.simulate(trial)[layout.NOISELESS]  # deterministic: recomputed

    def video_ids(self) -> np.ndarray:
        return np.array([c.video_id for c in self.clips], dtype=np.int64)


def _clip_length(key: tuple[int, ...], sizes: SyntheticSizes) -> int:
    r = _rng(*key, 99)
    T = sizes.frames
    if r.random() < sizes.short_fraction and T >= 4:
        return int(r.integers(max(2, math.ceil(0.75 * T)), T))
    return T


class _LazyTrials(Mapping):
    def __init__(self, mouse: _Mouse):
        self.mouse = mouse

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.mouse.n_trials))

    def __len__(self) -> int:
        return self.mouse.n_trials

    def __getitem__(self, trial: int) -> dict[str, np.ndarray]:
        arrays = self.mouse.trial(int(trial))
        return {k: arrays[k] for k in layout.TRIAL_ARRAYS}


class _LazyNoiseless(_LazyTrials):
    def __getitem__(self, trial: int) -> np.ndarray:
        return self.mouse.noiseless_of(int(trial))


class _LazyStatistics(Mapping):
    """Shipped statistics, finalised when first read (after the trials have streamed by)."""

    def __init__(self, mouse: _Mouse):
        self.mouse = mouse
        self._result: dict | None = None

    def _get(self) -> dict:
        if self._result is None:
            self._result = self.mouse.statistics()
        return self._result

    def __iter__(self) -> Iterator[str]:
        return iter(layout.TRIAL_ARRAYS)

    def __len__(self) -> int:
        return len(layout.TRIAL_ARRAYS)

    def __getitem__(self, name: str) -> dict[str, np.ndarray]:
        return self._get()[name]


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def _resolve(preset: str, overrides: Mapping[str, Any]) -> tuple[SyntheticSizes, ModelParams]:
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; expected one of {sorted(PRESETS)}")
    size_names = {f.name for f in dataclasses.fields(SyntheticSizes)}
    param_names = {f.name for f in dataclasses.fields(ModelParams)}
    unknown = sorted(set(overrides) - size_names - param_names)
    if unknown:
        raise ConfigError(
            f"unknown synthetic option(s) {unknown}; sizes: {sorted(size_names)}; "
            f"model parameters: {sorted(param_names)}"
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    sizes = dataclasses.replace(
        PRESETS[preset], **{k: v for k, v in given.items() if k in size_names}
    )
    params = _dataclass_from(
        ModelParams, {k: v for k, v in given.items() if k in param_names}, "parameter"
    )
    _check_sizes(sizes)
    return sizes, params


def session_names(mice: int, seed: int, sizes: SyntheticSizes, params: ModelParams) -> list[str]:
    """Folder names in the published pattern: dynamic{animal}-{session}-{scan}-Video-{hash}."""
    blob = json.dumps(
        [GENERATOR_VERSION, seed, dataclasses.asdict(sizes), dataclasses.asdict(params)],
        sort_keys=True,
    )
    digest = hashlib.md5(blob.encode()).hexdigest()
    return [f"dynamic{90001 + k}-1-{seed % 100 + 1}-Video-{digest}" for k in range(mice)]


def generate(
    out_dir: str | Path,
    mice: int = 3,
    preset: str = "small",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    **sizes: Any,
) -> list[Path]:
    """Write `mice` synthetic sessions under `out_dir`; returns their folders.

    `sizes`: fields of `SyntheticSizes` (height, width, frames, neurons, train_trials,
    oracle_clips, oracle_repeats, test_clips, test_repeats, short_fraction) or of `ModelParams`
    (e.g. mean_rate), overriding the preset. None values are ignored. Each session appears
    atomically (written aside, then renamed); an existing session folder is an error unless
    `overwrite`.
    """
    if not isinstance(mice, (int, np.integer)) or mice < 1:
        raise ConfigError(f"synthetic mice={mice!r}: expected an integer >= 1")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"synthetic seed={seed!r}: expected an integer >= 0")
    size_cfg, params = _resolve(preset, sizes)
    out = Path(out_dir)
    names = session_names(mice, seed, size_cfg, params)
    if not overwrite:
        for name in names:
            if (out / name).exists():
                raise NeurotwinError(
                    f"{out / name}: session folder already exists (pass overwrite=True / "
                    "--overwrite to replace it)"
                )
    if size_cfg.frames <= SKIP_FRAMES:
        logger.warning(
            "synthetic trials have %d frames: the Sensorium metrics skip the first %d",
            size_cfg.frames,
            SKIP_FRAMES,
        )
    out.mkdir(parents=True, exist_ok=True)
    shared = _shared_clips(seed, size_cfg)
    folders = []
    with _threads_for(size_cfg):
        for k, name in enumerate(names):
            mouse = _Mouse(seed, k, size_cfg, params, shared, progress)
            try:
                folders.append(_write_mouse(out, name, mouse, preset, mice))
            finally:
                mouse.bar.close()
    return folders


def _shared_clips(seed: int, s: SyntheticSizes) -> list[tuple[str, _Clip, int]]:
    """(tier, clip, repeats) of the oracle and test clips, the same for every mouse."""
    shared = []
    tiers = [(layout.ORACLE_TIER, s.oracle_clips, s.oracle_repeats)]
    tiers += [("live_test_main", s.test_clips, s.test_repeats)]
    tiers += [("final_test_main", s.test_clips, s.test_repeats)]
    for tier, n_clips, repeats in tiers:
        for _ in range(n_clips):
            key = (seed, _S_SHARED_CLIP, len(shared))
            shared.append((tier, _Clip(key, len(shared), _clip_length(key, s)), repeats))
    return shared


def _write_mouse(out: Path, name: str, mouse: _Mouse, preset: str, mice: int) -> Path:
    final = out / name
    staging = out / f".{name}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    session = layout.SessionArrays(
        tiers=mouse.tiers,
        unit_ids=mouse.unit_ids,
        coordinates=mouse.pop.coordinates,
        trials=_LazyTrials(mouse),
        statistics=_LazyStatistics(mouse),
        extra_meta={VIDEO_IDS_FILE: mouse.video_ids()},
        extra_data={layout.NOISELESS: _LazyNoiseless(mouse)},
    )
    mouse.spill_dir = out / f".{name}.noiseless"
    try:
        layout.write_session(staging, session)
        meta = _session_meta(mouse, preset, mice)
        tmp = staging / (layout.SESSION_META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, staging / layout.SESSION_META_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(mouse.spill_dir, ignore_errors=True)
    return final


def _session_meta(mouse: _Mouse, preset: str, mice: int) -> dict[str, Any]:
    s, p, pop = mouse.sizes, mouse.p, mouse.pop
    tiers, counts = np.unique(mouse.tiers, return_counts=True)
    lengths = np.array([c.length for c in mouse.clips])
    skip = SKIP_FRAMES if s.frames > SKIP_FRAMES else 0
    ceilings = {}
    for tier, acc in sorted(mouse.ceilings.items()):
        c = acc.result()
        ceilings[tier] = {"mean": float(c.mean()), "median": float(np.median(c))}
    median_exact = all(a.median_exact for a in mouse.stats.values())
    return {
        "source": "synthetic",
        "generator": "neurotwin.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": mouse.seed,
        "mouse_index": mouse.index,
        "mice": mice,
        "preset": preset,
        "sizes": dataclasses.asdict(s),
        "params": dataclasses.asdict(p),
        "frame_rate_hz": FRAME_RATE,
        "tiers": {str(t): int(n) for t, n in zip(tiers, counts)},
        "hidden_tiers": list(HIDDEN_TIERS),
        "short_trials": int((lengths < s.frames).sum()),
        "units": {
            "videos": "grey level 0..255",
            "responses": "counts x per-neuron scale (arbitrary units)",
            "behavior": ["pupil dilation (a.u.)", "running speed (cm/s)"],
            "pupil_center": "gaze x, y (eye-camera pixels)",
            "cell_motor_coordinates": "micrometres",
        },
        "shipped_statistics": {
            "computed_over": "train-tier trials, separately for every frame (as published)",
            "median": "exact" if median_exact else "over a subset of the training trials",
        },
        "extra_files": [f"data/{layout.NOISELESS}", f"meta/{VIDEO_IDS_FILE}"],
        "ceiling_correlation": {"skip_frames": skip, "by_tier": ceilings},
        "mouse": {
            "pupil_baseline": pop.behavior.pupil_baseline,
            "eye_center": list(pop.behavior.eye_center),
            "gaze_shift_px_per_eye_px": p.gaze_gain * s.width / REF_WIDTH,
            "cell_types": {
                name: int((pop.cell_type == i).sum())
                for i, name in enumerate(["simple", "complex", "center_surround"])
            },
            "retinotopy": mouse.maps,
        },
    }


def _session_folders(data_dir: Path) -> list[Path]:
    """Session folders under data_dir, as the reader sees them (sub-folders with data/, meta/)."""
    from neurotwin.data.sensorium import is_session_folder

    if not data_dir.is_dir():
        return []
    return sorted((d for d in data_dir.iterdir() if is_session_folder(d)), key=lambda d: d.name)


def ensure_synthetic(data_dir: str | Path, progress: bool = True) -> list[Path]:
    """Write the default synthetic dataset (preset "small", 3 mice, seed 0) into `data_dir` if it
    holds no session folder yet; returns the session folders found or written.

    Safe to call from several processes at once (a lock file serialises them, where available).
    """
    data_dir = Path(data_dir)
    existing = _session_folders(data_dir)
    if existing:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    with _lock(data_dir / ".synthetic.lock"):
        existing = _session_folders(data_dir)
        if existing:
            return existing
        logger.info("no session in %s: writing the built-in synthetic dataset", data_dir)
        folders = generate(data_dir, progress=progress)
        logger.info("wrote %d synthetic sessions to %s", len(folders), data_dir)
        return folders


@contextlib.contextmanager
def _lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

"""Natural-like movie clips: spatio-temporal 1/f noise, moving occluding objects, scene cuts.

Power falls with spatial frequency and the temporal bandwidth grows with spatial frequency, as in
natural movies; every mouse sees clips of the same statistics (oracle and test clips are shared).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft

from neurotwin.data.synthetic.params import REF_WIDTH, ModelParams


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

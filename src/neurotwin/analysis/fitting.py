"""Fits and indices shared by the analyses: 2D Gaussians, local-energy envelopes, vector-sum
selectivity, permutation p-values, interpolated peaks."""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

GAUSSIAN_FIELDS = ("amplitude", "center_x", "center_y", "sigma_x", "sigma_y", "angle_deg", "offset")


def gaussian_2d(params: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """amplitude * exp(-(u^2 / sx^2 + v^2 / sy^2) / 2) + offset, u along angle_deg from +x
    towards +y (pixel coordinates), v across it."""
    a, cx, cy, sx, sy, angle, offset = params
    t = math.radians(angle)
    dx, dy = x - cx, y - cy
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    return a * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)) + offset


def fit_gaussian_2d(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares 2D Gaussian fit of an (H, W) map with a positive or negative peak.

    Starts from the largest deviation from the median (its sign decides ON or OFF), with a width
    from the area above half that deviation, and fits the pixels within 3 such widths of it
    (a background of noise elsewhere cannot pull the fit); sigmas stay in [0.3, max(H, W) / 2]
    pixels and the centre on the screen. Returns the parameters (GAUSSIAN_FIELDS; sigma_x >=
    sigma_y) and R^2 over the fitted pixels; NaNs when it fails."""
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    nan = np.full(len(GAUSSIAN_FIELDS), np.nan)
    if not np.isfinite(image).all() or np.ptp(image) <= 0:
        return nan, np.nan
    base = float(np.median(image))
    dev = image - base
    peak = np.unravel_index(np.argmax(np.abs(dev)), image.shape)
    amp = float(dev[peak])
    above = (dev * np.sign(amp)) > 0.5 * abs(amp)
    s0 = max(0.7, math.sqrt(above.sum() / (2 * math.pi * math.log(2))))
    near = np.hypot(x - peak[1], y - peak[0]) <= max(3.0, 3.0 * s0)
    size = max(h, w) / 2
    lower = [-np.inf, -0.5, -0.5, 0.3, 0.3, -180.0, -np.inf]
    upper = [np.inf, w - 0.5, h - 0.5, size, size, 180.0, np.inf]
    start = np.array([amp, float(peak[1]), float(peak[0]), s0, s0, 0.0, base])
    start[3:5] = np.clip(start[3:5], 0.31, size - 0.01)
    xs, ys, values = x[near], y[near], image[near]
    try:
        fit = optimize.least_squares(
            lambda p: gaussian_2d(p, xs, ys) - values,
            start,
            bounds=(lower, upper),
            x_scale="jac",
            max_nfev=400,
        )
    except (ValueError, np.linalg.LinAlgError):
        return nan, np.nan
    p = fit.x.copy()
    if p[4] > p[3]:  # sigma_x the longer axis
        p[3], p[4], p[5] = p[4], p[3], p[5] + 90.0
    p[5] = (p[5] + 90.0) % 180.0 - 90.0
    ss = float(((values - values.mean()) ** 2).sum())
    r2 = 1.0 - float((fit.fun**2).sum()) / ss if ss > 0 else np.nan
    return p, r2


def _fit_chunk(images: np.ndarray) -> list[tuple[np.ndarray, float]]:
    return [fit_gaussian_2d(image) for image in images]


def fit_many(images: np.ndarray, parallel_from: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """fit_gaussian_2d of each (H, W) map of images (N, H, W): parameters (N, 7) and R^2 (N,);
    in worker processes (one per CPU core) from `parallel_from` maps on."""
    import os

    workers = min(os.cpu_count() or 1, 32)
    if len(images) < parallel_from or workers < 2:
        results = _fit_chunk(images)
    else:
        from concurrent.futures import ProcessPoolExecutor

        chunks = np.array_split(np.asarray(images), workers * 4)
        with ProcessPoolExecutor(workers) as pool:
            results = [r for part in pool.map(_fit_chunk, chunks) for r in part]
    params = np.stack([p for p, _ in results]) if results else np.zeros((0, 7))
    return params, np.array([r2 for _, r2 in results])


def local_energy(maps: np.ndarray) -> np.ndarray:
    """Amplitude of the monogenic signal of each (..., H, W) map, sqrt(f^2 + |R f|^2) with R the
    Riesz transform: the envelope of oscillating (Gabor-like) maps, and the map's own magnitude
    where it does not oscillate. Zero-padded to twice the size (no wrap-around)."""
    maps = np.asarray(maps, dtype=np.float64)
    h, w = maps.shape[-2:]
    ph, pw = 2 * h, 2 * w
    spectrum = np.fft.fft2(maps, s=(ph, pw))
    fy = np.fft.fftfreq(ph)[:, None]
    fx = np.fft.fftfreq(pw)[None, :]
    norm = np.hypot(fx, fy)
    norm[0, 0] = 1.0
    rx = np.fft.ifft2(spectrum * (-1j * fx / norm)).real[..., :h, :w]
    ry = np.fft.ifft2(spectrum * (-1j * fy / norm)).real[..., :h, :w]
    return np.sqrt(maps**2 + rx**2 + ry**2)


def vector_sums(curves: np.ndarray, directions_deg: np.ndarray) -> dict[str, np.ndarray]:
    """Vector-sum selectivity of tuning curves (..., D) over directions (D,) in degrees:
    OSI = |sum r e^{2i theta}| / sum r, DSI = |sum r e^{i theta}| / sum r (as ViV1T), preferred
    orientation (half the angle of the first sum, mod 180) and direction (angle of the second)."""
    theta = np.radians(np.asarray(directions_deg, dtype=np.float64))
    r = np.asarray(curves, dtype=np.float64)
    total = r.sum(-1)
    o = (r * np.exp(2j * theta)).sum(-1)
    d = (r * np.exp(1j * theta)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        osi = np.where(total > 0, np.abs(o) / total, np.nan)
        dsi = np.where(total > 0, np.abs(d) / total, np.nan)
    return {
        "osi": osi,
        "dsi": dsi,
        "orientation_deg": (np.degrees(np.angle(o)) / 2) % 180.0,
        "direction_deg": np.degrees(np.angle(d)) % 360.0,
    }


def permutation_p(
    samples: np.ndarray,
    directions_deg: np.ndarray,
    permutations: int,
    rng: np.random.Generator,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """p-values of OSI and DSI of samples (N, D, R) (R repeats per direction) against random
    relabelling of the D*R samples over directions: (1 + #{perm >= observed}) / (1 + P)."""
    n, d, r = samples.shape
    flat = samples.reshape(n, d * r)
    observed = vector_sums(samples.mean(-1), directions_deg)
    above_o = np.zeros(n)
    above_d = np.zeros(n)
    for start in range(0, permutations, chunk):
        k = min(chunk, permutations - start)
        perm = np.stack([rng.permutation(d * r) for _ in range(k)])  # (k, D*R)
        curves = flat[:, perm].reshape(n, k, d, r).mean(-1)
        v = vector_sums(curves, directions_deg)
        above_o += (v["osi"] >= observed["osi"][:, None] - 1e-12).sum(1)
        above_d += (v["dsi"] >= observed["dsi"][:, None] - 1e-12).sum(1)
    return (1 + above_o) / (1 + permutations), (1 + above_d) / (1 + permutations)


def peak_log_interpolated(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The peak of curves (N, K) sampled on a positive grid (K,), refined by a parabola through
    the best sample and its neighbours in log(grid); the grid's end where the peak is there."""
    values = np.asarray(values, dtype=np.float64)
    lg = np.log(np.asarray(grid, dtype=np.float64))
    best = np.nanargmax(np.where(np.isfinite(values), values, -np.inf), axis=1)
    out = lg[best].copy()
    inner = (best > 0) & (best < len(lg) - 1)
    i = np.flatnonzero(inner)
    if len(i):
        b = best[i]
        y0, y1, y2 = values[i, b - 1], values[i, b], values[i, b + 1]
        x0, x1, x2 = lg[b - 1], lg[b], lg[b + 1]
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        bb = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
        with np.errstate(invalid="ignore", divide="ignore"):
            vertex = np.where(a < 0, -bb / (2 * a), x1)
        out[i] = np.clip(vertex, x0, x2)
    return np.exp(out)

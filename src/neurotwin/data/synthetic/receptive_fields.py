"""Receptive fields of a synthetic population: where each neuron looks (a smooth retinotopic map
from cortical positions), its spatial filter, temporal filter, gains and surround, and the truth
table of those parameters in the session's pixel frame."""

from __future__ import annotations

from typing import Any

import numpy as np

from neurotwin.data.synthetic.behavior import MouseBehavior
from neurotwin.data.synthetic.params import REF_WIDTH, ModelParams, SyntheticSizes
from neurotwin.data.synthetic.population import Population, Surround

CELL_TYPES = ("simple", "complex", "center_surround")
# centre-surround cells: exp(-r^2 / (2 sigma^2 C)) - W exp(-r^2 / (2 sigma^2 S))
DOG_CENTER_VAR, DOG_SURROUND_VAR, DOG_WEIGHT = 0.36, 2.25, 0.3
SURROUND_HOLE = 1.2  # inner s.d. of a divisive surround's annulus / the centre's longer s.d.
SURROUND_ANGLES = (-30.0, 0.0, 30.0)  # degrees from the cell's orientation: pooled surround
SURROUND_POOL = (0.25, 0.5, 0.25)  # weights of the energies at those angles


def receptive_fields(center, sigma, aspect, freq, theta, phase, sign, cell_type, H, W):
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
    dog = np.exp(-r2 / (sig2 * f32(DOG_CENTER_VAR))) - f32(DOG_WEIGHT) * np.exp(
        -r2 / (sig2 * f32(DOG_SURROUND_VAR))
    )
    is_dog = col(cell_type == 2) > 0
    rf = np.where(is_dog, dog * col(sign), rf)
    n = len(center)
    rf, rf_q = rf.reshape(n, -1), rf_q.reshape(n, -1)
    rf = rf - rf.mean(1, keepdims=True) * (cell_type != 2)[:, None]  # Gabors: no DC response
    rf_q = rf_q - rf_q.mean(1, keepdims=True)
    rf /= np.linalg.norm(rf, axis=1, keepdims=True) + f32(1e-12)
    rf_q /= np.linalg.norm(rf_q, axis=1, keepdims=True) + f32(1e-12)
    return rf, rf_q


def make_population(
    rng: np.random.Generator,
    sizes: SyntheticSizes,
    p: ModelParams,
    surround_rng: np.random.Generator | None = None,
) -> tuple[Population, dict[str, Any]]:
    """One mouse's neurons (uncalibrated) and its retinotopic map. `surround_rng` (its own
    stream) draws the divisive surrounds when `p.surround_fraction` > 0."""
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
        rf[j], rf_q[j] = receptive_fields(
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
    behavior = MouseBehavior(
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
        rf_params={
            "sigma": sigma,
            "aspect": aspect,
            "freq": freq,
            "theta": theta,
            "phase": phase,
            "sign": sign,
        },
    )
    if p.surround_fraction > 0:
        if surround_rng is None:
            raise ValueError("surround_fraction > 0 needs its random stream (surround_rng)")
        pop.surround = make_surround(surround_rng, pop, sizes, p)
    maps = {
        "rotation_rad": float(angle),
        "magnification_ref_px_per_um": [float(m) for m in np.diag(mag)],
        "motor_offset_um": [float(o) for o in offset],
    }
    return pop, maps


def _pixel_grid(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Ref-px coordinates (x of the columns, y of the rows) of the pixel centres."""
    s = W / REF_WIDTH
    return (np.arange(W) + 0.5) / s, (np.arange(H) + 0.5) / s


def make_surround(
    rng: np.random.Generator, pop: Population, sizes: SyntheticSizes, p: ModelParams
) -> Surround | None:
    """Divisive surrounds for a fraction of the simple and complex cells: quadrature pairs of
    Gabors at the cell's frequency and at SURROUND_ANGLES around its orientation (broadly iso-
    tuned), under an annulus (outer s.d. surround_ratio x the centre's longer s.d., a hole of
    SURROUND_HOLE x it), each filter zero-mean and of unit norm."""
    N, H, W = sizes.neurons, sizes.height, sizes.width
    chosen = (rng.random(N) < p.surround_fraction) & (pop.cell_type != 2)
    ratio = rng.uniform(*p.surround_ratio, N)
    weight = rng.uniform(*p.surround_strength, N)
    index = np.flatnonzero(chosen)
    if not len(index):
        return None
    rp = pop.rf_params
    longer = rp["sigma"][index] / rp["aspect"][index]
    outer, inner = ratio[index] * longer, SURROUND_HOLE * longer
    gx, gy = _pixel_grid(H, W)
    dx = gx[None, None, :] - pop.rf_center[index, 0].astype(np.float64)[:, None, None]
    dy = gy[None, :, None] - pop.rf_center[index, 1].astype(np.float64)[:, None, None]
    r2 = dx**2 + dy**2
    envelope = np.exp(-r2 / (2 * outer[:, None, None] ** 2)) - np.exp(
        -r2 / (2 * inner[:, None, None] ** 2)
    )
    even, odd = [], []
    for angle in np.radians(SURROUND_ANGLES):
        theta = (rp["theta"][index] + angle)[:, None, None]
        carrier = (
            2 * np.pi * rp["freq"][index][:, None, None] * (dx * np.cos(theta) + dy * np.sin(theta))
        )
        for out, wave in ((even, np.cos(carrier)), (odd, np.sin(carrier))):
            f = (envelope * wave).reshape(len(index), -1)
            f = f - f.mean(1, keepdims=True)
            out.append((f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)).astype(np.float32))
    return Surround(
        index=index,
        rf=np.stack(even, 1),
        rf_quadrature=np.stack(odd, 1),
        pool=SURROUND_POOL,
        weight=weight[index],
        sigma=outer,
        inner_sigma=inner,
    )


RF_TRUTH_COLUMNS = {
    "center_x": "envelope centre, pixels (x = column index, pixel centres at integers), at the "
    "resting gaze (eye_center)",
    "center_y": "envelope centre, pixels (y = row index)",
    "orientation_deg": "orientation of the preferred grating's wave vector, degrees from +x "
    "towards +y, mod 180 (NaN: untuned centre-surround cell)",
    "spatial_frequency_cpp": "carrier frequency, cycles per pixel (NaN: centre-surround cell)",
    "preferred_sf_cpp": "spatial frequency of the full-field grating at the cell's orientation "
    "that its filter (complex: the quadrature pair's energy) responds to most on the pixel grid, "
    "cycles per pixel; below the carrier for small envelopes (NaN: centre-surround cell)",
    "sigma_px": "Gaussian envelope s.d. along the wave vector, pixels (centre-surround: the "
    "centre Gaussian's s.d.)",
    "sigma_orth_px": "envelope s.d. along the bars, pixels",
    "phase_rad": "carrier phase at the centre (simple cells; complex cells are phase-invariant)",
    "polarity": "+1 ON (brightening at the centre excites), -1 OFF, 0 phase-invariant",
    "cell_type": "simple | complex | center_surround",
    "surround": "none | linear (the centre-surround cell's subtracted Gaussian) | divisive "
    "(iso-oriented contrast-energy surround)",
    "surround_sigma_px": "s.d. of the surround Gaussian (divisive: the annulus's outer s.d.), "
    "pixels; NaN without surround",
    "surround_inner_sigma_px": "divisive surround: s.d. of the annulus's hole, pixels",
    "surround_strength": "linear: weight of the subtracted Gaussian; divisive: weight of the "
    "normalised surround energy in the divisor",
}


def preferred_sf(pop: Population, sizes: SyntheticSizes, chunk: int = 64) -> np.ndarray:
    """Per Gabor cell, the spatial frequency (cycles per pixel) of the full-field grating at its
    orientation that its filter (complex cells: the quadrature pair's energy) responds to most,
    on the pixel grid as the cell sees it: 48 frequencies from 0.01 to 0.5 cycles per pixel,
    refined by a parabola in log frequency. NaN for centre-surround cells."""
    H, W = sizes.height, sizes.width
    k = np.geomspace(0.01, 0.5, 48)
    y, x = np.mgrid[0:H, 0:W]
    theta = pop.rf_params["theta"]
    quad_of = np.full(pop.n_neurons, -1)
    quad_of[np.flatnonzero(pop.cell_type == 1)] = np.arange(int((pop.cell_type == 1).sum()))
    out = np.full(pop.n_neurons, np.nan)
    gabor = np.flatnonzero(pop.cell_type != 2)
    for start in range(0, len(gabor), chunk):
        idx = gabor[start : start + chunk]
        u = np.cos(theta[idx])[:, None] * x.ravel() + np.sin(theta[idx])[:, None] * y.ravel()
        wave = np.exp(2j * np.pi * k[None, :, None] * u[:, None, :]).astype(np.complex64)
        power = np.abs(np.einsum("np,nkp->nk", pop.rf[idx].astype(np.complex64), wave)) ** 2
        q = quad_of[idx]
        has_q = q >= 0
        if has_q.any():
            quad = pop.rf_quadrature[q[has_q]].astype(np.complex64)
            power[has_q] += np.abs(np.einsum("np,nkp->nk", quad, wave[has_q])) ** 2
        best = power.argmax(1)
        lg = np.log(k)
        inner = (best > 0) & (best < len(k) - 1)
        peak = lg[best]
        b = best[inner]
        rows = np.flatnonzero(inner)
        y0, y1, y2 = power[rows, b - 1], power[rows, b], power[rows, b + 1]
        step = lg[1] - lg[0]
        curvature = y0 - 2 * y1 + y2
        with np.errstate(invalid="ignore", divide="ignore"):
            offset = np.where(curvature < 0, 0.5 * (y0 - y2) / curvature, 0.0)
        peak[rows] = lg[b] + np.clip(offset, -0.5, 0.5) * step
        out[idx] = np.exp(peak)
    return out


def rf_truth(pop: Population, sizes: SyntheticSizes) -> dict[str, np.ndarray]:
    """Each neuron's receptive-field parameters in the session's pixel frame (RF_TRUTH_COLUMNS)."""
    s = sizes.width / REF_WIDTH  # pixels per ref px
    rp, kind, n = pop.rf_params, pop.cell_type, pop.n_neurons
    dog = kind == 2
    nan = np.full(n, np.nan)
    sigma, longer = rp["sigma"] * s, rp["sigma"] / rp["aspect"] * s
    polarity = np.where(kind == 1, 0.0, np.sign(np.cos(rp["phase"])))
    surround = np.where(dog, "linear", "none").astype("<U8")
    surround_sigma = np.where(dog, np.sqrt(DOG_SURROUND_VAR) * sigma, nan)
    inner = nan.copy()
    strength = np.where(dog, DOG_WEIGHT, nan)
    if pop.surround is not None:
        i = pop.surround.index
        surround[i] = "divisive"
        surround_sigma[i] = pop.surround.sigma * s
        inner[i] = pop.surround.inner_sigma * s
        strength[i] = pop.surround.weight
    table = {
        "center_x": pop.rf_center[:, 0].astype(np.float64) * s - 0.5,
        "center_y": pop.rf_center[:, 1].astype(np.float64) * s - 0.5,
        "orientation_deg": np.where(dog, np.nan, np.degrees(rp["theta"]) % 180.0),
        "spatial_frequency_cpp": np.where(dog, np.nan, rp["freq"] / s),
        "preferred_sf_cpp": preferred_sf(pop, sizes),
        "sigma_px": np.where(dog, np.sqrt(DOG_CENTER_VAR) * sigma, sigma),
        "sigma_orth_px": np.where(dog, np.sqrt(DOG_CENTER_VAR) * sigma, longer),
        "phase_rad": np.where(dog, np.nan, rp["phase"]),
        "polarity": np.where(dog, rp["sign"], polarity),
        "cell_type": np.array([CELL_TYPES[k] for k in kind], dtype="<U15"),
        "surround": surround,
        "surround_sigma_px": surround_sigma,
        "surround_inner_sigma_px": inner,
        "surround_strength": strength,
    }
    return {
        k: v if v.dtype.kind == "U" else np.asarray(v, dtype=np.float32) for k, v in table.items()
    }

"""Basis functions of the spike GLM: B-splines over the trial window, raised cosines over lags.

- `bspline_basis`: cubic B-splines with clamped, evenly spaced knots over the window, evaluated
  at bin centres (they sum to one at every bin, so a constant coefficient is a constant rate).
- `raised_cosine_basis`: Pillow et al. 2008 (Nature 454:995, the GLMspiketools
  `makeBasis_PostSpike` construction): bumps 0.5 * (1 + cos(x)) equally spaced in a log-stretched
  time log(tau + stretch), each spanning four times the spacing of the centres, peaks from
  `peaks_ms[0]` to `peaks_ms[1]`; fine at short lags, coarse at long ones. Evaluated at lags of
  1..L bins (a spike never affects its own bin), L the lag where the last bump ends.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import BSpline


def bspline_basis(n_bins: int, n_basis: int, degree: int = 3) -> np.ndarray:
    """(n_bins, n_basis) clamped B-splines over [0, n_bins) at bin centres."""
    if n_basis < 1:
        raise ValueError(f"n_basis must be >= 1, got {n_basis}")
    degree = min(degree, n_basis - 1)
    if degree == 0 and n_basis == 1:
        return np.ones((n_bins, 1))
    inner = np.linspace(0.0, 1.0, n_basis - degree + 1)
    knots = np.concatenate([np.zeros(degree), inner, np.ones(degree)])
    x = (np.arange(n_bins) + 0.5) / n_bins
    return BSpline.design_matrix(x, knots, degree).toarray()


def raised_cosine_basis(
    n_basis: int, peaks_ms: tuple[float, float], stretch_ms: float, bin_ms: float
) -> np.ndarray:
    """(L, n_basis) raised cosines on log(tau + stretch); row k is lag (k + 1) * bin_ms."""
    if n_basis < 1:
        raise ValueError(f"n_basis must be >= 1, got {n_basis}")
    first, last = float(peaks_ms[0]), float(peaks_ms[1])
    if not 0 <= first <= last:
        raise ValueError(f"peaks must satisfy 0 <= first <= last, got {peaks_ms}")
    if stretch_ms <= 0:
        raise ValueError(f"stretch must be > 0, got {stretch_ms}")
    lo, hi = math.log(first + stretch_ms), math.log(last + stretch_ms)
    spacing = (hi - lo) / (n_basis - 1) if n_basis > 1 else max(hi - lo, math.log(2.0))
    centres = lo + spacing * np.arange(n_basis)
    end_ms = math.exp(centres[-1] + 2 * spacing) - stretch_ms
    n_lags = max(1, int(math.floor(end_ms / bin_ms)))
    lags = bin_ms * np.arange(1, n_lags + 1)
    x = (np.log(lags + stretch_ms)[:, None] - centres[None, :]) * math.pi / (2 * spacing)
    return 0.5 * (1.0 + np.cos(np.clip(x, -math.pi, math.pi)))

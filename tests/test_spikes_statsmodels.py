"""The GLM's coefficients match an independent Poisson GLM fit (statsmodels IRLS) to 1e-4.

Small design: one session, two populations of one unit each (so the low-rank coupling is the
plain linear filter send * receive * beta), two conditions. The statsmodels design is built
here from the definitions (B-splines over the window per condition, Pillow raised cosines on
lags 1..L, causal sums written out lag by lag), not with neurotwin's code, and fitted unit by
unit; neurotwin fits both units at once with full-batch L-BFGS in float64, penalties off.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.interpolate import BSpline

from neurotwin.config import from_dict
from neurotwin.data import synthetic_spikes
from neurotwin.training.spikes import SpikeConfig, fit

sm = pytest.importorskip("statsmodels.api")
pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-4
STIM_BASIS, HIST_BASIS, COUP_BASIS = 5, 3, 3


def bsplines(n_bins: int, n_basis: int) -> np.ndarray:
    degree = 3
    knots = np.r_[np.zeros(degree), np.linspace(0, 1, n_basis - degree + 1), np.ones(degree)]
    x = (np.arange(n_bins) + 0.5) / n_bins
    return BSpline.design_matrix(x, knots, degree).toarray()


def raised_cosines(n: int, first: float, last: float, stretch: float) -> np.ndarray:
    lo, hi = math.log(first + stretch), math.log(last + stretch)
    spacing = (hi - lo) / (n - 1)
    centres = lo + spacing * np.arange(n)
    n_lags = int(math.floor(math.exp(centres[-1] + 2 * spacing) - stretch))
    lags = np.arange(1, n_lags + 1, dtype=np.float64)
    rows = []
    for tau in lags:
        x = (math.log(tau + stretch) - centres) * math.pi / (2 * spacing)
        rows.append(0.5 * (1 + np.cos(np.clip(x, -math.pi, math.pi))))
    return np.array(rows)


def lagged(x: np.ndarray, basis: np.ndarray, history: int, n_bins: int) -> np.ndarray:
    """(trials, n_bins, K): sum_tau basis[tau - 1] x[t - tau] for window bins t."""
    out = np.zeros((x.shape[0], n_bins, basis.shape[1]))
    for tau in range(1, basis.shape[0] + 1):
        out += x[:, history - tau : history - tau + n_bins, None] * basis[tau - 1]
    return out


def test_glm_matches_statsmodels(tmp_path):
    synthetic_spikes.generate(
        tmp_path / "data",
        sessions=1,
        seed=3,
        units=1,
        trials=80,
        conditions=2,
        duration_ms=200,
        burn_in_ms=60,
        rate_hz=40.0,
        latent_std=0.0,
        couplings={("A", "B"): (0.5, 4.0)},
    )
    config = from_dict(
        {
            "data": {
                "data_dir": str(tmp_path / "data"),
                "history_ms": 40,
                "batch_size": 1000,
                "val_fraction": 0.0,  # every trial trains: the same data as statsmodels
                "test_fraction": 0.0,
            },
            "model": {
                "name": "glm",
                "glm": {
                    "stimulus_basis": STIM_BASIS,
                    "history_basis": HIST_BASIS,
                    "history_peaks_ms": [1, 5],
                    "history_stretch_ms": 1.0,
                    "coupling_basis": COUP_BASIS,
                    "coupling_peaks_ms": [1, 8],
                    "coupling_stretch_ms": 2.0,
                    "l2": 0.0,
                    "smoothness": 0.0,
                },
            },
            "train": {
                "optimizer": "lbfgs",
                "epochs": 3,
                "lbfgs_iterations": 100,
                "precision": "float64",
                "lr_patience": 100,
            },
            "run": {"output_dir": str(tmp_path / "run"), "device": "cpu", "verbose": 0},
        },
        cls=SpikeConfig,
    )
    task = fit(config)["task"]
    data, model = task.data, task.model
    name = data.names[0]
    key = model.keys[name]
    batch = next(data.batches("train"))
    counts = batch.spikes.dense().astype(np.float64)
    h, t = data.n_history, data.n_bins
    stim_basis = bsplines(t, STIM_BASIS)
    hist_basis = raised_cosines(HIST_BASIS, 1, 5, 1.0)
    coup_basis = raised_cosines(COUP_BASIS, 1, 8, 2.0)
    n_cond = len(data.sessions[name].conditions)
    coupling = model.coupling
    pairs = coupling.pairs[key]  # (source, target) population indices
    send, receive = (w.detach() for w in coupling.weights(key))
    for unit in range(2):  # unit 0 in A, unit 1 in B: one unit per population
        other = 1 - unit
        stim = np.zeros((counts.shape[0], t, n_cond * STIM_BASIS))
        for c in range(n_cond):
            stim[batch.condition == c, :, c * STIM_BASIS : (c + 1) * STIM_BASIS] = stim_basis
        design = np.concatenate(
            [
                stim,
                lagged(counts[:, unit], hist_basis, h, t),
                lagged(counts[:, other], coup_basis, h, t),
            ],
            axis=2,
        ).reshape(-1, n_cond * STIM_BASIS + HIST_BASIS + COUP_BASIS)
        y = counts[:, unit, h:].reshape(-1)
        ref = sm.GLM(y, design, family=sm.families.Poisson()).fit(tol=1e-12, maxiter=200).params
        ours_stim = model.time.coef[key][unit].detach().numpy().reshape(-1)
        ours_hist = model.history.coef[key][unit].detach().numpy()
        k = pairs.index((other, unit))
        effective = send[other, k, 0] * receive[unit, k, 0] * coupling.beta[key][k, 0]
        ours = np.concatenate([ours_stim, ours_hist, effective.detach().numpy()])
        np.testing.assert_allclose(ours, ref, atol=TOLERANCE, rtol=0)

"""Ground truth: the GLM recovers the simulator's coupling (direction, peak lag) and finds none
where there is none; the GLM-Transformer's latent follows the simulator's per-trial gain.

Simulator (neurotwin.data.synthetic_spikes): populations A and B, coupling A -> B only, a
gamma-shaped filter of amplitude 0.2 (log-rate change per source spike, averaged over source and
target units) peaking at 6 ms; self-history (refractoriness); a smooth, condition-tuned
stimulus response. Tolerances (stated here, checked below):
- A -> B: the fitted mean filter peaks within 2 ms of 6 ms, its peak within 30% of 0.2, and its
  95% band excludes 0 at the peak;
- B -> A (no coupling): |filter| stays below 0.3 x the fitted A -> B peak at every lag. Not
  zero: on these data the fitted B -> A filter has a small positive bump at lags of 1-4 ms,
  0.02-0.05 (2-4 of its standard errors), which the data's own shuffle-corrected B -> A
  cross-covariance does not show; over simulator seeds 1, 3 and 4 it was 0.18-0.23 of the
  A -> B peak (see the report of issue 18).
- VAE: |correlation| between the posterior-mean latent and the true gain >= 0.8 on held-out
  (validation + test) trials.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurotwin.config import from_dict
from neurotwin.data import synthetic_spikes
from neurotwin.predict_spikes import write_outputs
from neurotwin.training.spikes import SpikeConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")

TRUE_PEAK_MS, TRUE_AMPLITUDE = 6.0, 0.2


def _config(data_dir, out, model: dict, train: dict, batch_size: int) -> SpikeConfig:
    return from_dict(
        {
            "data": {"data_dir": str(data_dir), "batch_size": batch_size},
            "model": model,
            "train": train,
            "run": {"output_dir": str(out), "device": "cpu", "verbose": 0, "seed": 0},
        },
        cls=SpikeConfig,
    )


@pytest.fixture(scope="module")
def glm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("glm")
    synthetic_spikes.generate(
        root / "data",
        sessions=1,
        seed=1,
        units=16,
        trials=260,
        duration_ms=300,
        burn_in_ms=150,
        latent_std=0.0,
        response_ms=30.0,
        couplings={("A", "B"): (TRUE_AMPLITUDE, TRUE_PEAK_MS)},
    )
    config = _config(
        root / "data",
        root / "run",
        {"name": "glm"},
        # L-BFGS to (near) convergence, keeping the last weights: the penalised MLE
        {"optimizer": "lbfgs", "epochs": 10, "lr_patience": 100, "restore_best": False},
        batch_size=512,
    )
    result = fit(config)
    write_outputs(result["task"], root / "run", result["best_epoch"])
    return pd.read_parquet(root / "run" / "couplings.parquet")


def _pair(couplings: pd.DataFrame, source: str, target: str) -> pd.DataFrame:
    return couplings[(couplings["source"] == source) & (couplings["target"] == target)]


def test_glm_recovers_direction_and_peak_lag(glm_run):
    ab = _pair(glm_run, "A", "B")
    peak = ab.iloc[int(np.argmax(ab["value"].to_numpy()))]
    assert abs(peak["lag_ms"] - TRUE_PEAK_MS) <= 2.0
    assert abs(peak["value"] - TRUE_AMPLITUDE) <= 0.3 * TRUE_AMPLITUDE
    assert peak["lower"] > 0


def test_glm_finds_no_coupling_where_there_is_none(glm_run):
    ab_peak = _pair(glm_run, "A", "B")["value"].max()
    ba = _pair(glm_run, "B", "A")
    ratio = np.abs(ba["value"]).max() / ab_peak
    assert ratio < 0.3, ratio
    assert set(glm_run[["source", "target"]].itertuples(index=False, name=None)) == {
        ("A", "B"),
        ("B", "A"),
    }


def test_vae_latent_follows_the_true_gain(tmp_path):
    synthetic_spikes.generate(
        tmp_path / "data",
        sessions=1,
        seed=2,
        units=12,
        trials=200,
        duration_ms=300,
        burn_in_ms=150,
        latent_std=0.5,
    )
    model = {
        "name": "glm_vae",
        "glm": {"coupling": False},
        "vae": {"latent_dim": 1, "d_model": 32, "ff_dim": 64, "layers": 1, "kl_warmup_epochs": 3},
    }
    train = {"epochs": 12, "lr": 0.02, "vae_lr": 0.003, "lr_patience": 4}
    config = _config(tmp_path / "data", tmp_path / "run", model, train, batch_size=32)
    result = fit(config)
    write_outputs(result["task"], tmp_path / "run", result["best_epoch"])
    latents = pd.read_parquet(tmp_path / "run" / "latents.parquet")
    truth = pd.read_parquet(tmp_path / "data" / "session_0" / "truth.parquet")
    merged = latents.merge(truth, on="trial_id")
    held_out = merged[merged["split"] != "train"]
    for column in ("z0", "z1"):  # one latent per population
        r = np.corrcoef(held_out[column], held_out["gain"])[0, 1]
        assert abs(r) >= 0.8, (column, r)

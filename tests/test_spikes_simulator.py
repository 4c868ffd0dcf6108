"""The simulator writes the spike table layout with its truth, and its spikes carry that truth:
the A -> B cross-covariance peaks near the coupling's peak lag (B -> A has none), and trial
spike counts follow the per-trial gain."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from neurotwin.cli import data as data_cli
from neurotwin.data import synthetic_spikes
from neurotwin.data.spikes import read_session
from neurotwin.data.spikes.loader import SpikeData, SpikeDataOptions


def test_layout_truth_and_determinism(tmp_path):
    a = synthetic_spikes.generate(tmp_path / "a", sessions=2, seed=4, units=5, trials=20)
    b = synthetic_spikes.generate(tmp_path / "b", sessions=2, seed=4, units=5, trials=20)
    assert [p.name for p in a] == ["session_0", "session_1"]
    s = read_session(a[0])
    assert s.populations == ["A", "B"] and s.population_sizes == [5, 5]
    assert s.trials["condition"].nunique() == 4 and len(s.trials) == 20
    truth = s.meta["truth"]["couplings"]
    assert [(c["source"], c["target"]) for c in truth] == [("A", "B")]
    lags, f = np.asarray(truth[0]["lags_ms"]), np.asarray(truth[0]["filter"])
    assert lags[np.argmax(f)] == 6.0 and np.isclose(f.max(), 0.2)
    gain = pd.read_parquet(a[0] / synthetic_spikes.TRUTH_FILE)
    assert list(gain["trial_id"]) == list(range(20)) and gain["gain"].std() > 0
    for name in ("spikes.parquet", "trials.parquet", "units.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(a[0] / name), pd.read_parquet(b[0] / name))
    assert not pd.read_parquet(a[0] / "spikes.parquet").equals(
        pd.read_parquet(a[1] / "spikes.parquet")
    )


def test_cli_writes_sessions(tmp_path, capsys):
    code = data_cli.main(
        [
            "synthetic-spikes",
            "--out",
            str(tmp_path),
            "--sessions",
            "1",
            "--units",
            "3",
            "--trials",
            "8",
            "--coupling",
            "B",
            "A",
            "0.3",
            "4",
        ]
    )
    assert code == 0
    meta = json.loads((tmp_path / "session_0" / "meta.json").read_text())
    assert meta["truth"]["couplings"][0]["source"] == "B"
    assert meta["truth"]["couplings"][0]["peak_ms"] == 4.0


def test_spikes_carry_the_truth(tmp_path):
    synthetic_spikes.generate(
        tmp_path,
        sessions=1,
        seed=7,
        units=20,
        trials=200,
        duration_ms=300,
        burn_in_ms=100,
        couplings={("A", "B"): (0.3, 6.0)},
        latent_std=0.5,
    )
    data = SpikeData(
        SpikeDataOptions(data_dir=str(tmp_path), val_fraction=0, test_fraction=0, batch_size=500)
    )
    batch = next(data.batches("train"))
    counts = batch.spikes.dense()[:, :, data.n_history :]
    a, b = counts[:, :20].sum(1), counts[:, 20:].sum(1)

    def cross(x, y, lag):  # mean x(t) y(t + lag), minus the same with trials of other order
        same = (x[:, : x.shape[1] - lag] * y[:, lag:]).mean()
        shuffled = (x[:, : x.shape[1] - lag] * np.roll(y, 1, axis=0)[:, lag:]).mean()
        return same - shuffled

    lags = np.arange(1, 16)
    forward = np.array([cross(a, b, k) for k in lags])
    backward = np.array([cross(b, a, k) for k in lags])
    assert abs(lags[np.argmax(forward)] - 6) <= 2
    # the per-trial gain makes both directions share a floor; only A -> B rises above it
    assert forward.max() - np.median(forward) > 4 * (backward.max() - np.median(backward))
    gain = pd.read_parquet(tmp_path / "session_0" / synthetic_spikes.TRUTH_FILE)
    totals = pd.Series(counts.sum((1, 2)), index=batch.trial_ids)
    r = np.corrcoef(totals.loc[gain["trial_id"]].to_numpy(), gain["gain"])[0, 1]
    assert r > 0.7

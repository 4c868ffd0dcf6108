"""predict.py on a tiny trained run over small synthetic mice: output files (ids, shapes, frame
counts), metrics against an independent recomputation, hidden-response tiers, the submission
layout, and every bad-input case (nothing partial left behind)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from native_fixture import write_native_dataset
from neurotwin import metrics as M
from neurotwin import predict as P
from neurotwin.cli import predict as cli
from neurotwin.config import Config, from_dict, save_yaml, to_dict
from neurotwin.data import native
from neurotwin.data.native import NativeSession
from neurotwin.errors import CheckpointError, DataFormatError
from neurotwin.run import PREDICTIONS_DIR
from neurotwin.training.video import train as train_video

TINY = dict(
    neurons=10,
    train_trials=6,
    oracle_clips=2,
    oracle_repeats=3,
    test_clips=1,
    test_repeats=2,
    frames=64,
    height=10,
    width=16,
)
MODEL = {
    "core": {
        "name": "conv3d",
        "core_num_layers": 1,
        "core_hidden_dim": 4,
        "core_spatial_input_kernel": 5,
        "core_temporal_input_kernel": 5,
    },
    "readout": {"name": "gaussian"},
    "shifter": {"shifter_mode": 1},
}


def _config(data_dir: Path, out: Path) -> Config:
    return from_dict(
        {
            "data": {
                "data_dir": str(data_dir),
                "crop_frame": 40,
                "batch_size": 4,
                "num_workers": 0,
                "transform_output": 1,
            },
            "model": MODEL,
            "train": {"epochs": 1, "lr": 0.005},
            "run": {"output_dir": str(out), "device": "cpu", "verbose": 0},
        }
    )


def _train(config: Config) -> None:
    """One epoch with the training code; by hand (build_model + checkpoint) without it."""
    try:
        from neurotwin.training.video import train
    except ImportError:
        train = None
    if train is not None:
        train(config)
        return
    from neurotwin.data import loaders  # pragma: no cover - before training landed
    from neurotwin.models.model import build_model

    specs = loaders.session_specs(config.data)
    shape = NativeSession(next(iter(Path(config.data.data_dir).iterdir()))).frame_shape
    model = build_model(config.model, specs, frame_shape=shape)
    out = Path(config.run.output_dir)
    save_yaml(config, out / "config.yaml")
    state = {
        "model": model.state_dict(),
        "epoch": 1,
        "config": to_dict(config),
        "sessions": {
            s: {"n_neurons": v["n_neurons"], "unit_ids": [int(u) for u in v["unit_ids"]]}
            for s, v in specs.items()
        },
    }
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in ("best", "last"):
        torch.save(state, out / "checkpoints" / f"{name}.pt")


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> dict:
    from neurotwin.data import synthetic

    root = tmp_path_factory.mktemp("predict")
    data_dir = root / "data"
    synthetic.generate(data_dir, mice=2, preset="small", seed=3, progress=False, **TINY)
    out = root / "run"
    _train(_config(data_dir, out))
    assert (out / "checkpoints" / "best.pt").is_file()
    result = P.predict_run(out, verbose=0)
    return {"data": data_dir, "run": out, "result": result, "root": root}


def _copy_run(run: dict, name: str) -> Path:
    dst = run["root"] / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(run["run"], dst, ignore=shutil.ignore_patterns("predictions"))
    return dst


def _no_leftovers(folder: Path) -> None:
    assert not (folder / PREDICTIONS_DIR).exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".predictions")]


def _sessions(run: dict) -> dict[str, NativeSession]:
    return {p.name: NativeSession(p) for p in sorted(run["data"].iterdir())}


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------


def test_metrics_json_shape(run):
    result = json.loads((run["run"] / "predictions" / "metrics.json").read_text())
    assert result == run["result"]
    assert set(result) == {"sessions", "mean"}
    sessions = _sessions(run)
    assert set(result["sessions"]) == set(sessions)
    keys = {*P.METRIC_KEYS, "n_trials", "n_neurons"}
    required = {"single_trial_correlation", "correlation_to_average", "feve", "n_trials"}
    for name, by_tier in result["sessions"].items():
        s = sessions[name]
        expected_tiers = [t for t in native.TIERS if t in s.tier_counts and t != "none"]
        assert list(by_tier) == expected_tiers
        for tier, m in by_tier.items():
            assert set(m) == keys and required <= set(m)
            assert m["n_trials"] == s.tier_counts[tier]
            assert m["n_neurons"] == s.n_neurons
            if s.responses_hidden(tier):
                assert all(m[k] is None for k in P.METRIC_KEYS), tier
            else:
                assert isinstance(m["single_trial_correlation"], float)
                assert isinstance(m["ceiling_correlation"], float)  # synthetic: ceiling known
                assert m["fraction_of_ceiling"] == pytest.approx(
                    m["single_trial_correlation"] / m["ceiling_correlation"]
                )
        assert by_tier["oracle"]["correlation_to_average"] is not None
        assert by_tier["train"]["correlation_to_average"] is None  # no repeats in train
    for tier, m in result["mean"].items():
        assert set(m) == keys
        values = [
            by_tier[tier]["single_trial_correlation"] for by_tier in result["sessions"].values()
        ]
        if all(v is None for v in values):
            assert m["single_trial_correlation"] is None
        else:
            assert m["single_trial_correlation"] == pytest.approx(np.mean(values))
        assert m["n_trials"] == sum(b[tier]["n_trials"] for b in result["sessions"].values())


def test_npz_contents_and_metrics_recomputed(run):
    result = run["result"]
    for name, s in _sessions(run).items():
        for tier in result["sessions"][name]:
            z = np.load(run["run"] / "predictions" / name / f"{tier}.npz")
            ids = s.trial_ids(tier)
            np.testing.assert_array_equal(z["trial_ids"], ids)
            np.testing.assert_array_equal(z["unit_ids"], s.unit_ids)
            lengths = np.array([s.trial_length(t) for t in ids])
            np.testing.assert_array_equal(z["frame_counts"], lengths)
            pred = z["predictions"]
            assert pred.shape == (len(ids), s.n_neurons, lengths.max())
            assert str(z["session"]) == name and str(z["tier"]) == tier
            for i, n in enumerate(lengths):
                assert np.isnan(pred[i, :, n:]).all()
                assert np.isfinite(pred[i, :, :n]).all()
            # trials of one clip share clip_ids: the same partition as the generator's video ids
            video_ids = np.load(s.path / "meta" / "trials" / "video_ids.npy")[ids]
            pairs = {(int(a), int(b)) for a, b in zip(z["clip_ids"], video_ids)}
            assert len(pairs) == len(set(z["clip_ids"].tolist())) == len(set(video_ids.tolist()))
            if s.responses_hidden(tier):
                continue
            # the metrics from the written predictions and the raw responses (original units)
            resp = [s.load_trial(t)["responses"][:, :n] for t, n in zip(ids, lengths)]
            preds = [pred[i, :, :n] for i, n in enumerate(lengths)]
            groups = M.group_repeats(z["clip_ids"].tolist())
            m = result["sessions"][name][tier]
            assert m["single_trial_correlation"] == pytest.approx(
                M.single_trial_correlation(resp, preds), abs=1e-6
            )
            c2a = M.correlation_to_average(resp, preds, groups)
            assert m["correlation_to_average"] == (
                None if c2a is None else pytest.approx(c2a, abs=1e-6)
            )
            noiseless = [s.load_noiseless(t)[:, :n] for t, n in zip(ids, lengths)]
            assert m["ceiling_correlation"] == pytest.approx(
                M.single_trial_correlation(resp, noiseless), abs=1e-6
            )
            # and the generator's own ceiling (an independent implementation) agrees
            from neurotwin.data.synthetic import ceiling_correlation

            ceiling = ceiling_correlation(noiseless, resp, skip_frames=M.SKIP_FRAMES).mean()
            assert m["ceiling_correlation"] == pytest.approx(ceiling, abs=1e-6)


def test_predictions_are_the_model_output_in_original_units(run):
    config, state, path = P.load_run(run["run"], "best")
    name, s = next(iter(_sessions(run).items()))
    sessions = P.open_sessions(config, list(state["sessions"]), state)
    model = P.build(config, state, sessions, path).eval()
    from neurotwin.data.dataset import SessionDataset

    ds = SessionDataset(
        s,
        "oracle",
        transform_input=config.data.transform_input,
        transform_output=config.data.transform_output,
        statistics=s.statistics(),
    )
    item = ds[0]
    with torch.no_grad():
        rates = model(item["video"][None], name, item["behavior"][None], item["pupil_center"][None])
    expected = ds.output_transform.inverse(rates)[0].numpy()
    z = np.load(run["run"] / "predictions" / name / "oracle.npz")
    got = z["predictions"][0, :, : z["frame_counts"][0]]
    np.testing.assert_allclose(got[:, -expected.shape[-1] :], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, rates[0].numpy())  # transform_output 1: r / std undone


def test_submission_csv_layout(run):
    path = run["run"] / "predictions" / "submission_live_test_main.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["mouse", "trial_indices", "prediction", "neuron_ids"]
    sessions = _sessions(run)
    expected = [(n, int(t)) for n, s in sessions.items() for t in s.trial_ids("live_test_main")]
    assert [(r["mouse"], int(r["trial_indices"])) for r in rows] == expected
    for r in rows:
        s = sessions[r["mouse"]]
        trial = int(r["trial_indices"])
        pred = np.array(json.loads(r["prediction"]))
        assert pred.shape == (s.n_neurons, s.trial_length(trial) - M.SKIP_FRAMES)
        assert json.loads(r["neuron_ids"]) == s.unit_ids.tolist()
        z = np.load(run["run"] / "predictions" / r["mouse"] / "live_test_main.npz")
        i = int(np.flatnonzero(z["trial_ids"] == trial)[0])
        n = z["frame_counts"][i]
        np.testing.assert_allclose(pred, z["predictions"][i, :, M.SKIP_FRAMES : n], rtol=1e-5)
    # the hidden tier gets a submission file too
    assert (run["run"] / "predictions" / "submission_final_test_main.csv").is_file()
    assert not (run["run"] / "predictions" / "submission_oracle.csv").exists()


def test_metrics_csv_rows(run):
    with open(run["run"] / "predictions" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    result = run["result"]
    n = sum(len(b) for b in result["sessions"].values()) + len(result["mean"])
    assert len(rows) == n
    assert {r["session"] for r in rows} == {*result["sessions"], "mean"}
    hidden = [r for r in rows if r["tier"] == "final_test_main"]
    assert hidden and all(r["single_trial_correlation"] == "" for r in hidden)


def test_cli_tiers_checkpoint_and_table(run, capsys):
    out = _copy_run(run, "cli_run")
    assert cli.main(["--output_dir", str(out), "--checkpoint", "last", "--tiers", "oracle",
                     "final_test_main", "--batch_size", "2"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "no ground truth" in table and "oracle" in table and "FEVE" in table
    result = json.loads((out / "predictions" / "metrics.json").read_text())
    for by_tier in result["sessions"].values():
        assert list(by_tier) == ["oracle", "final_test_main"]
    # batch size and checkpoint name change nothing here (best == last after 1 epoch)
    for name, by_tier in result["sessions"].items():
        for tier, m in by_tier.items():
            ref = run["result"]["sessions"][name][tier]
            for k, v in m.items():
                assert v == (None if ref[k] is None else pytest.approx(ref[k], abs=1e-5)), k
    # a second run replaces the folder in one step
    assert cli.main(["--output_dir", str(out), "--tiers", "live_test_main", "--verbose", "0"]) == 0
    result = json.loads((out / "predictions" / "metrics.json").read_text())
    assert all(list(b) == ["live_test_main"] for b in result["sessions"].values())
    assert not (out / "predictions" / next(iter(result["sessions"])) / "oracle.npz").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".predictions")]


def test_model_output_shorter_than_the_trial_is_aligned_to_the_end(run, monkeypatch):
    out = _copy_run(run, "short_run")
    build = P.build
    cut = 5

    class Shorter(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(*args)[..., cut:]

    monkeypatch.setattr(P, "build", lambda *a: Shorter(build(*a)))
    result = P.predict_run(out, tiers=["oracle"], verbose=0)
    name = next(iter(result["sessions"]))
    z_short = np.load(out / "predictions" / name / "oracle.npz")
    z_full = np.load(run["run"] / "predictions" / name / "oracle.npz")
    assert np.isnan(z_short["predictions"][:, :, :cut]).all()
    np.testing.assert_allclose(
        z_short["predictions"][:, :, cut:], z_full["predictions"][:, :, cut:], rtol=1e-5
    )
    m = result["sessions"][name]["oracle"]
    # the first 50 frames are skipped anyway, so the metrics do not change
    assert m["single_trial_correlation"] == pytest.approx(
        run["result"]["sessions"][name]["oracle"]["single_trial_correlation"], abs=1e-6
    )


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def _fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("predict.py: error:")
    return err


def test_missing_checkpoint(run, capsys):
    out = _copy_run(run, "no_ckpt")
    (out / "checkpoints" / "best.pt").unlink()
    err = _fails(["--output_dir", str(out), "--verbose", "0"], capsys)
    assert "best.pt" in err and "not found" in err
    _no_leftovers(out)
    with pytest.raises(CheckpointError):
        P.predict_run(out, checkpoint=out / "elsewhere.pt", verbose=0)
    _no_leftovers(out)


def test_missing_run_folder_and_config(run, capsys):
    err = _fails(["--output_dir", str(run["root"] / "nothing_here")], capsys)
    assert "nothing_here" in err
    out = _copy_run(run, "no_config")
    (out / "config.yaml").unlink()
    err = _fails(["--output_dir", str(out)], capsys)
    assert "config.yaml" in err
    _no_leftovers(out)


def test_unknown_tier_and_device(run, capsys):
    out = _copy_run(run, "bad_tier")
    err = _fails(["--output_dir", str(out), "--tiers", "live_test_bonus", "--verbose", "0"], capsys)
    assert "live_test_bonus" in err and "oracle" in err
    err = _fails(["--output_dir", str(out), "--device", "cuda:99", "--verbose", "0"], capsys)
    assert "cuda:99" in err
    _no_leftovers(out)


def test_corrupt_checkpoint(run, capsys):
    out = _copy_run(run, "corrupt")
    path = out / "checkpoints" / "best.pt"
    path.write_bytes(path.read_bytes()[:200])
    err = _fails(["--output_dir", str(out), "--verbose", "0"], capsys)
    assert "best.pt" in err and "truncated" in err
    _no_leftovers(out)


def test_checkpoint_of_another_model_config(run, capsys):
    out = _copy_run(run, "other_model")
    values = yaml.safe_load((out / "config.yaml").read_text())
    values["model"]["core"]["core_hidden_dim"] = 6
    values["model"]["shifter"]["shifter_mode"] = 0
    (out / "config.yaml").write_text(yaml.safe_dump(values))
    err = _fails(["--output_dir", str(out), "--verbose", "0"], capsys)
    assert "does not match the model" in err
    assert "unexpected keys shifters." in err  # the checkpoint has shifters, the model none
    assert "shape mismatch core." in err and "(4," in err and "(6," in err
    _no_leftovers(out)


def test_data_folder_without_the_trained_sessions(run, capsys):
    out = _copy_run(run, "other_data")
    data = run["root"] / "partial_data"
    if not data.exists():
        first = sorted(run["data"].iterdir())[0]
        shutil.copytree(first, data / first.name)
    err = _fails(["--output_dir", str(out), "--data_dir", str(data), "--verbose", "0"], capsys)
    missing = sorted(run["data"].iterdir())[1].name
    assert missing in err and "trained on" in err
    _no_leftovers(out)
    with pytest.raises(DataFormatError):
        P.predict_run(out, data_dir=run["root"] / "no_such_folder", verbose=0)
    _no_leftovers(out)


def test_failure_keeps_the_previous_predictions_and_leaves_nothing_partial(run, monkeypatch):
    out = _copy_run(run, "keep_previous")
    P.predict_run(out, tiers=["final_test_main"], verbose=0)
    before = (out / "predictions" / "metrics.json").read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(P, "write_metrics", boom)
    with pytest.raises(OSError):
        P.predict_run(out, tiers=["live_test_main"], verbose=0)
    assert (out / "predictions" / "metrics.json").read_text() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".predictions")]
    # and from a clean folder nothing is left at all
    fresh = _copy_run(run, "fresh_fail")
    with pytest.raises(OSError):
        P.predict_run(fresh, tiers=["live_test_main"], verbose=0)
    _no_leftovers(fresh)


def test_early_stopping_watches_the_score_predict_reports_on_short_trials(tmp_path):
    """64-frame validation trials (some NaN-padded to 48): validation and prediction leave out
    the same first frames (metrics.frames_to_skip), so the best validation score is the oracle
    single-trial correlation predict.py reports for best.pt (before, validation scored trials
    under 75 frames on all frames while prediction skipped 50)."""
    data = tmp_path / "data"
    write_native_dataset(data, 2, n_frames=64)
    config = _config(data, tmp_path / "run")
    config.data.crop_frame = 32
    config.train.epochs = 2
    summary = train_video(config)
    result = P.predict_run(tmp_path / "run", tiers=["oracle"], verbose=0)
    assert M.frames_to_skip([64, 48]) == M.SKIP_FRAMES
    reported = result["mean"]["oracle"]["single_trial_correlation"]
    assert reported == pytest.approx(summary["best_value"], abs=1e-5)

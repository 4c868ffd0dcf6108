"""predict.py on a tiny trained run over small synthetic mice: output files (ids, shapes, frame
counts), metrics against an independent recomputation, hidden-response tiers, the submission
layout, and every bad-input case (nothing partial left behind)."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
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
    assert set(result) == {"score_space", "checkpoint", "data_dir", "tiers", "sessions", "mean"}
    assert result["score_space"] == "raw"
    assert result["checkpoint"]["path"].endswith("best.pt")
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


def test_submission_in_the_kit_format(run):
    """The competition's files: one brotli parquet per test tier with the kit's columns and
    types, rows in session and trial order, frames [50, loader frames) of each trial in the
    normalized units (NeuroNormalizer's precision, computed here from the shipped std); the main
    track's two files directly in one zip."""
    import pandas as pd
    import pyarrow.parquet as pq

    folder = run["run"] / "predictions" / "submission"
    sessions = _sessions(run)
    for tier, name in (
        ("live_test_main", "predictions_live_main.parquet.brotli"),
        ("final_test_main", "predictions_final_main.parquet.brotli"),
    ):
        path = folder / name
        meta = pq.ParquetFile(path).metadata
        assert meta.row_group(0).column(0).compression == "BROTLI"
        schema = pq.read_schema(path)
        assert schema.names == ["mouse", "trial_indices", "prediction", "neuron_ids"]
        assert str(schema.field("trial_indices").type) == "int64"
        assert str(schema.field("prediction").type.value_type.value_type) == "double"
        assert str(schema.field("neuron_ids").type.value_type) == "uint32"
        df = pd.read_parquet(path)
        expected = [(n, int(t)) for n, s in sessions.items() for t in s.trial_ids(tier)]
        assert [(m, int(t)) for m, t in zip(df["mouse"], df["trial_indices"])] == expected
        for _, row in df.iterrows():
            s = sessions[row["mouse"]]
            trial = int(row["trial_indices"])
            pred = np.stack(row["prediction"])
            n = s.trial_length(trial)  # synthetic trials: every array ends with the video
            assert pred.shape == (s.n_neurons, n - M.SKIP_FRAMES)
            assert pred.dtype == np.float64
            np.testing.assert_array_equal(row["neuron_ids"], s.unit_ids.astype(np.uint32))
            z = np.load(run["run"] / "predictions" / row["mouse"] / f"{tier}.npz")
            i = int(np.flatnonzero(z["trial_ids"] == trial)[0])
            std = np.load(s.path / "meta/statistics/responses/all/std.npy").astype(np.float64)
            threshold = 0.01 * np.nanmean(std)
            precision = np.where(std > threshold, 1 / np.where(std > 0, std, 1), 1 / threshold)
            want = z["predictions"][i, :, M.SKIP_FRAMES : n] * precision[:, M.SKIP_FRAMES : n]
            np.testing.assert_allclose(pred, want, rtol=1e-6)
    with zipfile.ZipFile(folder / "submission_main.zip") as zf:
        assert sorted(zf.namelist()) == [
            "predictions_final_main.parquet.brotli",
            "predictions_live_main.parquet.brotli",
        ]
    assert not list(run["run"].glob("predictions/submission_*.csv"))  # the old CSV is gone


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


# ------------------------------------------------------------------------------------------------
# Score space and breakdowns
# ------------------------------------------------------------------------------------------------


def _neuralpredictors_normalizer(std: np.ndarray):
    """neuralpredictors 0.3.0's NeuroNormalizer on a session whose shipped response std is
    `std`: its module imports `collections.Iterable` (gone since Python 3.10) and skimage (for
    a transform not used here), both provided first."""
    import collections
    import collections.abc
    import sys
    import types

    collections.Iterable = collections.abc.Iterable
    if "skimage.transform" not in sys.modules:
        skimage, transform = types.ModuleType("skimage"), types.ModuleType("skimage.transform")
        transform.rescale = None
        skimage.transform = transform
        sys.modules.setdefault("skimage", skimage)
        sys.modules.setdefault("skimage.transform", transform)
    from neuralpredictors.data.transforms import NeuroNormalizer

    class Data:
        statistics = {
            "inputs": {"all": {"mean": np.zeros(()), "std": np.ones(())}},
            "responses": {"all": {"std": std}},
        }
        data_keys = ["inputs", "responses"]
        _len = 10

    return NeuroNormalizer(Data())


def test_normalized_score_space_is_the_competition_loaders(run):
    """--score_space normalized: the metrics equal those of responses and predictions both
    multiplied by neuralpredictors' own NeuroNormalizer (the per-neuron, per-frame precision of
    the shipped std), computed directly with neurotwin.metrics."""
    from collections import namedtuple

    out = _copy_run(run, "normalized")
    result = P.predict_run(out, tiers=["oracle"], score_space="normalized", verbose=0)
    assert result["score_space"] == "normalized"
    Trial = namedtuple("Trial", ["inputs", "responses"])
    for name, s in _sessions(run).items():
        std = np.load(s.path / "meta/statistics/responses/all/std.npy")
        assert std.shape == (s.n_neurons, s.n_frames)  # shipped per frame, as published
        normalizer = _neuralpredictors_normalizer(std)
        z = np.load(out / "predictions" / name / "oracle.npz")
        resp, pred = [], []
        for i, trial in enumerate(z["trial_ids"]):
            full = s.load_trial(int(trial))
            n = z["frame_counts"][i]
            p = np.nan_to_num(z["predictions"][i], nan=0.0)  # NaN past the trial's end
            resp.append(normalizer(Trial(full["videos"], full["responses"])).responses[:, :n])
            pred.append(normalizer(Trial(full["videos"], p)).responses[:, :n])
        groups = M.group_repeats(z["clip_ids"].tolist())
        m = result["sessions"][name]["oracle"]
        assert m["single_trial_correlation"] == pytest.approx(
            M.single_trial_correlation(resp, pred), abs=1e-6
        )
        assert m["correlation_to_average"] == pytest.approx(
            M.correlation_to_average(resp, pred, groups), abs=1e-6
        )
        assert m["feve"] == pytest.approx(M.feve(resp, pred, groups), abs=1e-6)
        raw = run["result"]["sessions"][name]["oracle"]["single_trial_correlation"]
        assert m["single_trial_correlation"] != pytest.approx(raw, abs=1e-3)  # not scale-free


def test_loader_frames_cut_at_the_first_nan_of_any_array():
    """The official loader (CutVideos, max_frame=None) keeps a trial up to the first frame where
    any array holds a NaN; hidden responses (zeros or NaN) do not cut."""
    from neurotwin.prediction.space import loader_frames

    t = 60
    arrays = {
        "videos": np.ones((3, 4, t)),
        "responses": np.ones((5, t)),
        "behavior": np.ones((2, t)),
        "pupil_center": np.ones((2, t)),
    }
    arrays["videos"][..., 58:] = np.nan
    assert loader_frames(arrays, hidden=False) == 58
    arrays["pupil_center"][1, 57:] = np.nan  # one array ends a frame early: T - 1 frames
    assert loader_frames(arrays, hidden=False) == 57
    arrays["responses"][:] = np.nan
    assert loader_frames(arrays, hidden=True) == 57
    assert loader_frames(arrays, hidden=False) == 0


def _labelled_data(run: dict, root: Path) -> Path:
    """A copy of the data with meta/neurons/area.npy and meta/trials/stimulus.npy, as the Allen
    converters write them."""
    if root.exists():
        return root
    shutil.copytree(run["data"], root)
    rng = np.random.default_rng(0)
    for s in sorted(root.iterdir()):
        session = NativeSession(s)
        areas = np.array(["VISl", "VISp"])[rng.permutation(session.n_neurons) % 2]
        np.save(s / "meta/neurons/area.npy", areas)
        kinds = np.array(["gratings", "natural"])[np.arange(session.n_trials) % 2]
        np.save(s / "meta/trials/stimulus.npy", kinds)
    return root


def test_metrics_by_area_and_by_stimulus(run, capsys):
    data = _labelled_data(run, run["root"] / "labelled")
    out = _copy_run(run, "labelled_run")
    result = P.predict_run(out, data_dir=data, tiers=["train", "oracle"], verbose=1)
    table = capsys.readouterr().out
    assert "area=VISp" in table and "stimulus=natural" in table
    for name, by_tier in result["sessions"].items():
        s = NativeSession(data / name)
        areas = np.load(s.path / "meta/neurons/area.npy")
        kinds = np.load(s.path / "meta/trials/stimulus.npy")
        for tier, m in by_tier.items():
            z = np.load(out / "predictions" / name / f"{tier}.npz")
            lengths = z["frame_counts"]
            resp = [
                s.load_trial(int(t))["responses"][:, :n] for t, n in zip(z["trial_ids"], lengths)
            ]
            pred = [z["predictions"][i, :, :n] for i, n in enumerate(lengths)]
            groups = M.group_repeats(z["clip_ids"].tolist())
            per_neuron = M.single_trial_correlation(resp, pred, per_neuron=True)
            for area in ("VISl", "VISp"):
                mask = areas == area
                entry = m["by_area"][area]
                assert entry["n_neurons"] == mask.sum()
                assert entry["single_trial_correlation"] == pytest.approx(
                    per_neuron[mask].mean(), abs=1e-6
                )
                c2a = M.correlation_to_average([r[mask] for r in resp], [p[mask] for p in pred], groups)  # fmt: skip
                assert entry["correlation_to_average"] == (
                    None if c2a is None else pytest.approx(c2a, abs=1e-6)
                )
            for kind in sorted(set(kinds[z["trial_ids"]].tolist())):
                sel = np.flatnonzero(kinds[z["trial_ids"]] == kind)
                entry = m["by_stimulus"][kind]
                assert entry["n_trials"] == len(sel)
                assert entry["single_trial_correlation"] == pytest.approx(
                    M.single_trial_correlation([resp[i] for i in sel], [pred[i] for i in sel]),
                    abs=1e-6,
                )
    for area in ("VISl", "VISp"):
        values = [b["oracle"]["by_area"][area]["feve"] for b in result["sessions"].values()]
        values = [v for v in values if v is not None]
        got = result["mean"]["oracle"]["by_area"][area]["feve"]
        assert got == (pytest.approx(np.mean(values)) if values else None)
    with open(out / "predictions" / "metrics.csv", newline="") as f:
        groups_written = {r["group"] for r in csv.DictReader(f)}
    assert {"all", "area=VISp", "area=VISl", "stimulus=natural"} <= groups_written


def test_an_error_in_the_writer_threads_stops_prediction_and_leaves_nothing(run, monkeypatch):
    from neurotwin.prediction import engine

    out = _copy_run(run, "writer_error")

    def broken(*args, **kwargs):
        raise OSError("disk full while finishing a tier")

    monkeypatch.setattr(engine, "finish_tier", broken)
    with pytest.raises(OSError, match="disk full"):
        P.predict_run(out, verbose=0)
    _no_leftovers(out)


def test_workers_and_batches_change_nothing(run):
    out = _copy_run(run, "workers")
    result = P.predict_run(out, tiers=["oracle", "train"], num_workers=2, batch_size=4, verbose=0)
    for name, by_tier in result["sessions"].items():
        for tier, m in by_tier.items():
            ref = run["result"]["sessions"][name][tier]
            for k, v in m.items():
                assert v == (None if ref[k] is None else pytest.approx(ref[k], abs=1e-6)), k
            a = np.load(out / "predictions" / name / f"{tier}.npz")["predictions"]
            b = np.load(run["run"] / "predictions" / name / f"{tier}.npz")["predictions"]
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_submission_leaves_out_the_mice_the_competition_did_not_score(run, tmp_path):
    """Rows of the five mice published before the competition (A..E, test responses public) stay
    out of the files; the competition's five (F..J) go in, under their folder names; the bonus
    track's two files are zipped apart."""
    import pandas as pd

    from neurotwin.data.native import SENSORIUM_2023_MICE
    from neurotwin.prediction.outputs import TierResult
    from neurotwin.prediction.space import Precision
    from neurotwin.prediction.submission import SubmissionWriter

    name, session = next(iter(_sessions(run).items()))
    npz = run["run"] / "predictions" / name / "live_test_main.npz"
    z = np.load(npz)
    writer = SubmissionWriter(tmp_path)
    tiers = ("live_test_main", "live_test_bonus", "final_test_bonus")
    for letter, tier in [(m, t) for m in "AF" for t in tiers]:
        result = TierResult(
            session=SENSORIUM_2023_MICE[letter],
            tier=tier,
            unit_ids=z["unit_ids"],
            trial_ids=z["trial_ids"],
            frame_counts=z["frame_counts"],
            first_frames=np.zeros(len(z["trial_ids"]), dtype=np.int64),
            clip_keys=[str(c) for c in z["clip_ids"]],
            loader_frames=z["loader_frames"],
            hidden=True,
            metrics={},
            npz=npz,
        )
        writer.add(result, Precision(session))
    zips = writer.close()
    folder = tmp_path / "submission"
    for name in (
        "predictions_live_main.parquet.brotli",
        "predictions_live_test_bonus_ood.parquet.brotli",
        "predictions_final_test_bonus_ood.parquet.brotli",
    ):
        df = pd.read_parquet(folder / name)
        assert set(df["mouse"]) == {SENSORIUM_2023_MICE["F"]}
        assert len(df) == len(z["trial_ids"])
    # the bonus track: live and final each in a zip of its own, the file directly inside
    contents = {p.name: zipfile.ZipFile(p).namelist() for p in zips}
    assert contents == {
        "submission_main.zip": ["predictions_live_main.parquet.brotli"],
        "submission_live_bonus.zip": ["predictions_live_test_bonus_ood.parquet.brotli"],
        "submission_final_bonus.zip": ["predictions_final_test_bonus_ood.parquet.brotli"],
    }


def test_precision_of_no_frames_past_the_shipped_statistics_is_empty(run):
    """Trials no longer than the 50 skipped frames submit no frames: their empty range needs no
    column of the shipped std; a range past its frames is an error naming the file."""
    from neurotwin.prediction.space import Precision

    session = next(iter(_sessions(run).values()))
    precision = Precision(session)
    n, frames = precision.values.shape
    assert frames > 1
    assert precision.apply(np.zeros((n, 0)), frames + 10, frames + 10).shape == (n, 0)
    with pytest.raises(DataFormatError, match="std.npy"):
        precision.apply(np.zeros((n, 2)), frames - 1, frames + 1)


def test_lengths_to_compile_are_the_common_ones():
    """A compiled graph for each length with at least a full batch of trials, the most common
    first, at most `limit` of them; the odd lengths are left to the eager model."""
    from types import SimpleNamespace

    from neurotwin.prediction.engine import lengths_to_compile

    plans = [
        SimpleNamespace(lengths=np.array([300] * 9 + [250] * 4 + [251, 299])),
        SimpleNamespace(lengths=np.array([300] * 3 + [250] * 2 + [120] * 4)),
    ]
    assert lengths_to_compile(plans, 4) == {300, 250, 120}
    assert lengths_to_compile(plans, 4, limit=2) == {300, 250}
    assert lengths_to_compile(plans, 7) == {300}
    assert lengths_to_compile(plans, 13) == set()


def test_a_compiled_core_runs_only_its_lengths_padded_and_the_rest_eagerly(run):
    """With a compiled core, batches of the compiled lengths reach the graph padded to the batch
    size, others run eagerly (no graph made for them); the predictions equal the eager run's."""
    out = _copy_run(run, "compiled")
    tiers = ["oracle", "live_test_main"]
    predictor = P.RunPredictor(out, tiers=tiers, device="cpu", batch_size=4, compile=False)
    shapes: list[tuple[int, ...]] = []

    frame = (TINY["height"], TINY["width"])

    def counting_backend(graph, example_inputs):  # the videos among the graph's inputs
        shapes.extend(tuple(x.shape) for x in example_inputs if tuple(x.shape[-2:]) == frame)
        return graph.forward

    source = predictor.source
    source.model.core.compile(backend=counting_backend, dynamic=False)
    source.pad_to = 4
    counts = {}
    for plan in predictor.plans:
        for n in plan.lengths.tolist():
            counts[n] = counts.get(n, 0) + 1
    common = max(counts, key=counts.get)
    for compiled in (set(), {common}):
        shapes.clear()
        source.compiled_lengths = compiled
        predictor.run(verbose=0)
        assert {(s[0], s[2]) for s in shapes} == {(4, n) for n in compiled}  # B, T of each graph
        for name in _sessions(run):
            for tier in tiers:
                got = np.load(out / "predictions" / name / f"{tier}.npz")["predictions"]
                want = np.load(run["run"] / "predictions" / name / f"{tier}.npz")["predictions"]
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()

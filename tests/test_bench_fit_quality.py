"""bench/fit_quality.py end to end on tiny synthetic mice: train.py's config resolution and loop,
predict.py's metrics, the learning curve, the wall-clock budget, and the tables it writes."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "fit_quality.py"

TINY = [
    "--crop_frame",
    "24",
    "--batch_size",
    "4",
    "--num_workers",
    "0",
    "--core_num_layers",
    "1",
    "--core_hidden_dim",
    "4",
    "--core_spatial_input_kernel",
    "5",
    "--core_temporal_input_kernel",
    "5",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("fit_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mice(tmp_path_factory) -> Path:
    """Two tiny synthetic mice with trials long enough to score (predict skips 50 frames)."""
    from neurotwin.data import synthetic

    out = tmp_path_factory.mktemp("fq_mice")
    synthetic.generate(
        out,
        mice=2,
        seed=4,
        height=9,
        width=16,
        frames=80,
        neurons=16,
        train_trials=8,
        oracle_clips=2,
        oracle_repeats=2,
        test_clips=1,
        test_repeats=2,
        short_fraction=0.0,
        progress=False,
    )
    return out


def run(bench, data_dir: Path, out: Path, *extra: str) -> dict:
    argv = ["--config", str(REPO / "configs" / "demo.yaml"), "--data_dir", str(data_dir)]
    argv += ["--output_dir", str(out), "--threads", "1", *extra, "--", *TINY]
    assert bench.main(argv) == 0
    return json.loads((out / "fit_quality.json").read_text())


def test_curve_and_final_metrics_are_predicts(bench, mice, tmp_path):
    out = tmp_path / "fq"
    result = run(
        bench,
        mice,
        out,
        "--epochs",
        "2",
        "--seeds",
        "5",
        "--no_early_stop",
        "--json",
        str(tmp_path / "copy.json"),
    )
    assert json.loads((tmp_path / "copy.json").read_text()) == result
    (r,) = result["runs"]
    assert r["seed"] == 5 and r["epochs"] == 2 and [c["epoch"] for c in r["curve"]] == [1, 2]
    # the curve is the trainer's validation correlation, as train.py logs it in metrics.csv
    with open(out / "seed5" / "metrics.csv", newline="") as f:
        logged = [float(row["val_correlation"]) for row in csv.DictReader(f)]
    assert [c["val_correlation"] for c in r["curve"]] == pytest.approx(logged, abs=1e-6)
    ceiling = r["val_ceiling"]
    assert 0.2 < ceiling < 1
    for c in r["curve"]:
        assert c["val_fraction"] == pytest.approx(c["val_correlation"] / ceiling)
        assert c["seconds"] > 0 and c["cpu_s"] > 0
    # final numbers are predict.py's metrics.json of the best checkpoint
    metrics = json.loads((out / "seed5" / "predictions" / "metrics.json").read_text())
    assert r["metrics"] == metrics
    oracle = metrics["mean"]["oracle"]
    assert oracle["fraction_of_ceiling"] == pytest.approx(
        oracle["single_trial_correlation"] / oracle["ceiling_correlation"], rel=0.05
    )
    assert result["summary"]["oracle"]["mean"] == pytest.approx(oracle["fraction_of_ceiling"])
    # hidden test responses are not scored; the live test tier is
    assert "final_test_main" not in result["summary"] and "live_test_main" in result["summary"]
    with open(out / "final.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sessions = {row["session"] for row in rows}
    assert len(sessions) == 3 and "mean" in sessions  # two mice and their mean
    with open(out / "curve.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert (
        "--crop_frame" in r["train_argv"] and "seed: 5" in (out / "seed5/config.yaml").read_text()
    )


def test_wall_clock_budget_stops_after_the_epoch_that_uses_it(bench, mice, tmp_path):
    # 0.001 minutes: the first epoch already takes longer, so the run ends after it
    result = run(bench, mice, tmp_path / "fq", "--epochs", "50", "--minutes", "0.001")
    (r,) = result["runs"]
    assert r["epochs"] == 1 and r["stopped"] == "budget"


def test_resume_spends_a_budget_in_several_commands(bench, mice, tmp_path):
    out = tmp_path / "fq"
    args = ("--epochs", "5", "--minutes", "0.001", "--resume", "--no_early_stop")
    first = run(bench, mice, out, *args)["runs"][0]
    assert first["epochs"] == 1 and not first["train_argv"].count("--restore")
    second = run(bench, mice, out, *args)["runs"][0]
    assert second["epochs"] == 2 and "--restore" in second["train_argv"]
    curve = second["curve"]
    assert [c["epoch"] for c in curve] == [1, 2] and curve[0] == first["curve"][0]
    assert curve[1]["seconds"] > curve[0]["seconds"] and second["train_s"] > first["train_s"]
    with open(out / "seed0" / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]  # one run, continued


def test_bad_train_flags_fail_before_training(bench, mice, tmp_path):
    with pytest.raises(SystemExit, match="bad train.py flags"):
        bench.main(
            ["--config", str(REPO / "configs" / "demo.yaml"), "--data_dir", str(mice)]
            + ["--output_dir", str(tmp_path / "x"), "--", "--lr", "fast"]
        )
    with pytest.raises(SystemExit):  # the script sets the seed and the output folder itself
        bench.parse_args(
            ["--config", "c", "--data_dir", "d", "--output_dir", "o", "--", "--seed", "1"]
        )
    assert not (tmp_path / "x").exists()


def test_families_are_generator_options(bench):
    import dataclasses

    from neurotwin.data import synthetic

    known = {
        f.name
        for cls in (synthetic.SyntheticSizes, synthetic.ModelParams)
        for f in dataclasses.fields(cls)
    }
    for name, options in bench.FAMILIES.items():
        assert options["preset"] in synthetic.PRESETS, name
        assert set(options) - {"mice", "preset", "seed", "variants"} <= known, name
        assert set(options.get("variants", ())) <= set(synthetic.VARIANTS), name
    # every harder variant of the generator has a family
    assert set(synthetic.VARIANTS) <= set(bench.FAMILIES)


def test_a_family_is_written_once(bench, tmp_path, monkeypatch):
    from neurotwin.data import native

    monkeypatch.setitem(
        bench.FAMILIES,
        "_tiny",
        {
            "mice": 1,
            "preset": "small",
            "seed": 3,
            "neurons": 5,
            "train_trials": 2,
            "frames": 20,
            "oracle_clips": 1,
            "oracle_repeats": 2,
            "test_clips": 1,
            "test_repeats": 2,
            "variants": ["strong_behavior"],
        },
    )
    bench.ensure_family("_tiny", tmp_path / "d")
    (first,) = native.find_sessions(tmp_path / "d")
    bench.ensure_family("_tiny", tmp_path / "d")  # already there: nothing written
    assert native.find_sessions(tmp_path / "d") == [first]

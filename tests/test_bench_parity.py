"""bench/fast_path_parity.py end to end on tiny synthetic mice: the real train.py in a subprocess,
the correlation read back from the run's metrics.csv, failures reported, the noise yardstick."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "fast_path_parity.py"

TINY = (
    "--crop_frame 24 --batch_size 4 --num_workers 0 --core_num_layers 1 --core_hidden_dim 4 "
    "--core_spatial_input_kernel 5 --core_temporal_input_kernel 5 --device cpu"
)


def load_bench():
    spec = importlib.util.spec_from_file_location("fast_path_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def data_dir(synthetic_mice: Path) -> Path:
    return synthetic_mice


def test_one_run_reads_the_correlation_from_metrics_csv(bench, data_dir, tmp_path):
    out = tmp_path / "out"
    rc = bench.main(
        [
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            "--data_dir",
            str(data_dir),
            "--seeds",
            "3",
            "--paths",
            "fp32_eager",
            "--epochs",
            "2",
            "--override",
            TINY,
            "--output_dir",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads((out / "parity.json").read_text())
    (row,) = result["rows"]
    assert row["status"] == "ok" and row["path"] == "fp32_eager" and row["seed"] == 3
    run = out / "fp32_eager" / "seed3"
    with open(run / "metrics.csv", newline="") as f:
        metrics = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in metrics] == [1, 2]  # the fixed budget, no early stop
    final = float(metrics[-1]["val_correlation"])
    assert math.isfinite(row["final"]) and row["final"] == pytest.approx(final, abs=1e-6)
    assert row["best"] == pytest.approx(max(float(r["val_correlation"]) for r in metrics))
    assert row["wall_s"] > 0
    # the run really got the path's flags and the seed
    saved = (run / "config.yaml").read_text()
    assert "autocast: disable" in saved and "compile: false" in saved and "seed: 3" in saved
    assert result["summary"]["fp32_eager"]["n"] == 1


def test_a_failed_run_is_reported_not_scored(bench, tmp_path):
    empty = tmp_path / "no_sessions"
    empty.mkdir()
    out = tmp_path / "out"
    rc = bench.main(
        [
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            "--data_dir",
            str(empty),
            "--seeds",
            "0",
            "1",
            "--paths",
            "fp32_eager",
            "--epochs",
            "1",
            "--override",
            TINY,
            "--output_dir",
            str(out),
            "--jobs",
            "2",
        ]
    )
    assert rc == 1
    rows = json.loads((out / "parity.json").read_text())["rows"]
    assert [r["seed"] for r in rows] == [0, 1]  # plan order, whichever run ended first
    for row in rows:
        assert row["status"].startswith("failed") and "final" not in row


def test_override_may_not_change_the_path_or_budget(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--data_dir", "x", "--override", "--compile true"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--data_dir", "x", "--override", "--epochs=3"])


def test_the_reference_path_never_runs_the_fused_block(bench, tmp_path):
    """fp32_eager gives a ViViT core --core_fused_block false (and a core without the option
    nothing); the fast path leaves the choice to the config (auto)."""

    def argv(config: str, path: str) -> list[str]:
        args = bench.parse_args(["--data_dir", str(tmp_path), "--config", config])
        return bench.train_argv(args, path, 0, tmp_path / "run")

    viv1t, demo = str(REPO / "configs" / "viv1t.yaml"), str(REPO / "configs" / "demo.yaml")
    reference = argv(viv1t, "fp32_eager")
    assert reference[reference.index("--core_fused_block") + 1] == "false"
    bench.check_argv(reference)
    assert "--core_fused_block" not in argv(viv1t, "bf16_compile")
    assert "--core_fused_block" not in argv(demo, "fp32_eager")


def test_noise_yardstick(bench):
    ref = {0: 0.30, 1: 0.32, 2: 0.31}
    close = bench.compare(ref, {0: 0.31, 1: 0.30, 2: 0.32}, k=2.0)
    assert close["verdict"] == "within noise" and close["pooled_std"] == pytest.approx(0.01)
    far = bench.compare(ref, {0: 0.20, 1: 0.21, 2: 0.19}, k=2.0)
    assert far["verdict"] == "outside noise" and far["diff"] == pytest.approx(-0.11)
    assert bench.compare({0: 0.3}, {0: 0.3}, k=2.0)["verdict"].startswith("n/a")

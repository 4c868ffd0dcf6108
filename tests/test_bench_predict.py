"""bench/predict_throughput.py on the CPU at a tiny size: a random-weight run made from a
preset, the three rows (read, forward, e2e) with sane numbers, and predictions written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "predict_throughput", ROOT / "bench/predict_throughput.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_on_the_cpu(tmp_path, capsys):
    """--synthetic 2 writes two sessions (one process each), then the three rows are measured;
    a later call writes only the sessions missing."""
    data = tmp_path / "data"
    sizes = (
        "neurons=12 train_trials=3 oracle_clips=1 oracle_repeats=2 test_clips=1 test_repeats=2 "
        "frames=60 height=10 width=16"
    )
    out = tmp_path / "rows.json"
    argv = [
        "--synthetic", "2", "--synthetic_preset", "small", "--synthetic_sizes", sizes,
        "--config", str(ROOT / "configs/demo.yaml"), "--data_dir", str(data),
        "--workdir", str(tmp_path / "run"), "--device", "cpu", "--batch_size", "2",
        "--num_workers", "1", "--repeats", "1", "--json", str(out),
        "--override", "--core_hidden_dim 4 --core_num_layers 1",
    ]  # fmt: skip
    assert load_bench().main(argv) == 0
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["read", "forward", "e2e"]
    trials = 2 * (3 + 2 + 2 + 2)  # sessions x (train, oracle, live and final test) trials
    assert all(r["trials"] == trials and r["trials/s"] > 0 for r in rows)
    assert rows[2]["e2e/forward"] == rows[2]["trials/s"] / rows[1]["trials/s"]
    assert "end to end at" in capsys.readouterr().out
    predictions = tmp_path / "run" / "predictions"
    assert (predictions / "metrics.json").is_file()
    assert (predictions / "submission" / "submission_main.zip").is_file()
    sessions = sorted(p.name for p in data.iterdir() if not p.name.startswith("."))
    assert len(sessions) == 2 and len(set(sessions)) == 2
    bench = load_bench()
    bench.write_synthetic(data, 2, "small", bench.parse_sizes(sizes))  # kept: nothing written
    assert "already in" in capsys.readouterr().out
    assert sorted(p.name for p in data.iterdir() if not p.name.startswith(".")) == sessions
    bench.write_synthetic(data, 3, "small", bench.parse_sizes(sizes))  # the third one only
    assert "1 small sessions written" in capsys.readouterr().out
    assert len([p for p in data.iterdir() if not p.name.startswith(".")]) == 3

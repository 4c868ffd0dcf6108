"""bench/spikes_throughput.py runs on the CPU at a tiny size and reports sane rows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_run_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "spikes_throughput", ROOT / "bench/spikes_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--data_dir", str(tmp_path / "d"), "--sessions", "2", "--units", "8",
            "--trials", "20", "--duration_ms", "120", "--epochs", "1", "--batch_size", "8",
            "--conv", "direct", "fft", "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())
    assert [r["conv"] for r in rows] == ["direct", "fft"]
    for row in rows:
        assert row["s/epoch"] > 0 and row["trials/s"] > 0
        assert 0 < row["train trials"] <= 2 * 20 and row["bins"] == 100 + 120

"""bench/encode_throughput.py at a tiny size on the CPU: both steps run and report sane rows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "encode_throughput", ROOT / "bench/encode_throughput.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--network", "mouse-vision:alexnet_bn_ir", "--pooling", "mean",
            "--layers", "features.3", "--sessions", "3", "--frames_per_session", "40", "--measure_frames", "24",
            "--batch_size", "12", "--neurons", "50", "--train_stimuli", "300", "--test_stimuli", "40",
            "--features", "16", "--regressors", "ridge", "ridgecv", "pls", "--json", str(out)]  # fmt: skip
    assert load_bench().main(argv) == 0
    embed, *fits = json.loads(out.read_text())
    assert embed["frames_measured"] == 24 and embed["frames_total"] == 120
    assert embed["features"] == {"features.3": 64} and embed["frames/s"] > 0
    assert embed["seconds_total"] == pytest.approx(120 / embed["frames/s"], rel=0.01, abs=0.002)
    assert [f["regressor"] for f in fits] == ["ridge", "ridgecv", "pls"]
    assert all(f["finite"] and f["seconds"] >= 0 for f in fits)
    assert fits[1]["alphas"] == 17

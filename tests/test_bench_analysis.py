"""bench/analysis_throughput.py at a tiny size on the CPU (a small ViViT, two sessions)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY_VIVIT = (
    "--core_emb_dim 16 --core_spatial_depth 1 --core_temporal_depth 1 --core_num_heads 2 "
    "--core_head_dim 8 --core_ff_dim 16 --core_reg_tokens 2 --core_temporal_patch_size 3"
)


def test_arf_and_tuning_rows_on_the_cpu(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "analysis_throughput", ROOT / "bench/analysis_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--sessions", "2", "--neurons", "12", "--frame_shape", "18", "32",
            "--noise_images", "16", "--block_frames", "4", "--images_per_video", "4",
            "--batch_size", "2", "--directions", "4", "--spatial_frequencies", "0.1",
            "--override", TINY_VIVIT, "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = {r["analysis"]: r for r in json.loads(out.read_text())}
    assert rows["arf"]["sessions"] == 1 and rows["tuning"]["sessions"] == 2
    # arf: 16 images, 4 per video of 20 + 4 x (4 + 10) frames
    assert rows["arf"]["stimulus frames"] == 4 * (20 + 4 * 14)
    assert all(r["seconds"] > 0 and r["frames/s"] > 0 for r in rows.values())

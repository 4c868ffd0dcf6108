"""bench/train_throughput.py runs (CPU smoke: model and loader modes) and reports sane rows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_VIVIT = (
    "--core_emb_dim 16 --core_spatial_depth 1 --core_temporal_depth 1 --core_num_heads 2 "
    "--core_head_dim 8 --core_ff_dim 16 --core_reg_tokens 2 --core_temporal_patch_size 3"
)


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "train_throughput", ROOT / "bench/train_throughput.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_model_mode_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--mode", "model", "--steps", "2", "--warmup", "1", "--sessions", "2",
            "--neurons", "30", "--frames", "12", "--frame_shape", "18", "32", "--compile", "0",
            "--autocast", "0", "--override", TINY_VIVIT, "--json", str(out)]  # fmt: skip
    assert load_bench().main(argv) == 0
    (row,) = json.loads(out.read_text())
    assert row["mode"] == "model" and row["batch"] == 1
    assert row["trials/s"] > 0 and row["TFLOP/trial"] > 0
    assert row["frames/s"] == pytest.approx(row["trials/s"] * 12)


PRESETS = {
    "dwiseneuro": ("8", "--core_features 4 8 --core_spatial_strides 2 2 --core_cortex_features "
                   "16 32 --core_expansion_ratio 2 --core_se_reduce_ratio 2 --core_clip_frames 4"),
    "sensorium_gru": ("8", "--core_num_layers 2 --core_hidden_dim 4 --core_gru_channels 4 "
                      "--core_spatial_input_kernel 5 --core_gru_input_kernel 3 "
                      "--core_gru_rec_kernel 3"),
}  # fmt: skip


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_model_mode_runs_the_other_systems_presets(preset, tmp_path):
    """The presets of issue 20 at a tiny size (dwiseneuro: clips of 4 frames taken every 2nd,
    a crop of 8 frames = two clips, as its 32-frame crop is two clips of 16)."""
    frames, override = PRESETS[preset]
    out = tmp_path / "rows.json"
    argv = ["--config", str(ROOT / f"configs/{preset}.yaml"), "--device", "cpu", "--mode",
            "model", "--steps", "1", "--warmup", "1", "--sessions", "2", "--neurons", "20",
            "--frames", frames, "--frame_shape", "18", "32", "--compile", "0", "--autocast", "0",
            "--batch_size", "2", "--override", override, "--json", str(out)]  # fmt: skip
    assert load_bench().main(argv) == 0
    (row,) = json.loads(out.read_text())
    assert row["trials/s"] > 0 and row["TFLOP/trial"] > 0


def test_loader_mode_reads_the_native_layout(synthetic_mice, tmp_path):
    data = synthetic_mice
    out = tmp_path / "rows.json"
    argv = ["--mode", "loader", "--data_dir", str(data), "--num_workers", "0", "--batch_size",
            "1", "2", "--steps", "5", "--warmup", "1", "--frames", "20", "--json", str(out)]  # fmt: skip
    assert load_bench().main(argv) == 0
    rows = json.loads(out.read_text())
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["trials/s"] > 0 for r in rows)
    assert rows[1]["trials/s"] == pytest.approx(2 * rows[1]["batches/s"])


def test_inductor_options_parse_as_json_values():
    bench = load_bench()
    args = bench.parse_args(["--inductor", "force_pointwise_cat=true", "--inductor", "x=1.5",
                             "--inductor", "name=abc"])  # fmt: skip
    assert args.inductor == {"force_pointwise_cat": True, "x": 1.5, "name": "abc"}
    with pytest.raises(SystemExit):
        bench.parse_args(["--inductor", "no_value"])
    with pytest.raises(SystemExit):  # torch.compile takes a mode or options, not both
        bench.parse_args(["--inductor", "a=1", "--compile_mode", "max-autotune"])


def test_block_benchmark_runs_on_the_cpu(capsys):
    """bench/block_throughput.py end to end at a tiny clip (the GPU numbers are in RESULTS.md)."""
    spec = importlib.util.spec_from_file_location(
        "block_throughput", Path(__file__).resolve().parents[1] / "bench" / "block_throughput.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--device", "cpu", "--frames", "2", "--frame_shape", "18", "32", "--steps", "1",
            "--blocks", "temporal"]  # fmt: skip
    assert module.main(argv) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "temporal" in line]
    assert float(row.split("|")[2]) > 0

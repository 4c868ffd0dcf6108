"""Adding a part is one new file: a core with its options dataclass and one registration,
dropped into models/cores/ of a copy of the package, trains through train.py with its own
flag (no other file edited)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# The whole new core (this text is also the example in docs/architecture.md).
NEW_CORE = '''"""pool: the smallest core: a 1x1x1 convolution of the video to a few channels, then ELU."""

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from neurotwin.config import option, require
from neurotwin.models.cores.base import Core, CoreOptions, behavior_channels, concat_behavior
from neurotwin.registry import CORES


@dataclass
class PoolOptions(CoreOptions):
    core_pool_channels: int = option(3, "feature channels")

    def check(self) -> None:
        require(self.core_pool_channels >= 1, "core_pool_channels", "must be >= 1")


@CORES.register("pool", options=PoolOptions)
class PoolCore(Core):
    def __init__(self, in_channels, frame_shape, options: PoolOptions | None = None):
        o = options or PoolOptions()
        super().__init__(o)
        c = in_channels + behavior_channels(o.core_behavior_mode)
        self.mix = nn.Conv3d(c, o.core_pool_channels, 1)
        self.out_channels = o.core_pool_channels

    def out_shape(self, frame_shape):
        return tuple(frame_shape)

    def forward(self, video, behavior=None, pupil_center=None):
        x = concat_behavior(video, behavior, pupil_center, self.options.core_behavior_mode)
        return F.elu(self.mix(x))
'''


def run_train(src: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=src.parent,
        timeout=300,
    )


def test_a_new_core_in_one_new_file_trains_through_train_py(tmp_path, native_dataset):
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "neurotwin", src / "neurotwin", ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (src / "neurotwin" / "models" / "cores" / "pool.py").write_text(NEW_CORE)

    out = tmp_path / "run"
    proc = run_train(
        src, "--data_dir", str(native_dataset), "--output_dir", str(out), "--core", "pool",
        "--core_pool_channels", "5", "--core_behavior_mode", "1", "--crop_frame", "16",
        "--batch_size", "2", "--num_workers", "0", "--epochs", "1", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "model: core pool" in proc.stdout and "epoch   1/1" in proc.stdout
    saved = yaml.safe_load((out / "config.yaml").read_text())["model"]["core"]
    assert saved == {"name": "pool", "core_behavior_mode": 1, "core_pool_channels": 5}
    assert (out / "checkpoints" / "best.pt").is_file()

    # its flag is in the help, in its own group; its check and the owner rule apply to it
    help_text = run_train(src, "--help").stdout
    assert "core options of pool:" in help_text and "--core_pool_channels" in help_text
    bad = run_train(src, "--core", "pool", "--core_pool_channels", "0")
    assert bad.returncode == 2 and "--core_pool_channels: must be >= 1" in bad.stderr
    foreign = run_train(src, "--core", "conv3d", "--core_pool_channels", "4")
    assert "--core_pool_channels belongs to core pool; the chosen core is conv3d" in foreign.stderr

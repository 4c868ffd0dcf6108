"""Two ranks with torchrun and the gloo backend on CPU: the real train.py on synthetic mice."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from neurotwin import config as cfg
from neurotwin.data import synthetic
from neurotwin.registry import CORES

REPO = Path(__file__).resolve().parents[1]


def test_two_ranks_end_with_identical_weights(tmp_path):
    data = tmp_path / "data"
    synthetic.generate(
        data,
        mice=2,
        preset="small",
        seed=5,
        height=9,
        width=16,
        neurons=12,
        train_trials=9,  # odd: the ranks' shares are padded to equal length
        oracle_clips=2,
        oracle_repeats=2,
        test_clips=1,
        test_repeats=2,
        frames=30,
        progress=False,
    )
    c = cfg.Config()
    c.data.data_dir = str(data)
    c.data.crop_frame = 16
    c.data.batch_size = 2
    c.data.num_workers = 0
    c.model.core = CORES.options(
        "conv3d",
        core_num_layers=2,
        core_hidden_dim=4,
        core_spatial_input_kernel=5,
        core_spatial_hidden_kernel=3,
        core_temporal_input_kernel=5,
        core_temporal_hidden_kernel=3,
    )
    c.train.epochs = 2
    c.train.lr = 0.01
    c.train.micro_batch_size = 1  # no_sync accumulation across micro-batches and sessions
    c.run.device = "cpu"
    c.run.verbose = 0
    preset = cfg.save_yaml(c, tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "train.py"),
            "--config",
            str(preset),
            "--output_dir",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "x 2 ranks (gloo)" in log
    # exactly 0: every parameter and buffer of rank 1 equals rank 0's
    assert re.search(r"^ranks in sync: max parameter difference across ranks 0$", log, re.M), log
    assert log.count("outputs go to") == 1  # only rank 0 writes
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # each rank reads its own share: 9 trials per session -> 5 per rank, 3 batches of <= 2
    state = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert state["epoch"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

"""The presets' models reach a good share of what the ground truth allows (issue #15), at a
smaller scale than the presets: two synthetic mice of 30 neurons and 30 training trials at the
demo's resolution, each CPU config for a few epochs (seconds on a CPU).

The fraction of the ceiling is the trainer's best validation correlation (oracle tier, the
frames the trainer scores) over the correlation of the noiseless rates with the same responses
(the same frames: metrics.frames_to_skip).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurotwin.cli.train import build_parser, resolve_config
from neurotwin.data import native, synthetic
from neurotwin.training.video import train

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def validation_ceiling(data_dir: Path, tier: str = "oracle") -> float:
    """Mean over sessions of the noiseless rates' correlation with the responses of `tier`."""
    sessions = native.find_sessions(data_dir)
    return float(np.mean([synthetic.session_ceiling(p, (tier,)).mean() for p in sessions]))


@pytest.fixture(scope="module")
def two_mice(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ceiling_mice")
    synthetic.generate(
        out,
        mice=2,
        preset="small",
        seed=21,
        neurons=30,
        train_trials=30,
        oracle_clips=3,
        oracle_repeats=2,
        test_clips=1,
        test_repeats=2,
        progress=False,
    )
    return out


def train_preset(preset: str, data_dir: Path, output_dir: Path, *flags: str) -> float:
    """Best validation correlation of `preset` (configs/NAME.yaml) with `flags` on top."""
    argv = ["--config", str(REPO / "configs" / f"{preset}.yaml"), "--data_dir", str(data_dir)]
    argv += ["--output_dir", str(output_dir), "--verbose", "0", "--seed", "0", *flags]
    return train(resolve_config(build_parser().parse_args(argv)))["best_value"]


@pytest.mark.parametrize(
    ("preset", "epochs", "bound"),
    [
        # measured on CPU (seed 0, torch 2.14.1): 0.534 (branch quality: 0.53); the
        # demo before issue #15 (free positions starting near the centre, no behaviour gain, a
        # random initial shift) reached 0.33 here and fails
        ("demo", 8, 0.45),
        # measured: 0.642 (seed 0, torch 2.14.1, 12 channels; 0.578 with 8; the demo here:
        # 0.534); cpu_small's plateau schedule (patience 5) over 12 epochs instead of 80
        ("cpu_small", 12, 0.55),
    ],
)
def test_cpu_presets_reach_a_fraction_of_the_ceiling(two_mice, tmp_path, preset, epochs, bound):
    """The bounds leave room for other platforms' arithmetic."""
    ceiling = validation_ceiling(two_mice)
    assert 0.5 < ceiling < 0.9  # the generator's noise level at this size
    best = train_preset(preset, two_mice, tmp_path / "run", "--epochs", str(epochs))
    print(f"{preset}: {best / ceiling:.3f} of the ceiling")
    assert best / ceiling > bound, best / ceiling

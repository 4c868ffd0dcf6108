"""A run folder written by the previous release (tests/fixtures/legacy_run, see its README):
its config.yaml (every core's fields, no version) loads, its checkpoint predicts what that
release predicted, and training resumes from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from native_fixture import write_native_dataset
from neurotwin import config as cfg
from neurotwin import predict as P
from neurotwin.cli import train as train_cli

LEGACY_RUN = Path(__file__).parent / "fixtures" / "legacy_run"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def legacy(tmp_path: Path) -> tuple[Path, Path]:
    """(run folder, data folder): a copy of the fixture run and the data it was trained on."""
    data = tmp_path / "data"
    write_native_dataset(data, 2, n_frames=64)
    run = tmp_path / "run"
    shutil.copytree(LEGACY_RUN, run, ignore=shutil.ignore_patterns("*.md", "expected_*"))
    return run, data


def test_legacy_checkpoint_predicts_what_the_previous_release_predicted(legacy):
    run, data = legacy
    result = P.predict_run(run, checkpoint="last", data_dir=data, verbose=0)
    expected = json.loads((LEGACY_RUN / "expected_metrics.json").read_text())
    assert result["sessions"].keys() == expected["sessions"].keys()
    for session, by_tier in expected["sessions"].items():
        assert result["sessions"][session].keys() == by_tier.keys()
        for tier, metrics in by_tier.items():
            got = result["sessions"][session][tier]
            for key, value in metrics.items():
                want = None if value is None else pytest.approx(value, abs=1e-6)
                assert got[key] == want, (session, tier, key)


def test_legacy_run_resumes_training(legacy):
    run, data = legacy
    summary = train_cli.main(["--restore", str(run), "--data_dir", str(data), "--epochs", "3"])
    assert summary["epochs"] == 3 and len(summary["history"]) == 1  # epoch 3 only: resumed
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["version"] == cfg.CONFIG_VERSION
    assert "core_emb_dim" not in saved["model"]["core"]  # now only conv3d's options
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3

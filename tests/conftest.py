"""Shared fixtures: small session folders in the native layout (see native_fixture.py), and one
intra-op thread for modules of small models."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported, which any test module may do (the
# ViViT core imports its fused kernels): without CUDA, its interpreter must be on from the start.
if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))

from native_fixture import write_native_dataset, write_native_session  # noqa: E402


@pytest.fixture
def native_session(tmp_path: Path) -> Path:
    """One small session folder (7 neurons, 10 trials, 24 frames of 6x8, some NaN-padded)."""
    return write_native_session(tmp_path / "dynamic29156-11-10-Video-0123456789abcdef")


@pytest.fixture(scope="session")
def native_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with 3 small sessions (read-only use: do not modify in tests)."""
    root = tmp_path_factory.mktemp("native3")
    write_native_dataset(root, 3)
    return root


@pytest.fixture(scope="session")
def synthetic_mice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small synthetic mice in the native layout, written by the real generator."""
    from neurotwin.data import synthetic

    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(
        out,
        mice=2,
        preset="small",
        seed=3,
        height=9,
        width=16,
        neurons=20,
        train_trials=12,
        oracle_clips=2,
        oracle_repeats=2,
        test_clips=1,
        test_repeats=2,
        frames=40,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def spike_sessions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small simulated spike table sessions (populations A, B of 4 units, 40 trials of
    200 ms; read-only use)."""
    from neurotwin.data import synthetic_spikes

    root = tmp_path_factory.mktemp("spike_sessions")
    synthetic_spikes.generate(
        root, sessions=2, seed=1, units=4, trials=40, duration_ms=200, burn_in_ms=100
    )
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Small models on a shared CPU: one intra-op thread avoids thread over-subscription
    (10-20x faster here); restored after the module that asks for it (`pytestmark`)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""Shared fixtures: small session folders in the native layout (see native_fixture.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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

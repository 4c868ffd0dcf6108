"""Train/test splits of the stimuli of one tier.

- interleaved (HuggingMouse, after rastermap's tutorial): the stimuli in presentation order are
  cut into `n_segments` (20) equal segments and the first `test_fraction` of each is held out;
  one split. Neighbouring movie frames stay on one side except at segment edges.
- random (mouse-vision): `n_splits` (10) random splits, `test_fraction` (0.5) of the stimuli held
  out in each. Meant for images (natural scenes); on movie frames neighbouring, correlated
  frames fall on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from neurotwin.config import option
from neurotwin.errors import ConfigError

MIN_TRAIN, MIN_TEST = 2, 3


@dataclass
class SplitOptions:
    """How the stimuli are split into training and test sets."""

    split: Literal["interleaved", "random"] = option(
        "interleaved", "interleaved (HuggingMouse) or random (mouse-vision)"
    )
    test_fraction: float = option(0.5, "share of the stimuli held out (per segment, or per split)")
    n_segments: int = option(20, "interleaved: number of segments")
    n_splits: int = option(10, "random: number of random splits")
    split_seed: int = option(0, "random: seed of the splits")

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.n_segments < 1 or self.n_splits < 1:
            raise ConfigError("n_segments and n_splits must be >= 1")


def interleaved_split(n: int, n_segments: int = 20, test_fraction: float = 0.5):
    """[(train, test)]: the first `test_fraction` of each of `n_segments` segments is test."""
    seg = n / n_segments
    starts = np.linspace(0, n - seg, n_segments).astype(int)
    test = (starts[:, None] + np.arange(0, seg * test_fraction, 1, dtype=int)).reshape(-1)
    is_test = np.zeros(n, bool)
    is_test[test[test < n]] = True
    return [(np.flatnonzero(~is_test), np.flatnonzero(is_test))]


def random_splits(n: int, n_splits: int = 10, test_fraction: float = 0.5, seed: int = 0):
    """`n_splits` random (train, test) splits with round(test_fraction * n) test stimuli."""
    rng = np.random.default_rng(seed)
    n_test = int(round(test_fraction * n))
    out = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        out.append((np.sort(perm[n_test:]), np.sort(perm[:n_test])))
    return out


def make_splits(
    n: int, options: SplitOptions, where: str = ""
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The splits `options` asks for over `n` stimuli (ConfigError when a side is too small)."""
    if options.split == "interleaved":
        splits = interleaved_split(n, options.n_segments, options.test_fraction)
    else:
        splits = random_splits(n, options.n_splits, options.test_fraction, options.split_seed)
    train, test = splits[0]
    if len(train) < MIN_TRAIN or len(test) < MIN_TEST:
        raise ConfigError(
            f"{where}: {n} stimuli give {len(train)} training and {len(test)} test stimuli with "
            f"split {options.split}; need >= {MIN_TRAIN} and >= {MIN_TEST}"
        )
    return splits

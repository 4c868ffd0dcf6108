"""Per-neuron scores of test-set predictions, and noise ceilings from repeats.

Metrics by name: ``r`` (Pearson), ``r2`` (coefficient of determination), or ``sklearn:NAME``
for any function of sklearn.metrics taking (y_true, y_pred) (with multioutput='raw_values'
where it has it, else one call per neuron). Ceilings (formulas in `neurotwin.metrics`):

- fitted to the repeat average: ``noise_ceiling`` = sqrt of the Spearman-Brown corrected
  split-half reliability of the test stimuli (mean over `ceiling_splits` random halves of the
  repeats), ``noise_corrected_r`` = r / noise_ceiling;
- fitted to one repeat: the ceiling is sqrt of the mean correlation between pairs of single
  repeats.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from neurotwin import metrics
from neurotwin.config import option
from neurotwin.errors import ConfigError

BUILTIN = ("r", "r2")
Metric = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class ScoreOptions:
    """What is scored, and how the noise ceiling is estimated."""

    metrics: list[str] = option(
        ["r", "r2"], "per-neuron metrics: r, r2, sklearn:NAME (sklearn.metrics)"
    )
    ceiling_splits: int = option(20, "random split-halves of the repeats for the noise ceiling")
    ceiling_seed: int = option(0, "seed of the split-halves")

    def __post_init__(self) -> None:
        if self.ceiling_splits < 1:
            raise ConfigError(f"ceiling_splits must be >= 1, got {self.ceiling_splits}")
        for name in self.metrics:
            if name not in BUILTIN and not name.startswith("sklearn:"):
                raise ConfigError(f"unknown metric {name!r}: expected r, r2 or sklearn:NAME")


def _sklearn_metric(name: str) -> Metric:
    try:
        import sklearn.metrics as skm
    except ImportError:
        raise ConfigError(
            f"metric sklearn:{name} needs scikit-learn: pip install 'neurotwin[encode]'"
        ) from None
    fn = getattr(skm, name, None)
    if not callable(fn):
        raise ConfigError(f"sklearn.metrics has no function {name!r}")
    try:
        raw = "multioutput" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        raw = False

    def per_neuron(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
        if raw:
            return np.asarray(fn(y, pred, multioutput="raw_values"), dtype=np.float64)
        return np.asarray([fn(y[:, i], pred[:, i]) for i in range(y.shape[1])], dtype=np.float64)

    return per_neuron


def metric_functions(names: Sequence[str]) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for name in names:
        if name == "r":
            out[name] = lambda y, p: np.asarray(metrics.correlation(y, p, axis=0))
        elif name == "r2":
            out[name] = metrics.r2_per_column
        else:
            out[name] = _sklearn_metric(name[len("sklearn:") :])
    return out


def score(y: np.ndarray, pred: np.ndarray, functions: dict[str, Metric]) -> dict[str, np.ndarray]:
    """{metric: (N,)} of predictions `pred` (S, N) against responses `y` (S, N)."""
    return {name: fn(y, pred) for name, fn in functions.items()}


def mean_ceiling(repeats: np.ndarray, options: ScoreOptions) -> np.ndarray:
    """sqrt(split-half reliability) per neuron of the repeat average; NaN without 2 repeats."""
    n_rep = repeats.shape[0]
    halves = metrics.random_halves(n_rep, options.ceiling_splits, options.ceiling_seed)
    rel = metrics.split_half_reliability(repeats, halves)
    return np.sqrt(np.where(rel > 0, rel, np.nan))


def single_trial_ceiling(repeats: np.ndarray) -> np.ndarray:
    """sqrt(mean pairwise single-repeat correlation) per neuron, over stimuli with every repeat."""
    complete = np.isfinite(repeats).all(axis=(0, 2))
    rel = metrics.mean_pairwise_correlation(repeats[:, complete])
    return np.sqrt(np.where(rel > 0, rel, np.nan))


def corrected(r: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """r / ceiling (NaN where the ceiling is not positive)."""
    return metrics.noise_corrected_correlation(r, ceiling**2)

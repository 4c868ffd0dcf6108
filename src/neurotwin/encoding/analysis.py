"""Fit and score one layer's design: every split, the repeat average and every single repeat.

For each train/test split the map is fitted to the repeat-averaged responses and (with
`per_repeat`, HuggingMouse's trial-by-trial analysis) to each repeat on its own; when every
stimulus has every repeat, all these targets are columns of one solve. Scores are averaged over
the splits per neuron.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from neurotwin.encoding.regression import RegressionOptions, fit_predict
from neurotwin.encoding.scores import (
    ScoreOptions,
    corrected,
    mean_ceiling,
    metric_functions,
    score,
    single_trial_ceiling,
)
from neurotwin.encoding.splits import SplitOptions, make_splits
from neurotwin.encoding.stimuli import Design

MEAN = None  # the key of the repeat-averaged target (a repeat index otherwise)


def _predictions(design: Design, targets, train, test, regression, device):
    """{target: (test rows, predictions, alphas)}: one solve when no repeat is missing."""
    x, y = design.features, design.responses
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(y, axis=0)
    columns = {t: (mean if t is MEAN else y[t]) for t in targets}
    n = y.shape[2]
    if np.isfinite(y).all():
        pred, alpha = fit_predict(
            regression,
            device,
            x[train],
            np.concatenate([columns[t][train] for t in targets], 1),
            x[test],
        )
        return {
            t: (
                test,
                pred[:, i * n : (i + 1) * n],
                None if alpha is None else alpha[i * n : (i + 1) * n],
            )
            for i, t in enumerate(targets)
        }
    out = {}
    for t in targets:
        ok = np.isfinite(columns[t]).all(axis=1)
        tr, te = train[ok[train]], test[ok[test]]
        if len(tr) < 2 or len(te) < 3:
            continue
        pred, alpha = fit_predict(regression, device, x[tr], columns[t][tr], x[te])
        out[t] = (te, pred, alpha)
    return out


def analyse(
    design: Design,
    splits: SplitOptions,
    regression: RegressionOptions,
    scoring: ScoreOptions,
    device: str = "cpu",
    per_repeat: bool = True,
    where: str = "",
) -> dict[int | None, dict[str, np.ndarray]]:
    """{target: {metric: (N,) mean over splits}}; target None is the repeat average."""
    y = design.responses
    n_rep = y.shape[0]
    functions = metric_functions(["r", *[m for m in scoring.metrics if m != "r"]])
    targets: list[int | None] = [MEAN] + (list(range(n_rep)) if per_repeat and n_rep > 1 else [])
    collected: dict[int | None, dict[str, list[np.ndarray]]] = {t: {} for t in targets}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(y, axis=0)
    for train, test in make_splits(len(design.features), splits, where):
        ceilings = {
            MEAN: mean_ceiling(y[:, test], scoring),
            "single": single_trial_ceiling(y[:, test]),
        }
        for t, (rows, pred, alpha) in _predictions(
            design, targets, train, test, regression, device
        ).items():
            truth = mean[rows] if t is MEAN else y[t][rows]
            values = score(truth, pred, functions)
            ceiling = ceilings[MEAN] if t is MEAN else ceilings["single"]
            values["noise_ceiling"] = ceiling
            values["noise_corrected_r"] = corrected(values["r"], ceiling)
            if alpha is not None:
                values["alpha"] = alpha
            for name, v in values.items():
                collected[t].setdefault(name, []).append(np.asarray(v, np.float64))
    out: dict[int | None, dict[str, np.ndarray]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neurons stay NaN
        for t, values in collected.items():
            if values:
                out[t] = {k: np.nanmean(np.stack(v), axis=0) for k, v in values.items()}
    return out


def metric_names(scoring: ScoreOptions) -> Sequence[str]:
    return ["r", *[m for m in scoring.metrics if m != "r"], "noise_ceiling", "noise_corrected_r"]

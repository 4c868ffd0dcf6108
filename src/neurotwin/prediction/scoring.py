"""Scoring one session and tier: streamed on the device, finished from the written predictions.

`TierScorer` accumulates, batch by batch on the device of the predictions, the per-neuron sums of
the single-trial correlation (model vs responses) and, for synthetic sessions, of the ceiling
(noiseless rates vs responses), over the scored frames of every trial: from
`max(first predicted frame, metrics.frames_to_skip)` to the trial's end in the score space (the
rule validation uses). With stimulus labels it keeps one pair of sums per stimulus as well.

`tier_metrics` finishes a tier from those sums and, for the clips shown at least twice (trials
with equal video hashes), from the written predictions and the responses kept beside them: the
repeat metrics of `neurotwin.metrics`, for all neurons, per visual area and per stimulus.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from neurotwin import metrics as M
from neurotwin.prediction import breakdown
from neurotwin.prediction.outputs import BREAKDOWNS, COUNT_KEYS, METRIC_KEYS
from neurotwin.prediction.space import Precision, ScoreSpace
from neurotwin.prediction.stream import TierPlan, TrialBatch

log = logging.getLogger(__name__)

ALL = ""  # the accumulators of every trial (others are named by their stimulus)


class TierScorer:
    """The streamed correlations of one plan (see the module); `add` on the device, `sums`
    hands them over once the plan is done."""

    def __init__(
        self,
        plan: TierPlan,
        skip: int,
        space: ScoreSpace,
        precision: Precision | None,
        stimuli: np.ndarray | None = None,
    ) -> None:
        self.plan, self.skip, self.space, self.precision = plan, skip, space, precision
        self.stimuli = stimuli
        self.model: dict[str, M.CorrelationAccumulator] = {}
        self.ceiling: dict[str, M.CorrelationAccumulator] = {}

    def add(self, batch: TrialBatch, rates: torch.Tensor, first: int) -> None:
        """Add a batch: `rates` (B, N, T - first) in original units, on the device."""
        if self.plan.hidden:
            return
        device = rates.device
        responses = batch.responses.to(device, non_blocking=True)
        noiseless = None
        if batch.noiseless is not None:
            noiseless = batch.noiseless.to(device, non_blocking=True)
        start = max(first, self.skip)
        ends = [self.space.end(batch.length, e) for e in batch.loader_ends]
        for end in sorted(set(ends)):
            if start >= end:
                continue
            rows = [j for j, e in enumerate(ends) if e == end]
            pick = slice(None) if len(rows) == len(ends) else rows
            r = responses[pick, :, start:end]
            p = rates[pick, :, start - first : end - first]
            n = None if noiseless is None else noiseless[pick, :, start:end]
            if self.precision is not None:
                r, p = self.precision.apply(r, start, end), self.precision.apply(p, start, end)
                n = None if n is None else self.precision.apply(n, start, end)
            self._add(ALL, r, p, n)
            if self.stimuli is not None:
                labels = [str(self.stimuli[batch.positions[j]]) for j in rows]
                for label in sorted(set(labels)):
                    sel = [k for k, x in enumerate(labels) if x == label]
                    self._add(label, r[sel], p[sel], None if n is None else n[sel])

    def _add(self, name: str, r, p, n) -> None:
        self.model.setdefault(name, M.CorrelationAccumulator()).add(r, p)
        if n is not None:
            self.ceiling.setdefault(name, M.CorrelationAccumulator()).add(r, n)

    def sums(self) -> dict[str, torch.Tensor]:
        """The sums by name ("model", "ceiling", "model|LABEL", ...), still on the device."""
        out = {}
        for kind, accs in (("model", self.model), ("ceiling", self.ceiling)):
            for name, acc in accs.items():
                if acc.stats is not None:
                    out[kind if name == ALL else f"{kind}|{name}"] = acc.stats
        return out


def _correlations(stats: torch.Tensor | None) -> np.ndarray | None:
    """Per-neuron correlations from an accumulator's sums; None without frames."""
    if stats is None or int(stats[0].max()) == 0:
        return None
    acc = M.CorrelationAccumulator()
    acc.stats = stats.to("cpu", torch.float64)
    values = acc.result().numpy()
    return np.where(np.isfinite(values), values, 0.0)


def clean(v: Any) -> Any:
    """JSON-ready: floats (NaN -> None), ints."""
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    v = float(v)
    return None if math.isnan(v) else v


class Repeats:
    """The scored frames of every trial of a clip shown >= 2 times, as float64 (N, T') arrays in
    the score space, and the groups of their positions."""

    def __init__(self, resp: list[np.ndarray], pred: list[np.ndarray], groups, owners) -> None:
        self.resp, self.pred, self.groups, self.owners = resp, pred, groups, owners

    @classmethod
    def load(
        cls,
        clip_keys: Sequence[str],
        first: np.ndarray,
        ends: np.ndarray,
        skip: int,
        predictions: np.ndarray,
        responses: np.ndarray,
        precision: Precision | None,
    ) -> Repeats:
        resp, pred, groups, owners = [], [], [], []
        for g in M.group_repeats(clip_keys):
            if len(g) < 2:
                continue
            end = int(min(ends[i] for i in g))  # repeats of a clip: one length
            ids = []
            for i in g.tolist():
                start = min(max(int(first[i]), skip), end)
                r = np.asarray(responses[i, :, start:end], dtype=np.float64)
                p = np.asarray(predictions[i, :, start:end], dtype=np.float64)
                if precision is not None:
                    r, p = precision.apply(r, start, end), precision.apply(p, start, end)
                resp.append(r)
                pred.append(p)
                ids.append(len(resp) - 1)
                owners.append(i)
            groups.append(ids)
        return cls(resp, pred, groups, np.asarray(owners, dtype=np.int64))

    def metrics(self, neurons: np.ndarray | None = None, trials: np.ndarray | None = None):
        """correlation_to_average, feve, normalized_correlation of the neurons (mask) and
        trials (mask over the tier's positions) given; {} without repeats."""
        groups = self.groups
        if trials is not None:
            groups = [[k for k in g if trials[self.owners[k]]] for g in groups]
            groups = [g for g in groups if len(g) >= 2]
        if not groups:
            return {}
        used = sorted({k for g in groups for k in g})
        resp = {k: self.resp[k] for k in used}
        pred = {k: self.pred[k] for k in used}
        if neurons is not None:
            resp = {k: v[neurons] for k, v in resp.items()}
            pred = {k: v[neurons] for k, v in pred.items()}
        index = {k: j for j, k in enumerate(used)}
        r, p = [resp[k] for k in used], [pred[k] for k in used]
        positions = [[index[k] for k in g] for g in groups]
        return {
            "correlation_to_average": M.correlation_to_average(r, p, positions, skip=0),
            "feve": M.feve(r, p, positions, skip=0),
            "normalized_correlation": M.normalized_correlation(r, p, positions, skip=0),
        }


def _entry(
    model: np.ndarray | None,
    ceiling: np.ndarray | None,
    repeats: Repeats | None,
    n_trials: int,
    n_neurons: int,
    neurons: np.ndarray | None = None,
    trials: np.ndarray | None = None,
) -> dict[str, Any]:
    """One metrics entry: the model's (and the ceiling's) correlations averaged over `neurons`
    (a mask; None: all), the repeat metrics of those neurons and `trials`."""
    m: dict[str, Any] = {k: None for k in METRIC_KEYS}
    m.update(n_trials=int(n_trials), n_neurons=int(n_neurons))
    if model is None:
        return m
    pick = slice(None) if neurons is None else neurons
    m["single_trial_correlation"] = float(model[pick].mean())
    if repeats is not None:
        m.update(repeats.metrics(neurons, trials))
    if ceiling is not None:
        m["ceiling_correlation"] = float(ceiling[pick].mean())
        if m["ceiling_correlation"] > 0:
            m["fraction_of_ceiling"] = m["single_trial_correlation"] / m["ceiling_correlation"]
    return {k: clean(v) for k, v in m.items()}


def tier_metrics(
    plan: TierPlan,
    sums: dict[str, torch.Tensor],
    repeats: Repeats | None,
    areas: np.ndarray | None,
    stimuli: np.ndarray | None,
    skip: int,
) -> dict[str, Any]:
    """The metrics entry of one session and tier (null metrics where responses are hidden),
    with "by_area" and "by_stimulus" where the session has those labels."""
    n_trials, n_neurons = len(plan), plan.session.n_neurons
    if plan.hidden:
        return {**{k: None for k in METRIC_KEYS}, "n_trials": n_trials, "n_neurons": n_neurons}
    model = _correlations(sums.get("model"))
    if model is None:
        log.warning(
            "%s %s: no trial is longer than %d frames; no metrics",
            plan.session.name,
            plan.tier,
            skip,
        )
        return {**{k: None for k in METRIC_KEYS}, "n_trials": n_trials, "n_neurons": n_neurons}
    ceiling = _correlations(sums.get("ceiling"))
    entry = _entry(model, ceiling, repeats, n_trials, n_neurons)
    by_area = {
        label: _entry(model, ceiling, repeats, n_trials, int(mask.sum()), neurons=mask)
        for label, mask in breakdown.groups(areas).items()
    }
    by_stimulus = {}
    for label, mask in breakdown.groups(stimuli).items():
        by_stimulus[label] = _entry(
            _correlations(sums.get(f"model|{label}")),
            _correlations(sums.get(f"ceiling|{label}")),
            repeats,
            int(mask.sum()),
            n_neurons,
            trials=mask,
        )
    if by_area:
        entry["by_area"] = by_area
    if by_stimulus:
        entry["by_stimulus"] = by_stimulus
    return entry


def _mean_entry(rows: list[dict[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for k in METRIC_KEYS:
        values = [r[k] for r in rows if r.get(k) is not None]
        entry[k] = float(np.mean(values)) if values else None
    for k in COUNT_KEYS:
        entry[k] = int(sum(r[k] for r in rows))
    return entry


def mean_over_sessions(per_session: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per tier: the mean of each metric over sessions that have it; counts are summed. The
    breakdowns likewise, per label over the sessions that have that label."""
    tiers: list[str] = []
    for by_tier in per_session.values():
        tiers += [t for t in by_tier if t not in tiers]
    out: dict[str, Any] = {}
    for tier in tiers:
        rows = [by_tier[tier] for by_tier in per_session.values() if tier in by_tier]
        entry = _mean_entry(rows)
        for key in BREAKDOWNS:
            labels = sorted({label for r in rows for label in r.get(key, {})})
            if labels:
                entry[key] = {
                    label: _mean_entry([r[key][label] for r in rows if label in r.get(key, {})])
                    for label in labels
                }
        out[tier] = entry
    return out


def metrics_document(results: Sequence[Any], **header: Any) -> dict[str, Any]:
    """The content of metrics.json: `header` (score_space, checkpoint, ...), every session's
    entries by tier (in prediction order) and their means over sessions."""
    per_session: dict[str, dict[str, Any]] = {}
    for r in results:
        per_session.setdefault(r.session, {})[r.tier] = r.metrics
    return {**header, "sessions": per_session, "mean": mean_over_sessions(per_session)}

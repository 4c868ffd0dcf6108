"""Ensembles: the average of several runs' predictions, scored and written like one run's.

    predict_ensemble(["runs/a", "runs/b"], "runs/ensemble")
    python predict.py --output_dir runs/a runs/b --ensemble_dir runs/ensemble

Every member is predicted as a single run would be (`predict_run`, into its own
`RUN/predictions/`), unless its predictions are already those asked for: same checkpoint file
(path, size, modification time), tiers, score space and data folder. The members must hold the
same sessions, tiers, trials and neurons (ConfigError naming the first difference). The ensemble's
rate of a trial is the mean of the members' written predictions (original units), over the frames
every member predicted; it is then scored, written and submitted exactly as one run's
(`neurotwin.prediction.engine`), into `ENSEMBLE_DIR/predictions/`. Its metrics.json holds each
member's metrics under "members", and the printed table ends with a comparison.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotwin.data import native
from neurotwin.errors import ConfigError
from neurotwin.files import staged_folder
from neurotwin.predict import load_run, predict_run
from neurotwin.prediction.engine import predict_plans
from neurotwin.prediction.outputs import format_table, open_predictions, write_metrics
from neurotwin.prediction.scoring import metrics_document
from neurotwin.prediction.space import ScoreSpace
from neurotwin.prediction.stream import TierPlan, TrialBatch
from neurotwin.run import RunFolder, pick_device

log = logging.getLogger(__name__)

ENSEMBLE_BATCH_SIZE = 8


def _request(tiers: Sequence[str] | None, score_space: str) -> dict[str, Any]:
    return {
        "tiers": None if tiers is None else list(dict.fromkeys(tiers)),
        "score_space": score_space,
    }


def reusable(
    run: Path, checkpoint: str | os.PathLike, data_dir: Path, request: dict
) -> dict | None:
    """The member's metrics.json when its predictions are the ones asked for, else None."""
    path = RunFolder(run).predictions / "metrics.json"
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
        written = document.get("checkpoint") or {}
        ckpt = RunFolder(run).checkpoint(checkpoint)
        stat = ckpt.stat()
    except (OSError, ValueError):
        return None
    same = (
        written.get("path") == str(ckpt.resolve())
        and written.get("size") == stat.st_size
        and written.get("mtime_ns") == stat.st_mtime_ns
        and document.get("tiers") == request["tiers"]
        and document.get("score_space") == request["score_space"]
        and document.get("data_dir") == str(data_dir.resolve())
    )
    return document if same else None


def _layout(document: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return [(s, list(by_tier)) for s, by_tier in document["sessions"].items()]


def check_members(runs: Sequence[Path], documents: Sequence[dict[str, Any]]) -> None:
    """Same sessions and tiers in every member (ConfigError naming the first that differs)."""
    want = _layout(documents[0])
    for run, document in zip(runs[1:], documents[1:]):
        got = _layout(document)
        if got != want:
            raise ConfigError(
                f"--ensemble_dir: {run} predicts sessions/tiers {got}, but {runs[0]} predicts "
                f"{want}; ensemble members must share sessions and tiers"
            )


class AveragedRates:
    """The mean of the members' written predictions of a batch's trials (see the module)."""

    input_transforms = None  # the batches need no model inputs

    def __init__(self, runs: Sequence[Path], plans: Sequence[TierPlan], device: torch.device):
        self.runs, self.device = list(runs), device
        self.members: dict[tuple[str, str], list[np.ndarray]] = {}
        for plan in plans:
            self.members[plan.key] = [self._open(run, plan) for run in self.runs]

    def _open(self, run: Path, plan: TierPlan) -> np.ndarray:
        path = RunFolder(run).predictions / plan.session.name / f"{plan.tier}.npz"
        if not path.is_file():
            raise ConfigError(f"--ensemble_dir: {path} not found (predictions of member {run})")
        with np.load(path) as z:
            for name, want in (("trial_ids", plan.trial_ids), ("unit_ids", plan.session.unit_ids)):
                if not np.array_equal(z[name], want):
                    raise ConfigError(
                        f"--ensemble_dir: {path} [{name}] differs from the data's "
                        f"{plan.session.name} {plan.tier}; members must predict the same trials "
                        "and neurons"
                    )
        return open_predictions(path)

    def rates(self, plan: TierPlan, batch: TrialBatch) -> torch.Tensor:
        t = batch.length
        rows = [np.asarray(p[batch.positions, :, :t]) for p in self.members[plan.key]]
        predicted = [~np.isnan(r[:, 0, :]).all(axis=0) for r in rows]  # frames with predictions
        first = max(int(np.argmax(f)) if f.any() else t for f in predicted)
        stack = np.stack([r[:, :, first:] for r in rows])
        if first >= t or np.isnan(stack).any():
            raise ConfigError(
                f"--ensemble_dir: {plan.session.name} {plan.tier} trials {batch.trial_ids}: the "
                f"members' predictions leave no common frames"
            )
        return torch.from_numpy(stack.mean(axis=0, dtype=np.float64).astype(np.float32)).to(
            self.device
        )


def predict_ensemble(
    runs: Sequence[str | os.PathLike],
    ensemble_dir: str | os.PathLike,
    checkpoint: str | os.PathLike = "best",
    tiers: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    score_space: str = "raw",
    compile: bool | None = None,
    submission: bool = True,
    verbose: int = 1,
) -> dict[str, Any]:
    """Predict the members (or reuse their predictions), then average, score and write the
    ensemble into `ensemble_dir/predictions/`; returns its metrics (metrics.json)."""
    runs = [Path(r) for r in runs]
    out = Path(ensemble_dir)
    if len(runs) < 2:
        raise ConfigError("--ensemble_dir: give at least two runs to --output_dir")
    resolved = [r.resolve() for r in runs]
    if len(set(resolved)) < len(runs):
        raise ConfigError(f"--output_dir: a run is given twice: {[str(r) for r in runs]}")
    if out.resolve() in resolved:
        raise ConfigError(f"--ensemble_dir: {out} is one of the members; give another folder")
    config, _, _ = load_run(runs[0], checkpoint)
    data = Path(data_dir) if data_dir is not None else Path(config.data.data_dir)
    request = _request(tiers, score_space)
    documents = []
    for run in runs:
        document = reusable(run, checkpoint, data, request)
        if document is None:
            log.info("predicting member %s", run)
            document = predict_run(
                run, checkpoint, tiers, data, device, batch_size, num_workers, score_space,
                compile, submission, verbose=0,
            )  # fmt: skip
        else:
            log.info("member %s: reusing its predictions", run)
        documents.append(document)
    check_members(runs, documents)

    paths = {p.name: p for p in native.find_sessions(data)}
    plans = []
    for name, by_tier in documents[0]["sessions"].items():
        session = native.NativeSession(paths[name], limit_neurons=config.data.limit_neurons)
        plans += [TierPlan.of(session, tier) for tier in by_tier]
    dev = pick_device(device)
    source = AveragedRates(runs, plans, dev)
    workers = config.data.num_workers if num_workers is None else num_workers
    space = ScoreSpace(score_space)
    with staged_folder(RunFolder(out).predictions) as tmp:
        results = predict_plans(
            plans, source, tmp, space, dev, batch_size or ENSEMBLE_BATCH_SIZE, workers,
            submission=submission, verbose=verbose,
        )  # fmt: skip
        document = metrics_document(
            results,
            score_space=space.name,
            checkpoint=None,
            data_dir=str(data.resolve()),
            tiers=request["tiers"],
            members=[
                {"run": str(r), "checkpoint": d["checkpoint"], "sessions": d["sessions"], "mean": d["mean"]}
                for r, d in zip(runs, documents)
            ],
        )  # fmt: skip
        write_metrics(tmp, document)
    if verbose:
        print(format_table(document, {(r.session, r.tier) for r in results if r.hidden}))
        print(member_table(document))
    log.info("ensemble of %d runs written to %s", len(runs), RunFolder(out).predictions)
    return document


def member_table(document: dict[str, Any]) -> str:
    """Mean single-trial correlation per tier of every member and of the ensemble."""
    tiers = [t for t, m in document["mean"].items() if m["single_trial_correlation"] is not None]
    rows = [
        ("member " + str(i + 1), m["run"], m["mean"]) for i, m in enumerate(document["members"])
    ]
    rows.append(("ensemble", f"{len(document['members'])} runs", document["mean"]))
    heads = ["", "run", *[f"single r {t}" for t in tiers]]
    lines = [
        [a, b, *(_number(mean.get(t, {}).get("single_trial_correlation")) for t in tiers)]
        for a, b, mean in rows
    ]
    widths = [max(len(r[i]) for r in [heads, *lines]) for i in range(len(heads))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(heads), "-" * len(fmt(heads)), *map(fmt, lines)])


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

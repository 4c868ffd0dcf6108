"""The prediction loop: trials stream in, rates come out of a `RateSource`, outputs go to a thread.

For every batch of `trial_stream` (read once, by workers, in pinned memory) the loop asks the
rate source for the rates in original response units (a model's forward pass, `ModelRates`, or
an ensemble's average of written predictions), adds them to the tier's `TierScorer` on the
device, starts their copy to the host and hands them to the `PredictionWriter`. When a tier's
last batch is through, the writer finishes it (`finish_tier`: metrics, the .npz, the submission
rows). The GPU waits on nothing but the next batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from neurotwin import metrics as M
from neurotwin.data import native
from neurotwin.data.dataset import InputTransform, OutputTransform
from neurotwin.errors import CheckpointError
from neurotwin.prediction import breakdown
from neurotwin.prediction.outputs import TierResult, _short, write_npz
from neurotwin.prediction.scoring import Repeats, TierScorer, tier_metrics
from neurotwin.prediction.space import Precision, ScoreSpace
from neurotwin.prediction.stream import (
    TierPlan,
    TrialBatch,
    TrialReader,
    plan_batches,
    trial_stream,
)
from neurotwin.prediction.submission import SubmissionWriter
from neurotwin.prediction.writer import PredictionWriter, Rows, TierDone, TierFiles, to_host
from neurotwin.run import autocast

log = logging.getLogger(__name__)


class RateSource(Protocol):
    """Where the rates of a batch come from."""

    input_transforms: dict[str, InputTransform] | None  # None: the batches need no model inputs

    def rates(self, plan: TierPlan, batch: TrialBatch) -> torch.Tensor:
        """(B, N, T') float32 rates in original response units, for the last T' <= T frames."""
        ...


# Trial lengths given a compiled graph each: torch.compile keeps at most 8 graphs of a function
# (dynamo's recompile limit), and each costs a compilation; real data has a few odd lengths.
MAX_COMPILED_LENGTHS = 4


def lengths_to_compile(
    plans: Sequence[TierPlan], batch_size: int, limit: int = MAX_COMPILED_LENGTHS
) -> set[int]:
    """The trial lengths worth a compiled graph: those of at least one full batch of trials, the
    most common first, at most `limit`. Trials of other lengths run eagerly and unpadded."""
    counts = Counter(int(n) for plan in plans for n in plan.lengths.tolist())
    common = [n for n, c in counts.most_common() if c >= batch_size]
    return set(common[:limit])


class ModelRates:
    """A model's forward pass: inputs to the device, bf16 autocast where the run used it, the
    output transform undone. A batch that does not fit in GPU memory is split in halves.

    With a compiled core (`pad_to`: its batch size), batches of the `compiled_lengths` are padded
    to `pad_to` trials (one graph per length); other lengths run eagerly, as they are."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        use_autocast: bool,
        input_transforms: dict[str, InputTransform],
        output_transforms: dict[str, OutputTransform],
        pad_to: int | None = None,
        compiled_lengths: set[int] | None = None,
    ) -> None:
        self.model, self.device, self.use_autocast = model, device, use_autocast
        self.input_transforms, self.output_transforms = input_transforms, output_transforms
        self.pad_to = pad_to  # compiled cores: every batch this size (one shape per length)
        self.compiled_lengths = compiled_lengths  # None: every length compiled

    def forward(self, session: str, video, behavior, pupil, eager: bool = False) -> torch.Tensor:
        """The model's rates of inputs already on the device (what the benchmark times)."""
        stance = torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext()
        with stance, torch.inference_mode(), autocast(self.device, self.use_autocast):
            return self.model(video, session, behavior, pupil)

    def fit(self, length: int, inputs: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        """(inputs padded to `pad_to` trials, False) for a compiled length, else (inputs, True):
        run eagerly."""
        if not self.pad_to:
            return inputs, False
        if self.compiled_lengths is not None and length not in self.compiled_lengths:
            return inputs, True
        b = inputs[0].shape[0]
        if b < self.pad_to:
            inputs = [torch.cat([x, x[-1:].expand(self.pad_to - b, *x.shape[1:])]) for x in inputs]
        return inputs, False

    def rates(self, plan: TierPlan, batch: TrialBatch) -> torch.Tensor:
        inputs = [
            x.to(self.device, non_blocking=True)
            for x in (batch.video, batch.behavior, batch.pupil_center)
        ]
        b = len(batch)
        inputs, eager = self.fit(batch.length, inputs)
        out = self._split_forward(plan.session.name, inputs, eager)[:b]
        with torch.inference_mode():
            out = self.output_transforms[plan.session.name].inverse(out.float())
        n, t = plan.session.n_neurons, batch.length
        if out.ndim != 3 or out.shape[:2] != (b, n) or not 0 < out.shape[-1] <= t:
            raise CheckpointError(
                f"model output {tuple(out.shape)} does not fit {b} trials of {n} neurons and "
                f"{t} frames"
            )
        return out

    def _split_forward(
        self, session: str, inputs: list[torch.Tensor], eager: bool = False
    ) -> torch.Tensor:
        try:
            return self.forward(session, *inputs, eager=eager)
        except torch.cuda.OutOfMemoryError:
            if inputs[0].shape[0] == 1:
                raise
            torch.cuda.empty_cache()
            half = inputs[0].shape[0] // 2
            log.info("a batch of %d trials did not fit: predicting it in halves", len(inputs[0]))
            parts = [[x[:half] for x in inputs], [x[half:] for x in inputs]]
            return torch.cat([self._split_forward(session, p, eager) for p in parts])


@dataclass
class TierContext:
    """What finishing a tier needs besides its files: the rule and labels of its scoring."""

    plan: TierPlan
    skip: int
    space: ScoreSpace
    precision: Precision | None
    areas: np.ndarray | None
    stimuli: np.ndarray | None


def _precisions(plans: Sequence[TierPlan], needed: bool) -> dict[str, Precision | None]:
    out: dict[str, Precision | None] = {}
    for plan in plans:
        if plan.session.name not in out:
            out[plan.session.name] = Precision(plan.session) if needed else None
    return out


def predict_plans(
    plans: Sequence[TierPlan],
    source: RateSource,
    folder: Path,
    space: ScoreSpace,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    submission: bool = True,
    verbose: int = 1,
) -> list[TierResult]:
    """Predict and score every plan, writing `folder/{session}/{tier}.npz` and (for the test
    tiers, unless `submission` is off) the competition's files; returns each plan's result."""
    test_plans = [p for p in plans if p.tier in native.TEST_TIERS]
    submit = SubmissionWriter(folder) if submission and test_plans else None
    if submit is not None:
        submit.check(test_plans)
    precisions = _precisions(plans, space.normalized or submit is not None)
    contexts = [
        TierContext(
            plan,
            M.frames_to_skip(plan.lengths),
            space,
            precisions[plan.session.name] if space.normalized else None,
            breakdown.neuron_areas(plan.session),
            breakdown.trial_stimuli(plan.session, plan.trial_ids),
        )
        for plan in plans
    ]

    def finish(p: int, files: TierFiles, sums: dict[str, torch.Tensor]) -> TierResult:
        result = finish_tier(contexts[p], files, sums, folder)
        if submit is not None and result.tier in native.TEST_TIERS:
            submit.add(result, precisions[result.session])
        return result

    keys = plan_batches(plans, batch_size)
    remaining = {p: sum(1 for k in keys if k[0] == p) for p in range(len(plans))}
    scorers = {
        p: TierScorer(c.plan, c.skip, c.space, c.precision, c.stimuli)
        for p, c in enumerate(contexts)
    }
    reader = TrialReader(plans, source.input_transforms)
    stream = trial_stream(reader, keys, num_workers, pin_memory=device.type == "cuda")
    writer = PredictionWriter(folder, plans, finish)
    total = sum(len(p) for p in plans)
    bar = tqdm(total=total, desc="predict", disable=None if verbose else True, leave=False)
    try:
        for batch in stream:
            plan = plans[batch.plan]
            bar.set_description(f"{_short(plan.session.name, 24)} {plan.tier}")
            rates = source.rates(plan, batch)
            first = batch.length - rates.shape[-1]
            scorers[batch.plan].add(batch, rates, first)
            host, ready = to_host(rates)
            writer.put(
                Rows(
                    batch.plan,
                    batch.positions,
                    first,
                    batch.length,
                    host,
                    ready,
                    batch.responses,
                    batch.clip_keys,
                    batch.loader_ends,
                )
            )
            remaining[batch.plan] -= 1
            if remaining[batch.plan] == 0:
                writer.put(TierDone(batch.plan, *_host_sums(scorers.pop(batch.plan).sums())))
            bar.update(len(batch))
        results = writer.close()
    except BaseException:
        writer.abort()
        if submit is not None:
            submit.abort()
        raise
    finally:
        bar.close()
    if submit is not None:
        submit.close()
    return results


def _host_sums(sums: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
    if not sums or next(iter(sums.values())).device.type != "cuda":
        return {k: v.cpu() for k, v in sums.items()}, None
    host = {}
    for k, v in sums.items():
        host[k] = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
        host[k].copy_(v, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def finish_tier(
    context: TierContext, files: TierFiles, sums: dict[str, torch.Tensor], folder: Path
) -> TierResult:
    """Metrics of a finished tier, its .npz written (in the writer thread)."""
    plan = context.plan
    repeats = None
    if not plan.hidden:
        ends = np.array(
            [context.space.end(int(t), int(e)) for t, e in zip(plan.lengths, files.loader_ends)]
        )
        repeats = Repeats.load(
            files.clip_keys,
            files.first,
            ends,
            context.skip,
            files.predictions,
            files.responses,
            context.precision,
        )
    metrics = tier_metrics(plan, sums, repeats, context.areas, context.stimuli, context.skip)
    result = TierResult(
        session=plan.session.name,
        tier=plan.tier,
        unit_ids=np.asarray(plan.session.unit_ids),
        trial_ids=plan.trial_ids,
        frame_counts=plan.lengths,
        first_frames=files.first,
        clip_keys=list(files.clip_keys),
        loader_frames=files.loader_ends,
        hidden=plan.hidden,
        metrics=metrics,
        npz=folder / plan.session.name / f"{plan.tier}.npz",
    )
    files.close()
    write_npz(result.npz, files.npy, result)
    return result

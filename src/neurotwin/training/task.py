"""What a model family gives the training loop: a `TrainingTask`.

The loop (`neurotwin.training.loop.Trainer`) does what every family needs done the same way:
per-epoch seeds, gradient accumulation over batches and micro-batches, clipping, the optimiser
and its plateau schedule with early stopping, the memory probe, checkpoints and bit-identical
resume, progress bars, metrics.csv, wandb and DistributedDataParallel. A family supplies its
data and model (`build`), its training batches (`batches`), the loss of a batch (`loss`), and
its validation (`validate`, whose `score` early stopping maximises); optionally its optimiser's
parameter groups (`parameter_groups`) and what changes with the epoch (`start_epoch`). The
video model's task is `neurotwin.training.video.VideoTask`, the spike models'
`neurotwin.training.spikes.SpikeTask`; docs/architecture.md shows a family plugging in.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neurotwin.errors import ConfigError
from neurotwin.run import autocast
from neurotwin.training.distributed import DistInfo

Batch = dict[str, Any]  # tensors (and lists) with the items of the batch along the first axis


@dataclass
class StepLoss:
    """The loss of (a micro-batch of) one training batch."""

    objective: torch.Tensor  # what backward() runs on: scaled for the batch, regularisers included
    value: torch.Tensor  # the loss summed over the part, detached, 0-dim on the device
    count: int  # the elements `value` sums over: train loss = sum(value) / sum(count)
    # terms of the loss to log, summed over the part like `value` (detached, 0-dim, on the
    # device): metrics.csv gets train_{name} = sum over the epoch / sum(count)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def plus(self, other: StepLoss) -> StepLoss:
        """The loss of both parts together (objectives detached)."""
        parts = dict(self.parts)
        for name, value in other.parts.items():
            parts[name] = parts[name] + value if name in parts else value
        return StepLoss(
            self.objective.detach() + other.objective.detach(),
            self.value + other.value,
            self.count + other.count,
            parts,
        )


@dataclass
class Validation:
    """What validating the model gave."""

    score: float  # higher is better: the value early stopping and the plateau schedule watch
    loss: float  # the mean validation loss
    columns: dict[str, float] = field(default_factory=dict)  # metrics.csv / wandb columns


@dataclass
class Runtime:
    """Where a training runs (rank, device) and whether it computes in bf16."""

    info: DistInfo
    use_autocast: bool
    seed: int

    @property
    def device(self) -> torch.device:
        return self.info.device

    def precision(self) -> contextlib.AbstractContextManager:
        """The context of every forward pass: bf16 autocast when the run uses it."""
        return autocast(self.device, self.use_autocast)


class TrainingTask(ABC):
    """A model family's part of training. `build` sets `model`, `groups` (the keys of training
    batches, e.g. sessions) and `batch_size` (items in a full training batch)."""

    score_name = "score"  # what the epoch line calls Validation.score, e.g. "corr"
    score_title = "score"  # and the line that closes the run, e.g. "correlation"
    model: nn.Module
    groups: list[str]
    batch_size: int

    @abstractmethod
    def build(self, runtime: Runtime) -> None:
        """Open the data and build `self.model` on `runtime.device` (seeded by the loop)."""

    def start_epoch(self, epoch: int) -> None:
        """Called before training epoch `epoch` (1-based), e.g. for a weight that warms up."""
        return None

    @abstractmethod
    def batches(self, epoch: int) -> Iterable[tuple[str, Batch]]:
        """This rank's training batches of `epoch` as (group, batch), in training order (a
        function of the seed and `epoch` only, so that a resumed run sees the same batches)."""

    @abstractmethod
    def batch_counts(self) -> dict[str, int]:
        """Training batches per group in one epoch on this rank (equal on every rank)."""

    @abstractmethod
    def loss(self, model: nn.Module, group: str, batch: Batch, batch_size: int) -> StepLoss:
        """Forward pass and loss of `batch` (all or part of a batch of `batch_size` items):
        the objective is scaled so that the parts of a batch add up to the whole batch's."""

    @abstractmethod
    def validate(self, model: nn.Module) -> Validation:
        """Score `model` (in eval mode) on the validation data, summed over ranks."""

    def count(self, batch: Batch) -> int:
        """Items in a batch (the first axis of its first tensor)."""
        return next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]

    def split(self, batch: Batch, start: int, stop: int) -> Batch:
        """Items start..stop of a batch (a micro-batch)."""
        return {
            k: (v[start:stop] if isinstance(v, (torch.Tensor, list, tuple)) else v)
            for k, v in batch.items()
        }

    def probe_batch(self) -> tuple[str, Batch]:
        """The training batch the memory probe tries (default: the first of epoch 1)."""
        return next(iter(self.batches(1)))

    def parameter_groups(self, train: Any) -> list[dict[str, Any]]:
        """The optimiser's parameter groups, each {"name", "params", "lr", "weight_decay"}
        (default: every trainable parameter in one group at `train.lr`, `train.weight_decay`)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters")
        return [
            {"name": "all", "params": params, "lr": train.lr, "weight_decay": train.weight_decay}
        ]

    def compile_target(self) -> nn.Module:
        """The module `--compile` compiles (default: the whole model)."""
        return self.model

    def state(self) -> dict[str, Any]:
        """Entries this family adds to every checkpoint (plain values and tensors)."""
        return {}

    def load_state(self, state: dict[str, Any], path: str) -> None:
        """Check a checkpoint being resumed against this task's data (CheckpointError);
        default: nothing to check."""
        return None

    def describe(self) -> list[str]:
        """Lines the run starts with (model, data)."""
        return []

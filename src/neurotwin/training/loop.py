"""The training loop every model family shares: `Trainer(task, config).fit()`.

A family supplies a `TrainingTask` (neurotwin.training.task): its data and model, its batches,
the loss of a batch and its validation. The loop does the rest, the same way for every family:

- Epochs: each reseeds torch/numpy/random from (seed, epoch, rank), and the task's batches are a
  function of (seed, epoch), so a run resumed from `last.pt` continues exactly as the
  uninterrupted run would have.
- Steps: a batch of B items is split into micro-batches of m items (`micro_batch_size`; the
  task scales each part's loss by m / B, so the accumulated gradient is the full batch's);
  gradients are accumulated over as many batches as there are groups (`accumulate_sessions`),
  then clipped (fixed norm or AutoClip) and applied. No host read-back per step: loss sums and
  gradient norms stay on the device and are read once per epoch. With `--optimizer lbfgs`
  (full-batch L-BFGS) an epoch is one optimiser step on the mean objective of all its batches.
- Validation after every epoch (schedule-free optimisers switched to their averaged weights for
  it and for the checkpoints, and so is the EMA of the weights, `ema_decay`); the plateau
  schedule watches the task's score: LR reductions that restore the best weights, early
  stopping; or a warm-up + cosine schedule stepped every optimiser step (`lr_schedule cosine`).
- Checkpoints (`best.pt` when the score improved, `last.pt` every epoch, written atomically),
  resume, progress bars, metrics.csv, train.log, wandb; DistributedDataParallel under torchrun.
  The run ends with the best epoch's weights in the model (`restore_best`; false: the last).
- Numerics: bf16 autocast (the task's forward passes run in `runtime.precision()`), gradient
  checkpointing, torch.compile, and the memory probe (neurotwin.training.memory).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotwin import config as cfg
from neurotwin.errors import CheckpointError, ConfigError, NeurotwinError
from neurotwin.files import remove_stale_temporaries
from neurotwin.run import RunFolder, autocast_enabled, find_checkpoint, pick_device
from neurotwin.training import distributed
from neurotwin.training.checkpoint import (
    VERSION,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from neurotwin.training.ema import WeightEMA
from neurotwin.training.logging import LOG_FILE, LOG_ONLY, RunLogger
from neurotwin.training.memory import Checkpointing, MemoryProbe, fits_in_memory
from neurotwin.training.optim import (
    GradClipper,
    Plateau,
    WarmupCosine,
    build_optimizer,
    current_lr,
    is_schedule_free,
    set_optimizer_mode,
)
from neurotwin.training.task import Batch, Runtime, StepLoss, TrainingTask, Validation


def check_run(config: Any) -> None:
    """Every option's range check (values may have been set after construction), and that what
    the run asks for is installed."""
    cfg.check_config(config)
    if config.run.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "--wandb: wandb is not installed; install it with `pip install neurotwin[wandb]` "
            "or leave out --wandb"
        )


def _epoch_of(path: Path) -> int | None:
    """The epoch a checkpoint file holds; None if it is missing or unreadable."""
    try:
        return int(load_checkpoint(path)["epoch"]) if path.is_file() else None
    except CheckpointError:
        return None


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed that depends only on (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Batch, device: torch.device) -> Batch:
    non_blocking = device.type == "cuda"
    return {
        k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
        for k, v in batch.items()
    }


@dataclass
class EpochSums:
    """What an epoch's batches added up to, kept on the device (read back once per epoch)."""

    loss: dict[str, torch.Tensor]  # per group
    elements: dict[str, int]
    objective: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    items: int = 0
    norms: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def empty(cls, groups: list[str], device: torch.device) -> EpochSums:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return cls({g: zero for g in groups}, {g: 0 for g in groups}, zero)

    def add(self, group: str, step: StepLoss, items: int) -> None:
        self.loss[group] = self.loss[group] + step.value
        self.elements[group] += step.count
        self.objective = self.objective + step.objective.double()
        for name, value in step.parts.items():
            self.parts[name] = self.parts[name] + value if name in self.parts else value
        self.items += items


class Trainer:
    """One training run of `task` (one rank of it under torchrun). Build, then `fit()`.

    `config` has the sections `train` (TrainConfig) and `run` (RunConfig); the whole of it is
    saved as the run's config.yaml and in every checkpoint."""

    def __init__(self, task: TrainingTask, config: Any, info: distributed.DistInfo | None = None):
        check_run(config)
        self.task, self.config = task, config
        self.info = info or distributed.DistInfo(device=pick_device(config.run.device))
        self.device = self.info.device
        self.is_main = self.info.is_main
        self.run = RunFolder(config.run.output_dir)
        self.output_dir, self.ckpt_dir = self.run.path, self.run.checkpoints
        self.epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.notes: list[str] = []

        restore_state = self._load_restore()
        self._prepare_output_dir(resume=restore_state is not None)
        if config.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(config.run.seed)

        t = config.train
        self.runtime = Runtime(
            self.info, autocast_enabled(t.autocast, self.device), config.run.seed
        )
        task.build(self.runtime)
        self.model = task.model
        self._check_shares()
        self.optimizer = build_optimizer(task.parameter_groups(t), t)
        plateau = (t.lr_patience, t.lr_factor, t.max_reduce, t.min_epochs)
        on_plateau = t.lr_schedule == "plateau"
        self.plateau = Plateau(
            self.optimizer, *plateau, reduce_lr=on_plateau and not t.schedule_free,
            early_stop=on_plateau,
        )  # fmt: skip
        self.schedule = self._cosine_schedule()
        self.ema = WeightEMA(self.model, t.ema_decay) if t.ema_decay is not None else None
        self.clipper = GradClipper(t.grad_norm, t.autoclip_percentile)
        if restore_state is not None:
            self._restore(restore_state)
        self._make_output_dir()
        self.logger = RunLogger(
            self.output_dir,
            enabled=self.is_main,
            verbose=config.run.verbose,
            wandb_group=config.run.wandb,
            wandb_mode=config.run.wandb_mode,
            config=cfg.to_dict(config),
            resume_epoch=self.epoch if restore_state is not None else None,
        )
        try:
            if self.is_main:
                cfg.save_yaml(config, self.run.config_file)
            self._setup_numerics()
            self.ddp_model: nn.Module = self.model
            if self.info.enabled:
                self.ddp_model = nn.parallel.DistributedDataParallel(
                    self.model,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    find_unused_parameters=False,
                )
            self._announce(restore_state)
        except BaseException as e:
            self._log_failure(e)
            raise

    @property
    def use_autocast(self) -> bool:
        return self.runtime.use_autocast

    # -- construction --------------------------------------------------------------------------
    def _load_restore(self) -> dict[str, Any] | None:
        restore = self.config.run.restore
        if not restore:
            return None
        path = find_checkpoint(restore, "last")
        state = load_checkpoint(path)
        state["_path"] = str(path)
        return state

    def _prepare_output_dir(self, resume: bool) -> None:
        if self.is_main:
            if self.config.run.clear_output_dir and self.output_dir.exists() and not resume:
                shutil.rmtree(self.output_dir)
            if not resume and self.run.holds_a_run():
                raise ConfigError(
                    f"--output_dir: {self.output_dir} already holds a run; resume it with "
                    f"--restore {self.output_dir}, or start over with --clear_output_dir true"
                )
            self.starts_over = not resume and self.run.never_saved()
        distributed.barrier(self.info)

    def _make_output_dir(self) -> None:
        """Created only once data and model are built, so that bad input leaves nothing. A
        run that stopped before its first checkpoint is started over (its log too); the
        temporaries killed writers left in the run folder are removed."""
        if self.is_main:
            if getattr(self, "starts_over", False):
                (self.output_dir / LOG_FILE).unlink(missing_ok=True)
                self.notes.append(
                    f"{self.output_dir} held a run that stopped before its first checkpoint: "
                    "starting it over"
                )
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.output_dir, self.ckpt_dir):
                self.notes += remove_stale_temporaries(folder).lines()

    def _log_failure(self, error: BaseException) -> None:
        """The error that stops the run, in train.log (the console has it already), and what
        the run folder is good for now."""
        if not getattr(self, "logger", None) or not self.is_main:
            return
        if isinstance(error, KeyboardInterrupt):
            line = "interrupted"
        elif isinstance(error, NeurotwinError):
            line = f"error: {' '.join(str(error).split())}"
        else:
            line = f"error: {type(error).__name__}: {' '.join(str(error).split())}"
        if self.run.holds_a_run():
            then = f"resume with --restore {self.output_dir}"
        else:
            then = (
                f"no checkpoint was saved: nothing to resume; training again with --output_dir "
                f"{self.output_dir} starts this run over"
            )
        self.logger.print(f"{line}; {then}", level=LOG_ONLY)
        self.logger.close(exit_code=1)

    def _cosine_schedule(self) -> WarmupCosine | None:
        """The warm-up + cosine schedule over every optimiser step of the run (None: plateau)."""
        t = self.config.train
        if t.lr_schedule != "cosine":
            return None
        every = len(self.task.groups) if t.accumulate_sessions else 1
        per_epoch = math.ceil(sum(self.task.batch_counts().values()) / max(every, 1))
        base = [group["lr"] for group in self.optimizer.param_groups]
        return WarmupCosine(
            self.optimizer, base, t.warmup_epochs * per_epoch, t.epochs * per_epoch, t.min_lr_ratio
        )

    def _check_shares(self) -> None:
        """Under DDP every rank must step through the same number of batches per group."""
        if not self.info.enabled:
            return
        mine = self.task.batch_counts()
        every = distributed.all_gather_object(mine, self.info)
        if any(other != mine for other in every):
            raise NeurotwinError(
                f"ranks read different numbers of training batches per session ({every}); "
                "the loaders must give every rank an equal share"
            )

    def _setup_numerics(self) -> None:
        t = self.config.train
        gc = t.grad_checkpointing
        on_cuda = self.device.type == "cuda"
        self.checkpointing = Checkpointing(self._apply_checkpointing, auto=gc == "auto" and on_cuda)
        if gc is None:
            gc = int(on_cuda)
        self.checkpointing.set(gc == 1)  # auto starts off
        self.compiled = t.compile is True or (t.compile == "auto" and on_cuda)
        if self.compiled:
            self.task.compile_target().compile()
        self.micro_batch_size = self._micro_batch_size()

    def _apply_checkpointing(self, enabled: bool) -> None:
        if hasattr(self.model, "set_grad_checkpointing"):
            self.model.set_grad_checkpointing(enabled)

    @property
    def grad_checkpointing(self) -> bool:
        return self.checkpointing.enabled

    def _micro_batch_size(self) -> int:
        """The micro-batch size: the full batch (-1), the one given, or (0, on CUDA) the
        largest that fits; with grad_checkpointing auto, checkpointing goes on where needed."""
        mb, b = self.config.train.micro_batch_size, self.task.batch_size
        if mb == 0 and self.device.type != "cuda":
            self.notes.append(
                f"micro_batch_size 0: the search for the largest micro-batch runs on CUDA only; "
                f"using the full batch ({b}) on {self.device.type}"
            )
            return b
        probe = MemoryProbe(self._fits, self.checkpointing, str(self.device))
        if mb == 0:
            start = min(b, self.task.count(self._probe_batch()[1]))
            size = min(distributed.all_gather_object(probe.largest(start), self.info))
        else:
            size = b if mb == -1 else min(mb, b)
            probe.check(size)
        self.notes += probe.notes
        # one setting on every rank: checkpointing only lowers memory, so sizes still fit
        if any(distributed.all_gather_object(self.checkpointing.enabled, self.info)):
            self.checkpointing.set(True)
        return size

    def _probe_batch(self) -> tuple[str, Batch]:
        if not hasattr(self, "_probe"):
            group, batch = self.task.probe_batch()
            self._probe = (group, to_device(batch, self.device))
        return self._probe

    def _fits(self, size: int) -> bool:
        """Whether forward+backward of the first `size` items of the probe batch fit."""
        group, batch = self._probe_batch()
        part = self.task.split(batch, 0, size)
        try:
            self.model.zero_grad(set_to_none=True)
            step = lambda: self._forward_backward(group, part, self.task.batch_size, sync=True)  # noqa: E731
            return fits_in_memory(step, self.device)
        finally:
            self.model.zero_grad(set_to_none=True)

    def _restore(self, state: dict[str, Any]) -> None:
        path = state["_path"]
        self.task.load_state(state, path)
        try:
            if self.ema is not None and "ema" in state:
                self.ema.load(self.model, state["model"], state["ema"])
            else:  # a checkpoint with an EMA holds the training weights under "ema"
                held = state["ema"]["training_weights"] if "ema" in state else state["model"]
                self.model.load_state_dict(held)
                if self.ema is not None:
                    self.ema.reset(self.model)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"{path}: does not match the model built from the config ({e})"
            ) from None
        sched = state.get("scheduler", {})
        if "plateau" in sched:
            self.plateau.load_state_dict(sched["plateau"])
        if "clipper" in sched:
            self.clipper.load_state_dict(sched["clipper"])
        if self.schedule is not None and "cosine" in sched:
            self.schedule.load_state_dict(sched["cosine"])
        self.epoch = int(state["epoch"])
        if "rng" in state:
            set_rng_state(state["rng"])
        self.best_state = self._restored_best(state, Path(path).with_name("best.pt"))
        # checkpoints are written with the optimiser in eval mode: back to training
        set_optimizer_mode(self.optimizer, "train")

    def _restored_best(self, last: dict[str, Any], best: Path) -> dict[str, Any] | None:
        """The best weights as of the restored epoch. `last.pt` is written before `best.pt`:
        if the run was killed between the two, `best.pt` is older than the plateau state says
        (or damaged) and the best weights are last.pt's own; best.pt is rewritten from it."""
        best_epoch = self.plateau.best_epoch
        if best_epoch == int(last["epoch"]) and best_epoch > 0:
            if self.is_main and _epoch_of(best) != best_epoch:
                save_checkpoint(best, {k: v for k, v in last.items() if k != "_path"})
                self.notes.append(f"{best}: rewritten from {last['_path']} (epoch {best_epoch})")
            return last["model"]
        if not best.is_file():
            return None
        state = load_checkpoint(best)
        if int(state["epoch"]) != best_epoch:
            self.notes.append(
                f"{best} holds epoch {state['epoch']}, not the best epoch {best_epoch} that "
                f"{last['_path']} names (a run of an earlier release killed between its two "
                "checkpoint writes?): its weights are the best ones until the run improves"
            )
        return state["model"]

    def _announce(self, restore_state: dict[str, Any] | None) -> None:
        log, t = self.logger.print, self.config.train
        for line in self.task.describe():
            log(line)
        ranks = (
            f" x {self.info.world_size} ranks ({self.info.backend})" if self.info.enabled else ""
        )
        log(
            f"device: {self.device}{ranks}, batch {self.task.batch_size} (micro-batch "
            f"{self.micro_batch_size}), bf16 autocast {'on' if self.use_autocast else 'off'}, "
            f"grad checkpointing {'on' if self.grad_checkpointing else 'off'}, "
            f"compile {'on' if self.compiled else 'off'}, "
            f"optimizer {self._optimizer_name()}, "
            f"lr schedule {t.lr_schedule if not t.schedule_free else 'none'}"
            + (f", EMA of the weights (decay {t.ema_decay})" if self.ema is not None else "")
        )
        for note in self.notes:
            log(note)
        if restore_state is not None:
            log(f"resuming from {restore_state['_path']} after epoch {self.epoch}")
        log(f"outputs go to {self.output_dir.resolve()} (config.yaml, checkpoints/, metrics.csv)")

    def _optimizer_name(self) -> str:
        t = self.config.train
        if t.optimizer == "lbfgs":
            return f"full-batch L-BFGS ({t.lbfgs_iterations} iterations per epoch)"
        return "schedule-free AdamW" if t.schedule_free else "AdamW"

    # -- one step --------------------------------------------------------------------------------
    def _forward_backward(
        self, group: str, batch: Batch, batch_size: int, sync: bool, weight: float = 1.0
    ) -> StepLoss:
        """The task's loss of (part of) a batch, and the backward pass of its objective times
        `weight` (gradients synchronised over ranks only when `sync`). Returns the StepLoss, its
        objective detached and weighted."""
        model = self.ddp_model if hasattr(self, "ddp_model") else self.model
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        ctx = model.no_sync() if (ddp and not sync) else contextlib.nullcontext()
        with ctx:
            loss = self.task.loss(model, group, batch, batch_size)
            objective = loss.objective * weight if weight != 1.0 else loss.objective
            if ddp and sync:
                # every parameter takes part in the synchronising backward, so that gradients
                # accumulated under no_sync (other groups' parts) are averaged too
                params = [p for p in self.model.parameters() if p.requires_grad]
                objective = objective + sum(p.sum() for p in params) * 0.0
            objective.backward()
        return StepLoss(objective.detach(), loss.value, loss.count, loss.parts)

    def train_step(
        self, group: str, batch: Batch, sync: bool = True, weight: float = 1.0
    ) -> StepLoss:
        """Forward and backward of one batch in micro-batches (no optimiser step), the
        objective times `weight`. Returns the batch's StepLoss: the sums over its micro-batches
        (value a 0-dim float64 tensor on the device)."""
        b = self.task.count(batch)
        m = self.micro_batch_size if self.micro_batch_size > 0 else b
        starts = list(range(0, b, m))
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        total = StepLoss(zero, zero, 0)
        for i, start in enumerate(starts):
            part = self.task.split(batch, start, min(start + m, b))
            last = i == len(starts) - 1
            total = total.plus(self._forward_backward(group, part, b, sync and last, weight))
        return total

    def optimizer_step(self) -> torch.Tensor | None:
        """Clip, step and zero the gradients; returns the norm before clipping (a 0-dim tensor
        on the device, None when clipping is off)."""
        norm = self.clipper([p for p in self.model.parameters() if p.requires_grad])
        if self.schedule is not None:
            self.schedule.apply()
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.advance()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        return norm

    # -- epochs ------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        set_optimizer_mode(self.optimizer, "train")
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.train.optimizer == "lbfgs":
            return self._full_batch_epoch(epoch)
        sums = self._pass(epoch, steps=True)
        # a last partial accumulation (if the iterator gave fewer batches than announced)
        if any(p.grad is not None for p in self.model.parameters()):
            self.optimizer_step()
        return self._epoch_stats(sums)

    def _pass(self, epoch: int, steps: bool, weight: float = 1.0, desc: str = "") -> EpochSums:
        """Forward and backward over the epoch's batches; with `steps`, an optimiser step after
        every batch (or as many as there are groups, `accumulate_sessions`), else gradients
        accumulated over all of them (objectives times `weight`)."""
        groups = self.task.groups
        every = len(groups) if (steps and self.config.train.accumulate_sessions) else 1
        total = sum(self.task.batch_counts().values())
        sums = EpochSums.empty(groups, self.device)
        bar = self.logger.progress(
            self.task.batches(epoch), total=total, desc=desc or f"epoch {epoch} train"
        )
        for i, (group, batch) in enumerate(bar):
            batch = to_device(batch, self.device)
            last = i + 1 == total
            sync = last or (steps and (i + 1) % every == 0)
            sums.add(group, self.train_step(group, batch, sync, weight), self.task.count(batch))
            if steps and sync:
                norm = self.optimizer_step()
                if norm is not None:
                    sums.norms.append(norm)
        return sums

    def _full_batch_epoch(self, epoch: int) -> dict[str, Any]:
        """L-BFGS: one optimiser step per epoch on the mean objective of all the epoch's batches
        (a function of the weights only: the task's batches repeat for the same epoch), which
        the closure evaluates as often as the iterations and line search ask."""
        weight = 1.0 / max(sum(self.task.batch_counts().values()), 1)
        passes: list[EpochSums] = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            desc = f"epoch {epoch} L-BFGS evaluation {len(passes) + 1}"
            passes.append(self._pass(epoch, steps=False, weight=weight, desc=desc))
            objective = passes[-1].objective.clone()
            distributed.all_reduce_sum(objective, self.info)  # the same on every rank
            return objective / self.info.world_size

        self.optimizer.step(closure)
        self.optimizer.zero_grad(set_to_none=True)
        return self._epoch_stats(passes[-1])  # the last evaluation's training loss

    def _epoch_stats(self, sums: EpochSums) -> dict[str, Any]:
        """The epoch's training numbers, summed over ranks: the one read-back of the epoch."""
        groups, names = self.task.groups, sorted(sums.parts)
        n = len(groups)
        stats = torch.tensor(
            [[0.0, sums.elements[g]] for g in groups] + [[sums.items, 0]] + [[0.0, 0]] * len(names),
            dtype=torch.float64,
        ).to(self.device)
        stats[:n, 0] += torch.stack([sums.loss[g] for g in groups])
        for i, name in enumerate(names):
            stats[n + 1 + i, 0] += sums.parts[name].double()
        distributed.all_reduce_sum(stats, self.info)
        stats = stats.cpu()
        norms = sums.norms
        mean_norm = float(np.mean(torch.stack(norms).double().cpu().numpy())) if norms else None
        per_group = {g: float(stats[i, 0] / max(stats[i, 1], 1)) for i, g in enumerate(groups)}
        elements = max(float(stats[:n, 1].sum()), 1)
        return {
            "loss": float(stats[:n, 0].sum() / elements),
            "loss_per_session": per_group,
            "parts": {name: float(stats[n + 1 + i, 0]) / elements for i, name in enumerate(names)},
            "trials": int(stats[n, 0]),
            "grad_norm": mean_norm,
        }

    @torch.no_grad()
    def validate(self) -> Validation:
        """The task's validation of the model in eval mode (training mode after)."""
        self.model.eval()
        try:
            return self.task.validate(self.model)
        finally:
            self.model.train()

    def averaged_weights(self, on: bool) -> None:
        """Put the averaged weights (schedule-free x, the EMA) into the model for validation and
        checkpoints (`on`), or the training weights back."""
        set_optimizer_mode(self.optimizer, "eval" if on else "train")
        if self.ema is not None and self.ema.swapped != on:
            self.ema.swap(self.model)

    # -- checkpoints ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The checkpoint; call with the averaged weights in the model (`averaged_weights`)."""
        scheduler = {"plateau": self.plateau.state_dict(), "clipper": self.clipper.state_dict()}
        if self.schedule is not None:
            scheduler["cosine"] = self.schedule.state_dict()
        extra = {"ema": self.ema.state_dict(self.model)} if self.ema is not None else {}
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler,
            **extra,
            "epoch": self.epoch,
            "rng": get_rng_state(),
            "config": cfg.to_dict(self.config),
            **self.task.state(),
            "best_value": self.plateau.best_value,
            "version": VERSION,
        }

    def save(self, best: bool) -> None:
        """last.pt then (when improved) best.pt; call with the optimiser in eval mode. In this
        order a run killed between the two writes resumes with the right best weights (see
        `_restored_best`)."""
        if not self.is_main:
            return
        state = self.state()
        save_checkpoint(self.ckpt_dir / "last.pt", state)
        if best:
            save_checkpoint(self.ckpt_dir / "best.pt", state)

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, on_epoch_end: Callable[[int, Trainer], None] | None = None) -> dict[str, Any]:
        t = self.config.train
        start = time.time()
        stopped = "max epochs"
        log = self.logger.print
        try:
            if self.plateau.stopped:
                stopped = "early stopping (before the restored checkpoint)"
            while self.epoch < t.epochs and not self.plateau.stopped:
                epoch = self.epoch + 1
                seed_everything(epoch_seed(self.config.run.seed, epoch, self.info.rank))
                tic = time.time()
                self.task.start_epoch(epoch)
                train_result = self.train_epoch(epoch)
                train_seconds = time.time() - tic
                distributed.broadcast_buffers(self.model, self.info)

                self.averaged_weights(True)
                val = self.validate()
                decision = self.plateau.step(val.score, epoch)
                if decision == "improved":
                    self.best_state = copy.deepcopy(
                        {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
                    )
                elif decision == "reduced" and self.best_state is not None:
                    self.model.load_state_dict(self.best_state)
                    if self.ema is not None:  # the training weights restart from the best too
                        self.ema.reset(self.model)
                self.epoch = epoch
                seconds = time.time() - tic
                row = self._row(epoch, train_result, val, seconds, train_seconds)
                self.history.append(row)
                # the row first: a run killed while saving resumes from the previous
                # checkpoint, and metrics.csv drops the rows after it
                self.logger.log_metrics(row, step=epoch)
                self.save(best=decision == "improved")
                self.averaged_weights(False)
                log(self._epoch_line(epoch, train_result, val, seconds, train_seconds, decision))
                if on_epoch_end is not None:
                    on_epoch_end(epoch, self)
                if not math.isfinite(train_result["loss"]):
                    stopped = "non-finite training loss"
                    log("the training loss is not finite: stopping (best checkpoint kept)")
                    break
                if decision == "stop":
                    stopped = "early stopping"
                    break
        except BaseException as e:
            self._log_failure(e)
            raise
        diff = distributed.max_parameter_difference(self.model, self.info)
        if self.info.enabled:
            log(f"ranks in sync: max parameter difference across ranks {diff:.3g}")
        weights_epoch = self._final_weights()
        elapsed = time.time() - start
        log(
            f"done ({stopped}) after {self.epoch} epochs in {elapsed:.1f}s: best validation "
            f"{self.task.score_title} {self.plateau.best_value:.4f} at epoch "
            f"{self.plateau.best_epoch}; the model holds the weights of epoch {weights_epoch}; "
            f"checkpoints in {self.ckpt_dir}"
        )
        self.logger.close()
        return {
            "output_dir": str(self.output_dir),
            "epochs": self.epoch,
            "best_value": self.plateau.best_value,
            "best_epoch": self.plateau.best_epoch,
            "weights_epoch": weights_epoch,
            "stopped": stopped,
            "seconds": elapsed,
            "history": self.history,
            "max_rank_difference": diff,
        }

    def _final_weights(self) -> int:
        """Leave the model with the weights the checkpoints hold (schedule-free: the averaged
        ones): the best epoch's (`restore_best`, when one improved), else the last; returns
        their epoch."""
        self.averaged_weights(True)
        if self.config.train.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            return self.plateau.best_epoch
        return self.epoch

    def _row(
        self, epoch: int, tr: dict[str, Any], val: Validation, seconds: float, train_s: float
    ) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": epoch, "train_loss": tr["loss"]}
        row.update({f"train_{name}": value for name, value in tr.get("parts", {}).items()})
        row.update(val.columns)
        row["lr"] = current_lr(self.optimizer)
        row["grad_norm"] = tr["grad_norm"] if tr["grad_norm"] is not None else ""
        row["seconds"] = seconds
        row["trials_per_s"] = tr["trials"] / max(train_s, 1e-9)
        return row

    def _epoch_line(
        self,
        epoch: int,
        tr: dict[str, Any],
        val: Validation,
        seconds: float,
        train_seconds: float,
        decision: str,
    ) -> str:
        mark = {"improved": " *", "reduced": " (lr reduced)", "stop": " (stop)"}.get(decision, "")
        sf = " sf" if is_schedule_free(self.optimizer) else ""
        return (
            f"epoch {epoch:3d}/{self.config.train.epochs}  train loss {tr['loss']:.4f}  "
            f"val loss {val.loss:.4f}  val {self.task.score_name} {val.score:.4f}  "
            f"lr{sf} {current_lr(self.optimizer):.2e}  {seconds:.1f}s  "
            f"{tr['trials'] / max(train_seconds, 1e-9):.1f} trials/s{mark}"
        )

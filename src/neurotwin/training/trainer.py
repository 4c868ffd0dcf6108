"""The training loop: data -> model -> Poisson loss -> optimiser, validation, checkpoints, logs.

`train(config)` runs a whole training (one process, or one rank under torchrun) and returns a
summary dict. The pieces a lab relies on:

- Loss: Poisson on every frame the model outputs (nothing skipped in training), summed over neurons
  and frames, averaged over the trials of a batch, times sqrt(training trials / batch size) per
  session (`ds_scale`, as ViV1T), plus the session's readout regulariser.
- Micro-batches: a batch of B trials is split into micro-batches of m trials whose losses are
  scaled by m / B, so that the accumulated gradient equals the full batch's (for models without
  batch-dependent layers such as batch norm in training mode).
- Gradients are accumulated over as many batches as there are sessions before each optimiser step
  (`accumulate_sessions`), then clipped (fixed norm or AutoClip) and applied.
- Validation: single-trial correlation per neuron over all frames of all validation trials, the
  first frames of each trial left out by `metrics.frames_to_skip` (the rule prediction uses),
  mean over neurons, then mean over sessions: the value early stopping watches.
- Schedule-free optimisers are switched to eval mode for validation and checkpoints, and back.
- No host read-back per step: loss sums and gradient norms stay on the device (AutoClip's history
  too) and are read once per epoch, so the GPU never waits for the host between steps.
- Reproducibility: every epoch reseeds torch/numpy/random from (seed, epoch, rank) and the data
  order is a function of (seed, epoch), so a run resumed from `last.pt` continues exactly as the
  uninterrupted run would have.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotwin import config as cfg
from neurotwin.config import Config
from neurotwin.errors import CheckpointError, ConfigError, NeurotwinError
from neurotwin.metrics import CorrelationAccumulator, frames_to_skip
from neurotwin.run import CHECKPOINT_DIR, CONFIG_FILE, autocast, autocast_enabled, pick_device
from neurotwin.training import distributed
from neurotwin.training.checkpoint import (
    VERSION,
    get_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from neurotwin.training.logging import RunLogger
from neurotwin.training.losses import align, dataset_scale, get_criterion
from neurotwin.training.optim import (
    GradClipper,
    Plateau,
    build_optimizer,
    current_lr,
    is_schedule_free,
    set_optimizer_mode,
)

# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def check_config(config: Config) -> None:
    """Every option's range check (values may have been set after construction), and that
    what the run asks for is installed."""
    cfg.check_config(config)
    if config.run.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "--wandb: wandb is not installed; install it with `pip install neurotwin[wandb]` "
            "or leave out --wandb"
        )


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed that depends only on (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _n_batches(loader: Any) -> int:
    return len(loader)


def _n_trials(loader: Any) -> int:
    """Trials of the session's training set (the dataset is whole; samplers shard it)."""
    return len(loader.dataset)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {
        k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
        for k, v in batch.items()
    }


def _slice(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {
        k: (v[start:stop] if isinstance(v, (torch.Tensor, list, tuple)) else v)
        for k, v in batch.items()
    }


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------


class Trainer:
    """One training run (one rank of it under torchrun). Build, then `fit()`."""

    def __init__(self, config: Config, info: distributed.DistInfo | None = None):
        check_config(config)
        self.config = config
        self.info = info or distributed.DistInfo(device=pick_device(config.run.device))
        self.device = self.info.device
        self.is_main = self.info.is_main
        self.output_dir = Path(config.run.output_dir)
        self.ckpt_dir = self.output_dir / CHECKPOINT_DIR
        self.epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self._notes: list[str] = []

        restore_state = self._load_restore()
        self._prepare_output_dir(resume=restore_state is not None)
        if config.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(config.run.seed)

        self._prepare_data()
        self._build_model()
        self.criterion = get_criterion(config.train.criterion)
        self.optimizer = build_optimizer(self.model, config.train)
        self.plateau = Plateau(
            self.optimizer,
            patience=config.train.lr_patience,
            factor=config.train.lr_factor,
            max_reduce=config.train.max_reduce,
            min_epochs=config.train.min_epochs,
            reduce_lr=not config.train.schedule_free,
        )
        self.clipper = GradClipper(config.train.grad_norm, config.train.autoclip_percentile)
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
        if self.is_main:
            cfg.save_yaml(config, self.output_dir / CONFIG_FILE)
        self._setup_numerics()
        self.ddp_model: nn.Module = self.model
        if self.info.enabled:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False,
            )
        self._announce(restore_state)

    # -- construction --------------------------------------------------------------------------
    def _load_restore(self) -> dict[str, Any] | None:
        restore = self.config.run.restore
        if not restore:
            return None
        path = resolve_checkpoint(restore, "last")
        state = load_checkpoint(path)
        state["_path"] = str(path)
        return state

    def _prepare_output_dir(self, resume: bool) -> None:
        run = self.config.run
        if self.is_main:
            if run.clear_output_dir and self.output_dir.exists() and not resume:
                shutil.rmtree(self.output_dir)
            if not resume and (self.ckpt_dir / "last.pt").is_file():
                raise ConfigError(
                    f"run.output_dir: {self.output_dir} already holds a run; resume it with "
                    f"--restore {self.output_dir}, or start over with --clear_output_dir true"
                )
        distributed.barrier(self.info)

    def _make_output_dir(self) -> None:
        """Created only once data and model are built, so that bad input leaves nothing."""
        if self.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.ckpt_dir)

    def _prepare_data(self) -> None:
        from neurotwin.data import loaders, native

        data = self.config.data
        if data.generate_synthetic:
            if self.is_main:
                from neurotwin.data import synthetic

                synthetic.ensure_synthetic(data.data_dir)
            distributed.barrier(self.info)
        splits = {"train": data.train_tier, "val": data.val_tier}
        built = loaders.build_loaders(
            data,
            splits,
            seed=self.config.run.seed,
            rank=self.info.rank,
            world_size=self.info.world_size,
            pin_memory=self.device.type == "cuda",
        )
        self.train_loaders = dict(built["train"])
        self.val_loaders = dict(built["val"])
        if not self.train_loaders:
            raise ConfigError(
                f"data: no session with {data.train_tier!r} trials in {data.data_dir}"
            )
        self.specs = loaders.session_specs(data)
        paths = native.find_sessions(data.data_dir, data.mouse_ids)
        self.frame_shape = tuple(native.NativeSession(paths[0]).frame_shape)
        self.session_names = sorted(self.train_loaders)
        # training batches of all sessions from one DataLoader with persistent workers
        self.train_stream = loaders.TrainStream(
            self.train_loaders,
            num_workers=data.num_workers,
            pin_memory=self.device.type == "cuda",
            seed=self.config.run.seed,
        )
        self._check_shares()
        # trials per session in the whole training set, for ds_scale
        self.n_train_trials = {s: _n_trials(self.train_loaders[s]) for s in self.session_names}

    def _check_shares(self) -> None:
        """Under DDP every rank must step through the same number of batches per session."""
        if not self.info.enabled:
            return
        mine = {s: _n_batches(self.train_loaders[s]) for s in self.session_names}
        every = distributed.all_gather_object(mine, self.info)
        if any(other != mine for other in every):
            raise NeurotwinError(
                f"ranks read different numbers of training batches per session ({every}); "
                "the loaders must give every rank an equal share"
            )

    def _build_model(self) -> None:
        from neurotwin.models.model import build_model

        torch.manual_seed(self.config.run.seed)
        self.model = build_model(
            self.config.model, self.specs, in_channels=1, frame_shape=self.frame_shape
        ).to(self.device)

    def _setup_numerics(self) -> None:
        t = self.config.train
        self.use_autocast = autocast_enabled(t.autocast, self.device)
        gc = t.grad_checkpointing
        # auto: the fastest setting that fits; checkpointing costs ~15% of the step (bench/
        # RESULTS.md), more than smaller micro-batches do, so it goes on only when not even one
        # trial fits without it (found by the micro-batch probe below)
        self.auto_checkpointing = gc == "auto" and self.device.type == "cuda"
        if gc is None:
            gc = int(self.device.type == "cuda")
        self._set_checkpointing(gc == 1)  # auto starts off
        self.compiled = t.compile is True or (t.compile == "auto" and self.device.type == "cuda")
        if self.compiled:
            core = getattr(self.model, "core", None)
            if not isinstance(core, nn.Module):
                raise ConfigError("train.compile: the model has no `core` module to compile")
            core.compile()
        self.micro_batch_size = self._micro_batch_size()

    def _set_checkpointing(self, enabled: bool) -> None:
        self.grad_checkpointing = bool(enabled)
        if hasattr(self.model, "set_grad_checkpointing"):
            self.model.set_grad_checkpointing(self.grad_checkpointing)

    def _micro_batch_size(self) -> int:
        t, b = self.config.train, self.config.data.batch_size
        if t.micro_batch_size == 0 and self.device.type != "cuda":
            self._notes.append(
                f"micro_batch_size 0: the search for the largest micro-batch runs on CUDA only; "
                f"using the full batch ({b}) on {self.device.type}"
            )
            return b
        if t.micro_batch_size == 0:
            size = min(distributed.all_gather_object(self._search_micro_batch_size(), self.info))
        else:
            size = b if t.micro_batch_size == -1 else min(t.micro_batch_size, b)
            if self.auto_checkpointing and not self._fits(*self._probe_batch(), size):
                self._switch_checkpointing_on(f"a micro-batch of {size} does not fit without it")
        # one setting on every rank: checkpointing only lowers memory, so sizes still fit
        if any(distributed.all_gather_object(self.grad_checkpointing, self.info)):
            self._set_checkpointing(True)
        return size

    def _probe_batch(self) -> tuple[str, dict[str, Any]]:
        """A training batch of the session with the most neurons, on the device."""
        session = max(self.session_names, key=lambda s: self.specs[s]["n_neurons"])
        return session, _to_device(next(iter(self.train_loaders[session])), self.device)

    def _fits(self, session: str, batch: dict[str, Any], size: int) -> bool:
        """Whether forward+backward of the first `size` trials of `batch` fits in GPU memory."""
        try:
            self.model.zero_grad(set_to_none=True)
            b = self.config.data.batch_size
            self._forward_backward(session, _slice(batch, 0, size), b, sync=True)
            torch.cuda.synchronize(self.device)
            return True
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return False
        finally:
            self.model.zero_grad(set_to_none=True)

    def _switch_checkpointing_on(self, why: str) -> None:
        self._set_checkpointing(True)
        self._notes.append(f"grad_checkpointing auto: {why}; gradient checkpointing on")

    def _search_micro_batch_size(self) -> int:
        """Largest micro-batch (halving from the batch size) whose forward+backward fits; with
        grad_checkpointing auto, checkpointing goes on when not even one trial fits without it."""
        session, batch = self._probe_batch()
        size = self._largest_fitting(session, batch)
        if size == 0 and self.auto_checkpointing and not self.grad_checkpointing:
            self._switch_checkpointing_on("one trial does not fit without it")
            size = self._largest_fitting(session, batch)
        if size == 0:
            raise NeurotwinError(
                f"micro_batch_size 0: even one trial does not fit on {self.device}; try "
                "--grad_checkpointing 1, --autocast enable or a smaller --crop_frame"
            )
        self._notes.append(f"micro_batch_size 0: largest micro-batch that fits: {size}")
        return size

    def _largest_fitting(self, session: str, batch: dict[str, Any]) -> int:
        """Largest micro-batch of `batch`, halving from the batch size, that fits (0: none)."""
        size = min(self.config.data.batch_size, batch["video"].shape[0])
        while size >= 1 and not self._fits(session, batch, size):
            size //= 2
        return size

    def _restore(self, state: dict[str, Any]) -> None:
        path = state["_path"]
        saved = state.get("sessions", {})
        for name in self.session_names:
            if name not in saved:
                raise CheckpointError(f"{path}: the checkpoint has no session {name!r}")
            if int(saved[name]["n_neurons"]) != int(self.specs[name]["n_neurons"]):
                raise CheckpointError(
                    f"{path}: session {name} has {saved[name]['n_neurons']} neurons in the "
                    f"checkpoint but {self.specs[name]['n_neurons']} in the data"
                )
        try:
            self.model.load_state_dict(state["model"])
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
        self.epoch = int(state["epoch"])
        if "rng" in state:
            set_rng_state(state["rng"])
        best = Path(path).with_name("best.pt")
        if best.is_file():
            self.best_state = load_checkpoint(best)["model"]
        # checkpoints are written with the optimiser in eval mode: back to training
        set_optimizer_mode(self.optimizer, "train")

    def _announce(self, restore_state: dict[str, Any] | None) -> None:
        log = self.logger.print
        try:
            from neurotwin.models import summary

            log(summary(self.model))
        except ImportError:  # pragma: no cover - summary lands with the models
            n = sum(p.numel() for p in self.model.parameters())
            log(f"model: {type(self.model).__name__}, {n:,} parameters")
        d, t = self.config.data, self.config.train
        trials = "/".join(str(self.n_train_trials[s]) for s in self.session_names)
        log(
            f"data: {d.data_dir}, {len(self.session_names)} session(s), training trials {trials}, "
            f"validation tier {d.val_tier!r}"
        )
        log(
            f"device: {self.device}"
            + (
                f" x {self.info.world_size} ranks ({self.info.backend})"
                if self.info.enabled
                else ""
            )
            + f", batch {d.batch_size} (micro-batch {self.micro_batch_size}), "
            f"bf16 autocast {'on' if self.use_autocast else 'off'}, "
            f"grad checkpointing {'on' if self.grad_checkpointing else 'off'}, "
            f"compile {'on' if self.compiled else 'off'}, "
            f"optimizer {'schedule-free AdamW' if t.schedule_free else 'AdamW'}"
        )
        for note in self._notes:
            log(note)
        if restore_state is not None:
            log(f"resuming from {restore_state['_path']} after epoch {self.epoch}")
        log(f"outputs go to {self.output_dir.resolve()} (config.yaml, checkpoints/, metrics.csv)")

    # -- one step --------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.use_autocast)

    def _forward_backward(
        self, session: str, batch: dict[str, Any], batch_size: int, sync: bool
    ) -> tuple[torch.Tensor, int]:
        """Loss of (part of) a batch, scaled by its share of `batch_size`; backward.

        Returns the summed Poisson loss (unscaled, a detached 0-dim float64 tensor on the device:
        no host read-back) and the number of (trial, neuron, frame) elements it covers.
        """
        model = self.ddp_model if hasattr(self, "ddp_model") else self.model
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        scale = 1.0 / batch_size
        if self.config.train.ds_scale:
            scale *= dataset_scale(self.n_train_trials[session], batch_size)
        m = batch["video"].shape[0]
        ctx = model.no_sync() if (ddp and not sync) else contextlib.nullcontext()
        with ctx:
            with self._autocast():
                prediction = model(
                    batch["video"], session, batch["behavior"], batch["pupil_center"]
                )
            target = align(prediction, batch["response"])
            loss = self.criterion(prediction, target)
            total = loss * scale
            regularizer = getattr(self.model, "regularizer", None)
            if regularizer is not None:
                total = total + regularizer(session) * (m / batch_size)
            if ddp and sync:
                # every parameter takes part in the synchronising backward, so that gradients
                # accumulated under no_sync (other sessions' readouts) are averaged too
                total = (
                    total + sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
                )
            total.backward()
        return loss.detach().double(), target.numel()

    def train_step(
        self, session: str, batch: dict[str, Any], sync: bool = True
    ) -> tuple[torch.Tensor, int]:
        """Forward and backward of one batch in micro-batches (no optimiser step).

        Returns the summed Poisson loss (a 0-dim float64 tensor on the device) and its elements.
        """
        b = batch["video"].shape[0]
        m = self.micro_batch_size if self.micro_batch_size > 0 else b
        starts = list(range(0, b, m))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        elements = 0
        for i, start in enumerate(starts):
            part = _slice(batch, start, min(start + m, b))
            last = i == len(starts) - 1
            ls, n = self._forward_backward(session, part, b, sync=sync and last)
            loss_sum = loss_sum + ls
            elements += n
        return loss_sum, elements

    def optimizer_step(self) -> torch.Tensor | None:
        """Clip, step and zero the gradients; returns the norm before clipping (a 0-dim tensor
        on the device, None when clipping is off)."""
        norm = self.clipper([p for p in self.model.parameters() if p.requires_grad])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # -- epochs ------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        set_optimizer_mode(self.optimizer, "train")
        n_sessions = len(self.session_names)
        every = n_sessions if self.config.train.accumulate_sessions else 1
        total = len(self.train_stream)
        loss_sum = {
            s: torch.zeros((), dtype=torch.float64, device=self.device) for s in self.session_names
        }
        elements = {s: 0 for s in self.session_names}
        trials = 0
        norms: list[torch.Tensor] = []
        self.optimizer.zero_grad(set_to_none=True)
        iterator = self.train_stream.epoch(epoch)
        bar = self.logger.progress(iterator, total=total, desc=f"epoch {epoch} train")
        for i, (session, batch) in enumerate(bar):
            batch = _to_device(batch, self.device)
            sync = (i + 1) % every == 0 or i + 1 == total
            ls, n = self.train_step(session, batch, sync=sync)
            loss_sum[session] = loss_sum[session] + ls
            elements[session] += n
            trials += batch["video"].shape[0]
            if sync:
                norm = self.optimizer_step()
                if norm is not None:
                    norms.append(norm)
        # a last partial accumulation (if the iterator gave fewer batches than announced)
        if any(p.grad is not None for p in self.model.parameters()):
            self.optimizer_step()
        return self._epoch_stats(loss_sum, elements, trials, norms)

    def _epoch_stats(
        self,
        loss_sum: dict[str, torch.Tensor],
        elements: dict[str, int],
        trials: int,
        norms: list[torch.Tensor],
    ) -> dict[str, Any]:
        """The epoch's training numbers, summed over ranks: the one read-back of the epoch."""
        stats = torch.tensor(
            [[0.0, elements[s]] for s in self.session_names] + [[trials, 0]],
            dtype=torch.float64,
        ).to(self.device)
        stats[:-1, 0] += torch.stack([loss_sum[s] for s in self.session_names])
        distributed.all_reduce_sum(stats, self.info)
        stats = stats.cpu()
        mean_norm = float(np.mean(torch.stack(norms).double().cpu().numpy())) if norms else None
        per_session = {
            s: float(stats[i, 0] / max(stats[i, 1], 1)) for i, s in enumerate(self.session_names)
        }
        total_elements = float(stats[:-1, 1].sum())
        return {
            "loss": float(stats[:-1, 0].sum() / max(total_elements, 1)),
            "loss_per_session": per_session,
            "trials": int(stats[-1, 0]),
            "grad_norm": mean_norm,
        }

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Poisson loss and single-trial correlation per session on the validation tier."""
        model = self.model
        model.eval()
        result: dict[str, Any] = {"correlation": {}, "loss": {}}
        for session in sorted(self.val_loaders):
            # sums about 0, added over ranks (the responses here are transformed: no offset)
            n_neurons = int(self.specs[session]["n_neurons"])
            acc = CorrelationAccumulator(n_neurons, self.device, center=0.0)
            skip = frames_to_skip(self.val_loaders[session].dataset.lengths)
            loss = torch.zeros(2, dtype=torch.float64, device=self.device)
            for batch in self.val_loaders[session]:
                batch = _to_device(batch, self.device)
                with self._autocast():
                    prediction = model(
                        batch["video"], session, batch["behavior"], batch["pupil_center"]
                    )
                prediction = prediction.float()
                response = batch["response"].float()
                target = align(prediction, response)
                loss[0] += self.criterion(prediction, target).double()
                loss[1] += target.numel()
                t, t_pred = response.shape[-1], prediction.shape[-1]
                cut = max(skip - (t - t_pred), 0)
                acc.add(target[..., cut:], prediction[..., cut:])
            distributed.all_reduce_sum(acc.stats, self.info)
            distributed.all_reduce_sum(loss, self.info)
            result["correlation"][session] = float(acc.result().mean())
            result["loss"][session] = float(loss[0] / loss[1].clamp_min(1))
        corrs = list(result["correlation"].values())
        losses = list(result["loss"].values())
        result["mean_correlation"] = float(np.mean(corrs)) if corrs else float("nan")
        result["mean_loss"] = float(np.mean(losses)) if losses else float("nan")
        model.train()
        return result

    # -- checkpoints ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        sessions = {
            s: {
                "n_neurons": int(self.specs[s]["n_neurons"]),
                "unit_ids": [int(u) for u in np.asarray(self.specs[s]["unit_ids"]).tolist()],
            }
            for s in self.session_names
        }
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {
                "plateau": self.plateau.state_dict(),
                "clipper": self.clipper.state_dict(),
            },
            "epoch": self.epoch,
            "rng": get_rng_state(),
            "config": cfg.to_dict(self.config),
            "sessions": sessions,
            "best_value": self.plateau.best_value,
            "version": VERSION,
        }

    def save(self, best: bool) -> None:
        """best.pt (when improved) then last.pt; call with the optimiser in eval mode."""
        if not self.is_main:
            return
        state = self.state()
        if best:
            save_checkpoint(self.ckpt_dir / "best.pt", state)
        save_checkpoint(self.ckpt_dir / "last.pt", state)

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
                train_result = self.train_epoch(epoch)
                train_seconds = time.time() - tic
                distributed.broadcast_buffers(self.model, self.info)

                set_optimizer_mode(self.optimizer, "eval")
                val = self.validate()
                decision = self.plateau.step(val["mean_correlation"], epoch)
                if decision == "improved":
                    self.best_state = copy.deepcopy(
                        {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
                    )
                elif decision == "reduced" and self.best_state is not None:
                    self.model.load_state_dict(self.best_state)
                self.epoch = epoch
                self.save(best=decision == "improved")
                set_optimizer_mode(self.optimizer, "train")
                seconds = time.time() - tic

                row = self._row(epoch, train_result, val, seconds, train_seconds)
                self.history.append(row)
                self.logger.log_metrics(row, step=epoch)
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
        except BaseException:
            self.logger.close(exit_code=1)
            raise
        diff = distributed.max_parameter_difference(self.model, self.info)
        if self.info.enabled:
            log(f"ranks in sync: max parameter difference across ranks {diff:.3g}")
        elapsed = time.time() - start
        log(
            f"done ({stopped}) after {self.epoch} epochs in {elapsed:.1f}s: best validation "
            f"correlation {self.plateau.best_value:.4f} at epoch {self.plateau.best_epoch}; "
            f"checkpoints in {self.ckpt_dir}"
        )
        self.logger.close()
        return {
            "output_dir": str(self.output_dir),
            "epochs": self.epoch,
            "best_value": self.plateau.best_value,
            "best_epoch": self.plateau.best_epoch,
            "stopped": stopped,
            "seconds": elapsed,
            "history": self.history,
            "max_rank_difference": diff,
        }

    def _row(
        self, epoch: int, tr: dict[str, Any], val: dict[str, Any], seconds: float, train_s: float
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": tr["loss"],
            "val_loss": val["mean_loss"],
            "val_correlation": val["mean_correlation"],
        }
        for s, c in val["correlation"].items():
            row[f"val_correlation/{s}"] = c
        row["lr"] = current_lr(self.optimizer)
        row["grad_norm"] = tr["grad_norm"] if tr["grad_norm"] is not None else ""
        row["seconds"] = seconds
        row["trials_per_s"] = tr["trials"] / max(train_s, 1e-9)
        return row

    def _epoch_line(
        self,
        epoch: int,
        tr: dict[str, Any],
        val: dict[str, Any],
        seconds: float,
        train_seconds: float,
        decision: str,
    ) -> str:
        mark = {"improved": " *", "reduced": " (lr reduced)", "stop": " (stop)"}.get(decision, "")
        sf = " sf" if is_schedule_free(self.optimizer) else ""
        return (
            f"epoch {epoch:3d}/{self.config.train.epochs}  train loss {tr['loss']:.4f}  "
            f"val loss {val['mean_loss']:.4f}  val corr {val['mean_correlation']:.4f}  "
            f"lr{sf} {current_lr(self.optimizer):.2e}  {seconds:.1f}s  "
            f"{tr['trials'] / max(train_seconds, 1e-9):.1f} trials/s{mark}"
        )


def train(
    config: Config, on_epoch_end: Callable[[int, Trainer], None] | None = None
) -> dict[str, Any]:
    """Run a training described by `config` (joining the process group under torchrun)."""
    info = distributed.setup(config.run.device)
    try:
        trainer = Trainer(config, info)
        return trainer.fit(on_epoch_end)
    finally:
        distributed.cleanup(info)

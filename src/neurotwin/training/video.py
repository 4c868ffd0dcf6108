"""The video model's training task: NeuralPredictor on native-layout sessions.

- Data: per session, training batches of random crops and whole validation trials
  (neurotwin.data.loaders), all sessions' training batches through one stream (`TrainStream`).
- Loss: Poisson on every frame the model outputs (nothing skipped in training), summed over
  neurons and frames, averaged over the trials of a batch, times sqrt(training trials / batch
  size) per session (`ds_scale`, as ViV1T), plus the session's readout regulariser.
- Validation: single-trial correlation per neuron over all frames of all validation trials, the
  first frames of each trial left out by `metrics.frames_to_skip` (the rule prediction uses),
  mean over neurons, then mean over sessions: the score early stopping watches.

`train(config)` runs a whole training of it on the shared loop (neurotwin.training.loop).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotwin.config import Config
from neurotwin.data import loaders, native, synthetic
from neurotwin.errors import CheckpointError, ConfigError, DataFormatError, NeurotwinError
from neurotwin.metrics import CorrelationAccumulator, frames_to_skip
from neurotwin.models import build_model, summary
from neurotwin.training import distributed
from neurotwin.training.loop import Trainer, to_device
from neurotwin.training.losses import align, dataset_scale, get_criterion
from neurotwin.training.optim import parameter_groups
from neurotwin.training.task import Batch, Runtime, StepLoss, TrainingTask, Validation
from neurotwin.training.transfer import freeze, load_pretrained_core


class VideoTask(TrainingTask):
    """Training of the video model of `config` (see the module docstring)."""

    score_name = "corr"
    score_title = "correlation"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.criterion = get_criterion(config.train.criterion)

    # -- data and model ------------------------------------------------------------------------
    def build(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._open_data()
        torch.manual_seed(self.config.run.seed)
        self.model = build_model(
            self.config.model, self.specs, in_channels=1, frame_shape=self.frame_shape
        ).to(runtime.device)
        t = self.config.train
        self.pretrained = None
        if t.pretrained_core and not self.config.run.restore:  # a resumed run has its core
            self.pretrained = load_pretrained_core(self.model, self.config, t.pretrained_core)
        # pretrained network weights inside the core train only with a positive core rate
        self.model.core.set_fine_tuning(t.core_lr is not None and t.core_lr > 0)
        self.frozen_core = t.core_lr == 0
        if self.frozen_core:
            freeze(self.model.core)
        self.notes: list[str] = []
        if getattr(self.config.model.readout, "readout_init_positions", False):
            self._init_readout_positions()

    def _init_readout_positions(self) -> None:
        """Readout positions from the training data (readout_init_positions); a restored run
        gets its checkpoint's instead, so nothing is estimated."""
        if self.config.run.restore:
            return
        from neurotwin.training.readout_init import initialise_positions

        datasets = {s: self.train_loaders[s].dataset for s in self.groups}
        self.notes += initialise_positions(self.model, datasets, device=self.runtime.device)

    def _open_data(self) -> None:
        data, info = self.config.data, self.runtime.info
        self._prepare_data_dir()
        self.check = self._check_data()
        pin = self.runtime.device.type == "cuda"
        built = loaders.build_loaders(
            data,
            {"train": data.train_tier, "val": data.val_tier},
            seed=self.config.run.seed,
            rank=info.rank,
            world_size=info.world_size,
            pin_memory=pin,
        )
        self.train_loaders = dict(built["train"])
        self.val_loaders = dict(built["val"])
        if not self.train_loaders:
            raise ConfigError(
                f"--data_dir: no session with {data.train_tier!r} trials in {data.data_dir}"
            )
        self.specs = loaders.session_specs(data)
        paths = native.find_sessions(data.data_dir, data.mouse_ids)
        self.frame_shape = tuple(native.NativeSession(paths[0]).frame_shape)
        self.groups = sorted(self.train_loaders)
        self.batch_size = data.batch_size
        # training batches of all sessions from one DataLoader with persistent workers
        self.train_stream = loaders.TrainStream(
            self.train_loaders,
            num_workers=data.num_workers,
            pin_memory=pin,
            seed=self.config.run.seed,
            mix=loaders.training_mix(data, self.config.run.seed),
        )
        # trials per session in the whole training set (samplers shard it), for ds_scale
        self.n_train_trials = {s: len(self.train_loaders[s].dataset) for s in self.groups}

    def _prepare_data_dir(self) -> None:
        """Synthetic mice are written only when asked (`generate_synthetic`), with a line that
        says where; otherwise the data folder must exist."""
        data, info = self.config.data, self.runtime.info
        folder = Path(data.data_dir)
        if not data.generate_synthetic:
            if not folder.is_dir():
                raise DataFormatError(
                    folder,
                    "data folder not found (to write the built-in synthetic mice into it, "
                    "add --generate_synthetic)",
                    "data_dir",
                )
            return
        if info.is_main:
            empty = not folder.is_dir() or not any(
                native.is_session_folder(p) for p in folder.iterdir()
            )
            if empty and self.config.run.verbose:
                print(
                    f"no session in {folder.resolve()}: writing the built-in synthetic "
                    "dataset there (generate_synthetic)",
                    flush=True,
                )
            synthetic.ensure_synthetic(folder, progress=sys.stderr.isatty())
        distributed.barrier(info)

    def _check_data(self) -> native.check.CheckReport:
        """The start-up check of every session the run reads (rank 0; every rank stops with
        the same error)."""
        data, info = self.config.data, self.runtime.info
        report, error = native.check.CheckReport(data.check_data), None
        if info.is_main:
            try:
                report = native.check.check_sessions(
                    data.data_dir,
                    data.mouse_ids,
                    tiers=(data.train_tier, data.val_tier),
                    train_tier=data.train_tier,
                    mode=data.check_data,
                )
            except NeurotwinError as e:
                error = e
        messages = distributed.all_gather_object(None if error is None else str(error), info)
        if error is not None:
            raise error
        if messages[0] is not None:
            raise NeurotwinError(messages[0])
        return report

    @property
    def session_names(self) -> list[str]:
        return self.groups

    # -- training ------------------------------------------------------------------------------
    def batches(self, epoch: int) -> Iterable[tuple[str, Batch]]:
        if self.frozen_core:  # the loop has just put the whole model in training mode
            freeze(self.model.core)
        return self.train_stream.epoch(epoch)

    def batch_counts(self) -> dict[str, int]:
        return {s: len(self.train_loaders[s]) for s in self.groups}

    def count(self, batch: Batch) -> int:
        return batch["video"].shape[0]

    def loss(self, model: nn.Module, group: str, batch: Batch, batch_size: int) -> StepLoss:
        """Poisson loss of (part of) a batch, scaled by its share of `batch_size` (and by
        ds_scale), plus the session's regulariser by the same share."""
        scale = 1.0 / batch_size
        if self.config.train.ds_scale:
            scale *= dataset_scale(self.n_train_trials[group], batch_size)
        with self.runtime.precision():
            prediction = model(batch["video"], group, batch["behavior"], batch["pupil_center"])
        target = align(prediction, batch["response"])
        loss = self.criterion(prediction, target)
        objective = loss * scale
        regularizer = getattr(self.model, "regularizer", None)
        if regularizer is not None:
            objective = objective + regularizer(group) * (self.count(batch) / batch_size)
        return StepLoss(objective, loss.detach().double(), target.numel())

    def parameter_groups(self, train: Any) -> list[dict[str, Any]]:
        """The core in its own group (core_lr, core_weight_decay), the rest in another."""
        return parameter_groups(self.model, train)

    def probe_batch(self) -> tuple[str, Batch]:
        """A training batch of the session with the most neurons."""
        session = max(self.groups, key=lambda s: self.specs[s]["n_neurons"])
        return session, next(iter(self.train_loaders[session]))

    def compile_target(self) -> nn.Module:
        core = getattr(self.model, "core", None)
        if not isinstance(core, nn.Module):
            raise ConfigError("--compile: the model has no `core` module to compile")
        return core

    # -- validation ----------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> Validation:
        """Poisson loss and single-trial correlation per session on the validation tier."""
        device, info = self.runtime.device, self.runtime.info
        correlation: dict[str, float] = {}
        losses: dict[str, float] = {}
        for session in sorted(self.val_loaders):
            loader = self.val_loaders[session]
            # sums about 0, added over ranks (the responses here are transformed: no offset)
            acc = CorrelationAccumulator(int(self.specs[session]["n_neurons"]), device, 0.0)
            skip = frames_to_skip(loader.dataset.lengths)  # of the whole tier, not this share
            loss = torch.zeros(2, dtype=torch.float64, device=device)
            for batch in loader:
                batch = to_device(batch, device)
                with self.runtime.precision():
                    prediction = model(batch["video"], session, batch["behavior"], batch["pupil_center"])  # fmt: skip
                prediction = prediction.float()
                response = batch["response"].float()
                target = align(prediction, response)
                loss[0] += self.criterion(prediction, target).double()
                loss[1] += target.numel()
                t, t_pred = response.shape[-1], prediction.shape[-1]
                cut = max(skip - (t - t_pred), 0)
                acc.add(target[..., cut:], prediction[..., cut:])
            distributed.all_reduce_sum(acc.stats, info)
            distributed.all_reduce_sum(loss, info)
            correlation[session] = float(acc.result().mean())
            losses[session] = float(loss[0] / loss[1].clamp_min(1))
        mean_correlation = (
            float(np.mean(list(correlation.values()))) if correlation else float("nan")
        )
        mean_loss = float(np.mean(list(losses.values()))) if losses else float("nan")
        columns = {"val_loss": mean_loss, "val_correlation": mean_correlation}
        columns.update({f"val_correlation/{s}": c for s, c in correlation.items()})
        return Validation(mean_correlation, mean_loss, columns)

    # -- checkpoints and start-up ----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        sessions = {
            s: {
                "n_neurons": int(self.specs[s]["n_neurons"]),
                "unit_ids": [int(u) for u in np.asarray(self.specs[s]["unit_ids"]).tolist()],
            }
            for s in self.groups
        }
        return {"sessions": sessions}

    def load_state(self, state: dict[str, Any], path: str) -> None:
        saved = state.get("sessions", {})
        for name in self.groups:
            if name not in saved:
                raise CheckpointError(
                    f"{path}: the checkpoint has no session {name!r}; --restore resumes a run "
                    "on its own sessions (to train new sessions on its core: --pretrained_core)"
                )
            if int(saved[name]["n_neurons"]) != int(self.specs[name]["n_neurons"]):
                raise CheckpointError(
                    f"{path}: session {name} has {saved[name]['n_neurons']} neurons in the "
                    f"checkpoint but {self.specs[name]['n_neurons']} in the data"
                )

    def describe(self) -> list[str]:
        d = self.config.data
        trials = "/".join(str(self.n_train_trials[s]) for s in self.groups)
        notes = []
        if self.pretrained is not None:
            notes.append(f"core from {self.pretrained}" + (" (frozen)" if self.frozen_core else ""))
        elif self.frozen_core:
            notes.append("core frozen (core_lr 0)")
        if d.folds > 1:
            notes.append(f"training fold: all but fold {d.fold} of {d.folds}")
        return [
            summary(self.model),
            f"data: {d.data_dir}, {len(self.groups)} session(s), training trials {trials}, "
            f"validation tier {d.val_tier!r}",
            self.check.line(),
            *notes,
            *self.notes,
        ]


def train(
    config: Config, on_epoch_end: Callable[[int, Trainer], None] | None = None
) -> dict[str, Any]:
    """Train the video model of `config` (joining the process group under torchrun)."""
    info = distributed.setup(config.run.device)
    try:
        return Trainer(VideoTask(config), config, info).fit(on_epoch_end)
    finally:
        distributed.cleanup(info)

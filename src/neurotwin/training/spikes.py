"""The spike-train model family's training task, on the shared loop (neurotwin.training.loop).

- Data: the spike table sessions of `config.data` (neurotwin.data.spikes.loader.SpikeData),
  training batches of one session each, shuffled and interleaved as a function of (seed, epoch);
  counts stay sparse until the loss assembles them on the device.
- Model: `config.model.name` (glm | glm_vae | vae, neurotwin.models.spikes), in float32 or
  float64 (`--precision`), its time term started at the training PSTHs.
- Loss: Poisson NLL summed over units and bins, averaged over the trials of a batch, + beta * KL
  (beta warmed up over the epochs, `start_epoch`), + the session's penalties divided by its
  number of training trials (the penalties act as a prior on the whole session's likelihood).
- Validation: bits per spike over each unit's homogeneous training rate (neurotwin.metrics),
  pooled over sessions: the score early stopping watches.
- Optimisers: AdamW with the VAE in its own group (`--vae_lr`), or the loop's full-batch L-BFGS
  (`--optimizer lbfgs`) for models without sampled latents.

The config tree of a spike run (`SpikeConfig`: data, model, train, run) lives here too; `fit`
trains one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from neurotwin.config import Options, RunConfig, TrainConfig, new_default, option, require
from neurotwin.data.spikes.loader import SpikeBatch, SpikeData, SpikeDataOptions
from neurotwin.errors import CheckpointError, ConfigError
from neurotwin.metrics import PoissonScores, pooled_bits
from neurotwin.models.spikes import SpikeModelOptions, TrialShape, build_spike_model
from neurotwin.models.spikes.base import SpikeOutput
from neurotwin.run import autocast_enabled, pick_device
from neurotwin.training.distributed import DistInfo
from neurotwin.training.loop import Trainer
from neurotwin.training.task import Batch, Runtime, StepLoss, TrainingTask, Validation

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class SpikeTrainConfig(TrainConfig):
    """The loop's options with the spike family's defaults, the VAE's learning rate and the
    precision of parameters and counts."""

    epochs: int = new_default(TrainConfig, "epochs", 200)
    lr: float = new_default(TrainConfig, "lr", 0.01)
    lr_patience: int = new_default(TrainConfig, "lr_patience", 5)
    accumulate_sessions: bool = new_default(TrainConfig, "accumulate_sessions", False)
    autocast: Literal["auto", "enable", "disable"] = new_default(TrainConfig, "autocast", "disable")
    grad_checkpointing: Literal[0, 1, "auto"] | None = new_default(
        TrainConfig, "grad_checkpointing", 0
    )
    vae_lr: float = option(1e-3, "AdamW learning rate of the VAE (encoder and decoder)")
    precision: Literal["float32", "float64"] = option("float32", "parameter and count precision")

    def check(self) -> None:
        super().check()
        require(self.vae_lr > 0, "vae_lr", f"must be > 0, got {self.vae_lr}")


@dataclass
class SpikeConfig(Options):
    """The whole configuration of a spike-model run; its YAML mirrors the tree: data, model
    (name, glm, vae), train, run."""

    data: SpikeDataOptions = field(default_factory=SpikeDataOptions)
    model: SpikeModelOptions = field(default_factory=SpikeModelOptions)
    train: SpikeTrainConfig = field(default_factory=SpikeTrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


class SpikeTask(TrainingTask):
    """Data, model, loss and scores of one spike run (see the module docstring)."""

    score_name = "bits/spike"
    score_title = "bits/spike"

    def __init__(self, config: SpikeConfig, data: SpikeData | None = None) -> None:
        self.config = config
        self.data = data
        self.dtype = DTYPES[config.train.precision]
        self.epoch = 0

    # -- data and model ------------------------------------------------------------------------
    def build(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.device = runtime.device
        self.data = self.data or SpikeData(self.config.data)
        data = self.data
        self.shape = TrialShape(data.n_bins, data.n_history, self.config.data.bin_ms)
        self.model = build_spike_model(self.config.model, data.specs(), self.shape)
        self.model.to(device=self.device, dtype=self.dtype)
        means = data.mean_counts("train")
        self.model.initialise(means)
        if self.config.train.optimizer == "lbfgs" and self.model.latent is not None:
            raise ConfigError(
                f"--optimizer: lbfgs needs a deterministic full-batch objective; model "
                f"{self.config.model.name} samples latents (use adamw, or model glm)"
            )
        # each unit's mean count per window bin over all training trials: the homogeneous rate
        self.homogeneous = {
            name: psth.mean(axis=2) @ n / max(n.sum(), 1) for name, (psth, n) in means.items()
        }
        self.n_train = {name: max(len(s.rows("train")), 1) for name, s in data.sessions.items()}
        self.groups = data.names
        self.batch_size = self.config.data.batch_size

    def parameter_groups(self, train: Any) -> list[dict[str, Any]]:
        """The GLM's parameters at `lr`, the VAE's at `vae_lr`."""
        wd = train.weight_decay
        groups = [{"name": "glm", "params": self.model.glm_parameters(), "lr": train.lr, "weight_decay": wd}]  # fmt: skip
        if self.model.vae_parameters():
            groups.append({"name": "vae", "params": self.model.vae_parameters(), "lr": train.vae_lr, "weight_decay": wd})  # fmt: skip
        return groups

    # -- training ------------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """The epoch being trained (1-based): sets the KL weight's warm-up."""
        self.epoch = int(epoch)

    @property
    def beta(self) -> float:
        return self.config.model.vae.beta_at(self.epoch) if self.model.latent is not None else 0.0

    def batches(self, epoch: int) -> Iterable[tuple[str, Batch]]:
        for batch in self.data.batches("train", epoch=epoch, seed=self.runtime.seed):
            yield batch.session, {"trials": batch}

    def batch_counts(self) -> dict[str, int]:
        size = self.config.data.batch_size
        return {
            name: math.ceil(len(s.rows("train")) / size) for name, s in self.data.sessions.items()
        }

    def count(self, batch: Batch) -> int:
        return len(batch["trials"])

    def split(self, batch: Batch, start: int, stop: int) -> Batch:
        return {"trials": batch["trials"].subset(start, stop)}

    def forward(self, model: nn.Module, batch: SpikeBatch) -> tuple[torch.Tensor, SpikeOutput]:
        """The batch's counts (history bins first) and the model's output for it."""
        counts = batch.counts(self.device, self.dtype)
        with self.runtime.precision():
            out = model(batch.session, counts, batch.condition_tensor(self.device))
        return counts, out

    def loss(self, model: nn.Module, group: str, batch: Batch, batch_size: int) -> StepLoss:
        """NLL and beta * KL summed over the part's trials / `batch_size`, plus the session's
        penalty / its training trials times the part's share of the batch."""
        trials = batch["trials"]
        counts, out = self.forward(model, trials)
        y = counts[:, :, self.shape.n_history :]
        nll = (out.log_rate.exp() - y * out.log_rate).sum()
        kl = out.kl().sum()
        penalty = self.model.penalty(group) * (len(trials) / self.n_train[group])
        total = nll + self.beta * kl + penalty
        parts = {"nll": nll.detach(), "kl": kl.detach(), "penalty": penalty.detach()}
        return StepLoss(total / batch_size, total.detach().double(), len(trials), parts)

    # -- validation ----------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, split: str, model: nn.Module | None = None) -> dict[str, PoissonScores]:
        """Per-session Poisson scores of `split` (posterior-mean latents, model in eval mode)."""
        model = model or self.model
        was_training = model.training
        model.eval()
        out = {name: PoissonScores(self.homogeneous[name]) for name in self.data.names}
        for batch in self.data.batches(split):
            counts, output = self.forward(model, batch)
            out[batch.session].add(counts[:, :, self.shape.n_history :], output.log_rate)
        model.train(was_training)
        return out

    def validate(self, model: nn.Module) -> Validation:
        """Bits per spike over all sessions (-inf without validation spikes) and per session;
        the loss is the Poisson NLL per validation trial."""
        scores = self.scores("validation", model)
        bits = pooled_bits(scores)
        trials = max(self.data.n_trials("validation"), 1)
        nll = -sum(float(s.model.sum()) for s in scores.values()) / trials
        columns = {"val_loss": nll, "val_bits_per_spike": bits, "beta": self.beta}
        columns.update({f"val_bits_per_spike/{name}": s.bits() for name, s in scores.items()})
        return Validation(bits if math.isfinite(bits) else -math.inf, nll, columns)

    # -- checkpoints and start-up ----------------------------------------------------------------
    def sessions_record(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"n_units": int(s.session.n_units), "unit_ids": s.session.unit_ids.tolist()}
            for name, s in self.data.sessions.items()
        }

    def state(self) -> dict[str, Any]:
        return {"sessions": self.sessions_record()}

    def load_state(self, state: dict[str, Any], path: str) -> None:
        saved = state.get("sessions", {})
        for name, record in self.sessions_record().items():
            if name not in saved:
                raise CheckpointError(f"{path}: the checkpoint has no session {name!r}")
            if list(saved[name]["unit_ids"]) != record["unit_ids"]:
                raise CheckpointError(
                    f"{path}: session {name} has other units in the checkpoint than in the data"
                )
        self.epoch = int(state.get("epoch", 0))

    def load_weights(self, state: dict[str, Any], path: str) -> None:
        """A checkpoint's weights (after `load_state`'s checks), for prediction."""
        self.load_state(state, path)
        try:
            self.model.load_state_dict(state["model"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"{path}: does not match the model built from the config ({e})"
            ) from None

    def describe(self) -> list[str]:
        n_params = sum(p.numel() for p in self.model.parameters())
        d = self.data
        return [
            f"spike model {self.config.model.name}: {n_params:,} parameters ({self.config.train.precision})",  # fmt: skip
            f"data: {self.config.data.data_dir}, {len(d.names)} session(s), "
            f"{d.n_trials('train')} training trials, window {d.window_ms:g} ms in {d.n_bins} "
            f"bins of {self.config.data.bin_ms:g} ms after {d.n_history} history bins",
        ]


def runtime_for(config: SpikeConfig) -> Runtime:
    """Where a spike model computes outside training (prediction): the run's device and
    autocast rule, one process."""
    device = pick_device(config.run.device)
    return Runtime(DistInfo(device=device), autocast_enabled(config.train.autocast, device), config.run.seed)  # fmt: skip


def fit(config: SpikeConfig, data: SpikeData | None = None) -> dict[str, Any]:
    """Train (or resume, `run.restore`) a spike model on the shared loop; returns the loop's
    summary with the task, whose model holds the final weights (`weights_epoch`)."""
    task = SpikeTask(config, data)
    result = Trainer(task, config).fit()
    return {**result, "task": task}

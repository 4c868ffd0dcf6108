"""The spike-train model family as a task: what a training loop needs from it.

`SpikeTask(config)` reads the data, builds the model (by name), its optimiser and the
homogeneous-rate baseline; then

- `training_step(batch) -> (loss, stats)`: forward and loss of one batch (Poisson NLL summed
  over units and bins, mean over trials, + beta * KL, + the session's penalties divided by its
  number of training trials: the penalties act as a prior on the whole session's likelihood);
- `validate(split) -> dict`: `bits_per_spike` (validation Poisson log-likelihood relative to a
  homogeneous rate, higher is better: what early stopping watches) and per-session values;
- `state_dict()` / `load_state_dict()`: model and optimiser.

The config tree of a spike run (`SpikeConfig`: data, model, train, run) lives here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from neurotwin.config import option
from neurotwin.data.spike_loader import SpikeBatch, SpikeData, SpikeDataOptions
from neurotwin.errors import CheckpointError, ConfigError
from neurotwin.models.spikes import SpikeModelOptions, TrialShape, build_spike_model
from neurotwin.models.spikes.base import SpikeOutput
from neurotwin.spike_metrics import PoissonScores, pooled_bits
from neurotwin.training.distributed import pick_device


@dataclass
class SpikeTrainOptions:
    """Optimiser, schedule and early stopping of a spike model."""

    epochs: int = option(200, "maximum epochs")
    optimizer: Literal["adamw", "lbfgs"] = option(
        "adamw",
        "adamw (mini-batches), or lbfgs: full-batch L-BFGS with strong Wolfe line search "
        "(step size 1; for the glm model, whose objective is deterministic)",
    )
    lr: float = option(0.01, "AdamW learning rate of the GLM parameters")
    vae_lr: float = option(1e-3, "AdamW learning rate of the VAE (encoder and decoder)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    lbfgs_iterations: int = option(20, "lbfgs: iterations per epoch")
    patience: int = option(5, "epochs without improvement before the LR is reduced")
    lr_factor: float = option(0.3, "factor applied to the LR at a plateau")
    max_reduce: int = option(2, "LR reductions before early stopping")
    min_epochs: int = option(0, "never stop before this many epochs")
    grad_norm: float | None = option(None, "clip gradients to this norm (none: off)")
    restore_best: bool = option(
        True,
        "end with the weights of the best validation epoch (outputs and predict use best.pt); "
        "false: the last weights (last.pt), e.g. a glm fitted to convergence with lbfgs, the "
        "penalised maximum-likelihood estimate",
    )
    precision: Literal["float32", "float64"] = option("float32", "parameter and count precision")

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"train.epochs: must be >= 0, got {self.epochs}")
        for name in ("lr", "vae_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}: must be > 0, got {getattr(self, name)}")
        if not 0 < self.lr_factor < 1:
            raise ConfigError(f"train.lr_factor: must be in (0, 1), got {self.lr_factor}")
        if self.patience < 1 or self.lbfgs_iterations < 1 or self.max_reduce < 0:
            raise ConfigError("train.patience, lbfgs_iterations >= 1 and max_reduce >= 0 required")
        if self.grad_norm is not None and self.grad_norm <= 0:
            raise ConfigError(f"train.grad_norm: must be > 0 or none, got {self.grad_norm}")


@dataclass
class SpikeRunOptions:
    """Where outputs go, which device, the seed and logging."""

    output_dir: str = option("runs/spikes", "folder for checkpoints, config, logs and outputs")
    device: str = option("", "cpu | cuda | cuda:K | mps (default: best available)")
    seed: int = option(1234, "random seed (training order, initialisation, latent samples)")
    restore: str | None = option(
        None, "resume the run in this folder where it stopped (its config.yaml is the base)"
    )
    wandb: str | None = option(None, "wandb group; logging to wandb is off unless given")
    wandb_mode: Literal["online", "offline"] = option("online", "wandb mode")
    clear_output_dir: bool = option(False, "delete output_dir before training")
    verbose: int = option(1, "0: quiet, 1: epoch lines and progress bars, 2: more")


@dataclass
class SpikeConfig:
    """The whole configuration of a spike-model run."""

    data: SpikeDataOptions = field(default_factory=SpikeDataOptions)
    model: SpikeModelOptions = field(default_factory=SpikeModelOptions)
    train: SpikeTrainOptions = field(default_factory=SpikeTrainOptions)
    run: SpikeRunOptions = field(default_factory=SpikeRunOptions)


DTYPES = {"float32": torch.float32, "float64": torch.float64}


class SpikeTask:
    """Data, model, optimiser and scores of one spike run."""

    def __init__(self, config: SpikeConfig, data: SpikeData | None = None):
        self.config = config
        self.device = pick_device(config.run.device)
        self.dtype = DTYPES[config.train.precision]
        self.data = data or SpikeData(config.data)
        self.shape = TrialShape(self.data.n_bins, self.data.n_history, config.data.bin_ms)
        self.model = build_spike_model(config.model, self.data.specs(), self.shape)
        means = self.data.mean_counts("train")
        self.model.to(device=self.device, dtype=self.dtype)
        self.model.initialise(means)
        if config.train.optimizer == "lbfgs" and self.model.latent is not None:
            raise ConfigError(
                f"train.optimizer: lbfgs needs a deterministic full-batch objective; model "
                f"{config.model.name} samples latents (use adamw, or model glm)"
            )
        self.optimizer = self._optimizer()
        # each unit's mean count per window bin over all training trials: the homogeneous rate
        self.homogeneous = {
            name: psth.mean(axis=2) @ n / max(n.sum(), 1) for name, (psth, n) in means.items()
        }
        self.n_train = {
            name: max(len(s.rows("train")), 1) for name, s in self.data.sessions.items()
        }
        self.epoch = 0

    def _optimizer(self) -> torch.optim.Optimizer:
        t = self.config.train
        if t.optimizer == "lbfgs":
            return torch.optim.LBFGS(
                self.model.parameters(),
                lr=1.0,
                max_iter=t.lbfgs_iterations,
                history_size=50,
                tolerance_grad=1e-10,
                tolerance_change=1e-14,
                line_search_fn="strong_wolfe",
            )
        groups = [{"name": "glm", "params": self.model.glm_parameters(), "lr": t.lr}]
        if self.model.vae_parameters():
            groups.append({"name": "vae", "params": self.model.vae_parameters(), "lr": t.vae_lr})
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)

    # -- the step ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """The epoch being trained (1-based): sets the KL weight's warm-up."""
        self.epoch = int(epoch)

    @property
    def beta(self) -> float:
        return self.config.model.vae.beta_at(self.epoch) if self.model.latent is not None else 0.0

    def forward(self, batch: SpikeBatch) -> tuple[torch.Tensor, SpikeOutput]:
        counts = batch.counts(self.device, self.dtype)
        return counts, self.model(batch.session, counts, batch.condition_tensor(self.device))

    def training_step(self, batch: SpikeBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch (a 0-dim tensor to backpropagate) and its parts (on the device)."""
        counts, out = self.forward(batch)
        y = counts[:, :, self.shape.n_history :]
        nll = (out.log_rate.exp() - y * out.log_rate).sum((1, 2)).mean()
        kl = out.kl().mean()
        # the penalty is a prior on the session's parameters: divided by its training trials,
        # an epoch's batch losses add up to (sum of trial NLLs + penalty) / batch size
        penalty = self.model.penalty(batch.session) / self.n_train[batch.session]
        loss = nll + self.beta * kl + penalty
        return loss, {"nll": nll.detach(), "kl": kl.detach(), "penalty": penalty.detach()}

    # -- scores --------------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, split: str) -> dict[str, PoissonScores]:
        """Per-session Poisson scores of `split` (posterior-mean latents, model in eval mode)."""
        was_training = self.model.training
        self.model.eval()
        out = {name: PoissonScores(self.homogeneous[name]) for name in self.data.names}
        for batch in self.data.batches(split):
            counts, output = self.forward(batch)
            out[batch.session].add(counts[:, :, self.shape.n_history :], output.log_rate)
        self.model.train(was_training)
        return out

    def validate(self, split: str = "validation") -> dict[str, Any]:
        """`bits_per_spike` over all sessions (higher is better) and per session."""
        scores = self.scores(split)
        result: dict[str, Any] = {"bits_per_spike": pooled_bits(scores)}
        for name, s in scores.items():
            result[f"bits_per_spike/{name}"] = s.bits()
        if not math.isfinite(result["bits_per_spike"]):
            result["bits_per_spike"] = -math.inf
        return result

    # -- state ---------------------------------------------------------------------------------------
    def sessions_record(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"n_units": int(s.session.n_units), "unit_ids": s.session.unit_ids.tolist()}
            for name, s in self.data.sessions.items()
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "sessions": self.sessions_record(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        saved = state.get("sessions", {})
        for name, record in self.sessions_record().items():
            if name not in saved:
                raise CheckpointError(f"{source}: the checkpoint has no session {name!r}")
            if list(saved[name]["unit_ids"]) != record["unit_ids"]:
                raise CheckpointError(
                    f"{source}: session {name} has other units in the checkpoint than in the data"
                )
        try:
            self.model.load_state_dict(state["model"])
            if "optimizer" in state:
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"{source}: does not match the model built from the config ({e})"
            ) from None
        self.epoch = int(state.get("epoch", 0))

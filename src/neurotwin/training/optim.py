"""Optimisers, the plateau LR schedule with early stopping, and gradient clipping (incl. AutoClip).

- `build_optimizer`: AdamW, schedule-free AdamW (package `schedulefree`) or full-batch L-BFGS over
  the parameter groups a model family gives (`TrainingTask.parameter_groups`); the video model's
  put the core in its own group (`parameter_groups`: `core_lr`, `core_weight_decay`, as ViV1T).
- `set_optimizer_mode`: schedule-free optimisers keep two sets of weights; `eval` puts the averaged
  weights into the model (for validation and checkpoints), `train` puts the training point back.
  Plain optimisers ignore it.
- `Plateau`: reduce the LR by `factor` after `patience` epochs without improvement of the monitored
  value (validation correlation, higher is better), restore the best weights when it does, and ask
  to stop after `max_reduce` reductions; with a schedule-free optimiser the LR is never reduced and
  training stops after `patience` epochs without improvement.
- `WarmupCosine`: linear warm-up from 0, then cosine decay to a fraction of each group's LR, set
  before every optimiser step (DwiseNeuro's schedule; the plateau schedule then only tracks the best
  epoch and never stops early).
- `GradClipper`: clip the global gradient norm to a fixed value or, with AutoClip (Seetharaman et al.
  2020), to a percentile of the norms seen so far.
"""

from __future__ import annotations

import math
from typing import Any

import schedulefree
import torch
from torch import nn

from neurotwin.config import TrainConfig, VideoTrainConfig
from neurotwin.errors import ConfigError


def parameter_groups(model: nn.Module, config: VideoTrainConfig) -> list[dict[str, Any]]:
    """Two groups: the shared core and everything else (readouts, shifters, activation)."""
    core = getattr(model, "core", None)
    core_ids = {id(p) for p in core.parameters()} if isinstance(core, nn.Module) else set()
    core_params, other_params = [], []
    for p in model.parameters():
        if p.requires_grad:
            (core_params if id(p) in core_ids else other_params).append(p)
    groups = []
    if core_params:
        groups.append(
            {
                "name": "core",
                "params": core_params,
                "lr": config.core_lr if config.core_lr is not None else config.lr,
                "weight_decay": (
                    config.core_weight_decay
                    if config.core_weight_decay is not None
                    else config.weight_decay
                ),
            }
        )
    if other_params:
        groups.append(
            {
                "name": "readouts",
                "params": other_params,
                "lr": config.lr,
                "weight_decay": config.weight_decay,
            }
        )
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return groups


def build_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or schedule-free AdamW over `groups` (each with its lr and weight_decay), or L-BFGS
    over all their parameters in one group (it takes no per-group options); the values are
    checked by TrainConfig.check."""
    if config.optimizer == "lbfgs":
        return torch.optim.LBFGS(
            [p for group in groups for p in group["params"]],
            lr=1.0,
            max_iter=config.lbfgs_iterations,
            history_size=50,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )
    betas = (config.adam_beta1, config.adam_beta2)
    if config.schedule_free:
        optimizer = schedulefree.AdamWScheduleFree(
            groups, lr=config.lr, betas=betas, eps=config.adam_eps, warmup_steps=config.warmup_steps
        )
        optimizer.train()
        return optimizer
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.adam_eps)


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    return callable(getattr(optimizer, "eval", None)) and callable(
        getattr(optimizer, "train", None)
    )


def set_optimizer_mode(optimizer: torch.optim.Optimizer, mode: str) -> None:
    """Switch a schedule-free optimiser's weights: `eval` (averaged x) or `train` (point y)."""
    if not is_schedule_free(optimizer):
        return
    if mode == "eval":
        optimizer.eval()
    elif mode == "train":
        optimizer.train()
    else:  # pragma: no cover - programming error
        raise ValueError(mode)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The LR of the last group (the readouts'), as logged."""
    group = optimizer.param_groups[-1]
    return float(group.get("scheduled_lr") or group["lr"])


class Plateau:
    """Plateau LR schedule and early stopping on a value to maximise.

    `step(value, epoch)` returns "improved", "wait", "reduced" or "stop". On "reduced" the caller
    restores the best weights (`best_state`) and the LR of every group is multiplied by `factor`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        patience: int,
        factor: float,
        max_reduce: int,
        min_epochs: int = 0,
        reduce_lr: bool = True,
        min_lr: float = 1e-7,
        early_stop: bool = True,
    ):
        self.optimizer = optimizer
        self.early_stop = early_stop  # False: only track the best epoch (another schedule runs)
        self.patience = patience
        self.factor = factor
        self.max_reduce = max_reduce
        self.min_epochs = min_epochs
        self.reduce_lr = reduce_lr
        self.min_lr = min_lr
        self.best_value = -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.num_reduce = 0
        self.stopped = False

    def step(self, value: float, epoch: int) -> str:
        if math.isfinite(value) and value > self.best_value:
            self.best_value, self.best_epoch, self.wait = float(value), int(epoch), 0
            return "improved"
        self.wait += 1
        if not self.early_stop or self.wait < self.patience or epoch < self.min_epochs:
            return "wait"
        if not self.reduce_lr or self.num_reduce >= self.max_reduce:
            self.stopped = True
            return "stop"
        self.num_reduce += 1
        self.wait = 0
        for group in self.optimizer.param_groups:
            group["lr"] = max(group["lr"] * self.factor, self.min_lr)
        return "reduced"

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "num_reduce": self.num_reduce,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value = float(state["best_value"])
        self.best_epoch = int(state["best_epoch"])
        self.wait = int(state["wait"])
        self.num_reduce = int(state["num_reduce"])
        self.stopped = bool(state.get("stopped", False))


class WarmupCosine:
    """The LR of optimiser step k (0-based) of `total_steps`: each group's base LR times k / W
    for the W = `warmup_steps` first steps, then min_ratio + (1 - min_ratio) (1 + cos(pi (k - W)
    / (total_steps - W))) / 2 (as DwiseNeuro's LambdaLR warm-up then CosineAnnealingLR, both
    stepped per iteration). `apply()` sets it before a step, `advance()` counts the step."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lrs: list[float],
        warmup_steps: int,
        total_steps: int,
        min_ratio: float,
    ):
        self.optimizer, self.base_lrs = optimizer, list(base_lrs)
        self.warmup_steps, self.total_steps = int(warmup_steps), max(int(total_steps), 1)
        self.min_ratio = float(min_ratio)
        self.step_count = 0

    def factor(self, step: int) -> float:
        w = self.warmup_steps
        if step < w:
            return step / w
        progress = min((step - w) / max(self.total_steps - w, 1), 1.0)
        return self.min_ratio + (1 - self.min_ratio) * (1 + math.cos(math.pi * progress)) / 2

    def apply(self) -> None:
        f = self.factor(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def advance(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])


def grad_norm(parameters: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients, in float32 or wider (0 when none); no host read-back.

    The per-tensor norms come from `torch._foreach_norm`, as in `clip_grad_norm_` (a few kernels
    instead of one per tensor).
    """
    grads = [p.grad.detach().float() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


QUANTILE_MAX_SIZE = 2**24  # torch.quantile refuses larger inputs


def nanquantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """`torch.nanquantile(values, q)` (linear interpolation) of a 1-D tensor of any length.

    Up to `QUANTILE_MAX_SIZE` elements torch's own; beyond, the same arithmetic on a sort (NaN
    sorts last), all on the tensor's device.
    """
    if values.numel() <= QUANTILE_MAX_SIZE:
        return torch.nanquantile(values, q)
    ordered = torch.sort(values).values
    count = torch.isnan(ordered).logical_not_().sum()
    rank = ((count - 1).to(values.dtype) * q).clamp_min(0)
    below = rank.long()
    low = ordered.gather(0, below.view(1))
    high = ordered.gather(0, rank.ceil().long().view(1))
    return low.lerp(high, (rank - below).view(1)).view(())


class GradClipper:
    """Clip to `max_norm`, or with AutoClip to the `percentile` of all norms seen so far.

    Nothing is read back to the host, so the GPU never waits for it: the finite norms seen so far
    are kept on the gradients' device in a buffer (NaN past the first `count` slots; it doubles
    when full), the percentile is computed there, and the gradients are multiplied by
    min(1, limit / (norm + 1e-6)), exactly as `torch.nn.utils.clip_grad_norm_` scales them.
    """

    MIN_CAPACITY = 1024

    def __init__(self, max_norm: float | None = None, percentile: float | None = None):
        self.max_norm = max_norm
        self.percentile = percentile
        self._buffer = torch.zeros(0, dtype=torch.float64)
        self._count = torch.zeros((), dtype=torch.long)  # finite norms in the buffer
        self._written = 0  # norms offered so far: a bound on `_count` known on the host

    @property
    def enabled(self) -> bool:
        return self.max_norm is not None or self.percentile is not None

    @property
    def history(self) -> torch.Tensor:
        """The finite norms seen so far (float64, CPU); reads the count back from the device."""
        return self._buffer[: int(self._count)].detach().cpu().clone()

    def __call__(self, parameters: list[torch.Tensor]) -> torch.Tensor | None:
        """Clip in place; returns the norm before clipping, a 0-dim tensor on the gradients'
        device (None when clipping is off)."""
        if not self.enabled:
            return None
        params = [p for p in parameters if p.grad is not None]
        device = parameters[0].device if parameters else self._buffer.device
        norm = grad_norm(params).to(device)
        coefficient = self._coefficient(norm)
        if params:
            torch._foreach_mul_([p.grad for p in params], coefficient)
        return norm

    def _coefficient(self, norm: torch.Tensor) -> torch.Tensor:
        """min(1, limit / (norm + 1e-6)) as a 0-dim tensor; 1 while AutoClip has no history."""
        if self.percentile is None:
            return torch.clamp(torch.reciprocal(norm + 1e-6) * self.max_norm, max=1.0)
        self._record(norm)
        limit = nanquantile(self._buffer[: self._written], self.percentile / 100)
        coefficient = torch.clamp(torch.reciprocal(norm + 1e-6) * limit.to(norm.dtype), max=1.0)
        return torch.where(self._count > 0, coefficient, torch.ones_like(coefficient))

    def _record(self, norm: torch.Tensor) -> None:
        """Write `norm` into the next free slot and count it, only if it is finite."""
        self._reserve(self._written + 1, norm.device)
        value = norm.detach().to(torch.float64)
        finite = torch.isfinite(value)
        # slot `count` is free (NaN): a non-finite norm leaves it NaN and the count where it is
        self._buffer.index_put_(
            (self._count.view(1),), torch.where(finite, value, math.nan).view(1)
        )
        self._count = self._count + finite
        self._written += 1

    def _reserve(self, size: int, device: torch.device) -> None:
        """Room for `size` norms on `device` (capacity doubles; free slots hold NaN)."""
        capacity = self._buffer.numel()
        if size > capacity:
            capacity = max(self.MIN_CAPACITY, capacity)
            while capacity < size:
                capacity *= 2
            buffer = torch.full((capacity,), math.nan, dtype=torch.float64, device=device)
            buffer[: self._buffer.numel()] = self._buffer.to(device)
            self._buffer = buffer
        elif self._buffer.device != device:
            self._buffer = self._buffer.to(device)
        self._count = self._count.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        history = state.get("history", torch.zeros(0)).detach().to(torch.float64).flatten()
        history = history[torch.isfinite(history)].cpu()
        device = self._buffer.device
        self._buffer = torch.zeros(0, dtype=torch.float64)
        self._written = 0
        self._reserve(history.numel() + 1, device)
        self._buffer[: history.numel()] = history.to(device)
        self._count = torch.tensor(history.numel(), device=device)
        self._written = history.numel()

"""Training losses: a numerically safe Poisson loss and the alignment of predictions to targets."""

from __future__ import annotations

import math

import torch

from neurotwin.errors import ConfigError

EPS = 1e-8


def align(prediction: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """The frames of `response` (B, N, T) that `prediction` (B, N, T') covers: its last T'.

    A model may output fewer frames than it was given (T' <= T); its outputs then align with
    the last T' input frames (see NeuralPredictor.forward).
    """
    t_pred, t = prediction.shape[-1], response.shape[-1]
    if t_pred > t:
        raise ValueError(f"the model returned {t_pred} frames for {t} input frames")
    return response[..., t - t_pred :]


def poisson_loss(
    prediction: torch.Tensor, response: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Poisson negative log-likelihood (without the log(y!) constant), summed over all elements.

    Computed in float32 (or float64) whatever the autocast dtype; predictions are clamped to at least `eps`
    so that log() stays finite when a rate reaches 0.
    """
    if prediction.dtype in (torch.bfloat16, torch.float16):
        prediction = prediction.float()
    response = response.to(prediction.dtype)
    prediction = prediction.clamp_min(eps)
    return torch.sum(prediction - response * torch.log(prediction))


def dataset_scale(n_trials: int, batch_size: int) -> float:
    """ViV1T's per-session loss scale: sqrt(training trials / batch size)."""
    return math.sqrt(max(n_trials, 1) / max(batch_size, 1))


def get_criterion(name: str):
    """The loss function named by `train.criterion`."""
    if name == "poisson":
        return poisson_loss
    raise ConfigError(f"train.criterion: unknown loss {name!r}; known: ['poisson']")

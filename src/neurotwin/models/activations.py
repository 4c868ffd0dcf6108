"""Output activations: map readout values to rates (positive for all but `none`).

The positive ones add RATE_FLOOR (1e-8), so that rates stay > 0 even where float32 underflows
(e.g. ELU(-100) + 1). Each has `inverse(y)`, used to initialise readout biases so that the initial rate of a neuron
is close to its mean response.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neurotwin.config import option, require
from neurotwin.registry import ACTIVATIONS, PartOptions

_EPS = 1e-4
RATE_FLOOR = 1e-8  # added to the positive activations: rates stay > 0 where float32 underflows


@ACTIVATIONS.register("none")
class Identity(nn.Module):
    """No activation (rates may be negative)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y


@ACTIVATIONS.register("elu1")
class ELU1(nn.Module):
    """ELU(x) + 1 > 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # = ELU(x) + 1, written so that it does not round to 0 for very negative x
        return torch.where(x > 0, x + 1.0, torch.exp(x.clamp_max(0.0))) + RATE_FLOOR

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = y.clamp_min(_EPS)
        return torch.where(y >= 1.0, y - 1.0, torch.log(y))


@ACTIVATIONS.register("exp")
class Exp(nn.Module):
    """exp(x) > 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x) + RATE_FLOOR

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.log(y.clamp_min(_EPS))


@dataclass
class SoftplusOptions(PartOptions):
    """softplus: its beta, learnable (DwiseNeuro's README experiment) or fixed (its solution:
    0.07)."""

    softplus_beta: float = option(1.0, "beta of the softplus (its initial value if learnable)")
    softplus_learn_beta: bool = option(True, "learn beta (false: keep softplus_beta fixed)")

    def check(self) -> None:
        require(self.softplus_beta > 0, "softplus_beta", f"must be > 0, got {self.softplus_beta}")


@ACTIVATIONS.register("softplus", options=SoftplusOptions)
class LearnableSoftplus(nn.Module):
    """log(1 + exp(beta x)) / beta with beta > 0 (stored as log beta), learnable or fixed; linear
    where beta x > threshold (as torch's Softplus)."""

    def __init__(self, options: SoftplusOptions | None = None, threshold: float = 20.0) -> None:
        super().__init__()
        o = options or SoftplusOptions()
        log_beta = torch.tensor(math.log(o.softplus_beta))
        if o.softplus_learn_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.log_beta.exp()
        bx = beta * x
        # softplus(bx)/beta, linear above the threshold
        return torch.where(bx < self.threshold, F.softplus(bx) / beta, x) + RATE_FLOOR

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        beta = self.log_beta.exp().detach()
        by = (beta * y.clamp_min(_EPS)).clamp_max(self.threshold)
        return torch.log(torch.expm1(by)) / beta


@ACTIVATIONS.register("sigmoid")
class Sigmoid(nn.Module):
    """1 / (1 + exp(-x)) in (0, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) + RATE_FLOOR

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.logit(y.clamp(_EPS, 1 - _EPS))


def build_activation(part: str | PartOptions) -> nn.Module:
    """An output activation by name (`none`, `elu1`, `exp`, `softplus`, `sigmoid`; default
    options) or from its options (the config's output_activation slot). Only softplus has
    options."""
    options = ACTIVATIONS.options(part) if isinstance(part, str) else part
    cls = ACTIVATIONS.get(options.name)
    return cls(options) if dataclasses.fields(options) else cls()

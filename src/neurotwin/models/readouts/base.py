"""What every readout is: core features (B, C, T, h, w) -> responses (B, N, T) of one session.

Readouts are applied to every time step (time is folded into the batch). Positions are in the
coordinates of `torch.nn.functional.grid_sample` with align_corners=True: (-1, -1) is the centre
of the top-left feature-map pixel, (1, 1) the centre of the bottom-right one; x indexes width,
y height. A shift (B, T, 2) from a shifter is added to every neuron's position.

A readout is built as `cls(in_shape, n_neurons, options, coordinates=..., bias_init=...)` with
the options dataclass it was registered with (`ReadoutOptions` or a subclass).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from neurotwin.config import option
from neurotwin.registry import PartOptions


@dataclass
class ReadoutOptions(PartOptions):
    """What every readout takes (defaults: ViV1T's)."""

    readout_bias_mode: Literal[0, 1, 2] = option(
        2, "0: no bias, 1: bias initialised to zero, 2: bias initialised to the mean response"
    )
    readout_reg_weight: float = option(
        0.0, "L1 penalty on the readout weights (ViV1T: 0; Sensorium baselines: 0.0076)"
    )


class Readout(nn.Module, metaclass=ABCMeta):
    """Base class: subclasses implement `regularizer` and `forward`. `coordinates` (N, 3) are
    the neurons' cortical positions, `bias_init` (N,) the initial bias (the mean response
    through the inverse output activation); either may be None."""

    registered_name: str

    def __init__(
        self, in_shape: tuple[int, int, int], n_neurons: int, options: ReadoutOptions
    ) -> None:
        super().__init__()
        self.options = options
        self.in_shape = tuple(in_shape)
        self.n_neurons = int(n_neurons)
        self.reg_weight = float(options.readout_reg_weight)

    @abstractmethod
    def regularizer(self) -> torch.Tensor:
        """The weighted penalty of this readout, a scalar tensor."""

    @abstractmethod
    def forward(self, features: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, C, T, h, w), shift (B, T, 2) or None -> responses (B, N, T)."""


def make_bias(n: int, mode: int, bias_init: torch.Tensor | None) -> nn.Parameter | None:
    """ViV1T's readout_bias_mode: 0 none, 1 zeros, 2 from the mean response (given as
    `bias_init`, already mapped through the inverse output activation)."""
    if mode == 0:
        return None
    bias = torch.zeros(n)
    if mode == 2 and bias_init is not None:
        bias_init = torch.as_tensor(np.asarray(bias_init, dtype=np.float32)).reshape(-1)
        if bias_init.numel() != n:
            raise ValueError(f"mean_response has {bias_init.numel()} values, expected {n}")
        bias = torch.nan_to_num(bias_init.clone(), nan=0.0, posinf=0.0, neginf=0.0)
    return nn.Parameter(bias)

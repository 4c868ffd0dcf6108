"""pooled_linear: DwiseNeuro's readout: the features averaged over space, then one linear map per
session from channels to neurons at every frame.

Features (B, C, T, h, w) -> mean over (h, w) -> channel dropout (whole channels of a clip, as
Dropout1d) -> a grouped 1x1 convolution: the channels in `readout_groups` groups, each group
feeding its share of the neurons (DwiseNeuro: 2 groups; the neuron count is padded up to a
multiple of the groups and the extra outputs dropped, so the parameter count is its own) + bias.
There are no positions: a shifter has nothing to move (use shifter_mode 0).
Regulariser: reg_weight * sum |weights| (L1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neurotwin.config import option, require
from neurotwin.models.readouts.base import Readout, ReadoutOptions, make_bias
from neurotwin.registry import READOUTS


@dataclass
class PooledLinearOptions(ReadoutOptions):
    """pooled_linear (defaults: DwiseNeuro's)."""

    readout_groups: int = option(2, "groups of channels, each mapped to its share of the neurons")
    readout_dropout: float = option(0.4, "dropout of whole feature channels")

    def check(self) -> None:
        require(self.readout_groups >= 1, "readout_groups", f"must be >= 1, got {self.readout_groups}")  # fmt: skip
        d = self.readout_dropout
        require(0 <= d < 1, "readout_dropout", f"must be in [0, 1), got {d}")


@READOUTS.register("pooled_linear", options=PooledLinearOptions)
class PooledLinearReadout(Readout):
    takes_shift = False

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        n_neurons: int,
        options: PooledLinearOptions | None = None,
        coordinates: np.ndarray | None = None,
        bias_init: torch.Tensor | None = None,
    ) -> None:
        o = options or PooledLinearOptions()
        super().__init__(in_shape, n_neurons, o)
        c, g = in_shape[0], o.readout_groups
        require(c % g == 0, "readout_groups", f"must divide the core's {c} channels, got {g}")
        self.groups = g
        padded = math.ceil(n_neurons / g) * g
        # DwiseNeuro's init of a 1x1 convolution: normal(0, sqrt(2 groups / out channels))
        self.weight = nn.Parameter(torch.randn(padded, c // g) * math.sqrt(2.0 * g / padded))
        bias = make_bias(n_neurons, o.readout_bias_mode, bias_init)
        if bias is not None:  # the padded outputs' biases exist (and count) but are never read
            bias = nn.Parameter(torch.cat((bias.detach(), torch.zeros(padded - n_neurons))))
        self.bias = bias
        self.dropout = o.readout_dropout

    def regularizer(self) -> torch.Tensor:
        return self.reg_weight * self.weight.abs().sum()

    def forward(self, features: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        if shift is not None:
            raise ValueError("the pooled_linear readout has no positions to shift")
        x = features.mean((3, 4))  # (B, C, T)
        if self.training and self.dropout > 0:
            x = F.dropout1d(x, self.dropout, training=True)
        w = self.weight.to(x.dtype)[..., None]
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv1d(x, w, bias, groups=self.groups)[:, : self.n_neurons]

"""factorized: each neuron's weights are a spatial mask (h x w) times feature weights (C).

response_n = sum_{c,y,x} mask_n[y, x] * features_n[c] * F[c, y, x] + bias_n, at every frame.
The mask is L2-normalised per neuron (as in Sensorium's factorized baseline). A shift moves
the feature map by (dx, dy) in grid_sample coordinates (same sign as the Gaussian readout:
positions + shift). Regulariser: reg_weight * sum_n |mask_n|_1 |features_n|_1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neurotwin.config import option
from neurotwin.models.frames import fold_time, unfold_neurons
from neurotwin.models.readouts.base import Readout, ReadoutOptions, make_bias
from neurotwin.registry import READOUTS

INIT_NOISE = 1e-3  # scale of the random initial masks and feature weights


@dataclass
class FactorizedOptions(ReadoutOptions):
    readout_dropout: float = option(0.0, "dropout on the core features")


@READOUTS.register("factorized", options=FactorizedOptions)
class FactorizedReadout(Readout):
    def __init__(
        self,
        in_shape: tuple[int, int, int],
        n_neurons: int,
        options: FactorizedOptions | None = None,
        coordinates: np.ndarray | None = None,
        bias_init: torch.Tensor | None = None,
    ) -> None:
        o = options or FactorizedOptions()
        super().__init__(in_shape, n_neurons, o)
        c, h, w = in_shape
        self.spatial = nn.Parameter(torch.randn(n_neurons, h, w) * INIT_NOISE)
        self.features = nn.Parameter(torch.randn(n_neurons, c) * INIT_NOISE)
        self.bias = make_bias(n_neurons, o.readout_bias_mode, bias_init)
        dropout = o.readout_dropout
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def mask(self) -> torch.Tensor:
        s = self.spatial
        return s / (s.flatten(1).norm(dim=1).view(-1, 1, 1) + 1e-6)

    def regularizer(self) -> torch.Tensor:
        return (
            self.reg_weight * (self.mask.flatten(1).abs().sum(1) * self.features.abs().sum(1)).sum()
        )

    @staticmethod
    def shift_features(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Sample x (N, C, h, w) at (grid + shift) so that a mask sees positions moved by shift."""
        n = x.shape[0]
        theta = x.new_zeros(n, 2, 3)
        theta[:, 0, 0] = 1.0
        theta[:, 1, 1] = 1.0
        theta[:, :, 2] = shift.reshape(n, 2).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def forward(self, features, shift=None, sample: bool | None = None):
        x = self.dropout(fold_time(features))
        if shift is not None:
            x = self.shift_features(x, shift)
        pooled = torch.einsum("kchw,nhw->knc", x, self.mask.to(x.dtype))  # (B*T, N, C)
        y = (pooled * self.features.to(x.dtype)).sum(-1)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return unfold_neurons(y, features.shape[0])

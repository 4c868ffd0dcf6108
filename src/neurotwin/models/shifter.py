"""Shifter: a per-session MLP from gaze (and behaviour) to a shift of all readout positions.

shifter_mode 1: input pupil centre (x, y); mode 2: behaviour (dilation, speed) + pupil centre.
Layers: (shifter_layers - 1) x [Linear(., shifter_size), tanh], then Linear(., 2), tanh, so the
shift is in (-1, 1)^2 in grid_sample coordinates, one per frame. Weights: Xavier normal.
"""

from __future__ import annotations

import torch
from torch import nn

from neurotwin.errors import ConfigError


class MLPShifter(nn.Module):
    def __init__(self, mode: int = 1, hidden: int = 5, layers: int = 3) -> None:
        super().__init__()
        if mode not in (1, 2):
            raise ConfigError(f"shifter_mode: expected 1 or 2 for a shifter, got {mode!r}")
        if layers < 1:
            raise ConfigError(f"shifter_layers must be >= 1, got {layers}")
        self.mode = mode
        d = 2 if mode == 1 else 4
        mods: list[nn.Module] = []
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hidden), nn.Tanh()]
            d = hidden
        mods += [nn.Linear(d, 2), nn.Tanh()]
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, behavior: torch.Tensor | None, pupil_center: torch.Tensor) -> torch.Tensor:
        """behavior, pupil_center (B, 2, T) -> shift (B, T, 2)."""
        x = pupil_center if self.mode == 1 else torch.cat((behavior, pupil_center), dim=1)
        return self.mlp(x.transpose(1, 2).to(self.mlp[0].weight.dtype))

    def regularizer(self) -> torch.Tensor:
        return self.mlp[0].weight.new_zeros(())

"""Shifter: a per-session MLP from gaze (and behaviour) to a shift of all readout positions.

shifter_mode 1: input pupil centre (x, y); mode 2: behaviour (dilation, speed) + pupil centre;
mode 0: no shifter. Layers: (shifter_layers - 1) x [Linear(., shifter_size), tanh], then
Linear(., 2), tanh, so the shift is in (-1, 1)^2 in grid_sample coordinates, one per frame.
Weights: Xavier normal, but the last layer's start at zero, so that the initial shift is zero
(the gradient still reaches the last layer through the hidden units): Xavier weights there
would move every readout position by up to half the screen with the gaze, a random jitter
that the readouts must first unlearn (bench/RESULTS.md, "Fit quality").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neurotwin.config import option, require
from neurotwin.registry import SHIFTERS, PartOptions


@dataclass
class ShifterOptions(PartOptions):
    shifter_mode: Literal[0, 1, 2] = option(
        1, "0: no shifter, 1: shift from pupil centre, 2: from pupil centre and behaviour"
    )
    shifter_layers: int = option(3, "MLP layers")
    shifter_size: int = option(5, "hidden units")

    def check(self) -> None:
        require(self.shifter_layers >= 1, "shifter_layers", f"must be >= 1, got {self.shifter_layers}")  # fmt: skip
        require(self.shifter_size >= 1, "shifter_size", f"must be >= 1, got {self.shifter_size}")


@SHIFTERS.register("mlp", options=ShifterOptions)
class MLPShifter(nn.Module):
    def __init__(self, options: ShifterOptions | None = None) -> None:
        super().__init__()
        o = options or ShifterOptions()
        require(o.shifter_mode in (1, 2), "shifter_mode", f"a shifter needs mode 1 or 2, got {o.shifter_mode!r}")  # fmt: skip
        self.mode = o.shifter_mode
        d = 2 if self.mode == 1 else 4
        mods: list[nn.Module] = []
        for _ in range(o.shifter_layers - 1):
            mods += [nn.Linear(d, o.shifter_size), nn.Tanh()]
            d = o.shifter_size
        mods += [nn.Linear(d, 2), nn.Tanh()]
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.mlp[-2].weight)  # no shift at the start

    def forward(self, behavior: torch.Tensor | None, pupil_center: torch.Tensor) -> torch.Tensor:
        """behavior, pupil_center (B, 2, T) -> shift (B, T, 2)."""
        x = pupil_center if self.mode == 1 else torch.cat((behavior, pupil_center), dim=1)
        return self.mlp(x.transpose(1, 2).to(self.mlp[0].weight.dtype))

    def regularizer(self) -> torch.Tensor:
        return self.mlp[0].weight.new_zeros(())

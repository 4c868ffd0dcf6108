"""mlp: neuralpredictors' MLP modulator: behaviour at each frame -> an MLP -> a gain per neuron.

Inputs per frame: pupil dilation and running speed (modulator_mode 1), and the pupil centre
(mode 2). Layers: (modulator_layers - 1) x [Linear(., modulator_hidden), ReLU], then
Linear(., N); gain = ELU(.) + 1 > 0. The last layer starts at zero, so the gain starts at
exactly 1 (the model without behaviour). neuralpredictors puts a ReLU before its ELU + 1, so
its gain is >= 1 only; here a neuron's gain can also fall below 1 (e.g. when running quiets
it). Regulariser: modulator_reg_weight x mean |last layer's weights| (its gamma_modulator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from neurotwin.config import option, require
from neurotwin.models.modulators.base import Modulator, ModulatorOptions
from neurotwin.registry import MODULATORS


@dataclass
class MLPModulatorOptions(ModulatorOptions):
    modulator_mode: Literal[1, 2] = option(
        1, "inputs: 1 pupil dilation and running speed, 2 those and the pupil centre"
    )
    modulator_layers: int = option(2, "linear layers")
    modulator_hidden: int = option(10, "hidden units")
    modulator_reg_weight: float = option(0.0, "L1 penalty on the last layer's weights")

    def check(self) -> None:
        require(self.modulator_layers >= 1, "modulator_layers", f"must be >= 1, got {self.modulator_layers}")  # fmt: skip
        require(self.modulator_hidden >= 1, "modulator_hidden", f"must be >= 1, got {self.modulator_hidden}")  # fmt: skip
        require(self.modulator_reg_weight >= 0, "modulator_reg_weight", "must be >= 0")


@MODULATORS.register("mlp", options=MLPModulatorOptions)
class MLPModulator(Modulator):
    def __init__(self, n_neurons: int, options: MLPModulatorOptions | None = None) -> None:
        o = options or MLPModulatorOptions()
        super().__init__(n_neurons, o)
        layers: list[nn.Module] = []
        d = 2 if o.modulator_mode == 1 else 4
        for _ in range(o.modulator_layers - 1):
            layers += [nn.Linear(d, o.modulator_hidden), nn.ReLU()]
            d = o.modulator_hidden
        self.last = nn.Linear(d, n_neurons)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)
        self.hidden = nn.Sequential(*layers)

    def gain(self, behavior, pupil_center):
        if behavior is None or (self.options.modulator_mode == 2 and pupil_center is None):
            raise ValueError("the modulator needs behaviour (and, in mode 2, pupil centre)")
        x = behavior if self.options.modulator_mode == 1 else torch.cat((behavior, pupil_center), 1)
        z = self.last(self.hidden(x.transpose(1, 2).to(self.last.weight.dtype)))  # (B, T, N)
        return (F.elu(z) + 1.0).transpose(1, 2)

    def regularizer(self) -> torch.Tensor:
        return self.options.modulator_reg_weight * self.last.weight.abs().mean()

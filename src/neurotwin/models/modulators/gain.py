"""gain: a per-neuron multiplicative gain on the rates from running speed and pupil dilation.

Mouse V1 responses are scaled up and down by locomotion and arousal (Niell & Stryker 2010;
Reimer et al. 2014), a gain the movie cannot explain. Every neuron's rate is multiplied by
exp(w_n . (b_t - centre)), with b_t the (transformed) pupil dilation and running speed of frame
t, w_n two weights per neuron (zero at the start: gain 1) and `centre` the mean behaviour of the
training tier (so that w_n changes the modulation, not the mean rate). The log gain is clipped to
+-`modulator_max_log_gain`. Unlike "mlp", it acts on the activated rates (`on_rates`): a
log-linear gain on the rate is the form the synthetic mice's behaviour takes, and it keeps the
output activation's floor where it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from neurotwin.config import option, require
from neurotwin.errors import ConfigError
from neurotwin.models.modulators.base import Modulator, ModulatorOptions
from neurotwin.registry import MODULATORS


@dataclass
class GainModulatorOptions(ModulatorOptions):
    modulator_max_log_gain: float = option(3.0, "the log gain is clipped to +- this")

    def check(self) -> None:
        require(self.modulator_max_log_gain > 0, "modulator_max_log_gain", "must be > 0")


@MODULATORS.register("gain", options=GainModulatorOptions)
class GainModulator(Modulator):
    """rates (B, N, T), behaviour (B, 2, T) -> rates * exp(clip(w . (behaviour - centre)))."""

    on_rates = True
    takes_behavior_mean = True

    def __init__(
        self,
        n_neurons: int,
        options: GainModulatorOptions | None = None,
        behavior_mean: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        o = options or GainModulatorOptions()
        super().__init__(n_neurons, o)
        self.weight = nn.Parameter(torch.zeros(self.n_neurons, 2))
        c = torch.zeros(2) if behavior_mean is None else torch.as_tensor(behavior_mean).float()
        if c.shape != (2,) or not bool(torch.all(torch.isfinite(c))):
            raise ConfigError(
                "gain modulator: behavior_mean (the session spec's mean behaviour): expected 2 "
                f"finite values (pupil dilation, running speed), got {c.tolist()}"
            )
        self.register_buffer("centre", c.reshape(1, 2, 1).clone())

    def log_gain(self, behavior: torch.Tensor) -> torch.Tensor:
        """(B, 2, T) -> (B, N, T)."""
        x = behavior.to(self.weight.dtype) - self.centre
        g = torch.einsum("nc,bct->bnt", self.weight, x)
        limit = self.options.modulator_max_log_gain
        return g.clamp(-limit, limit)

    def gain(self, behavior, pupil_center):
        if behavior is None:
            raise ValueError("the gain modulator needs behaviour (pupil dilation, running speed)")
        return torch.exp(self.log_gain(behavior))

    def regularizer(self) -> torch.Tensor:
        return self.weight.new_zeros(())

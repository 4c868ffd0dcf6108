"""What every modulator is: behaviour (and pupil centre) -> a positive gain (B, N, T) that
multiplies a session's readout output before the output activation (as neuralpredictors'
modulators act in the Sensorium video models), or, for a modulator with `on_rates = True`, the
activated rates. "none" is the slot's default: no modulator.

A modulator is built as `cls(n_neurons, options)` with the options it was registered with; one
with `takes_behavior_mean = True` also gets `behavior_mean=` (2,), the training tier's mean
pupil dilation and running speed in the model's input units (the session spec's
"behavior_mean"), so that it can centre the behaviour it sees.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from neurotwin.registry import MODULATORS, PartOptions


@dataclass
class ModulatorOptions(PartOptions):
    """What every modulator takes (nothing yet)."""


class Modulator(nn.Module, metaclass=ABCMeta):
    """Base class: subclasses implement `gain` and `regularizer`."""

    registered_name: str
    on_rates = False  # True: the gain multiplies the activated rates, not the readout's output
    takes_behavior_mean = False  # True: built with behavior_mean= (2,)

    def __init__(self, n_neurons: int, options: ModulatorOptions) -> None:
        super().__init__()
        self.n_neurons, self.options = int(n_neurons), options

    @abstractmethod
    def gain(
        self, behavior: torch.Tensor | None, pupil_center: torch.Tensor | None
    ) -> torch.Tensor:
        """behaviour, pupil centre (B, 2, T) -> gain (B, N, T) > 0."""

    @abstractmethod
    def regularizer(self) -> torch.Tensor:
        """The weighted penalty of this modulator, a scalar tensor."""

    def forward(self, y: torch.Tensor, behavior, pupil_center) -> torch.Tensor:
        """Readout output y (B, N, T) times the gain of the last T frames of behaviour."""
        t = y.shape[-1]
        behavior = None if behavior is None else behavior[..., -t:]
        pupil_center = None if pupil_center is None else pupil_center[..., -t:]
        return y * self.gain(behavior, pupil_center).to(y.dtype)


@MODULATORS.register("none", options=ModulatorOptions)
class NoModulator:
    """No modulator: build_model builds none for this slot value."""

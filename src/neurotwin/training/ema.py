"""An exponential moving average (EMA) of a model's weights, for any model on the training loop.

After every optimiser step the average moves towards the model: a <- decay a + (1 - decay) w,
for every floating-point entry of the state dict (parameters and batch-norm statistics, as
timm's ModelEmaV2 and DwiseNeuro's ModelEma average); integer entries (batch-norm step counts)
are copied. The loop validates and saves the averaged weights: `swap(model)` exchanges the
model's weights with the average in place (calling it again swaps back), so that validation,
`best.pt` and `last.pt` see the average while the optimiser keeps training the model's own
weights. A checkpoint holds the average as its "model" and the training weights under "ema", so
prediction loads the average and a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class WeightEMA:
    """The moving average of `model`'s state dict, starting at the model's weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0
        self.swapped = False  # True while the model holds the average (and `average` the weights)

    def _pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        state = model.state_dict()
        if state.keys() != self.average.keys():
            raise ValueError("the model's state dict no longer matches the EMA's entries")
        return [(self.average[k], state[k]) for k in state]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards the model's current weights (on the device)."""
        if self.swapped:
            raise RuntimeError("update() while the model holds the averaged weights")
        floats = [(a, w) for a, w in self._pairs(model) if a.is_floating_point()]
        if floats:
            averages, weights = zip(*floats)
            torch._foreach_lerp_(list(averages), list(weights), 1.0 - self.decay)
        for a, w in self._pairs(model):
            if not a.is_floating_point():
                a.copy_(w)
        self.updates += 1

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange the model's weights and the average, in place (the model's tensors keep
        their storage, so optimiser state and compiled code stay attached)."""
        for a, w in self._pairs(model):
            held = w.clone()
            w.copy_(a)
            a.copy_(held)
        self.swapped = not self.swapped

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Set the average to the model's weights (e.g. after the best weights were restored)."""
        for a, w in self._pairs(model):
            a.copy_(w)

    def training_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights the optimiser trains, on the CPU, wherever they are held now."""
        held = self.average if self.swapped else model.state_dict()
        return {k: v.detach().cpu().clone() for k, v in held.items()}

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """What a checkpoint needs besides the averaged weights: decay, updates and the
        training weights."""
        return {
            "decay": self.decay,
            "updates": self.updates,
            "training_weights": self.training_weights(model),
        }

    @torch.no_grad()
    def load(self, model: nn.Module, averaged: dict[str, torch.Tensor], state: dict[str, Any]):
        """Resume: the average from a checkpoint's "model", the model's own weights from its
        "ema" entry (`state_dict`); leaves the model holding the training weights."""
        model.load_state_dict(averaged)
        self.reset(model)
        model.load_state_dict(state["training_weights"])
        self.updates = int(state["updates"])
        self.swapped = False

"""Spike-train models: the point-process GLM with population coupling, the GLM-Transformer VAE."""

from neurotwin.models.spikes.base import SessionSpec, SpikeOutput, TrialShape
from neurotwin.models.spikes.model import SpikeModel, SpikeModelOptions, build_spike_model
from neurotwin.registry import SPIKE_MODELS

__all__ = [
    "SPIKE_MODELS",
    "SessionSpec",
    "SpikeModel",
    "SpikeModelOptions",
    "SpikeOutput",
    "TrialShape",
    "build_spike_model",
]

"""Models: a shared core, per-session readouts and shifters, an output activation."""

from neurotwin.models.model import NeuralPredictor, build_model
from neurotwin.models.registry import ACTIVATIONS, CORES, READOUTS
from neurotwin.models.summary import parameter_counts, summary

__all__ = [
    "ACTIVATIONS",
    "CORES",
    "READOUTS",
    "NeuralPredictor",
    "build_model",
    "parameter_counts",
    "summary",
]

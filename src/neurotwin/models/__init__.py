"""Models: a shared core, per-session readouts and shifters, an output activation."""

from neurotwin.models.model import NeuralPredictor, build_model
from neurotwin.models.summary import parameter_counts, summary
from neurotwin.registry import ACTIVATIONS, CORES, READOUTS, SHIFTERS

__all__ = [
    "ACTIVATIONS",
    "CORES",
    "READOUTS",
    "SHIFTERS",
    "NeuralPredictor",
    "build_model",
    "parameter_counts",
    "summary",
]

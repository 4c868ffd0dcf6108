"""Per-session modulators: behaviour -> a gain per neuron and frame on the readout's output.
Importing this package imports every module in it, and so registers every modulator."""

from neurotwin.models.modulators.base import Modulator, ModulatorOptions
from neurotwin.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["Modulator", "ModulatorOptions"]

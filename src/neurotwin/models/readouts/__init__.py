"""Per-session readouts: one module per readout. Importing this package imports every module in
it, and so registers every readout: a new readout is one new file here."""

from neurotwin.models.readouts.base import Readout, ReadoutOptions
from neurotwin.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["Readout", "ReadoutOptions"]

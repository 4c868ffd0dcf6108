"""Cores (shared by all sessions): one module per core. Importing this package imports every
module in it, and so registers every core: a new core is one new file here."""

from neurotwin.models.cores.base import Core, CoreOptions
from neurotwin.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["Core", "CoreOptions"]

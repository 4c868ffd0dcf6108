"""Per-session readouts. Importing this package registers every readout."""

from neurotwin.models.readouts import factorized, gaussian  # noqa: F401  (registration)
from neurotwin.models.readouts.base import Readout

__all__ = ["Readout"]

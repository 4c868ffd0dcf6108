"""The registries of the model's parts (defined in `neurotwin.registry`, below the config, so
that the config can name them); `Registry(kind)` makes a registry for another kind of part."""

from neurotwin.registry import ACTIVATIONS, CORES, READOUTS, SHIFTERS, PartOptions, Registry

__all__ = ["ACTIVATIONS", "CORES", "READOUTS", "SHIFTERS", "PartOptions", "Registry"]

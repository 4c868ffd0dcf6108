"""The registries of the model's parts (defined in `neurotwin.registry`, below the config, so
that the config can name them); `Registry(kind)` makes a registry for another kind of part."""

from neurotwin.registry import ACTIVATIONS, CORES, READOUTS, SHIFTERS, PartOptions, Registry

# pretrained image networks, by source (one module each in models/backbones)
BACKBONES = Registry("backbone source", package="neurotwin.models.backbones")

__all__ = ["ACTIVATIONS", "BACKBONES", "CORES", "READOUTS", "SHIFTERS", "PartOptions", "Registry"]

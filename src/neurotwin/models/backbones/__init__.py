"""Pretrained image networks by source, behind one interface (`Backbone`, see base.py).

    backbone = build_backbone("torchvision:resnet18", {"weights": "none", "layers": ["layer2"]})
    features = backbone(frames)  # frames (N, 1, H, W) -> {"layer2": (N, D)}

Sources (`BACKBONES`, one file each, registered with their options dataclasses): torchvision,
timm, hf (transformers), mouse-vision, pixels. Importing this package registers them; their
libraries are imported only when a network is built (`pip install 'neurotwin[encode]'`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from neurotwin.config import from_dict
from neurotwin.errors import ConfigError
from neurotwin.models.backbones.base import Backbone, BackboneOptions, InputSpec, read_state_dict
from neurotwin.models.registry import BACKBONES
from neurotwin.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneOptions",
    "InputSpec",
    "build_backbone",
    "options_for",
    "parse_spec",
    "read_state_dict",
]


def parse_spec(spec: str) -> tuple[str, str]:
    """'torchvision:resnet18' -> ('torchvision', 'resnet18'); 'pixels' -> ('pixels', '')."""
    source, _, name = str(spec).partition(":")
    if source not in BACKBONES:
        raise ConfigError(
            f"unknown backbone {spec!r}: expected SOURCE:NAME with SOURCE one of "
            f"{BACKBONES.names()} (pixels takes no name)"
        )
    return source, name


def options_for(spec: str, values: Mapping[str, Any] | None = None) -> BackboneOptions:
    """The source's options dataclass filled from `values` (keys it does not know are ignored,
    so one flat set of command-line values serves every source)."""
    source, _ = parse_spec(spec)
    cls = BACKBONES.options_class(source)
    names = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in (values or {}).items() if k in names and v is not None}
    return from_dict(known, f"backbone {spec}", cls)


def build_backbone(
    spec: str, options: BackboneOptions | Mapping[str, Any] | None = None
) -> Backbone:
    """The frozen network `spec` ('SOURCE:NAME') with `options` (a dataclass or a mapping)."""
    source, name = parse_spec(spec)
    if not isinstance(options, BackboneOptions):
        options = options_for(spec, options)
    return BACKBONES.get(source).build(name, options)

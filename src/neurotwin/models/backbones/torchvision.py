"""torchvision:NAME: any network of `torchvision.models` (resnet18, alexnet, vit_b_16, ...).

Weights: none (random, seeded), a local state-dict file, or `cache`: the name's DEFAULT weights
from torch hub's cache (TORCH_HOME/hub/checkpoints), never downloaded. Inputs follow the
weights' own evaluation transform (ImageNet: resize the shorter side to 256, centre-crop 224,
ImageNet mean/std). Vision transformers' token outputs become patch grids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neurotwin.errors import ConfigError
from neurotwin.models.backbones.base import (
    Backbone,
    BackboneOptions,
    InputSpec,
    TokenLayout,
    geometry,
    import_extra,
    load_given_weights,
    load_weights,
    seeded,
)
from neurotwin.models.registry import BACKBONES


def _spec(weights_enum) -> InputSpec:
    """The evaluation transform of the name's DEFAULT weights (ImageNet 256/224 otherwise)."""
    try:
        t = weights_enum.DEFAULT.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        mode = str(getattr(t.interpolation, "value", "bilinear"))
        return InputSpec(3, tuple(t.mean), tuple(t.std), resize, (crop, crop), None, mode)
    except (AttributeError, TypeError, IndexError):
        return InputSpec(resize_short=256, crop=(224, 224), size=None)


def _cached_file(weights_enum, name: str) -> Path:
    url = weights_enum.DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        raise ConfigError(
            f"torchvision:{name}: --weights cache, but {path} is not in torch hub's cache "
            "(nothing is downloaded here); put the file there or give --weights PATH"
        )
    return path


def default_layers(net: nn.Module) -> list[str]:
    """ResNet stages, four evenly spaced transformer blocks, or the stages of `features`."""
    names = dict(net.named_children())
    if all(f"layer{i}" in names for i in range(1, 5)):
        return [f"layer{i}" for i in range(1, 5)]
    blocks = getattr(getattr(net, "encoder", None), "layers", None)
    if isinstance(blocks, nn.Sequential) and len(blocks):
        n = len(blocks)
        keys = list(dict(blocks.named_children()))
        return [
            f"encoder.layers.{keys[i]}"
            for i in sorted({n // 4 - 1, n // 2 - 1, 3 * n // 4 - 1, n - 1})
        ]
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential) and len(features) <= 12:
        return [f"features.{k}" for k in dict(features.named_children())]
    raise ConfigError("give --layers (dotted module names) for this network")


@dataclass
class TorchvisionOptions(BackboneOptions):
    """torchvision: the options every source takes (none of its own)."""


@BACKBONES.register("torchvision", options=TorchvisionOptions)
class TorchvisionSource:
    @staticmethod
    def build(name: str, options: BackboneOptions) -> Backbone:
        tv = import_extra("torchvision", "torchvision")
        try:
            builder = tv.models.get_model_builder(name)
        except ValueError:
            raise ConfigError(
                f"torchvision has no model {name!r}; known: {sorted(tv.models.list_models())}"
            ) from None
        try:
            weights_enum = tv.models.get_model_weights(name)
        except (ValueError, KeyError):
            weights_enum = None
        net = seeded(lambda: builder(weights=None), options.seed)
        if options.weights == "cache":
            if weights_enum is None:
                raise ConfigError(f"torchvision:{name} has no published weights to read")
            load_weights(net, _cached_file(weights_enum, name))
        else:
            load_given_weights(net, options)
        spec = (
            _spec(weights_enum)
            if weights_enum is not None
            else InputSpec(resize_short=256, crop=(224, 224), size=None)
        )
        spec = geometry(spec, options.resize, options.input_size)
        tokens = None
        if hasattr(net, "patch_size") and hasattr(net, "class_token"):
            tokens = TokenLayout(1, (int(net.patch_size), int(net.patch_size)))
        layers = options.layers or ([] if options.pooling == "pooler" else default_layers(net))
        return Backbone(net, layers, spec, options, f"torchvision:{name}", tokens=tokens)

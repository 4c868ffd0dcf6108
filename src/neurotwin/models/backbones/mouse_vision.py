"""mouse-vision:NAME: the published mouse-vision networks (see mouse_vision_archs.py).

Names: alexnet_bn_ir (its best model: AlexNet-BN trained with instance recognition on 64x64
ImageNet), alexnet_bn, alexnet_ir, alexnet, dual_stream_ir, six_stream_simclr (mouse-vision's
long names, e.g. alexnet_bn_ir_64x64_input_pool_6, are accepted too). Weights: a checkpoint as
its get_checkpoints.sh downloads them (`<name>.pt`: the weights under 'state_dict', with
'module.' prefixes of DataParallel), or none. Inputs: its 64x64 evaluation transform (resize the
shorter side to 256, centre-crop 224, resize to 64, ImageNet mean/std). Default layers: the
ones its paper reads (mouse_vision/models/model_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from neurotwin.errors import ConfigError
from neurotwin.models.backbones.base import (
    Backbone,
    BackboneOptions,
    InputSpec,
    geometry,
    load_given_weights,
    seeded,
)
from neurotwin.models.backbones.mouse_vision_archs import ALIASES, ARCHITECTURES
from neurotwin.models.registry import BACKBONES

EVAL_64 = InputSpec(resize_short=256, crop=(224, 224), size=(64, 64), interpolation="bilinear")


@dataclass
class MouseVisionOptions(BackboneOptions):
    """mouse-vision: the options every source takes (none of its own)."""


@BACKBONES.register("mouse-vision", options=MouseVisionOptions)
class MouseVisionSource:
    @staticmethod
    def build(name: str, options: BackboneOptions) -> Backbone:
        key = ALIASES.get(name, name)
        if key not in ARCHITECTURES:
            raise ConfigError(
                f"mouse-vision has no network {name!r}; known: {sorted(ARCHITECTURES)}"
            )
        builder, layers, _ = ARCHITECTURES[key]
        if options.weights == "cache":
            raise ConfigError(
                "mouse-vision has no weights cache: give --weights PATH (its get_checkpoints.sh "
                "saves model_ckpts/<name>.pt) or none"
            )
        net = seeded(builder, options.seed)
        load_given_weights(net, options)
        spec = geometry(EVAL_64, options.resize, options.input_size)
        return Backbone(net, options.layers or layers, spec, options, f"mouse-vision:{key}")

"""timm:NAME: any network of timm (`timm.create_model`).

Weights: none (random, seeded), a local checkpoint file, or `cache`: timm's pretrained weights
from the Hugging Face cache, read offline (nothing is downloaded). Inputs follow the network's
own data config (`timm.data.resolve_model_data_config`: input size, crop_pct, interpolation,
mean/std). Default layers: the network's `feature_info` modules; pooling 'pooler' reads its
pre-logits features.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from neurotwin.errors import ConfigError
from neurotwin.models.backbones.base import (
    Backbone,
    BackboneOptions,
    InputSpec,
    TokenLayout,
    geometry,
    import_extra,
    load_given_weights,
    seeded,
)
from neurotwin.models.registry import BACKBONES


def _spec(timm, net) -> InputSpec:
    cfg = timm.data.resolve_model_data_config(net)
    _, h, w = cfg["input_size"]
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    mode = "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear"
    short = int(math.floor(min(h, w) / crop_pct))
    return InputSpec(3, tuple(cfg["mean"]), tuple(cfg["std"]), short, (h, w), None, mode)


def _pre_logits(net, x):
    return net.forward_head(net.forward_features(x), pre_logits=True)


@dataclass
class TimmOptions(BackboneOptions):
    """timm: the options every source takes (none of its own)."""


@BACKBONES.register("timm", options=TimmOptions)
class TimmSource:
    @staticmethod
    def build(name: str, options: BackboneOptions) -> Backbone:
        timm = import_extra("timm", "timm")
        if not timm.is_model(name):
            raise ConfigError(f"timm has no model {name!r} (see timm.list_models())")
        if options.weights == "cache":
            saved = os.environ.get("HF_HUB_OFFLINE")
            os.environ["HF_HUB_OFFLINE"] = "1"
            try:
                net = timm.create_model(name, pretrained=True)
            except Exception as e:  # noqa: BLE001 - not cached, or no pretrained weights
                raise ConfigError(
                    f"timm:{name}: --weights cache, but its weights are not in the Hugging Face "
                    f"cache (nothing is downloaded here): {e}"
                ) from None
            finally:
                if saved is None:
                    os.environ.pop("HF_HUB_OFFLINE", None)
                else:
                    os.environ["HF_HUB_OFFLINE"] = saved
        else:
            net = seeded(lambda: timm.create_model(name, pretrained=False), options.seed)
            load_given_weights(net, options)
        spec = geometry(_spec(timm, net), options.resize, options.input_size)
        tokens = None
        if hasattr(net, "patch_embed") and hasattr(net, "num_prefix_tokens"):
            patch = tuple(int(p) for p in net.patch_embed.patch_size)
            tokens = TokenLayout(int(net.num_prefix_tokens), patch)  # type: ignore[arg-type]
        layers = options.layers
        if not layers and options.pooling != "pooler":
            layers = [fi["module"] for fi in getattr(net, "feature_info", [])]
        return Backbone(
            net, layers, spec, options, f"timm:{name}", tokens=tokens, pooled=_pre_logits
        )

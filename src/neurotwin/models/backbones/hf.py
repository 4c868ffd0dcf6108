"""hf:NAME_OR_LOCAL_DIR: any vision model of transformers (`AutoModel`, `AutoImageProcessor`).

HuggingMouse's way of embedding a frame (grey repeated to RGB, the model's image processor,
`pooler_output` or the CLS token), from a local directory or the Hugging Face cache only
(`local_files_only`: nothing is downloaded). Weights: none (random, from the directory's
config.json, seeded), `cache` (the directory's or the cache's own weights), or a local file.

The image processor's preprocessor_config.json decides the input (size, crop, mean/std,
resampling); it is applied here with torch ops on the whole batch (same result as the
processor, tested), so that frames never leave the GPU. Layers: dotted module names, or
`last_hidden_state` / `hidden_states.K` read from the model's output; pooling 'pooler' reads
`pooler_output`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from neurotwin.errors import CheckpointError, ConfigError
from neurotwin.models.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
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

log = logging.getLogger(__name__)
OUTPUT_NAME = re.compile(r"^(last_hidden_state|hidden_states\.\d+)$")
# transformers' PILImageResampling: 2 bilinear, 3 bicubic
RESAMPLE = {2: "bilinear", 3: "bicubic"}


def processor_spec(processor) -> InputSpec:
    """The processor's resize / crop / normalisation as an InputSpec."""
    size = getattr(processor, "size", None) or {}
    size = size if isinstance(size, dict) else dict(size)
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    mode = RESAMPLE.get(int(getattr(processor, "resample", 2) or 2), "bilinear")
    if not getattr(processor, "do_normalize", True):
        mean, std = (0.0,) * len(mean), (1.0,) * len(std)
    short = crop = final = None
    if not getattr(processor, "do_resize", True):
        pass
    elif size.get("height") and size.get("width"):
        final = (int(size["height"]), int(size["width"]))
    elif size.get("shortest_edge"):
        short = int(size["shortest_edge"])
        crop_pct = getattr(processor, "crop_pct", None)
        if crop_pct and short < 384:  # ConvNeXt's processor: resize short / crop_pct, crop short
            crop, short = (short, short), int(short / crop_pct)
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
        cs = processor.crop_size
        cs = cs if isinstance(cs, dict) else dict(cs)
        crop = (int(cs["height"]), int(cs["width"]))
    return InputSpec(len(mean), mean, std, short, crop, final, mode)


def _tokens(net, config) -> TokenLayout | None:
    patch = getattr(config, "patch_size", None)
    embeddings = getattr(net, "embeddings", None)
    if patch is None or getattr(embeddings, "cls_token", None) is None:
        return None
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    return TokenLayout(prefix, patch)  # type: ignore[arg-type]


def _run(net, x, names):
    hidden = any(n.startswith("hidden_states.") for n in names)
    return net(pixel_values=x, output_hidden_states=hidden or None)


def _read(output, name: str):
    if name == "last_hidden_state":
        return getattr(output, "last_hidden_state", None)
    states = getattr(output, "hidden_states", None)
    k = int(name.split(".")[1])
    return states[k] if states is not None and k < len(states) else None


def _pooler(net, x):
    out = net(pixel_values=x).pooler_output
    if out is None:
        raise ConfigError("this transformers model has no pooler_output; use pooling cls or mean")
    return out.flatten(1)


def _load(transformers, name: str, options: BackboneOptions):
    kwargs = {"local_files_only": True}
    try:
        config = transformers.AutoConfig.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        where = "directory" if Path(name).is_dir() else "Hugging Face cache"
        raise ConfigError(
            f"hf:{name}: no model config in the {where} (nothing is downloaded): {e}"
        ) from None
    if options.weights == "cache":
        try:
            return transformers.AutoModel.from_pretrained(name, **kwargs), config
        except (OSError, ValueError) as e:
            raise CheckpointError(f"hf:{name}: no weights beside its config: {e}") from None
    net = seeded(lambda: transformers.AutoModel.from_config(config), options.seed)
    load_given_weights(net, options)
    return net, config


@dataclass
class HFOptions(BackboneOptions):
    """hf (transformers): the options every source takes (none of its own)."""


@BACKBONES.register("hf", options=HFOptions)
class HFSource:
    @staticmethod
    def build(name: str, options: BackboneOptions) -> Backbone:
        transformers = import_extra("transformers", "hf")
        if not name:
            raise ConfigError("hf needs a model: hf:NAME_OR_LOCAL_DIR")
        net, config = _load(transformers, name, options)
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(name, local_files_only=True)
            spec = processor_spec(processor)
        except (OSError, ValueError) as e:
            log.warning("hf:%s: no image processor config (%s): ImageNet 224x224 inputs", name, e)
            spec = InputSpec(size=(224, 224))
        spec = geometry(spec, options.resize, options.input_size)
        layers = options.layers or ([] if options.pooling == "pooler" else ["last_hidden_state"])
        return Backbone(
            net,
            layers,
            spec,
            options,
            f"hf:{name}",
            tokens=_tokens(net, config),
            run=_run,
            pooled=_pooler,
            read_output=_read,
            output_names=lambda n: bool(OUTPUT_NAME.match(n)),
        )

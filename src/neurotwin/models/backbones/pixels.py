"""pixels: the frames themselves, downsampled by block averaging (the baseline every paper
reports). One layer, ``pixels``: (N, 1, h, w), flattened unless pooling is 'none'."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from neurotwin.config import option, require
from neurotwin.errors import ConfigError
from neurotwin.models.backbones.base import Backbone, BackboneOptions, InputSpec
from neurotwin.models.registry import BACKBONES


@dataclass
class PixelsOptions(BackboneOptions):
    """The pixels baseline: frames block-averaged to `pixels_size`."""

    pixels_size: list[int] = option([18, 32], "pixels: (height, width) the frames are averaged to")

    def check(self) -> None:
        super().check()
        size = self.pixels_size
        require(
            len(size) == 2 and min(size) >= 1,
            "pixels_size",
            f"must be two positive integers, got {size}",
        )


class Pixels(nn.Module):
    """Identity network whose one module, `pixels`, is read by the backbone's hook."""

    def __init__(self) -> None:
        super().__init__()
        self.pixels = nn.Identity()

    def forward(self, x):
        return self.pixels(x)


@BACKBONES.register("pixels", options=PixelsOptions)
class PixelsSource:
    @staticmethod
    def build(name: str, options: PixelsOptions) -> Backbone:
        if name:
            raise ConfigError(f"pixels takes no network name (got 'pixels:{name}')")
        if options.layers not in ([], ["pixels"]):
            raise ConfigError(f"pixels has one layer, 'pixels' (got {options.layers})")
        if options.weights not in ("none", ""):
            raise ConfigError("pixels has no weights: give --weights none")
        size = tuple(int(v) for v in (options.input_size or options.pixels_size))
        spec = InputSpec(channels=1, mean=(0.0,), std=(1.0,), size=size, interpolation="area")
        pooling = "none" if options.pooling == "none" else "flatten"
        return Backbone(Pixels(), ["pixels"], spec, replace(options, pooling=pooling), "pixels")

"""conv2d: a stack of 2D convolutions applied to every frame on its own (batch norm, ELU)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from neurotwin.config import option, require
from neurotwin.models.cores.base import Core, CoreOptions, behavior_channels, concat_behavior
from neurotwin.models.frames import fold_time, unfold_time
from neurotwin.registry import CORES


@dataclass
class ConvStackOptions(CoreOptions):
    """The layers of a convolution stack (ViV1T's factorized 3D CNN baseline names)."""

    core_num_layers: int = option(4, "number of layers")
    core_hidden_dim: int = option(16, "channels of each layer")
    core_spatial_input_kernel: int = option(11, "spatial kernel of the first layer")
    core_spatial_hidden_kernel: int = option(5, "spatial kernel of later layers")

    def check(self) -> None:
        for name in ("core_num_layers", "core_hidden_dim", "core_spatial_input_kernel",
                     "core_spatial_hidden_kernel"):  # fmt: skip
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")


@dataclass
class Conv2dOptions(ConvStackOptions):
    """conv2d: the stack's layers and the dropout after each."""

    core_dropout: float = option(0.0, "dropout after each layer")


def conv_stack(
    options: ConvStackOptions, in_channels: int, layer: Callable[[int, int, bool], nn.Module]
) -> nn.Sequential:
    """`core_num_layers` layers of `core_hidden_dim` channels: `layer(c_in, c_out, first)`."""
    layers, c = [], in_channels
    for i in range(options.core_num_layers):
        layers.append(layer(c, options.core_hidden_dim, i == 0))
        c = options.core_hidden_dim
    return nn.Sequential(*layers)


def conv_block(c_in: int, c_out: int, kernel: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ELU(),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


@CORES.register("conv2d", options=Conv2dOptions)
class Conv2dCore(Core):
    """Per-frame 2D CNN: layer 1 uses the input kernel, later layers the hidden kernel ('same'
    padding, so the feature maps keep the frame size). Time is folded into the batch; T' = T."""

    def __init__(
        self,
        in_channels: int,
        frame_shape: tuple[int, int] | None = None,
        options: Conv2dOptions | None = None,
    ) -> None:
        o = options or Conv2dOptions()
        super().__init__(o)
        c = in_channels + behavior_channels(o.core_behavior_mode)

        def layer(c_in: int, c_out: int, first: bool) -> nn.Module:
            kernel = o.core_spatial_input_kernel if first else o.core_spatial_hidden_kernel
            return conv_block(c_in, c_out, kernel, o.core_dropout)

        self.layers = conv_stack(o, c, layer)
        self.out_channels = o.core_hidden_dim

    def out_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        return tuple(frame_shape)  # type: ignore[return-value]

    def forward(self, video, behavior=None, pupil_center=None):
        x = concat_behavior(video, behavior, pupil_center, self.options.core_behavior_mode)
        return unfold_time(self.layers(fold_time(x)), x.shape[0])

"""conv3d: factorized 3D convolutions (spatial k x k, then temporal k x 1 x 1), causal in time.

Each layer: Conv3d (1, ks, ks) with 'same' spatial padding -> Conv3d (kt, 1, 1) on frames padded
on the left by kt - 1 (so output frame t sees input frames <= t only) -> batch norm -> ELU.
T' = T. In eval mode the core is strictly causal; in training, batch-norm statistics are pooled
over the clip (as in any batch-norm network).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from neurotwin.config import option, require
from neurotwin.models.cores.base import Core, behavior_channels, concat_behavior
from neurotwin.models.cores.conv2d import Conv2dOptions, conv_stack
from neurotwin.registry import CORES


@dataclass
class Conv3dOptions(Conv2dOptions):
    """conv3d: conv2d's options and the causal temporal kernels."""

    core_temporal_input_kernel: int = option(11, "temporal kernel of the first layer")
    core_temporal_hidden_kernel: int = option(5, "temporal kernel of later layers")

    def check(self) -> None:
        super().check()
        for name in ("core_temporal_input_kernel", "core_temporal_hidden_kernel"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")


class CausalFactorizedConv3d(nn.Module):
    def __init__(self, c_in: int, c_out: int, spatial: int, temporal: int, dropout: float) -> None:
        super().__init__()
        self.temporal = temporal
        self.spatial_conv = nn.Conv3d(
            c_in, c_out, (1, spatial, spatial), padding=(0, spatial // 2, spatial // 2), bias=False
        )
        self.temporal_conv = nn.Conv3d(c_out, c_out, (temporal, 1, 1), bias=False)
        self.norm = nn.BatchNorm3d(c_out)
        self.act = nn.ELU()
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        x = self.spatial_conv(x)
        x = F.pad(x, (0, 0, 0, 0, self.temporal - 1, 0))  # past only: causal
        x = self.temporal_conv(x)
        return self.dropout(self.act(self.norm(x)))


@CORES.register("conv3d", options=Conv3dOptions)
class Conv3dCore(Core):
    """Stack of causal factorized 3D convolutions (ViV1T's / Sensorium's fCNN layout)."""

    def __init__(
        self,
        in_channels: int,
        frame_shape: tuple[int, int] | None = None,
        options: Conv3dOptions | None = None,
    ) -> None:
        o = options or Conv3dOptions()
        super().__init__(o)

        def layer(c_in: int, c_out: int, first: bool) -> nn.Module:
            spatial = o.core_spatial_input_kernel if first else o.core_spatial_hidden_kernel
            temporal = o.core_temporal_input_kernel if first else o.core_temporal_hidden_kernel
            return CausalFactorizedConv3d(c_in, c_out, spatial, temporal, o.core_dropout)

        self.layers = conv_stack(o, in_channels + behavior_channels(o.core_behavior_mode), layer)
        self.out_channels = o.core_hidden_dim

    def out_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        return tuple(frame_shape)  # type: ignore[return-value]

    def forward(self, video, behavior=None, pupil_center=None):
        x = concat_behavior(video, behavior, pupil_center, self.options.core_behavior_mode)
        return self.layers(x)

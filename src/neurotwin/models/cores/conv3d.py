"""conv3d: factorized 3D convolutions (spatial k x k, then temporal k x 1 x 1), causal in time.

Each layer: Conv3d (1, ks, ks) with 'same' spatial padding -> Conv3d (kt, 1, 1) on frames padded
on the left by kt - 1 (so output frame t sees input frames <= t only) -> batch norm -> ELU.
T' = T. In eval mode the core is strictly causal; in training, batch-norm statistics are pooled
over the clip (as in any batch-norm network).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from neurotwin.models.cores.base import Core, behavior_channels, concat_behavior
from neurotwin.models.registry import CORES


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


@CORES.register("conv3d")
class Conv3dCore(Core):
    """Stack of causal factorized 3D convolutions (ViV1T's / Sensorium's fCNN layout)."""

    def __init__(
        self,
        in_channels: int,
        hidden_dim: int = 16,
        num_layers: int = 4,
        spatial_input_kernel: int = 11,
        temporal_input_kernel: int = 11,
        spatial_hidden_kernel: int = 5,
        temporal_hidden_kernel: int = 5,
        dropout: float = 0.0,
        behavior_mode: int = 0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("core_num_layers must be >= 1")
        self.behavior_mode = behavior_mode
        c = in_channels + behavior_channels(behavior_mode)
        layers = []
        for i in range(num_layers):
            first = i == 0
            layers.append(
                CausalFactorizedConv3d(
                    c,
                    hidden_dim,
                    spatial_input_kernel if first else spatial_hidden_kernel,
                    temporal_input_kernel if first else temporal_hidden_kernel,
                    dropout,
                )
            )
            c = hidden_dim
        self.layers = nn.Sequential(*layers)
        self.out_channels = hidden_dim

    @classmethod
    def from_config(cls, config: Any, in_channels: int, frame_shape: tuple[int, int]) -> Conv3dCore:
        return cls(
            in_channels,
            hidden_dim=config.core_hidden_dim,
            num_layers=config.core_num_layers,
            spatial_input_kernel=config.core_spatial_input_kernel,
            temporal_input_kernel=config.core_temporal_input_kernel,
            spatial_hidden_kernel=config.core_spatial_hidden_kernel,
            temporal_hidden_kernel=config.core_temporal_hidden_kernel,
            dropout=config.core_dropout,
            behavior_mode=config.core_behavior_mode,
        )

    def out_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        return tuple(frame_shape)  # type: ignore[return-value]

    def forward(self, video, behavior=None, pupil_center=None):
        x = concat_behavior(video, behavior, pupil_center, self.behavior_mode)
        return self.layers(x)

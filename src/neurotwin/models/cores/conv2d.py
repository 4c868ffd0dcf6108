"""conv2d: a stack of 2D convolutions applied to every frame on its own (batch norm, ELU)."""

from __future__ import annotations

from typing import Any

from torch import nn

from neurotwin.models.cores.base import Core, behavior_channels, concat_behavior
from neurotwin.models.registry import CORES


def conv_block(c_in: int, c_out: int, kernel: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ELU(),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


@CORES.register("conv2d")
class Conv2dCore(Core):
    """Per-frame 2D CNN: layer 1 uses `input_kernel`, later layers `hidden_kernel` ('same'
    padding, so the feature maps keep the frame size). Time is folded into the batch; T' = T."""

    def __init__(
        self,
        in_channels: int,
        hidden_dim: int = 16,
        num_layers: int = 4,
        input_kernel: int = 11,
        hidden_kernel: int = 5,
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
            layers.append(
                conv_block(c, hidden_dim, input_kernel if i == 0 else hidden_kernel, dropout)
            )
            c = hidden_dim
        self.layers = nn.Sequential(*layers)
        self.out_channels = hidden_dim

    @classmethod
    def from_config(cls, config: Any, in_channels: int, frame_shape: tuple[int, int]) -> Conv2dCore:
        return cls(
            in_channels,
            hidden_dim=config.core_hidden_dim,
            num_layers=config.core_num_layers,
            input_kernel=config.core_spatial_input_kernel,
            hidden_kernel=config.core_spatial_hidden_kernel,
            dropout=config.core_dropout,
            behavior_mode=config.core_behavior_mode,
        )

    def out_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        return tuple(frame_shape)  # type: ignore[return-value]

    def forward(self, video, behavior=None, pupil_center=None):
        x = concat_behavior(video, behavior, pupil_center, self.behavior_mode)
        b, c, t, h, w = x.shape
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        x = self.layers(x)
        return x.view(b, t, -1, h, w).transpose(1, 2)

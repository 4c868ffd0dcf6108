"""What every core is: video (+ behaviour, pupil) -> features (B, C', T', h, w).

A core is built as `cls(in_channels, frame_shape, options)` with the options dataclass it was
registered with (`CoreOptions` or a subclass). Its output frames align with the LAST T' input
frames (T' <= T). `out_channels` and `out_shape(frame_shape)` let the readouts be built without
running the core. A core that must know what its input video is (a pretrained image network
maps grey levels back to its own input range) sets `takes_video_input` and receives a
`VideoInput` from `build_model`, made from the data's session specs (models never read data).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from neurotwin.config import option
from neurotwin.errors import ConfigError
from neurotwin.registry import PartOptions

BEHAVIOR_CHANNELS = {0: 0, 1: 2, 2: 4}


def behavior_channels(mode: int) -> int:
    """Extra input channels for ViV1T's core_behavior_mode (0 none, 1 behaviour, 2 + pupil)."""
    if mode not in BEHAVIOR_CHANNELS:
        raise ConfigError(f"core_behavior_mode: expected 0, 1 or 2, got {mode!r}")
    return BEHAVIOR_CHANNELS[mode]


def concat_behavior(
    video: torch.Tensor, behavior: torch.Tensor | None, pupil_center: torch.Tensor | None, mode: int
) -> torch.Tensor:
    """Append behaviour (mode 1) or behaviour and pupil centre (mode 2), each (B, 2, T), to the
    video (B, C, T, H, W) as spatially constant channels."""
    if mode == 0:
        return video
    b, _, t, h, w = video.shape
    parts = [behavior] if mode == 1 else [behavior, pupil_center]
    if any(p is None for p in parts):
        raise ValueError(f"core_behavior_mode {mode} needs behaviour and pupil centre inputs")
    extra = torch.cat(parts, dim=1).to(video.dtype)
    if extra.shape[0] != b or extra.shape[2] != t:
        raise ValueError(
            f"behaviour/pupil of shape {tuple(extra.shape)} do not match the video {tuple(video.shape)}"
        )
    extra = extra[..., None, None].expand(-1, -1, -1, h, w)
    return torch.cat((video, extra), dim=1)


@dataclass
class CoreOptions(PartOptions):
    """What every core takes: how behaviour enters it (ViV1T's core_behavior_mode)."""

    core_behavior_mode: Literal[0, 1, 2] = option(
        2,
        "0: no behaviour in the core, 1: behaviour (dilation, speed) as extra input channels, "
        "2: behaviour and pupil centre as extra input channels (ViV1T's core_behavior_mode)",
    )


@dataclass(frozen=True)
class VideoInput:
    """What the data says about the video a core sees: `pixel_range`, black and white of the
    raw frames (grey levels 0 and 255) in the units of the data's input transform (standardised:
    ((0 - mean) / std, (255 - mean) / std)). The default is untransformed frames."""

    pixel_range: tuple[float, float] = (0.0, 255.0)


class Core(nn.Module, metaclass=ABCMeta):
    """Base class: subclasses take `(in_channels, frame_shape, options)` (and `video=`, a
    VideoInput, where `takes_video_input` is set), set `out_channels`, and implement
    `out_shape` and `forward` (abstract: a core lacking one cannot be made)."""

    out_channels: int
    registered_name: str
    takes_video_input: ClassVar[bool] = False

    def __init__(self, options: CoreOptions) -> None:
        super().__init__()
        self.options = options
        self.grad_checkpointing = False

    @abstractmethod
    def out_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the feature maps for frames of shape (H, W)."""

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in the backward pass where the core supports it."""
        self.grad_checkpointing = bool(enabled)

    def set_fine_tuning(self, enabled: bool) -> None:
        """Train the pretrained weights inside the core too (training gives a core_lr), or keep
        them frozen (the default). Cores without pretrained weights have nothing to switch."""

    def regularizer(self) -> torch.Tensor:
        p = next(self.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)

    @abstractmethod
    def forward(
        self,
        video: torch.Tensor,
        behavior: torch.Tensor | None = None,
        pupil_center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """video (B, C, T, H, W) -> features (B, out_channels, T', h, w)."""

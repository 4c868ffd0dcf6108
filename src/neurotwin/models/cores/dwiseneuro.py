"""dwiseneuro: the core of DwiseNeuro (Ruslan Baikulov, 1st place of Sensorium 2023), from the
description and model code of lRomul/sensorium (README "Model Architecture", src/models/
dwiseneuro.py), written anew.

Input: clips of 16 frames taken every 2nd frame (`Clips`; NeuralPredictor cuts trials into
them and averages the outputs), the frames zero-padded to 64x64 (centred), behaviour (pupil
dilation, running speed) and pupil centre as 4 spatially constant channels (5 in all).

- stem: a 1x1x1 convolution to the first block's channels, batch norm.
- blocks: inverted residual blocks (2+1)D, narrow -> wide -> narrow: sinusoidal 3D position
  encoding added to the block's input; 1x1x1 expansion by `core_expansion_ratio`, batch norm,
  SiLU; depth-wise spatial (1, k, k) convolution (stride 2 in the first block of each width),
  BN, SiLU; depth-wise temporal (kt, 1, 1) convolution ('same' padding: not causal), BN, SiLU;
  squeeze-excitation (mean over the clip, reduce by `core_se_reduce_ratio`, SiLU, expand,
  sigmoid gate); 1x1x1 projection, BN; plus a parameter-free shortcut (nearest-neighbour
  downsampling where the block strides, channels repeated cyclically where they grow) with its
  own batch norm; DropPath on the main branch at rate `core_drop_path` x block / blocks.
- spatial mean: (B, C, T, h, w) -> (B, C, T).
- cortex: per time step, grouped 1x1 convolutions (`core_cortex_groups` groups, no bias) to
  `core_cortex_features` channels, each BN + SiLU, then a channel shuffle between the groups,
  plus a shortcut (channels repeated) with BN, DropPath at `core_drop_path`.
Output (B, C_cortex, T, 1, 1); the `pooled_linear` readout and a softplus of beta 0.07 complete
DwiseNeuro. Weights start as its init_weights: normal(0, sqrt(2 / fan_out)) with fan_out =
kernel size x out channels / groups, batch norm 1 and 0, biases 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neurotwin.config import option, require
from neurotwin.models.clips import Clips
from neurotwin.models.cores.base import Core, CoreOptions, behavior_channels, concat_behavior
from neurotwin.models.cores.vivit_blocks import drop_path
from neurotwin.registry import CORES


@dataclass
class DwiseNeuroOptions(CoreOptions):
    """dwiseneuro (defaults: DwiseNeuro's model defaults; configs/dwiseneuro.yaml sets its
    training config, which differs in core_expansion_ratio: 7)."""

    core_features: list[int] = option(
        [64, 64, 64, 64, 128, 128, 128, 256, 256], "output channels of each inverted residual block"
    )
    core_spatial_strides: list[int] = option(
        [2, 1, 1, 1, 2, 1, 1, 2, 1], "spatial stride of each block's depth-wise convolution"
    )
    core_spatial_kernel: int = option(3, "kernel of the depth-wise spatial convolutions")
    core_temporal_kernel: int = option(5, "kernel of the depth-wise temporal convolutions")
    core_expansion_ratio: int = option(6, "channels of a block's wide part / its input channels")
    core_se_reduce_ratio: int = option(32, "squeeze-excitation: wide channels / reduced channels")
    core_cortex_features: list[int] = option([1024, 2048, 4096], "channels of the cortex layers")
    core_cortex_groups: int = option(2, "groups of the cortex convolutions")
    core_drop_path: float = option(0.1, "stochastic depth rate (blocks: scaled by depth)")
    core_frame_size: list[int] = option([64, 64], "frames are zero-padded to this height, width")
    core_clip_frames: int = option(16, "frames per clip")
    core_clip_step: int = option(2, "a clip takes every this many frames")
    core_clip_stride: int = option(
        1,
        "at inference, clips start every this many clip frames (1: every clip that fits, as "
        "DwiseNeuro predicts; core_clip_frames: side by side, as it validates)",
    )
    core_clip_batch: int = option(64, "clips per forward pass at inference")

    def check(self) -> None:
        require(len(self.core_features) >= 1, "core_features", "needs at least one block")
        require(
            len(self.core_spatial_strides) == len(self.core_features),
            "core_spatial_strides",
            f"needs one stride per block ({len(self.core_features)}), got {self.core_spatial_strides}",
        )
        for name in ("core_features", "core_spatial_strides", "core_cortex_features"):
            values = getattr(self, name)
            require(all(v >= 1 for v in values), name, f"must all be >= 1, got {values}")
        for name in ("core_spatial_kernel", "core_temporal_kernel"):
            v = getattr(self, name)
            require(v >= 1 and v % 2 == 1, name, f"must be odd and >= 1, got {v}")
        for name in ("core_expansion_ratio", "core_se_reduce_ratio", "core_cortex_groups",
                     "core_clip_frames", "core_clip_step", "core_clip_stride", "core_clip_batch"):  # fmt: skip
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        g = self.core_cortex_groups
        channels = [self.core_features[-1], *self.core_cortex_features]
        require(all(c % g == 0 for c in channels), "core_cortex_groups",
                f"must divide the cortex's channels {channels}, got {g}")  # fmt: skip
        require(len(self.core_frame_size) == 2 and min(self.core_frame_size) >= 1,
                "core_frame_size", f"expected HEIGHT WIDTH, got {self.core_frame_size}")  # fmt: skip
        require(0 <= self.core_drop_path < 1, "core_drop_path", f"must be in [0, 1), got {self.core_drop_path}")  # fmt: skip


def conv_norm(conv: nn.Module, channels: int, norm: type[nn.Module], act: bool) -> nn.Sequential:
    """A convolution, batch norm, and SiLU when `act`."""
    return nn.Sequential(conv, norm(channels), nn.SiLU() if act else nn.Identity())


def repeat_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """x (B, C, ...) with its channels repeated cyclically to `channels` (parameter-free)."""
    c = x.shape[1]
    if c == channels:
        return x
    reps = (1, math.ceil(channels / c)) + (1,) * (x.ndim - 2)
    return x.repeat(reps)[:, :channels]


class SqueezeExcite3d(nn.Module):
    """x times a per-channel gate from its mean over (T, h, w): reduce, SiLU, expand, sigmoid."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv3d(channels, reduced, 1)
        self.expand = nn.Conv3d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(F.silu(self.reduce(x.mean((2, 3, 4), keepdim=True))))
        return x * torch.sigmoid(gate)


def sinusoidal_position(channels: int, shape: tuple[int, int, int], like: torch.Tensor):
    """(1, channels, T, h, w): a third of the channels each encode t, y and x (sin then cos of
    position x 10000^(-2i/n) over n = 2 ceil(channels / 6) channels per axis), cut to `channels`."""
    n = 2 * math.ceil(channels / 6)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, n, 2, device=like.device, dtype=torch.float32) / n)
    parts = []
    for axis, size in enumerate(shape):
        angle = (
            torch.arange(size, device=like.device, dtype=torch.float32)[None] * inv_freq[:, None]
        )
        enc = torch.cat((angle.sin(), angle.cos()))  # (n, size)
        view = [n, 1, 1, 1]
        view[axis + 1] = size
        parts.append(enc.view(view).expand(n, *shape))
    return torch.cat(parts)[None, :channels].to(like.dtype)


class InvertedResidual3d(nn.Module):
    """One (2+1)D inverted residual block with position encoding, SE, DropPath and shortcut."""

    def __init__(self, c_in, c_out, spatial, temporal, stride, expansion, se_ratio, drop_rate):
        super().__init__()
        mid = c_in * expansion
        bn = nn.BatchNorm3d
        self.c_out, self.stride, self.drop_rate = c_out, stride, drop_rate
        self.expand = conv_norm(nn.Conv3d(c_in, mid, 1, bias=False), mid, bn, act=True)
        self.spatial = conv_norm(
            nn.Conv3d(mid, mid, (1, spatial, spatial), stride=(1, stride, stride),
                      padding=(0, spatial // 2, spatial // 2), groups=mid, bias=False),
            mid, bn, act=True,
        )  # fmt: skip
        self.temporal = conv_norm(
            nn.Conv3d(mid, mid, (temporal, 1, 1), padding=(temporal // 2, 0, 0), groups=mid, bias=False),  # fmt: skip
            mid, bn, act=True,
        )  # fmt: skip
        self.se = SqueezeExcite3d(mid, max(1, mid // se_ratio))
        self.project = conv_norm(nn.Conv3d(mid, c_out, 1, bias=False), c_out, bn, act=False)
        self.shortcut_norm = bn(c_out)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            t, h, w = x.shape[2:]
            size = (t, math.ceil(h / self.stride), math.ceil(w / self.stride))
            x = F.interpolate(x, size=size, mode="nearest")
        return self.shortcut_norm(repeat_channels(x, self.c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + sinusoidal_position(x.shape[1], tuple(x.shape[2:]), x)
        y = self.project(self.se(self.temporal(self.spatial(self.expand(x)))))
        return drop_path(y, self.drop_rate, self.training) + self.shortcut(x)


class ShuffleLayer(nn.Module):
    """Cortex layer: grouped 1x1 convolution, BN, SiLU, channel shuffle; + repeated shortcut."""

    def __init__(self, c_in: int, c_out: int, groups: int, drop_rate: float) -> None:
        super().__init__()
        self.c_out, self.groups, self.drop_rate = c_out, groups, drop_rate
        conv = nn.Conv1d(c_in, c_out, 1, groups=groups, bias=False)
        self.mix = conv_norm(conv, c_out, nn.BatchNorm1d, act=True)
        self.shortcut_norm = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mix(x)
        if self.groups > 1:  # channel g*k+i -> i*groups+g: every group feeds every next group
            b, c, t = y.shape
            y = y.view(b, self.groups, c // self.groups, t).transpose(1, 2).reshape(b, c, t)
        shortcut = self.shortcut_norm(repeat_channels(x, self.c_out))
        return drop_path(y, self.drop_rate, self.training) + shortcut


def pad_frames(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, T, H, W) zero-padded to (B, C, T, *size), the frame centred."""
    h, w = video.shape[-2:]
    height, width = size
    if h > height or w > width:
        raise ValueError(f"frames of {h}x{w} do not fit core_frame_size {height}x{width}")
    top, left = (height - h) // 2, (width - w) // 2
    return F.pad(video, (left, width - w - left, top, height - h - top))


def init_dwiseneuro(module: nn.Module) -> None:
    """DwiseNeuro's init_weights: conv weights normal(0, sqrt(2 groups / (kernel x out))),
    conv biases 0, batch norm weights 1 and biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv3d)):
            fan_out = math.prod(m.kernel_size) * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@CORES.register("dwiseneuro", options=DwiseNeuroOptions)
class DwiseNeuroCore(Core):
    """Stem, inverted residual blocks, spatial mean and cortex (see the module docstring).
    `clips` tells NeuralPredictor how to cut trials; the core itself treats its input as one
    clip. Not causal: the temporal convolutions and squeeze-excitation see the whole clip."""

    def __init__(
        self,
        in_channels: int,
        frame_shape: tuple[int, int] | None = None,
        options: DwiseNeuroOptions | None = None,
    ) -> None:
        o = options or DwiseNeuroOptions()
        super().__init__(o)
        self.frame_size = (int(o.core_frame_size[0]), int(o.core_frame_size[1]))
        if frame_shape is not None:
            pad_frames(torch.zeros(1, 1, 1, *frame_shape), self.frame_size)  # fits, or says so
        self.clips = Clips(o.core_clip_frames, o.core_clip_step, o.core_clip_stride, o.core_clip_batch)  # fmt: skip
        features = list(o.core_features)
        c_in = in_channels + behavior_channels(o.core_behavior_mode)
        self.stem = conv_norm(nn.Conv3d(c_in, features[0], 1, bias=False), features[0], nn.BatchNorm3d, act=False)  # fmt: skip
        n = len(features)
        self.blocks = nn.Sequential(*(
            InvertedResidual3d(
                features[i], features[min(i + 1, n - 1)], o.core_spatial_kernel,
                o.core_temporal_kernel, o.core_spatial_strides[i], o.core_expansion_ratio,
                o.core_se_reduce_ratio, o.core_drop_path * i / n,
            )
            for i in range(n)
        ))  # fmt: skip
        layers, c = [], features[-1]
        for width in o.core_cortex_features:
            layers.append(ShuffleLayer(c, width, o.core_cortex_groups, o.core_drop_path))
            c = width
        self.cortex = nn.Sequential(*layers)
        self.out_channels = c
        init_dwiseneuro(self)

    def out_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        return (1, 1)

    def forward(self, video, behavior=None, pupil_center=None):
        x = pad_frames(video, self.frame_size)
        x = concat_behavior(x, behavior, pupil_center, self.options.core_behavior_mode)
        x = self.blocks(self.stem(x)).mean((3, 4))  # (B, C, T)
        return self.cortex(x)[..., None, None]

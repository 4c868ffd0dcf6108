"""pretrained: a frozen image network applied to every frame, then a small trainable adapter.

The frozen network is a plain conv stack (Conv2d -> BatchNorm2d -> ELU per layer, 'same'
padding) whose layers are read from a local state dict (`core_pretrained_weights`, a .pt file
saved from `FrozenConvStack.state_dict()`, or a dict with that under "state_dict"); no download
and no torchvision needed. Without a file, a randomly initialised frozen stack of
core_num_layers x core_hidden_dim is used (a random-features baseline; a warning says so).
The frozen part always runs in eval mode. Its features (+ behaviour maps, core_behavior_mode)
go through a trainable 1x1 conv, batch norm and ELU to core_hidden_dim channels. T' = T.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neurotwin.config import option
from neurotwin.errors import ConfigError
from neurotwin.models.cores.base import Core, behavior_channels, concat_behavior
from neurotwin.models.cores.conv2d import ConvStackOptions
from neurotwin.models.frames import fold_time, unfold_time
from neurotwin.registry import CORES


@dataclass
class PretrainedOptions(ConvStackOptions):
    """pretrained: the frozen network's file (or, without one, the random stack's layers) and
    the adapter's channels (core_hidden_dim)."""

    core_pretrained_weights: str | None = option(
        None,
        "local .pt state dict of the frozen per-frame conv stack (its layers are read from the "
        "file; none: a random frozen stack of core_num_layers x core_hidden_dim)",
    )


class FrozenConvStack(nn.Module):
    """layers.{i}.conv (Conv2d, bias) + layers.{i}.norm (BatchNorm2d) + ELU."""

    def __init__(self, in_channels: int, channels: list[int], kernels: list[int]) -> None:
        super().__init__()
        layers = []
        c = in_channels
        for ch, k in zip(channels, kernels, strict=True):
            block = nn.Sequential()
            block.add_module("conv", nn.Conv2d(c, ch, k, padding=k // 2))
            block.add_module("norm", nn.BatchNorm2d(ch))
            block.add_module("act", nn.ELU())
            layers.append(block)
            c = ch
        self.layers = nn.Sequential(*layers)
        self.in_channels, self.out_channels = in_channels, c

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: str) -> FrozenConvStack:
        shapes = {}
        for key, value in state.items():
            m = re.fullmatch(r"layers\.(\d+)\.conv\.weight", key)
            if m:
                shapes[int(m.group(1))] = tuple(value.shape)
        if not shapes or sorted(shapes) != list(range(len(shapes))):
            raise ConfigError(
                f"{source}: core_pretrained_weights: expected a FrozenConvStack state dict with "
                "keys layers.<i>.conv.weight"
            )
        channels = [shapes[i][0] for i in range(len(shapes))]
        kernels = [shapes[i][2] for i in range(len(shapes))]
        stack = cls(shapes[0][1], channels, kernels)
        try:
            stack.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(
                f"{source}: core_pretrained_weights do not fit the conv stack: {e}"
            ) from None
        return stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_stack(path: str | Path) -> FrozenConvStack:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: core_pretrained_weights: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise ConfigError(
            f"{path}: core_pretrained_weights: not a torch state dict ({e})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: core_pretrained_weights: expected a state dict")
    return FrozenConvStack.from_state_dict(state, str(path))


@CORES.register("pretrained", options=PretrainedOptions)
class PretrainedCore(Core):
    def __init__(
        self,
        in_channels: int,
        frame_shape: tuple[int, int] | None = None,
        options: PretrainedOptions | None = None,
        backbone: FrozenConvStack | None = None,
    ) -> None:
        o = options or PretrainedOptions()
        super().__init__(o)
        if backbone is None:
            backbone = self._backbone(o, in_channels)
        if backbone.in_channels != in_channels and {backbone.in_channels, in_channels} != {1, 3}:
            raise ConfigError(
                f"pretrained network takes {backbone.in_channels} channels, the video has {in_channels}"
            )
        self.in_channels = in_channels
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        hidden = o.core_hidden_dim
        c = backbone.out_channels + behavior_channels(o.core_behavior_mode)
        self.adapter = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ELU()
        )
        self.out_channels = hidden

    @staticmethod
    def _backbone(o: PretrainedOptions, in_channels: int) -> FrozenConvStack:
        """The stack of `core_pretrained_weights`, else a random one (with a warning)."""
        if o.core_pretrained_weights:
            return load_stack(o.core_pretrained_weights)
        warnings.warn(
            "core 'pretrained' without core_pretrained_weights: using a random frozen conv stack",
            stacklevel=3,
        )
        n = o.core_num_layers
        kernels = [o.core_spatial_input_kernel] + [o.core_spatial_hidden_kernel] * (n - 1)
        return FrozenConvStack(in_channels, [o.core_hidden_dim] * n, kernels)

    def train(self, mode: bool = True) -> PretrainedCore:
        super().train(mode)
        self.backbone.eval()  # frozen: batch-norm statistics never change
        return self

    def out_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        return tuple(frame_shape)  # type: ignore[return-value]

    def forward(self, video, behavior=None, pupil_center=None):
        b, c = video.shape[:2]
        x = fold_time(video)
        if self.backbone.in_channels != c:  # grey video into an RGB network, or the reverse
            x = x.expand(-1, 3, -1, -1) if c == 1 else x.mean(1, keepdim=True)
        f = unfold_time(self.backbone(x), b)  # frozen; gradients still reach the video (MEIs)
        f = concat_behavior(f, behavior, pupil_center, self.options.core_behavior_mode)
        return unfold_time(self.adapter(fold_time(f)), b)

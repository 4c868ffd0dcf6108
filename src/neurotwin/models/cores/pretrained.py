"""pretrained: a frozen image network applied to every frame, then a small trainable adapter.

The network is one of two kinds:
- a backbone (`core_backbone SOURCE:NAME`, models/backbones: torchvision, timm, hf,
  mouse-vision): the feature maps (C, h, w) of `core_layer`, with weights from a local file,
  the library's own cache or none (random, seeded; `core_weights`). Frames are stretched to
  `core_input_size` (default: the network's own input size), repeated to RGB and normalised as
  the network expects; the core sees the data's transformed video, so `build_model` tells it
  (VideoInput) where black and white are, and the backbone maps that range to its own.
- without a backbone, a plain conv stack (Conv2d -> BatchNorm2d -> ELU per layer, 'same'
  padding) whose layers are read from a local state dict (`core_weights`, a .pt file saved from
  `FrozenConvStack.state_dict()`, or a dict with that under "state_dict"); without a file, a
  randomly initialised stack of core_num_layers x core_hidden_dim (a random-features baseline;
  a warning says so).
Time is folded into the batch. The network runs in eval mode (batch-norm statistics never
change) and, while frozen, without building a graph unless the video needs a gradient (MEIs:
gradients still reach the input). With a core_lr in training (`set_fine_tuning`), its weights
train at that rate. Its features (+ behaviour maps, core_behavior_mode) go through a trainable
1x1 conv, batch norm and ELU to core_hidden_dim channels. T' = T.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from neurotwin.config import option, require
from neurotwin.errors import ConfigError
from neurotwin.models.cores.base import Core, VideoInput, behavior_channels, concat_behavior
from neurotwin.models.cores.conv2d import ConvStackOptions
from neurotwin.models.frames import fold_time, unfold_time
from neurotwin.registry import CORES


@dataclass
class PretrainedOptions(ConvStackOptions):
    """pretrained: the network (a backbone's layer, or a conv stack's file or layers) and the
    adapter's channels (core_hidden_dim)."""

    renamed: ClassVar[dict[str, str]] = {"core_pretrained_weights": "core_weights"}

    core_backbone: str = option(
        "",
        "pretrained image network SOURCE:NAME (torchvision:resnet18, timm:..., hf:..., "
        "mouse-vision:...); empty: the conv stack of a .pt file (core_weights)",
    )
    core_layer: str = option(
        "", "the backbone's layer (dotted module name) whose feature maps the core reads"
    )
    core_weights: str | None = option(
        None,
        "the backbone's weights: a local file, cache (the library's own cache; nothing is "
        "downloaded) or none (random, seeded: a random-features baseline, with a warning); "
        "without core_backbone: the conv stack's .pt state dict (none: a random stack of "
        "core_num_layers x core_hidden_dim)",
    )
    core_input_size: list[int] | None = option(
        None,
        "(height, width) the frames are stretched to for the backbone (none: the network's own "
        "input size)",
    )

    def check(self) -> None:
        super().check()
        size = self.core_input_size
        require(
            size is None or (len(size) == 2 and min(size) >= 1),
            "core_input_size",
            f"must be two positive integers, got {size}",
        )
        if self.core_backbone:
            require(
                bool(self.core_layer),
                "core_layer",
                f"give the layer of {self.core_backbone} whose feature maps the core reads "
                "(e.g. layer2 for torchvision:resnet18)",
            )
            return
        for name in ("core_layer", "core_input_size"):
            require(not getattr(self, name), name, "needs core_backbone")
        require(
            self.core_weights != "cache",
            "core_weights",
            "cache needs core_backbone (the conv stack is read from a .pt file)",
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
                f"{source}: core_weights: expected a FrozenConvStack state dict with "
                "keys layers.<i>.conv.weight"
            )
        channels = [shapes[i][0] for i in range(len(shapes))]
        kernels = [shapes[i][2] for i in range(len(shapes))]
        stack = cls(shapes[0][1], channels, kernels)
        try:
            stack.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"{source}: core_weights do not fit the conv stack: {e}") from None
        return stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_stack(path: str | Path) -> FrozenConvStack:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: core_weights: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise ConfigError(f"{path}: core_weights: not a torch state dict ({e})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: core_weights: expected a state dict")
    return FrozenConvStack.from_state_dict(state, str(path))


@CORES.register("pretrained", options=PretrainedOptions)
class PretrainedCore(Core):
    takes_video_input = True

    def __init__(
        self,
        in_channels: int,
        frame_shape: tuple[int, int] | None = None,
        options: PretrainedOptions | None = None,
        backbone: nn.Module | None = None,
        video: VideoInput | None = None,
    ) -> None:
        o = options or PretrainedOptions()
        super().__init__(o)
        self.in_channels = in_channels
        self.layer = o.core_layer
        self.fine_tuning = False
        if o.core_backbone:
            if frame_shape is None:
                raise ConfigError("core pretrained with core_backbone needs the frame shape")
            self.backbone = backbone or self._backbone(o, video or VideoInput())
            self.frame_shape = tuple(frame_shape)
            self.map_shape = self._map_shape(self.frame_shape)
            channels = self.map_shape[0]
        else:
            self.backbone = backbone or self._conv_stack(o, in_channels)
            if {self.backbone.in_channels, in_channels} not in ({in_channels}, {1, 3}):
                raise ConfigError(
                    f"pretrained network takes {self.backbone.in_channels} channels, the video "
                    f"has {in_channels}"
                )
            channels = self.backbone.out_channels
        self.set_fine_tuning(False)
        hidden = o.core_hidden_dim
        c = channels + behavior_channels(o.core_behavior_mode)
        self.adapter = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ELU()
        )
        self.out_channels = hidden

    @staticmethod
    def _backbone(o: PretrainedOptions, video: VideoInput) -> nn.Module:
        """The backbone's network reading `core_layer` as feature maps, its input range the
        video's black and white."""
        from neurotwin.models.backbones import build_backbone

        if o.core_weights in (None, "", "none"):
            warnings.warn(
                f"core 'pretrained': {o.core_backbone} with random weights (core_weights none)",
                stacklevel=3,
            )
        values = {
            "weights": o.core_weights or "none",
            "layers": [o.core_layer],
            "pooling": "none",
            "resize": "stretch",
            "input_size": o.core_input_size,
            "pixel_range": list(video.pixel_range),
        }
        return build_backbone(o.core_backbone, values)

    @staticmethod
    def _conv_stack(o: PretrainedOptions, in_channels: int) -> FrozenConvStack:
        """The stack of the `core_weights` file, else a random one (with a warning)."""
        if o.core_weights not in (None, "", "none"):
            return load_stack(o.core_weights)
        warnings.warn(
            "core 'pretrained' without core_weights: using a random frozen conv stack",
            stacklevel=3,
        )
        n = o.core_num_layers
        kernels = [o.core_spatial_input_kernel] + [o.core_spatial_hidden_kernel] * (n - 1)
        return FrozenConvStack(in_channels, [o.core_hidden_dim] * n, kernels)

    def _map_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int, int]:
        """(C, h, w) of the backbone layer's maps for frames of `frame_shape`."""
        shape = self.backbone.out_shapes(tuple(frame_shape))[self.layer]
        if len(shape) != 3:
            o = self.options
            raise ConfigError(
                f"--core_layer {o.core_layer}: {o.core_backbone} gives features of shape "
                f"{tuple(shape)} there, not feature maps (C, h, w)"
            )
        return tuple(shape)  # type: ignore[return-value]

    def set_fine_tuning(self, enabled: bool) -> None:
        """The network's weights train (enabled) or stay frozen; batch norm stays in eval. Only
        the weights that `core_layer` depends on train: the layers after it never run, and
        DistributedDataParallel and the optimiser must not wait for their gradients."""
        self.fine_tuning = bool(enabled)
        params = list(self.backbone.parameters())
        for p in params:
            p.requires_grad_(self.fine_tuning)
        if self.fine_tuning and self.options.core_backbone:
            used = {id(p) for p in self._layer_parameters(params)}
            for p in params:
                p.requires_grad_(id(p) in used)

    def _layer_parameters(self, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """The parameters that the layer's maps of one frame have a gradient for."""
        lo = self.backbone.pixel_range[0]
        frame = torch.full((1, self.in_channels, *self.frame_shape), lo, device=params[0].device)
        grads = torch.autograd.grad(self._maps(frame).sum(), params, allow_unused=True)
        return [p for p, g in zip(params, grads) if g is not None]

    def train(self, mode: bool = True) -> PretrainedCore:
        super().train(mode)
        self.backbone.eval()  # batch-norm statistics never change, fine-tuned or not
        return self

    def out_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        if not self.options.core_backbone:
            return tuple(frame_shape)  # type: ignore[return-value]
        if tuple(frame_shape) == self.frame_shape:
            return self.map_shape[1:]
        return self._map_shape(frame_shape)[1:]  # type: ignore[return-value]

    def _maps(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, C, H, W) -> the network's feature maps (N, C', h, w)."""
        if self.options.core_backbone:  # the backbone prepares its own input (RGB, size, range)
            return self.backbone(frames)[self.layer]
        if self.backbone.in_channels != frames.shape[1]:  # grey video into RGB, or the reverse
            c = frames.shape[1]
            frames = frames.expand(-1, 3, -1, -1) if c == 1 else frames.mean(1, keepdim=True)
        return self.backbone(frames)

    def forward(self, video, behavior=None, pupil_center=None):
        b = video.shape[0]
        frames = fold_time(video)
        if self.fine_tuning or (video.requires_grad and torch.is_grad_enabled()):
            maps = self._maps(frames)  # gradients reach the weights, or the video (MEIs)
        else:
            with torch.no_grad():  # frozen: no graph through the network
                maps = self._maps(frames)
        f = unfold_time(maps, b)
        f = concat_behavior(f, behavior, pupil_center, self.options.core_behavior_mode)
        return unfold_time(self.adapter(fold_time(f)), b)

"""What every backbone is: frames (N, 1, H, W) in the data's luminance range -> {layer: features}.

A `Backbone` wraps a frozen image network of any source (torchvision, timm, transformers,
mouse-vision, or the pixels themselves). It prepares the frames as that network expects (grey
repeated to RGB, resized and cropped as its own evaluation transform does, normalised), runs the
network once, captures the requested layers by dotted module name with forward hooks (several
at once; the pass stops after the last one) and pools them:

- ``none``: feature maps as they are, (N, C, h, w) (token outputs of transformers become the
  (N, D, gh, gw) grid of their patch tokens); vectors stay (N, D). This is what a frozen
  per-frame video core reads.
- ``cls``: the first token of a token sequence (N, L, D) -> (N, D).
- ``pooler``: the network's own pooled output (transformers' ``pooler_output``, timm's
  pre-logits features); the layer is named ``pooler``.
- ``mean``: mean over positions (maps) or patch tokens (sequences) -> (N, C).
- ``avgpool``: adaptive average pooling to ``avgpool_size`` x ``avgpool_size`` (or the map's
  own size where smaller), flattened.
- ``flatten``: the whole map or patch grid as one vector (mouse-vision's and brainscore's
  features).

Every source is registered in `BACKBONES` with its options dataclass beside it, a subclass of
`BackboneOptions` (the options every source takes), as every other part is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from neurotwin.config import option, require
from neurotwin.errors import CheckpointError, ConfigError
from neurotwin.registry import PartOptions

M = TypeVar("M", bound=nn.Module)

POOLINGS = ("none", "cls", "pooler", "mean", "avgpool", "flatten")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTRA_HINT = "pip install 'neurotwin[encode]'"


@dataclass
class BackboneOptions(PartOptions):
    """Options every backbone source takes (each source registers a subclass, with its own
    fields where it has any)."""

    weights: str = option(
        "none",
        "none: random initialisation (seeded); a local weights file (.pt/.pth/.bin/"
        ".safetensors; a 'state_dict' key and 'module.' prefixes are accepted); cache: the "
        "library's own cache (nothing is downloaded)",
    )
    layers: list[str] = option([], "dotted module names to read (default: the source's own)")
    pooling: Literal["none", "cls", "pooler", "mean", "avgpool", "flatten"] = option(
        "avgpool", "how each layer's output becomes features (see models/backbones/base.py)"
    )
    avgpool_size: int = option(4, "avgpool: output grid side (features = channels x size^2)")
    resize: Literal["auto", "stretch", "crop"] = option(
        "auto",
        "auto: the network's own evaluation transform; stretch: resize the frame to the input "
        "size; crop: resize the shorter side, then centre-crop",
    )
    input_size: list[int] | None = option(
        None, "input (height, width) fed to the network (default: the network's own)"
    )
    pixel_range: list[float] = option(
        [0.0, 255.0], "luminance range of the data's frames; mapped to [0, 1] before normalising"
    )
    seed: int = option(0, "seed of the random initialisation (weights none)")
    trust_weights: bool = option(
        False, "allow weights files that need full unpickling (only for files you trust)"
    )

    def check(self) -> None:
        require(self.avgpool_size >= 1, "avgpool_size", f"must be >= 1, got {self.avgpool_size}")
        lo_hi = self.pixel_range
        require(
            len(lo_hi) == 2 and lo_hi[1] > lo_hi[0],
            "pixel_range",
            f"must be two numbers lo < hi, got {lo_hi}",
        )
        size = self.input_size
        require(
            size is None or (len(size) == 2 and min(size) >= 1),
            "input_size",
            f"must be two positive integers, got {size}",
        )


@dataclass(frozen=True)
class InputSpec:
    """How frames become the network's input: scale to [0, 1], channels, geometry, normalise.

    Geometry, in order: resize the shorter side to `resize_short` (keeping the aspect), centre-
    crop to `crop`, then resize to `size` (any step may be None). `interpolation` is
    'bilinear' or 'bicubic' (antialiased when shrinking, as PIL and torchvision v2 do) or 'area'
    (block averages, for the pixels baseline).
    """

    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize_short: int | None = None
    crop: tuple[int, int] | None = None
    size: tuple[int, int] | None = (224, 224)
    interpolation: str = "bilinear"

    def output_size(self, frame: tuple[int, int]) -> tuple[int, int]:
        h, w = frame
        if self.resize_short:
            h, w = _short_side(h, w, self.resize_short)
        if self.crop:
            h, w = min(self.crop[0], h), min(self.crop[1], w)
        if self.size:
            h, w = self.size
        return int(h), int(w)


def geometry(spec: InputSpec, resize: str, input_size: Sequence[int] | None) -> InputSpec:
    """`spec` with the user's geometry choice applied (auto: the network's own transform)."""
    if resize == "auto" and not input_size:
        return spec
    size = tuple(int(v) for v in input_size) if input_size else (spec.size or spec.crop)
    if resize == "stretch" or (resize == "auto" and spec.resize_short is None):
        return replace(spec, resize_short=None, crop=None, size=size)
    if resize == "crop" and spec.resize_short and not input_size:
        return spec
    # crop at `size`, the shorter side scaled as the network's own transform scales it
    own = spec.crop if spec.crop else None
    ratio = spec.resize_short / min(own) if (spec.resize_short and own) else 256 / 224
    return replace(spec, resize_short=int(math.floor(min(size) * ratio)), crop=size, size=None)


def _short_side(h: int, w: int, short: int) -> tuple[int, int]:
    if h <= w:
        return short, max(1, int(short * w / h))
    return max(1, int(short * h / w)), short


@dataclass(frozen=True)
class TokenLayout:
    """Token sequences (N, L, D): `prefix` leading tokens (class, registers), then a grid of
    patches of `patch` (ph, pw) pixels over the network's input."""

    prefix: int
    patch: tuple[int, int]


class StopForward(Exception):
    """Raised by the last forward hook: the layers asked for are captured, skip the rest."""


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    for key in ("last_hidden_state", "hidden_states"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise ConfigError(f"layer output of type {type(out).__name__} holds no tensor")


class Backbone(nn.Module):
    """A frozen image network: frames (N, 1, H, W) -> {layer: (N, C, h, w) map or (N, D)}.

    `network` is run on the prepared input by `run` (default: network(x)); `pooled` returns the
    network's own pooled output (for pooling 'pooler') or is None when it has none.
    """

    def __init__(
        self,
        network: nn.Module,
        layers: Sequence[str],
        spec: InputSpec,
        options: BackboneOptions,
        source: str,
        tokens: TokenLayout | None = None,
        run: Callable[[nn.Module, torch.Tensor, set[str]], Any] | None = None,
        pooled: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        read_output: Callable[[Any, str], torch.Tensor | None] | None = None,
        output_names: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.spec = spec
        self.source = source
        self.pooling = options.pooling
        self.avgpool_size = options.avgpool_size
        self.pixel_range = (float(options.pixel_range[0]), float(options.pixel_range[1]))
        self.tokens = tokens
        self._run = run or (lambda net, x, names: net(x))
        self._pooled = pooled
        self._read_output = read_output
        self._is_output_name = output_names or (lambda name: False)
        if self.pooling == "pooler":
            if pooled is None:
                raise ConfigError(
                    f"{source}: pooling 'pooler' needs a network with its own pooled output "
                    "(transformers' pooler_output, timm's pre-logits); use cls, mean, avgpool, "
                    "flatten or none"
                )
            if list(layers) not in ([], ["pooler"]):
                raise ConfigError(
                    f"{source}: pooling 'pooler' reads no layers (got {list(layers)})"
                )
            layers = ["pooler"]
        self.layers = list(layers)
        if not self.layers:
            raise ConfigError(f"{source}: no layer to read; give --layers")
        self._modules_by_name = dict(network.named_modules())
        if self.pooling != "pooler":
            unknown = [
                n
                for n in self.layers
                if n not in self._modules_by_name and not self._is_output_name(n)
            ]
            if unknown:
                raise ConfigError(
                    f"{source}: unknown layer(s) {unknown}; layers of this network: "
                    f"{self.layer_names()}"
                )
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.network.eval()

    # ------------------------------------------------------------------------------------------
    def layer_names(self, limit: int = 60) -> list[str]:
        """Dotted names of the network's modules (the first `limit`, for error messages)."""
        names = [n for n in self._modules_by_name if n]
        return names if len(names) <= limit else names[:limit] + [f"... ({len(names)} in all)"]

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        self.network.eval()  # frozen: batch-norm statistics and dropout never change
        return self

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 1 or 3, H, W) frames in `pixel_range` -> the network's normalised input."""
        if frames.ndim != 4:
            raise ValueError(f"expected frames (N, C, H, W), got shape {tuple(frames.shape)}")
        lo, hi = self.pixel_range
        x = (frames.to(self.mean.dtype) - lo) / (hi - lo)
        c = self.spec.channels
        if x.shape[1] != c:
            if x.shape[1] == 1:
                x = x.expand(-1, c, -1, -1)
            elif c == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"frames have {x.shape[1]} channels, the network takes {c}")
        x = self._geometry(x)
        return (x - self.mean) / self.std

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if spec.resize_short:
            x = self._resize(x, _short_side(x.shape[-2], x.shape[-1], spec.resize_short))
        if spec.crop:
            h, w = x.shape[-2:]
            ch, cw = min(spec.crop[0], h), min(spec.crop[1], w)
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            x = x[..., top : top + ch, left : left + cw]
        if spec.size and tuple(x.shape[-2:]) != tuple(spec.size):
            x = self._resize(x, spec.size)
        return x

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        if tuple(x.shape[-2:]) == size:
            return x
        mode = self.spec.interpolation
        if mode == "area":
            return F.adaptive_avg_pool2d(x, size)
        return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)

    # ------------------------------------------------------------------------------------------
    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.prepare(frames)
        if self.pooling == "pooler":
            return {"pooler": self._pooled(self.network, x)}  # type: ignore[misc]
        captured: dict[str, Any] = {}
        hooked = [n for n in self.layers if n in self._modules_by_name]
        from_output = [n for n in self.layers if n not in self._modules_by_name]
        wanted = set(hooked)

        def hook(name: str):
            def capture(module, inputs, output):
                captured[name] = output
                if not from_output and wanted.issubset(captured):
                    raise StopForward

            return capture

        handles = [self._modules_by_name[n].register_forward_hook(hook(n)) for n in hooked]
        result = None
        try:
            result = self._run(self.network, x, set(from_output))
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        for name in from_output:
            value = self._read_output(result, name) if self._read_output else None
            if value is not None:
                captured[name] = value
        missing = [n for n in self.layers if n not in captured]
        if missing:
            raise ConfigError(f"{self.source}: layer(s) {missing} did not run in the forward pass")
        grid = x.shape[-2:]
        return {n: self._pool(self._as_map(_first_tensor(captured[n]), grid)) for n in self.layers}

    def _as_map(self, t: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Token sequences (N, L, D) -> (N, D, gh, gw) over the patch grid (prefix tokens kept
        aside for 'cls'); maps and vectors are returned as they are."""
        if t.ndim != 3:
            return t
        if self.pooling == "cls":
            return t[:, 0]
        if self.tokens is None:
            return t.transpose(1, 2)  # (N, D, L): positions along the last axis
        gh, gw = grid[0] // self.tokens.patch[0], grid[1] // self.tokens.patch[1]
        patches = t[:, self.tokens.prefix :]
        if patches.shape[1] != gh * gw:
            return t.transpose(1, 2)
        return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], gh, gw)

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        mode = self.pooling
        if t.ndim == 2 or mode == "none":
            return t
        if mode == "cls":
            raise ConfigError(f"{self.source}: pooling 'cls' needs a token sequence (N, L, D)")
        if mode == "mean":
            return t.flatten(2).mean(dim=2)
        if mode == "flatten":
            return t.flatten(1)
        s = self.avgpool_size
        if t.ndim == 3:  # (N, D, L) positions without a grid
            return F.adaptive_avg_pool1d(t, min(s, t.shape[-1])).flatten(1)
        return F.adaptive_avg_pool2d(t, (min(s, t.shape[-2]), min(s, t.shape[-1]))).flatten(1)

    @torch.no_grad()
    def out_shapes(self, frame_shape: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """{layer: feature shape without the batch axis} for frames of `frame_shape`."""
        p = next(self.network.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        frames = torch.full((1, 1, *frame_shape), self.pixel_range[0], device=device)
        return {k: tuple(v.shape[1:]) for k, v in self(frames).items()}


# ----------------------------------------------------------------------------------------------
# Weights files
# ----------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a local file: plain, under 'state_dict' / 'model_state_dict' / 'model'
    (training checkpoints, as mouse-vision's), with 'module.' prefixes (DataParallel/DDP)
    removed; .safetensors files through safetensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=not trust)
        except Exception as e:  # noqa: BLE001 - any unreadable file
            hint = "" if trust else " (a full training checkpoint? --trust_weights reads it)"
            raise CheckpointError(f"{path}: not a readable torch weights file{hint}: {e}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def load_weights(network: nn.Module, path: str | Path, trust: bool = False, strict: bool = True):
    """Load a local weights file into `network`; CheckpointError naming the mismatching keys."""
    state = read_state_dict(path, trust)
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if wrong or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"{path}: weights do not fit the network: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    network.load_state_dict(state, strict=strict)


def seeded(make: Callable[[], M], seed: int) -> M:
    """The network `make()` builds, its random initial weights drawn from `seed`; the global
    random state is left as it was, so that --seed alone decides a random backbone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def load_given_weights(network: nn.Module, options: BackboneOptions) -> None:
    """Load the weights file --weights names into `network`; none (or empty) keeps the random
    weights. "cache" is each source's own and is handled before this."""
    if options.weights not in ("none", ""):
        load_weights(network, options.weights, options.trust_weights)


def import_extra(module: str, source: str):
    """Import an optional dependency of a source, or ConfigError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"backbone source {source!r} needs {module} ({e}); install it with {EXTRA_HINT}"
        ) from None

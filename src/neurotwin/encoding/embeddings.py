"""Embeddings of every distinct stimulus frame, computed once and cached.

Frames go through the backbone in batches (on the GPU when there is one, in bf16 autocast
there unless asked otherwise). Each layer's embeddings of a session's distinct frames are one
file, ``O/embeddings/<model>-<model key>/<layer>-<stimulus hash>.npy``, written under a temporary
name and renamed; the model key hashes the network, its weights file's contents and every
option that changes the features, the stimulus hash the frames themselves, so a changed
stimulus or model is a cache miss and nothing stale is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from neurotwin.config import option
from neurotwin.errors import ConfigError
from neurotwin.files import atomic_file, write_text

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class EmbeddingOptions:
    """How frames are embedded."""

    batch_size: int = option(256, "frames per forward pass")
    device: str = option("", "cpu | cuda | cuda:K (default: cuda when available)")
    dtype: Literal["auto", "float32", "bfloat16"] = option(
        "auto", "precision of the forward pass (auto: bf16 autocast on CUDA, else float32)"
    )
    cache_dtype: Literal["float32", "float16"] = option("float32", "precision of cached embeddings")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def resolve_device(name: str) -> torch.device:
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise ConfigError(f"--device {name!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def model_key(
    spec: str, backbone_options: Any, options: EmbeddingOptions, device: torch.device
) -> str:
    """Hash of everything that decides the features of a frame (not which layers are read)."""
    values = dataclasses.asdict(backbone_options)
    values.pop("layers", None)
    weights = values.get("weights", "none")
    if weights not in ("none", "cache", "") and Path(weights).is_file():
        values["weights"] = _file_digest(weights)
    values.update(spec=spec, dtype=_autocast_dtype(options, device) is not None, v=CACHE_VERSION)
    values["cache_dtype"] = options.cache_dtype
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_") or "x"


class EmbeddingCache:
    """Files under `root`, one per (model, layer, stimuli)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, model: str, key: str, layer: str, stimuli: str) -> Path:
        return self.root / f"{_safe(model)}-{key}" / f"{_safe(layer)}-{stimuli[:16]}.npy"

    def load(self, path: Path, n_frames: int) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            log.warning("%s: unreadable cache file, recomputed", path)
            return None
        if array.ndim != 2 or array.shape[0] != n_frames:
            log.warning(
                "%s: cached shape %s does not fit %d frames, recomputed",
                path,
                array.shape,
                n_frames,
            )
            return None
        return array.astype(np.float32)

    def save(self, path: Path, array: np.ndarray, info: dict) -> None:
        with atomic_file(path, "wb") as f:  # a file object: numpy adds no ".npy" to the name
            np.save(f, array)
        write_text(path.with_suffix(".json"), json.dumps(info, indent=1, default=str))


def _autocast_dtype(options: EmbeddingOptions, device: torch.device):
    if options.dtype == "bfloat16" or (options.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@torch.inference_mode()
def embed_frames(
    backbone, frames: np.ndarray, options: EmbeddingOptions, device: torch.device, label: str = ""
) -> dict[str, np.ndarray]:
    """{layer: (F, D) float32} for frames (F, H, W) in the data's luminance range."""
    backbone = backbone.to(device).eval()
    half = _autocast_dtype(options, device)
    out: dict[str, np.ndarray] = {}
    n = len(frames)
    bar = tqdm(
        total=n, desc=f"embed {label}", unit="frame", disable=not sys.stderr.isatty(), leave=False
    )
    for start in range(0, n, options.batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(frames[start : start + options.batch_size]))
        batch = batch.to(device, non_blocking=True)[:, None].float()
        ctx = torch.autocast(device.type, dtype=half) if half is not None else nullcontext()
        with ctx:
            features = backbone(batch)
        for layer, value in features.items():
            value = value.flatten(1).float().cpu().numpy()
            if layer not in out:
                out[layer] = np.empty((n, value.shape[1]), np.float32)
            out[layer][start : start + len(value)] = value
        bar.update(len(batch))
    bar.close()
    return out

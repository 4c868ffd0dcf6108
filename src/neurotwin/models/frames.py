"""Time folded into the batch and back, for parts that treat every frame on its own."""

from __future__ import annotations

import torch
from einops import rearrange


def fold_time(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), frame-major within each clip."""
    return rearrange(x, "b c t h w -> (b t) c h w")


def unfold_time(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W) (a view), the inverse of `fold_time`."""
    return rearrange(x, "(b t) c h w -> b c t h w", b=batch)


def unfold_neurons(y: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*T, N) readout values -> (B, N, T) (a view)."""
    return rearrange(y, "(b t) n -> b n t", b=batch)

"""The memory probe: the largest micro-batch that fits, and (with `--grad_checkpointing auto`)
whether gradient checkpointing must go on, found by trying forward+backward passes.

Checkpointing costs about 15% of a step (bench/RESULTS.md), more than smaller micro-batches do,
so `auto` turns it on only when not even one item fits without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from neurotwin.errors import NeurotwinError


@dataclass
class Checkpointing:
    """Gradient checkpointing of the model (`apply(enabled)` sets it) and whether the probe may
    switch it on (`auto`)."""

    apply: Callable[[bool], None]
    enabled: bool = False
    auto: bool = False

    def set(self, enabled: bool) -> None:
        self.enabled = bool(enabled)
        self.apply(self.enabled)


def fits_in_memory(step: Callable[[], None], device: torch.device) -> bool:
    """Whether `step` (a forward+backward) runs without a CUDA out-of-memory error."""
    try:
        step()
        torch.cuda.synchronize(device)
        return True
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return False


@dataclass
class MemoryProbe:
    """`fits(size)` says whether a forward+backward of `size` items fits (with checkpointing as
    it is now); the probe's decisions are noted in `notes`."""

    fits: Callable[[int], bool]
    checkpointing: Checkpointing
    device: str = "the GPU"
    notes: list[str] = field(default_factory=list)

    def largest(self, batch_size: int) -> int:
        """The largest micro-batch, halving from `batch_size`, that fits; with auto
        checkpointing, checkpointing goes on when not even one item fits without it."""
        size = self._largest(batch_size)
        cp = self.checkpointing
        if size == 0 and cp.auto and not cp.enabled:
            self._switch_on("one trial does not fit without it")
            size = self._largest(batch_size)
        if size == 0:
            raise NeurotwinError(
                f"micro_batch_size 0: even one trial does not fit on {self.device}; try "
                "--grad_checkpointing 1, --autocast enable or a smaller --crop_frame"
            )
        self.notes.append(f"micro_batch_size 0: largest micro-batch that fits: {size}")
        return size

    def check(self, size: int) -> None:
        """A micro-batch size given by the user: with auto checkpointing, checkpointing goes on
        if it does not fit without."""
        if self.checkpointing.auto and not self.fits(size):
            self._switch_on(f"a micro-batch of {size} does not fit without it")

    def _largest(self, size: int) -> int:
        while size >= 1 and not self.fits(size):
            size //= 2
        return size

    def _switch_on(self, why: str) -> None:
        self.checkpointing.set(True)
        self.notes.append(f"grad_checkpointing auto: {why}; gradient checkpointing on")

"""Short clips of a trial for models that see a fixed number of frames (DwiseNeuro: 16 frames,
every 2nd frame), and the average of their outputs over the trial.

A clip is `frames` frames taken every `step` frames: frames s, s + step, ..., s + (frames - 1)
step. For a trial of T frames, the frames of phase p (p, p + step, ...) are cut into clips that
start every `stride` clips frames, the last one ending at the phase's last frame, so every frame
is in at least one clip once T >= (frames - 1) step + step. With stride 1 these are all the clips
that fit, as DwiseNeuro's predictor slides its window over every frame of a trial; each output
frame is the mean of the outputs of the clips that hold it. In training the clips of a crop lie
side by side (stride = frames): a crop of frames x step frames is `step` clips, each frame in
exactly one. A trial too short for that (fewer than (frames - 1) step + step frames) is cut
into one clip per phase, of as many frames as the phase has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange

ClipFunction = Callable[
    [torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor
]  # (video, behaviour, pupil centre) of clips -> outputs (clips, N, frames)


@dataclass(frozen=True)
class Clips:
    """How a trial is cut into clips (see the module docstring)."""

    frames: int
    step: int = 1
    stride: int = 1  # clip starts, in clip frames, outside training
    batch: int = 64  # clips per forward pass outside training

    @property
    def span(self) -> int:
        """Frames of the trial one clip covers."""
        return (self.frames - 1) * self.step + 1

    @property
    def min_length(self) -> int:
        """The shortest trial whose every frame is in a clip."""
        return self.span + self.step - 1

    def index(self, length: int, training: bool) -> torch.Tensor:
        """(clips, frames) frame indices of the clips of a trial of `length` frames (at least
        `min_length`; see `groups` for any length)."""
        if length < self.min_length:
            raise ValueError(
                f"clips of {self.frames} frames taken every {self.step} need trials of at "
                f"least {self.min_length} frames, got {length}"
            )
        stride = self.frames if training else self.stride
        rows = []
        for phase in range(self.step):
            last = len(range(phase, length, self.step)) - self.frames
            starts = list(range(0, last + 1, stride))
            if starts[-1] != last:
                starts.append(last)
            offsets = torch.arange(self.frames)
            rows += [phase + self.step * (start + offsets) for start in starts]
        return torch.stack(rows)

    def groups(self, length: int, training: bool) -> list[torch.Tensor]:
        """The clips of a trial as groups of clips of one length: `index` for trials of at
        least `min_length` frames, else one clip per phase (phases of equal length together)."""
        if length >= self.min_length:
            return [self.index(length, training)]
        phases = [torch.arange(p, length, self.step) for p in range(min(self.step, length))]
        sizes = sorted({len(p) for p in phases}, reverse=True)
        return [torch.stack([p for p in phases if len(p) == n]) for n in sizes]

    def apply(
        self,
        fn: ClipFunction,
        video: torch.Tensor,
        behavior: torch.Tensor | None,
        pupil_center: torch.Tensor | None,
        training: bool,
    ) -> torch.Tensor:
        """Outputs (B, N, T) of `fn` on every clip of the trials (B, C, T, H, W), averaged over
        the clips that hold each frame; outside training `batch` clips at a time."""
        b, t = video.shape[0], video.shape[2]
        out = counts = None
        for part in self._parts(t, b, training, video.device):
            y = fn(
                rearrange(video[:, :, part], "b c n f h w -> (b n) c f h w"),
                _clip_rows(behavior, part),
                _clip_rows(pupil_center, part),
            )
            y = rearrange(y, "(b n) k f -> b k (n f)", b=b)
            if out is None:
                out = y.new_zeros(b, y.shape[1], t)
                counts = torch.zeros(t, dtype=y.dtype, device=y.device)
            out = out.index_add(2, part.reshape(-1), y)
            counts = counts.index_add(0, part.reshape(-1), torch.ones_like(part.reshape(-1), dtype=y.dtype))  # fmt: skip
        return out / counts

    def _parts(self, length: int, batch: int, training: bool, device) -> list[torch.Tensor]:
        """The clip index groups of `groups`, split into passes of at most `batch` clips
        outside training."""
        parts = []
        for group in self.groups(length, training):
            group = group.to(device)
            rows = group.shape[0] if training else max(1, self.batch // batch)
            parts += [group[i : i + rows] for i in range(0, group.shape[0], rows)]
        return parts


def _clip_rows(x: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    """(B, C, T) -> (B * clips, C, frames) of the clips `index` (None stays None)."""
    if x is None:
        return None
    return rearrange(x[:, :, index], "b c n f -> (b n) c f")

"""Stimuli for in-silico experiments, made on the model's device in the data's units.

Conventions (also written into every summary.json, see CONVENTIONS):
- frames are H x W pixels in grey levels of the data's luminance range [lo, hi]; grey (the mean
  luminance of every stimulus) is (lo + hi) / 2 and a contrast of 1 spans the whole range;
- pixel coordinates: x = column index, y = row index, pixel centres at integers;
- a grating of direction theta (degrees) has luminance
  grey + contrast * (hi - lo) / 2 * cos(2 pi f (x cos theta + y sin theta) - 2 pi w t + phase):
  its wave vector points from +x towards +y, it drifts along the wave vector, orientation is
  direction mod 180, f is in cycles per pixel, w in cycles per second at the data's frame rate
  (t = frame / frame rate);
- circular masks are discs of the given diameter (pixels) around a centre, anti-aliased over one
  pixel; "inverse" stimuli show the grating outside the disc and grey inside;
- a block design shows `lead` grey frames, then blocks of `pattern` frames each followed by
  `blank` grey frames; a block's response is the mean response over a window after its onset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

CONVENTIONS = {
    "frames": "H x W pixels in grey levels of the data's luminance range [lo, hi] (the frame as "
    "stored on disk); the training input transform is applied to them as in training",
    "grey": "(lo + hi) / 2; contrast 1 spans [lo, hi]",
    "coordinates": "x = column index, y = row index, pixel centres at integers",
    "grating": "grey + contrast * (hi - lo) / 2 * cos(2 pi f (x cos theta + y sin theta) "
    "- 2 pi w t + phase): direction theta in degrees, wave vector from +x towards +y, drifting "
    "along it; orientation = direction mod 180; f cycles per pixel; w cycles per second at the "
    "data's frame rate",
    "masks": "discs of the given diameter in pixels, anti-aliased over one pixel; inverse: "
    "grating outside the disc, grey inside",
    "behavior": "pupil dilation and running speed held at the training mean (or as given)",
    "pupil_center": "gaze held at the training mean (or as given)",
    "responses": "in the units of data/responses (the model's output through the inverse output "
    "transform)",
}


def pixel_grid(height: int, width: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) coordinates of every pixel, each (H, W), float32."""
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return x, y


def _col(v, device, dims: int = 2) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(v, dtype=np.float32), device=device).reshape(-1)
    return t.reshape(-1, *([1] * dims))


def grating(
    shape: tuple[int, int],
    frames: int,
    direction_deg,
    sf,
    tf_hz,
    contrast,
    phase=0.0,
    frame_rate: float = 30.0,
    device=None,
) -> torch.Tensor:
    """Drifting gratings (B, frames, H, W) in units of the amplitude (-contrast..contrast), one
    per entry of the (B,) parameter arrays (scalars broadcast); add grey, scale by amplitude."""
    x, y = pixel_grid(*shape, device=device)
    theta = torch.deg2rad(_col(direction_deg, device, 3))  # (B, 1, 1, 1)
    f, w = _col(sf, device, 3), _col(tf_hz, device, 3)
    c, ph = _col(contrast, device, 3), _col(phase, device, 3)
    n = max(len(theta), len(f), len(w), len(c), len(ph))
    t = torch.arange(frames, dtype=torch.float32, device=device)[None, :, None, None] / frame_rate
    space = x * torch.cos(theta) + y * torch.sin(theta)  # (B, 1, H, W)
    out = c * torch.cos(2 * math.pi * f * space - 2 * math.pi * w * t + ph)
    return out.expand(n, frames, *shape)


def disc(shape: tuple[int, int], center, diameter, device=None) -> torch.Tensor:
    """Anti-aliased discs (B, H, W) in [0, 1]: 1 within diameter / 2 of center (B, 2) = (x, y)."""
    x, y = pixel_grid(*shape, device=device)
    c = torch.as_tensor(np.asarray(center, dtype=np.float32), device=device).reshape(-1, 2)
    r = torch.hypot(x[None] - c[:, 0, None, None], y[None] - c[:, 1, None, None])
    radius = _col(np.asarray(diameter, dtype=np.float32) / 2, device)
    return (radius - r + 0.5).clamp(0.0, 1.0)


def white_noise(
    generator: torch.Generator,
    n: int,
    shape: tuple[int, int],
    luminance: tuple[float, float],
    kind: str = "uniform",
    device=None,
) -> torch.Tensor:
    """n white-noise frames (n, H, W) in grey levels: uniform in [lo, hi] (ViV1T), binary (lo or
    hi, each with probability 1/2) or gaussian (s.d. (hi - lo) / 6 around grey, clipped)."""
    lo, hi = luminance
    u = torch.rand((n, *shape), generator=generator, device=generator.device)
    if kind == "uniform":
        out = lo + (hi - lo) * u
    elif kind == "binary":
        out = torch.where(u < 0.5, lo, hi)
    elif kind == "gaussian":
        z = torch.randn((n, *shape), generator=generator, device=generator.device)
        out = (0.5 * (lo + hi) + (hi - lo) / 6 * z).clamp(lo, hi)
    else:
        raise ValueError(f"noise kind {kind!r} not in uniform | binary | gaussian")
    return out.to(device)


def noise_moments(luminance: tuple[float, float], kind: str) -> tuple[float, float]:
    """Mean and variance of one pixel of `white_noise` (the gaussian one ignoring its clip)."""
    lo, hi = luminance
    mean = 0.5 * (lo + hi)
    var = {
        "uniform": (hi - lo) ** 2 / 12,
        "binary": (hi - lo) ** 2 / 4,
        "gaussian": ((hi - lo) / 6) ** 2,
    }
    return mean, var[kind]


@dataclass(frozen=True)
class BlockDesign:
    """`lead` grey frames, then `per_video` blocks of `pattern` frames each followed by `blank`
    grey frames; responses are averaged over `window` frames from `delay` frames after onset."""

    lead: int
    pattern: int
    blank: int
    per_video: int
    delay: int = 0
    window: int | None = None  # default: the pattern's length

    @property
    def frames(self) -> int:
        return self.lead + self.per_video * (self.pattern + self.blank)

    @property
    def onsets(self) -> np.ndarray:
        return self.lead + np.arange(self.per_video) * (self.pattern + self.blank)

    @property
    def window_frames(self) -> int:
        return self.pattern if self.window is None else self.window

    def check(self) -> None:
        if min(self.pattern, self.per_video) < 1 or min(self.lead, self.blank, self.delay) < 0:
            raise ValueError(f"bad block design {self}")
        last = self.onsets[-1] + self.delay + self.window_frames
        if last > self.frames:
            raise ValueError(
                f"the response window ({self.delay} + {self.window_frames} frames after onset) "
                f"runs past the video ({self.frames} frames): add blank frames"
            )

    def assemble(self, patterns: torch.Tensor, grey: float) -> torch.Tensor:
        """Videos (B, frames, H, W) from patterns (B, per_video, pattern | 1, H, W): static
        patterns (one frame) are held for the block."""
        b, k, p, h, w = patterns.shape
        if k != self.per_video or p not in (1, self.pattern):
            raise ValueError(f"patterns {tuple(patterns.shape)} do not fit {self}")
        video = patterns.new_full((b, self.frames, h, w), grey)
        for j, onset in enumerate(self.onsets.tolist()):
            video[:, onset : onset + self.pattern] = patterns[:, j]
        return video

    def block_means(self, responses: torch.Tensor) -> torch.Tensor:
        """(B, N, frames) -> (B, per_video, N): each block's mean over its response window."""
        starts = self.onsets + self.delay
        idx = torch.as_tensor(
            starts[:, None] + np.arange(self.window_frames)[None], device=responses.device
        )
        return responses[..., idx].mean(-1).permute(0, 2, 1)

    def lead_mean(self, responses: torch.Tensor, frames: int = 5) -> torch.Tensor:
        """(B, N, frames) -> (B, N): mean over the last `frames` grey lead frames (a baseline)."""
        k = min(frames, self.lead)
        return responses[..., self.lead - k : self.lead].mean(-1)


def whole_cycles(frames: int, tf_hz: float, frame_rate: float) -> int:
    """The longest window of at most `frames` frames that holds a whole number of drift cycles
    (all of `frames` when a cycle is longer than that)."""
    period = frame_rate / tf_hz if tf_hz > 0 else float("inf")
    cycles = math.floor(frames / period + 1e-6)
    return int(round(cycles * period)) if cycles >= 1 else frames

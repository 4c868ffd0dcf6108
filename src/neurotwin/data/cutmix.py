"""CutMix (Yun et al. 2019) of training batches, as DwiseNeuro trains: a box of another trial's
movie pasted into a trial, the responses mixed by the box's share of the frame.

For each trial i of a batch, with probability `prob`: draw lam ~ Beta(alpha, alpha), a box of
sqrt(lam) times the frame's height and width centred on a uniform pixel (clipped to the frame),
and a partner j != i of the same batch (same session, so the same neurons); the box of j's
video (every channel and frame) replaces i's, and i's responses become (1 - a) r_i + a r_j,
a = the clipped box's area / the frame's. Behaviour and pupil centre stay trial i's (DwiseNeuro
pastes its behaviour channels with the box; here they are not images). Partners are read from
the batch as it came, before any trial of it was mixed. Every draw comes from (seed, epoch,
session, the batch's trial indices), so workers and resumed runs mix the same way; a batch of
one trial is left as it is.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch


def box(rng: np.random.Generator, height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a box sqrt(lam) of the frame's size around a uniform centre."""
    cut = np.sqrt(lam)
    h, w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = np.clip([cy - h // 2, cy + h // 2], 0, height)
    x0, x1 = np.clip([cx - w // 2, cx + w // 2], 0, width)
    return int(y0), int(y1), int(x0), int(x1)


class CutMix:
    """Mixes a collated training batch ({"video": (B, C, T, H, W), "response": (B, N, T), ...})."""

    def __init__(self, prob: float, alpha: float = 1.0, seed: int = 0) -> None:
        if not 0 <= prob <= 1 or alpha <= 0:
            raise ValueError(f"CutMix needs prob in [0, 1] and alpha > 0, got {prob}, {alpha}")
        self.prob, self.alpha, self.seed = float(prob), float(alpha), int(seed)

    def rng(self, session: str, epoch: int, indices: Sequence[int]) -> np.random.Generator:
        return np.random.default_rng(
            [self.seed, int(epoch), zlib.crc32(session.encode()), *indices]
        )

    def __call__(self, batch: dict, session: str, epoch: int, indices: Sequence[int]) -> dict:
        video, response = batch["video"], batch["response"]
        b = video.shape[0]
        if b < 2 or self.prob == 0:
            return batch
        rng = self.rng(session, epoch, indices)
        height, width = video.shape[-2:]
        mixed_video, mixed_response = video.clone(), response.clone()
        for i in range(b):
            if rng.random() >= self.prob:
                continue
            j = int(rng.integers(b - 1))
            j += j >= i  # another trial of the batch
            y0, y1, x0, x1 = box(rng, height, width, float(rng.beta(self.alpha, self.alpha)))
            share = (y1 - y0) * (x1 - x0) / (height * width)
            mixed_video[i, ..., y0:y1, x0:x1] = video[j, ..., y0:y1, x0:x1]
            mixed_response[i] = torch.lerp(response[i], response[j], share)
        return {**batch, "video": mixed_video, "response": mixed_response}

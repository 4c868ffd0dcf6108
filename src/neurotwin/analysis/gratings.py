"""Block presentations of drifting gratings, shared by tuning, size and contextual: their timing
options and one function that shows one block per condition and returns the block responses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neurotwin.analysis.context import Context
from neurotwin.analysis.stimuli import BlockDesign, whole_cycles
from neurotwin.config import option
from neurotwin.errors import ConfigError


@dataclass
class GratingTiming:
    """Block timing of drifting-grating stimuli (shared by tuning, size and contextual)."""

    block_frames: int = option(45, "frames of each grating block (1.5 s at 30 Hz)")
    blank_frames: int = option(15, "grey frames after each block")
    lead_frames: int = option(30, "grey frames before the first block of each video")
    transient_frames: int = option(15, "frames after onset left out of the block's mean")
    blocks_per_video: int = option(8, "blocks in one video")
    temporal_frequency: float = option(2.0, "drift, cycles per second at the data's frame rate")
    contrast: float = option(1.0, "grating contrast (1: the whole luminance range)")
    phases: int = option(2, "starting phases per condition (spread over a cycle): the samples")

    def __post_init__(self) -> None:
        if self.transient_frames >= self.block_frames:
            raise ConfigError("--transient_frames must be smaller than --block_frames")
        if min(self.block_frames, self.blocks_per_video, self.phases) < 1:
            raise ConfigError("--block_frames, --blocks_per_video and --phases must be >= 1")
        if not 0 < self.contrast <= 1:
            raise ConfigError(f"--contrast must be in (0, 1], got {self.contrast}")

    def design(self, frame_rate: float) -> BlockDesign:
        window = whole_cycles(
            self.block_frames - self.transient_frames, self.temporal_frequency, frame_rate
        )
        return BlockDesign(
            lead=self.lead_frames,
            pattern=self.block_frames,
            blank=self.blank_frames,
            per_video=self.blocks_per_video,
            delay=self.block_frames - window,
            window=window,
        )


def factorial(**axes: np.ndarray) -> dict[str, np.ndarray]:
    """Every combination of the axes' values (the first axis varies slowest), one flat array per
    axis: the conditions of a factorial experiment, e.g. neuron x size x phase."""
    grids = np.meshgrid(*(np.asarray(v) for v in axes.values()), indexing="ij")
    return {name: grid.ravel() for name, grid in zip(axes, grids)}


def present_gratings(
    ctx: Context,
    session: str,
    timing: GratingTiming,
    conditions: dict[str, np.ndarray],
    make_block,
    desc: str,
    targets: np.ndarray | None = None,
):
    """Show one block per condition (arrays of equal length C in `conditions`), in a fixed
    shuffled order; make_block(conditions of the blocks, frames) -> (c, frames, H, W) grey levels.

    Returns the block responses (N, C) of the analysed neurons, or with `targets` (C,) (an index
    into the analysed neurons per condition) only that neuron's response to each block, (C,);
    and the grey baseline (N,) from the end of each video's lead."""
    probe = ctx.subject.probe(session)
    design = timing.design(probe.frame_rate)
    design.check()
    n_cond = len(next(iter(conditions.values())))
    k = design.per_video
    order = np.random.default_rng(0).permutation(n_cond)
    pad = (-n_cond) % k
    order = np.concatenate([order, order[:pad]]) if pad else order
    n_videos = len(order) // k

    def make(start: int, stop: int) -> torch.Tensor:
        sel = order[start * k : stop * k]
        blocks = make_block({name: v[sel] for name, v in conditions.items()}, design.pattern)
        return design.assemble(blocks.reshape(stop - start, k, *blocks.shape[1:]), probe.grey)

    target_of = None if targets is None else torch.as_tensor(np.asarray(targets)[order])

    def reduce(responses: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        base = design.lead_mean(responses)  # (b, N)
        blocks = design.block_means(responses)  # (b, k, N)
        if target_of is None:
            return torch.cat([blocks, base[:, None]], 1)  # (b, k + 1, N)
        t = target_of[start * k : stop * k].reshape(stop - start, k, 1).to(blocks.device)
        return torch.cat([blocks.gather(2, t)[..., 0], base], 1)  # (b, k + N)

    out = ctx.present(session, n_videos, make, reduce, desc).numpy().astype(np.float64)
    if target_of is None:
        blocks, baseline = out[:, :k].reshape(-1, out.shape[-1]), out[:, k].mean(0)
    else:
        blocks, baseline = out[:, :k].reshape(-1, 1), out[:, k:].mean(0)
    sums = np.zeros((n_cond, blocks.shape[1]))
    counts = np.zeros(n_cond)
    np.add.at(sums, order, blocks)  # blocks shown twice (padding of the last video): averaged
    np.add.at(counts, order, 1)
    responses = sums / counts[:, None]
    return (responses.T if target_of is None else responses[:, 0]), baseline

"""mei: most exciting (or inhibiting) images and videos, for single neurons and the population.

An image is shown for a whole trial (`image_frames`, default the data's trial length) and scored
by the neuron's mean response after `skip_frames`; a video (`video_frames`) follows `lead_frames`
of grey and is scored over its frames, `response_delay` later. Stimuli are parameterised in
pixels or Fourier coefficients (mei_stimulus), optimised with AdamW for `steps` steps keeping
the best step of each. The population stimulus maximises the mean over neurons of each one's
response divided by its best response to real trials.

Each stimulus's score is also given as a ratio to the neuron's best response among the data's
real trials (`real_tier`): the largest mean response over windows of the same length in the
model's responses to those trials' movies, behaviour held as for the stimuli.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from neurotwin.analysis import output
from neurotwin.analysis.context import Context, SessionResult
from neurotwin.analysis.mei_stimulus import (
    StimulusParameter,
    disc_mask,
    natural_reference,
    sliding_max,
    spectrum_penalty,
    to_uint8,
)
from neurotwin.analysis.registry import ANALYSES, Analysis
from neurotwin.config import option
from neurotwin.data import native
from neurotwin.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)


@dataclass
class MeiOptions:
    """Stimulus optimisation: what, how parameterised, which regularisers, how long."""

    kinds: list[str] = option(["image", "video"], "image (static, whole trial) and/or video")
    population: bool = option(True, "also the stimulus that drives the whole population most")
    max_neurons: int = option(
        4, "single-neuron stimuli for the first N analysed neurons (all given with --neurons)"
    )
    mode: Literal["exciting", "inhibiting"] = option(
        "exciting", "maximise or minimise the response"
    )
    parameterization: Literal["fourier", "pixel"] = option(
        "fourier", "free parameters: 1/f-scaled Fourier coefficients or pixels"
    )
    lowpass: float = option(0.5, "keep spatial frequencies up to this fraction of Nyquist (1: all)")
    spectrum_weight: float = option(0.0, "weight of the penalty towards the data's power spectrum")
    contrast: float = option(
        0.0, "RMS contrast budget in grey levels (0: the training videos' s.d.)"
    )
    mask_diameter: float = option(
        0.0, "disc (pixels) at each neuron's aRF centre, grey outside (0: none)"
    )
    steps: int = option(100, "AdamW steps")
    lr: float = option(0.05, "AdamW learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    image_frames: int = option(0, "frames an image is shown for (0: the data's trial length)")
    skip_frames: int = option(20, "image: frames after onset left out of the score")
    video_frames: int = option(30, "frames of a most exciting video")
    lead_frames: int = option(20, "video: grey frames before it")
    response_delay: int = option(2, "video: frames from its onset to its scoring window")
    real_tier: str = option("train", "tier whose trials give the best real responses")
    real_trials: int = option(0, "at most this many of them (0: all)")
    seed: int = option(0, "seed of the initial stimuli")
    gif: bool = option(True, "write each video as a GIF")

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in ("image", "video")]
        if bad or not self.kinds:
            raise ConfigError(f"--kinds: expected image and/or video, got {self.kinds}")
        if not 0 < self.lowpass <= 1:
            raise ConfigError(f"--lowpass must be in (0, 1], got {self.lowpass}")
        if self.steps < 1 or self.video_frames < 1 or self.max_neurons < 1:
            raise ConfigError("--steps, --video_frames and --max_neurons must be >= 1")


@dataclass
class _Task:
    kind: str  # image | video
    frames: int  # stimulus frames (1 for an image)
    total: int  # frames of the presented video
    start: int  # first frame of the scoring window
    window: int  # its length
    lead: int = 0  # grey frames before a video


@ANALYSES.register("mei")
class MeiAnalysis(Analysis):
    """Most exciting/inhibiting images and videos, per neuron and for the population."""

    Options = MeiOptions
    description = "most exciting/inhibiting images (whole trial) and videos, single neurons and population, with the ratio to the best real-trial response"

    def tasks(self, probe) -> list[_Task]:
        o = self.options
        out = []
        if "image" in o.kinds:
            total = o.image_frames or probe.session.n_frames
            if o.skip_frames >= total:
                raise ConfigError(f"--skip_frames {o.skip_frames} leaves nothing of {total} frames")
            out.append(_Task("image", 1, total, o.skip_frames, total - o.skip_frames))
        if "video" in o.kinds:
            total = o.lead_frames + o.video_frames + o.response_delay
            start = o.lead_frames + o.response_delay
            out.append(_Task("video", o.video_frames, total, start, o.video_frames, o.lead_frames))
        return out

    def targets(self, ctx: Context, session: str) -> np.ndarray:
        idx = ctx.neurons(session)
        return idx if ctx.neuron_request is not None else idx[: self.options.max_neurons]

    def run_session(self, ctx: Context, session: str) -> SessionResult:
        import pandas as pd

        o, probe = self.options, ctx.subject.probe(session)
        targets = self.targets(ctx, session)
        tasks = self.tasks(probe)
        best_real, real_frames = self.real_responses(ctx, session, tasks)
        centers = None
        if o.mask_diameter > 0:
            arf = ctx.table("arf", session).set_index("neuron")
            centers = arf.loc[targets, ["center_x", "center_y"]].to_numpy(dtype=np.float64)
        reference = (
            natural_reference(real_frames, ctx.subject.device) if o.spectrum_weight > 0 else None
        )
        table = {}
        arrays, files, figures, summary = {}, {}, {}, {}
        for task in tasks:
            real = best_real[task.kind]
            stim, score, trace = self.optimise(
                ctx, session, task, targets, real, centers, reference
            )
            n = len(targets)
            table[f"{task.kind}_response"] = score[:n]
            table[f"{task.kind}_best_real"] = real["value"][targets]
            table[f"{task.kind}_ratio"] = score[:n] / real["value"][targets]
            arrays[f"{task.kind}s"] = stim.astype(np.float32)
            arrays[f"{task.kind}_traces"] = trace.astype(np.float32)
            arrays[f"{task.kind}_best_real_trial"] = real["trial"][targets]
            if o.population:
                summary[f"population_{task.kind}_score"] = float(score[n])
                summary[f"population_{task.kind}_ratio"] = float(score[n] / real["population"])
            summary[f"{task.kind}_ratio_median"] = float(
                np.median(score[:n] / real["value"][targets])
            )
            figures[f"{task.kind}s"] = _grid(stim, targets, score, real, task, probe, o)
            if task.kind == "video" and o.gif:
                labels = [f"neuron{int(i)}" for i in targets] + (
                    ["population"] if o.population else []
                )
                for label, video in zip(labels, stim):
                    frames = to_uint8(video, probe.luminance)
                    files[f"{session}_mev_{label}.gif"] = lambda p, f=frames: output.write_video(
                        f, p, probe.frame_rate
                    )
        result = SessionResult(pd.DataFrame(table), arrays, figures, summary, files)
        result.neurons = targets
        return result

    # -- the data's real trials -------------------------------------------------------------
    def real_responses(self, ctx: Context, session: str, tasks: list[_Task]):
        """Per task: the best window-mean response of every neuron over the real trials (value,
        trial) and, for the population score, the best mean of responses / best; plus some of
        the trials' frames (for the spectrum reference)."""
        o, probe = self.options, ctx.subject.probe(session)
        s = probe.session
        if s is None:
            raise DataFormatError(probe.name, "no real trials to compare with")
        trials = s.trial_ids(o.real_tier)
        if len(trials) == 0:
            raise ConfigError(f"--real_tier {o.real_tier!r}: no trials in {session}")
        if o.real_trials:
            trials = trials[: o.real_trials]
        better = np.greater if o.mode == "exciting" else np.less
        best = {t.kind: {"value": None, "trial": None, "population": None} for t in tasks}
        responses = []
        frames = []
        dev = ctx.subject.device
        with torch.inference_mode():
            for trial in trials.tolist():
                video = s.load_trial(int(trial))[native.VIDEOS]
                length = s.trial_length(int(trial))
                video = np.moveaxis(video[..., :length], -1, 0)
                frames.append(video[:: max(1, length // 8)])
                r = ctx.subject.respond(
                    session, torch.as_tensor(video[None], device=dev, dtype=torch.float32)
                )
                responses.append((int(trial), r[0].float().cpu().numpy()))
        for task in tasks:
            entry = best[task.kind]
            for trial, r in responses:
                value, _ = sliding_max(
                    r[None] * (1 if o.mode == "exciting" else -1), task.start, task.window
                )
                value = value[0] * (1 if o.mode == "exciting" else -1)
                if entry["value"] is None:
                    entry["value"], entry["trial"] = value, np.full(len(value), trial)
                else:
                    take = better(value, entry["value"])
                    entry["value"] = np.where(take, value, entry["value"])
                    entry["trial"] = np.where(take, trial, entry["trial"])
            scale = np.where(np.abs(entry["value"]) > 0, entry["value"], 1.0)
            pop = [
                sliding_max((r / scale[:, None]).mean(0)[None, None], task.start, task.window)[0][
                    0, 0
                ]
                for _, r in responses
            ]
            entry["population"] = float(max(pop) if o.mode == "exciting" else min(pop))
        return best, np.concatenate(frames)

    # -- optimisation ---------------------------------------------------------------------
    def optimise(self, ctx, session, task, targets, real, centers, reference):
        """Stimuli (rows: targets, then the population), their best scores and response traces."""
        o, probe = self.options, ctx.subject.probe(session)
        dev = ctx.subject.device
        rows = len(targets) + (1 if o.population else 0)
        mask = None
        if centers is not None:
            cs = (
                np.vstack([centers, np.median(centers, 0, keepdims=True)])
                if o.population
                else centers
            )
            mask = disc_mask(probe.frame_shape, cs, o.mask_diameter, dev)
        gen = torch.Generator(device=dev).manual_seed(o.seed)
        stimulus = StimulusParameter(
            rows,
            task.frames,
            probe.frame_shape,
            probe.luminance,
            o.contrast or probe.video_std,
            o.parameterization,
            o.lowpass,
            mask,
            gen,
            device=dev,
        )
        optimizer = torch.optim.AdamW(stimulus.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        sign = 1.0 if o.mode == "exciting" else -1.0
        target_idx = torch.as_tensor(targets, device=dev)
        scale = torch.as_tensor(
            np.where(np.abs(real["value"]) > 0, real["value"], 1.0), device=dev, dtype=torch.float32
        )
        best_score = np.full(rows, -np.inf)
        best_stim = np.zeros((rows, task.frames, *probe.frame_shape), dtype=np.float32)
        from tqdm.auto import tqdm

        for _ in tqdm(
            range(o.steps),
            desc=f"mei {task.kind} {session[:20]}",
            disable=ctx._bar_off(),
            leave=False,
        ):
            x = stimulus()
            r = ctx.subject.respond(session, self.present(x, task, probe.grey))
            w = r[..., task.start : task.start + task.window].mean(-1)  # (rows, N)
            score = w[torch.arange(len(targets), device=dev), target_idx]
            if o.population:
                score = torch.cat([score, (w[-1] / scale).mean()[None]])
            loss = -sign * score.sum()
            if reference is not None:
                loss = loss + o.spectrum_weight * spectrum_penalty(x, reference).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            values = sign * score.detach().float().cpu().numpy()
            improved = values > best_score
            best_score = np.where(improved, values, best_score)
            best_stim[improved] = x.detach().float().cpu().numpy()[improved]
        with torch.inference_mode():
            stim = torch.as_tensor(best_stim, device=dev)
            r = (
                ctx.subject.respond(session, self.present(stim, task, probe.grey))
                .float()
                .cpu()
                .numpy()
            )
        trace = np.stack(
            [r[j, t] for j, t in enumerate(targets)]
            + ([(r[-1] / scale.cpu().numpy()[:, None]).mean(0)] if o.population else [])
        )
        stim_out = best_stim[:, 0] if task.kind == "image" else best_stim
        return stim_out, sign * best_score, trace

    @staticmethod
    def present(x: torch.Tensor, task: _Task, grey: float) -> torch.Tensor:
        """Stimuli (rows, F, H, W) as presented videos (rows, total, H, W): an image held for
        the whole video; a video after `lead` grey frames, grey after it."""
        if task.kind == "image":
            return x.expand(-1, task.total, -1, -1)
        rows, f, h, w = x.shape
        before = x.new_full((rows, task.lead, h, w), grey)
        after = x.new_full((rows, task.total - task.lead - f, h, w), grey)
        return torch.cat([before, x, after], 1)


def _grid(stim: np.ndarray, targets, score, best_real, task, probe, options: MeiOptions):
    """Images (or a few frames of each video) with their response ratios."""
    population = options.population
    labels = [f"#{int(i)}" for i in targets] + (["population"] if population else [])
    ratios = [score[j] / best_real["value"][t] for j, t in enumerate(targets)]
    ratios += [score[-1] / best_real["population"]] if population else []
    lo, hi = probe.luminance
    if task.kind == "image":  # one row of images
        fig, axes = output.figure(1, len(stim), size=(1.8, 1.3))
        cells = [(axes[0, r], stim[r], r) for r in range(len(stim))]
    else:  # a row of 5 frames per video
        frames = stim[:, np.linspace(0, stim.shape[1] - 1, 5).astype(int)]
        fig, axes = output.figure(len(stim), 5, size=(1.8, 1.1))
        cells = [
            (axes[r, c], frames[r, c], r if c == 0 else None)
            for r in range(len(stim))
            for c in range(5)
        ]
    for ax, image, r in cells:
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        ax.set_xticks([])
        ax.set_yticks([])
        if r is not None:
            ax.set_title(f"{labels[r]}: x{ratios[r]:.2f} of best real", fontsize=6)
    fig.suptitle(f"most {options.mode} {task.kind}s", fontsize=8)
    return fig

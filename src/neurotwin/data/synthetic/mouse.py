"""One synthetic mouse: its trial plan (tiers in random order over trial files) and each trial
generated on demand, deterministically, one at a time (memory does not grow with the number of
trials); statistics and ceilings accumulate as the trials stream past the writer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from neurotwin.data import native
from neurotwin.data.synthetic.behavior import simulate_behavior
from neurotwin.data.synthetic.drift import SlowDrift
from neurotwin.data.synthetic.params import (
    HIDDEN_TIERS,
    REF_WIDTH,
    S_CALIBRATION,
    S_DRIFT,
    S_MOUSE,
    S_PLAN,
    S_SHARED_CLIP,
    S_SURROUND,
    S_TRAIN_CLIP,
    S_TRIAL,
    ModelParams,
    SyntheticSizes,
    rng,
)
from neurotwin.data.synthetic.population import Population
from neurotwin.data.synthetic.receptive_fields import make_population
from neurotwin.data.synthetic.statistics import Ceiling, OverTrials, skip_rule
from neurotwin.data.synthetic.stimuli import make_clip


def build_population(
    seed: int, index: int, sizes: SyntheticSizes, params: ModelParams
) -> tuple[Population, dict[str, Any]]:
    """Mouse `index`'s neurons, calibrated on its calibration clips, and its retinotopic map:
    the same every time for the same (seed, index, sizes, params)."""
    surround_rng = rng(seed, S_SURROUND, index) if params.surround_fraction > 0 else None
    pop, maps = make_population(rng(seed, S_MOUSE, index), sizes, params, surround_rng)
    cal = rng(seed, S_CALIBRATION, index)
    T, H, W = sizes.frames, sizes.height, sizes.width
    pop.calibrate([make_clip(cal, max(T, 64), H, W, params) for _ in range(2)])
    return pop, maps


@dataclass(frozen=True)
class Clip:
    key: tuple[int, ...]  # random-stream keys of the clip
    video_id: int
    length: int


class Mouse:
    """Plans one session's trials and generates each trial on demand (deterministically)."""

    NOISELESS_CACHE_BYTES = 256 * 2**20
    MEDIAN_BYTES = 128 * 2**20

    def __init__(self, seed, index, sizes, params, shared_clips, progress):
        self.seed, self.index, self.sizes, self.p = seed, index, sizes, params
        self.pop, self.maps = build_population(seed, index, sizes, params)
        T = sizes.frames
        # trial plan: tiers in random order over trial indices
        clips: list[tuple[str, Clip]] = []
        n_shared = len(shared_clips)
        for j in range(sizes.train_trials):
            key = (seed, S_TRAIN_CLIP, index, j)
            vid = n_shared + index * sizes.train_trials + j
            clips.append(("train", Clip(key, vid, clip_length(key, sizes))))
        for tier, clip, repeats in shared_clips:
            clips += [(tier, clip)] * repeats
        train_lengths = [c.length for t, c in clips if t == "train"]
        if max(train_lengths) < T:  # keep every frame covered by some training trial
            clips[0] = ("train", dataclasses.replace(clips[0][1], length=T))
        order = rng(seed, S_PLAN, index).permutation(len(clips))
        self.tiers = np.array([clips[i][0] for i in order])
        self.clips = [clips[i][1] for i in order]
        self.unit_ids = np.sort(
            rng(seed, S_PLAN, index, 1).choice(
                np.arange(1, 4 * sizes.neurons + 1), sizes.neurons, replace=False
            )
        ).astype(np.int64)
        self.drift = None
        if params.drift_amplitude > 0:
            self.drift = SlowDrift(
                rng(seed, S_DRIFT, index), sizes.neurons, len(self.clips), params.drift_amplitude
            )
        # streaming state
        self.done: set[int] = set()
        train_ids = np.flatnonzero(self.tiers == native.TRAIN_TIER)
        self.train_ids = set(int(i) for i in train_ids)
        self.stats = {n: OverTrials(self.MEDIAN_BYTES) for n in native.TRIAL_ARRAYS}
        self.ceilings = self._ceilings()
        noiseless_bytes = len(self.clips) * sizes.neurons * T * 4
        self.cache_noiseless = noiseless_bytes <= self.NOISELESS_CACHE_BYTES
        self.noiseless: dict[int, np.ndarray] = {}
        self.spill_dir: Path | None = None  # set by the writer
        self.video_cache: dict[tuple[int, ...], np.ndarray] = {}
        self.bar = tqdm(
            total=len(self.clips),
            desc=f"mouse {index + 1}",
            unit="trial",
            disable=not progress,
            leave=False,
        )

    def _ceilings(self) -> dict[str, Ceiling]:
        """A ceiling per tier with responses, skipping the frames that the metrics skip there
        (`metrics.frames_to_skip` of the tier's valid lengths, as validation and prediction)."""
        lengths: dict[str, list[int]] = {}
        for tier, clip in zip(self.tiers.tolist(), self.clips):
            if tier not in HIDDEN_TIERS:
                lengths.setdefault(tier, []).append(clip.length)
        return {tier: Ceiling(skip_rule(values)) for tier, values in lengths.items()}

    @property
    def n_trials(self) -> int:
        return len(self.clips)

    def _video(self, clip: Clip) -> np.ndarray:
        """(T, H, W) clip content over all T frames (also past a short clip's end)."""
        if clip.key in self.video_cache:
            return self.video_cache[clip.key]
        s = self.sizes
        video = make_clip(rng(*clip.key), s.frames, s.height, s.width, self.p)
        if clip.key[1] == S_SHARED_CLIP:  # repeated: keep (few, shared by every repeat)
            self.video_cache[clip.key] = video
        return video

    def simulate(self, trial: int) -> dict[str, np.ndarray]:
        """All arrays of one trial, native shapes, frames past the clip's end NaN."""
        clip, tier = self.clips[trial], str(self.tiers[trial])
        T = self.sizes.frames
        trial_rng = rng(self.seed, S_TRIAL, self.index, trial)
        video = self._video(clip)
        behavior, pupil_center = simulate_behavior(trial_rng, T, self.pop.behavior, self.p)
        scale = self.p.gaze_gain * self.sizes.width / REF_WIDTH
        shift = scale * (pupil_center - np.asarray(self.pop.behavior.eye_center)[:, None])
        rate = self.pop.rates(video, behavior, shift, self.p)
        if self.drift is not None:
            rate *= np.exp(self.drift.log_gain(trial, T))
        d = self.p.overdispersion
        if d > 0:  # Gamma-Poisson (negative binomial) counts: mean rate, extra variance
            gain = trial_rng.standard_gamma(1.0 / d, size=rate.shape, dtype=np.float32)
            gain *= np.float32(d)
            gain *= rate
            counts = trial_rng.poisson(gain).astype(np.float32)
        else:
            counts = trial_rng.poisson(rate).astype(np.float32)
        scale_n = self.pop.scale[:, None].astype(np.float32)
        responses = counts * scale_n
        noiseless = rate * scale_n
        videos = np.moveaxis(video, 0, -1).copy()  # (H, W, T)
        end = clip.length
        for a in (videos, responses, behavior, pupil_center, noiseless):
            a[..., end:] = np.nan
        if tier in HIDDEN_TIERS:
            responses = np.zeros_like(responses)
        out = {
            native.VIDEOS: videos,
            native.RESPONSES: responses,
            native.BEHAVIOR: behavior,
            native.PUPIL_CENTER: pupil_center,
            native.NOISELESS: noiseless,
        }
        return {k: v.astype(np.float32, copy=False) for k, v in out.items()}

    def trial(self, trial: int) -> dict[str, np.ndarray]:
        arrays = self.simulate(trial)
        if trial not in self.done:
            self.done.add(trial)
            self._account(trial, arrays)
            self.bar.update(1)
        return arrays

    def _account(self, trial: int, arrays: Mapping[str, np.ndarray]) -> None:
        tier = str(self.tiers[trial])
        if trial in self.train_ids:
            for name in native.TRIAL_ARRAYS:
                self.stats[name].add(arrays[name])
        if tier in self.ceilings:
            length = self.clips[trial].length
            self.ceilings[tier].add(arrays[native.NOISELESS], arrays[native.RESPONSES], length)
        if self.cache_noiseless:
            self.noiseless[trial] = arrays[native.NOISELESS]
        elif self.spill_dir is not None:  # too big to keep: park on disk until written
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            np.save(self.spill_dir / f"{trial}.npy", arrays[native.NOISELESS])

    def statistics(self) -> dict[str, dict[str, np.ndarray]]:
        for trial in sorted(self.train_ids - self.done):
            self.trial(trial)
        return {name: acc.result() for name, acc in self.stats.items()}

    def noiseless_of(self, trial: int) -> np.ndarray:
        if trial in self.noiseless:
            return self.noiseless.pop(trial)
        if self.bar.n >= self.bar.total and not self.bar.disable:  # second pass: show it
            self.bar.reset(total=self.n_trials)
            self.bar.set_description(f"mouse {self.index + 1} (noiseless rates)")
        self.bar.update(0 if self.bar.disable else 1)
        spilled = self.spill_dir / f"{trial}.npy" if self.spill_dir is not None else None
        if spilled is not None and spilled.is_file():
            a = np.load(spilled)
            spilled.unlink()
            return a
        return self.simulate(trial)[native.NOISELESS]  # deterministic: recomputed

    def video_ids(self) -> np.ndarray:
        return np.array([c.video_id for c in self.clips], dtype=np.int64)

    def gaze_shift_per_eye_px(self) -> float:
        """Pixels of receptive-field shift per eye-camera pixel of gaze."""
        return self.p.gaze_gain * self.sizes.width / REF_WIDTH


def clip_length(key: tuple[int, ...], sizes: SyntheticSizes) -> int:
    r = rng(*key, 99)
    T = sizes.frames
    if r.random() < sizes.short_fraction and T >= 4:
        return int(r.integers(max(2, math.ceil(0.75 * T)), T))
    return T


class LazyTrials(Mapping):
    def __init__(self, mouse: Mouse):
        self.mouse = mouse

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.mouse.n_trials))

    def __len__(self) -> int:
        return self.mouse.n_trials

    def __getitem__(self, trial: int) -> dict[str, np.ndarray]:
        arrays = self.mouse.trial(int(trial))
        return {k: arrays[k] for k in native.TRIAL_ARRAYS}


class LazyNoiseless(LazyTrials):
    def __getitem__(self, trial: int) -> np.ndarray:
        return self.mouse.noiseless_of(int(trial))


class LazyStatistics(Mapping):
    """Shipped statistics, finalised when first read (after the trials have streamed by)."""

    def __init__(self, mouse: Mouse):
        self.mouse = mouse
        self._result: dict | None = None

    def _get(self) -> dict:
        if self._result is None:
            self._result = self.mouse.statistics()
        return self._result

    def __iter__(self) -> Iterator[str]:
        return iter(native.TRIAL_ARRAYS)

    def __len__(self) -> int:
        return len(native.TRIAL_ARRAYS)

    def __getitem__(self, name: str) -> dict[str, np.ndarray]:
        return self._get()[name]

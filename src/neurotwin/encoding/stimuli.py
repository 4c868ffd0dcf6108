"""Stimuli and responses of native-layout sessions, arranged for encoding models.

A tier of a session (read with `NativeSession`) becomes a `TierData`: its clips (trials with
identical valid video frames are repeats of one clip, found by `metrics.video_hash`), each with
its frames and its responses per repeat. Two kinds of target:

- frames (movies: Sensorium, synthetic mice, Allen natural movies): every valid frame of a clip
  is a stimulus; its response is the response in that frame.
- presentations (Allen natural scenes and gratings, converted with one trial per presentation;
  meta/neurotwin.json says ``"responses_per": "presentation"``): every clip (image, grating) is
  a stimulus; its response is the mean over the trial's valid frames (the response window).

The distinct frames of all analysed tiers of a session are collected once (`FrameTable`), so that
each is embedded once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from neurotwin.config import option
from neurotwin.data import native
from neurotwin.data.native import NativeSession, find_sessions
from neurotwin.errors import ConfigError, DataFormatError
from neurotwin.metrics import video_hash

log = logging.getLogger(__name__)
AREA_FILE = "meta/neurons/area.npy"


@dataclass
class StimulusOptions:
    """Which sessions, tiers and responses an encoding analysis reads."""

    data_dir: str = option("data/synthetic", "folder holding one sub-folder per session")
    mouse_ids: list[str] | None = option(None, "sessions by folder name or alias (default: all)")
    tiers: list[str] = option(["oracle"], "tiers analysed, each on its own")
    targets: Literal["auto", "frames", "presentations"] = option(
        "auto",
        "frames: one stimulus per movie frame; presentations: one per trial (Allen scenes, "
        "gratings); auto: from meta/neurotwin.json",
    )
    skip_frames: int = option(0, "frames: leave out the first frames of every clip")
    lags: int = option(0, "frames: also use the features of the K previous frames")
    limit_neurons: int | None = option(None, "use at most this many neurons per session")

    def __post_init__(self) -> None:
        if self.lags < 0 or self.skip_frames < 0:
            raise ConfigError(
                f"lags and skip_frames must be >= 0, got {self.lags}, {self.skip_frames}"
            )
        unknown = [t for t in self.tiers if t not in native.TIERS]
        if unknown or not self.tiers:
            raise ConfigError(f"tiers must be among {list(native.TIERS)}, got {self.tiers}")


@dataclass
class Clip:
    """One clip: its valid frames, and the responses of each repeat (trial showing it)."""

    trials: list[int]
    frames: np.ndarray  # (T, H, W) float32
    responses: np.ndarray  # (R, N, T) float32
    frame_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (T,)


@dataclass
class TierData:
    """The clips of one tier of one session, in order of their first trial."""

    session: str
    tier: str
    unit_ids: np.ndarray
    areas: np.ndarray
    clips: list[Clip]
    presentations: bool


@dataclass
class FrameTable:
    """The distinct frames of a session (F, H, W) and the hash that names them."""

    frames: np.ndarray
    key: str


# ----------------------------------------------------------------------------------------------


def session_paths(options: StimulusOptions) -> list[Path]:
    return find_sessions(options.data_dir, options.mouse_ids)


def _areas(session: NativeSession) -> np.ndarray:
    path = session.path / AREA_FILE
    if not path.is_file():
        return np.full(session.n_neurons, "all", dtype=object)
    areas = np.load(path, allow_pickle=False).astype(str)
    if areas.shape != (session.n_neurons_total,):
        raise DataFormatError(
            path, f"expected one area per neuron ({session.n_neurons_total}), got {areas.shape}"
        )
    if session.neuron_index is not None:
        areas = areas[session.neuron_index]
    return np.where(np.char.strip(areas) == "", "unknown", areas).astype(object)


def per_presentation(session: NativeSession, targets: str) -> bool:
    """True when each trial is one presentation (Allen scenes and gratings)."""
    if targets != "auto":
        return targets == "presentations"
    return session.meta.get("responses_per") == "presentation"


def read_tier(session: NativeSession, tier: str, targets: str = "auto") -> TierData | None:
    """The clips of `tier` (None, with a warning, when its responses are hidden)."""
    trials = session.trial_ids(tier)
    if session.responses_hidden(tier):
        log.warning(
            "%s: tier %s has no ground truth (responses hidden): skipped", session.name, tier
        )
        return None
    groups: dict[str, tuple[list[int], np.ndarray, list[np.ndarray]]] = {}
    for trial in trials:
        data = session.load_trial(int(trial))
        length = session.trial_length(int(trial))
        key = video_hash(data[native.VIDEOS], length)
        resp = np.asarray(data[native.RESPONSES][:, :length], np.float32)
        if not np.isfinite(resp).all():
            raise DataFormatError(
                session.path / "data" / native.RESPONSES / f"{int(trial)}.npy",
                f"NaN responses within the {length} valid frames of a {tier} trial",
                native.RESPONSES,
            )
        if key not in groups:
            video = np.asarray(data[native.VIDEOS][..., :length], np.float32)
            groups[key] = ([], np.moveaxis(video, -1, 0), [])
        groups[key][0].append(int(trial))
        groups[key][2].append(resp)
    clips = [Clip(members, frames, np.stack(resp)) for members, frames, resp in groups.values()]
    return TierData(
        session.name,
        tier,
        np.asarray(session.unit_ids),
        _areas(session),
        clips,
        per_presentation(session, targets),
    )


def frame_table(tiers: Sequence[TierData]) -> FrameTable:
    """Collect the distinct frames of `tiers` (hash of each frame's float32 bytes) and set every
    clip's `frame_index` into them."""
    index: dict[bytes, int] = {}
    frames: list[np.ndarray] = []
    digest = hashlib.sha1()
    for data in tiers:
        for clip in data.clips:
            idx = np.empty(len(clip.frames), np.int64)
            for t, frame in enumerate(clip.frames):
                f = np.ascontiguousarray(frame, dtype=np.float32)
                h = hashlib.sha1(f.tobytes()).digest()
                if h not in index:
                    index[h] = len(frames)
                    frames.append(f)
                    digest.update(h)
                idx[t] = index[h]
            clip.frame_index = idx
    if not frames:
        raise ConfigError("no frames to embed (every tier was skipped)")
    stack = np.stack(frames)
    digest.update(str(stack.shape).encode())
    return FrameTable(stack, digest.hexdigest())


# ----------------------------------------------------------------------------------------------
# Design: features and targets per stimulus
# ----------------------------------------------------------------------------------------------


@dataclass
class Design:
    """Stimuli x features, with the responses of every repeat (NaN: that repeat is missing)."""

    features: np.ndarray  # (S, D) float32
    responses: np.ndarray  # (R, S, N) float32
    order: np.ndarray  # (S,) position of each stimulus in presentation order (for interleaving)


def design(data: TierData, embedding: np.ndarray, skip: int = 0, lags: int = 0) -> Design:
    """Features of every stimulus of `data` from the frame embeddings (F, D), and its responses.

    frames: stimulus (clip, t) for t >= max(skip, lags); features = the embeddings of frames t,
    t-1, ..., t-lags side by side. presentations: one stimulus per clip; features = the mean
    embedding of its distinct frames, responses = the mean over the trial's frames.
    """
    n_rep = max(len(c.trials) for c in data.clips)
    feats, resps = [], []
    for clip in data.clips:
        if data.presentations:
            distinct = np.unique(clip.frame_index)
            feats.append(embedding[distinct].mean(axis=0, keepdims=True))
            r = clip.responses.mean(axis=2)[:, None, :]  # (R, 1, N)
        else:
            start = max(skip, lags)
            t = np.arange(start, len(clip.frame_index))
            if t.size == 0:
                continue
            feats.append(
                np.concatenate(
                    [embedding[clip.frame_index[t - k]] for k in range(lags + 1)], axis=1
                )
            )
            r = clip.responses[:, :, start:].transpose(0, 2, 1)  # (R, S_c, N)
        pad = np.full((n_rep - r.shape[0], *r.shape[1:]), np.nan, np.float32)
        resps.append(np.concatenate([r, pad], axis=0))
    if not feats:
        raise ConfigError(
            f"{data.session} {data.tier}: no stimulus left after skipping {max(skip, lags)} "
            "frames of every clip"
        )
    x = np.concatenate(feats, axis=0).astype(np.float32)
    y = np.concatenate(resps, axis=1).astype(np.float32)
    return Design(x, y, np.arange(x.shape[0]))

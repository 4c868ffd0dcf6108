"""Movie repeats -> native trials, tiers by clip, statistics, and the session folder.

Both converters reduce a recording to `MovieRecording`s: one per natural movie, holding the movie
frames (already resized) and, for each repeat of the movie, the per-frame responses (N, F),
behaviour (2, F) and pupil centre (2, F), with a mask of the frames actually shown in that repeat.
Here each repeat is cut into clips of `clip_length` frames; each (repeat, clip) is one trial.
Clips named in `heldout_clips` ("natural_movie_one:0" = the first clip of natural_movie_one) are
held out: the first repeats of each go to the `oracle` tier, the last `test_fraction` of them to
`test_tier`; every other clip's repeats are `train`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurotwin.data import native
from neurotwin.errors import DataFormatError
from neurotwin.files import write_text

log = logging.getLogger(__name__)

# Frames of each Brain Observatory natural movie (30 Hz): natural_movie_one 30 s, two 30 s,
# three 120 s (allensdk stimulus templates; natural_movie_*_image_stack is (frames, 304, 608)).
MOVIE_FRAMES = {"natural_movie_one": 900, "natural_movie_two": 900, "natural_movie_three": 3600}
MOVIES = tuple(MOVIE_FRAMES)
DEFAULT_HELDOUT = ("natural_movie_one:0",)


@dataclass
class MovieRecording:
    """One natural movie of a session: frames (F, H, W) and, per repeat, per-frame data."""

    name: str
    frames: np.ndarray  # (F, H, W) float32
    responses: list[np.ndarray] = field(default_factory=list)  # per repeat (N, F)
    behavior: list[np.ndarray] = field(default_factory=list)  # per repeat (2, F)
    pupil_center: list[np.ndarray] = field(default_factory=list)  # per repeat (2, F)
    shown: list[np.ndarray] = field(default_factory=list)  # per repeat (F,) bool
    start_times: list[float] = field(default_factory=list)  # per repeat, seconds


def movie_recording(
    movie: str,
    frames: np.ndarray,
    frame: np.ndarray,
    responses: np.ndarray,
    pupil: np.ndarray,
    running: np.ndarray,
    center: np.ndarray,
    times: np.ndarray,
) -> MovieRecording:
    """Per-presentation values (one column per displayed frame, in display order) -> a
    MovieRecording with one (N, F) / (2, F) array per repeat, NaN responses where a movie frame
    was not shown. `frame` is the movie frame index of each presentation, `times` its start."""
    rec = MovieRecording(movie, frames)
    n_frames = frames.shape[0]
    for rows in split_repeats(frame):
        idx = frame[rows]
        r = np.full((responses.shape[0], n_frames), np.nan)
        b = np.zeros((2, n_frames))
        c = np.zeros((2, n_frames))
        shown = np.zeros(n_frames, bool)
        r[:, idx] = responses[:, rows]
        b[0, idx], b[1, idx] = pupil[rows], running[rows]
        c[:, idx] = center[:, rows]
        shown[idx] = True
        rec.responses.append(r)
        rec.behavior.append(b)
        rec.pupil_center.append(c)
        rec.shown.append(shown)
        rec.start_times.append(float(times[rows[0]]))
    return rec


def pick_movies(
    f, group: str, present: Sequence[str], wanted: Sequence[str] | None, expected: Sequence[str]
) -> list[str]:
    """The movies to convert: those `wanted` (each must be among `present`, the movies the file
    shows under `group`), else all present; DataFormatError naming `group` when there are none
    (`expected`: the tables looked for)."""
    path = Path(f.filename)
    if group not in f:
        raise DataFormatError(path, "missing group (stimulus presentations)", group)
    present = list(present)
    if wanted:
        missing = [m for m in wanted if m not in present]
        if missing:
            raise DataFormatError(
                path, f"movie(s) {missing} not presented (found {present})", group
            )
        present = [m for m in present if m in wanted]
    if not present:
        raise DataFormatError(
            path,
            f"no natural movie stimulus: expected one of {list(expected)} (found "
            f"{sorted(f[group].keys())})",
            group,
        )
    return present


def parse_clip_specs(specs: Sequence[str], source: str = "heldout_clips") -> set[tuple[str, int]]:
    """["natural_movie_one:0", ...] -> {("natural_movie_one", 0), ...}."""
    out = set()
    for spec in specs:
        name, sep, index = str(spec).rpartition(":")
        if not sep or not name or not index.strip().lstrip("-").isdigit():
            raise DataFormatError(source, f"expected MOVIE:CLIP_INDEX, got {spec!r}")
        out.add((name.strip(), int(index)))
    return out


def split_repeats(frame_index: np.ndarray) -> list[np.ndarray]:
    """Rows (in display order) -> one index array per repeat: a repeat ends where the movie
    frame index stops increasing (the movie restarts)."""
    frame_index = np.asarray(frame_index).reshape(-1)
    if frame_index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(frame_index) <= 0) + 1
    return [np.asarray(r) for r in np.split(np.arange(frame_index.size), breaks)]


def build_session(
    movies: Sequence[MovieRecording],
    unit_ids: np.ndarray,
    coordinates: np.ndarray,
    clip_length: int = 300,
    heldout_clips: Sequence[str] = DEFAULT_HELDOUT,
    test_fraction: float = 0.5,
    test_tier: str = "final_test_main",
    extra_meta: Mapping[str, np.ndarray] | None = None,
    source: str | Path = "allen",
) -> native.SessionArrays:
    """Cut each movie repeat into clips (trials), assign tiers, compute training statistics."""
    if clip_length < 1:
        raise DataFormatError(source, f"clip_length must be >= 1, got {clip_length}")
    if not 0.0 <= test_fraction <= 1.0:
        raise DataFormatError(source, f"test_fraction must be in [0, 1], got {test_fraction}")
    if test_tier not in native.TIERS:
        raise DataFormatError(source, f"test_tier must be one of {native.TIERS}, got {test_tier}")
    heldout = parse_clip_specs(heldout_clips)
    known = {m.name for m in movies}
    for name, clip in sorted(heldout):
        if name not in known:
            log.warning(
                "held-out clip %s:%d: movie not in this session (has %s)", name, clip, sorted(known)
            )
    trials: dict[int, dict[str, np.ndarray]] = {}
    tiers: list[str] = []
    info: dict[str, list] = {
        "movie": [],
        "clip": [],
        "repeat": [],
        "start_frame": [],
        "start_time": [],
    }
    dropped = 0
    for movie in movies:
        n_frames = movie.frames.shape[0]
        n_clips = math.ceil(n_frames / clip_length)
        n_rep = len(movie.responses)
        for clip in range(n_clips):
            a, b = clip * clip_length, min((clip + 1) * clip_length, n_frames)
            is_heldout = (movie.name, clip) in heldout
            n_test = int(round(test_fraction * n_rep)) if is_heldout else 0
            for rep in range(n_rep):
                if not (
                    movie.shown[rep][a:b].all() and np.isfinite(movie.responses[rep][:, a:b]).all()
                ):
                    dropped += 1
                    continue
                trial = len(tiers)
                trials[trial] = _trial_arrays(movie, rep, a, b, clip_length)
                if not is_heldout:
                    tiers.append(native.TRAIN_TIER)
                else:
                    tiers.append(test_tier if rep >= n_rep - n_test else native.ORACLE_TIER)
                info["movie"].append(movie.name)
                info["clip"].append(clip)
                info["repeat"].append(rep)
                info["start_frame"].append(a)
                info["start_time"].append(movie.start_times[rep] if movie.start_times else np.nan)
    if dropped:
        log.warning(
            "%s: %d trial(s) dropped: movie frames missing from the stimulus table "
            "or NaN responses",
            source,
            dropped,
        )
    if not trials:
        raise DataFormatError(source, "no complete movie repeat: nothing to write")
    tiers_arr = np.asarray(tiers)
    train = [trials[i] for i in range(len(tiers)) if tiers[i] == native.TRAIN_TIER]
    if not train:
        log.warning(
            "%s: no training trial (every clip held out); statistics from all trials", source
        )
        train = list(trials.values())
    statistics = native.training_statistics(train)
    meta = {
        "trials/movie.npy": np.asarray(info["movie"], dtype=str),
        "trials/clip.npy": np.asarray(info["clip"], dtype=np.int64),
        "trials/repeat.npy": np.asarray(info["repeat"], dtype=np.int64),
        "trials/start_frame.npy": np.asarray(info["start_frame"], dtype=np.int64),
        "trials/start_time.npy": np.asarray(info["start_time"], dtype=np.float64),
    }
    meta.update(extra_meta or {})
    return native.SessionArrays(
        tiers=tiers_arr,
        unit_ids=np.asarray(unit_ids, dtype=np.int64),
        coordinates=np.asarray(coordinates, dtype=np.float32),
        trials=trials,
        statistics=statistics,
        extra_meta=meta,
    )


def _trial_arrays(movie: MovieRecording, rep: int, a: int, b: int, length: int) -> dict:
    n = b - a
    H, W = movie.frames.shape[1:]
    video = np.full((H, W, length), np.nan, dtype=np.float32)
    video[:, :, :n] = np.moveaxis(movie.frames[a:b], 0, -1)

    def pad(x: np.ndarray) -> np.ndarray:
        out = np.full((x.shape[0], length), np.nan, dtype=np.float32)
        out[:, :n] = x[:, a:b]
        return out

    return {
        native.VIDEOS: video,
        native.RESPONSES: pad(movie.responses[rep]),
        native.BEHAVIOR: pad(movie.behavior[rep]),
        native.PUPIL_CENTER: pad(movie.pupil_center[rep]),
    }


def split_meta(
    movies: Sequence[MovieRecording],
    frame_size: Sequence[int],
    clip_length: int,
    heldout_clips: Sequence[str],
    test_fraction: float,
    test_tier: str,
) -> dict:
    """The entries of meta/neurotwin.json that say how `build_session` cut the movies into
    trials and tiers (the same for every Allen converter; stimulus movies play at 30 Hz)."""
    return {
        "movies": [m.name for m in movies],
        "frame_size": list(frame_size),
        "clip_length": clip_length,
        "heldout_clips": list(heldout_clips),
        "test_fraction": test_fraction,
        "test_tier": test_tier,
        "frame_rate_hz": 30.0,
    }


def write(folder: Path, session: native.SessionArrays, meta: dict, overwrite: bool) -> Path:
    """Write the session folder, then meta/neurotwin.json (temp name, then rename)."""
    folder = native.write_session(folder, session, overwrite=overwrite)
    write_text(
        folder / native.SESSION_META_FILE, json.dumps(_jsonable(meta), indent=2, sort_keys=True)
    )
    return folder


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

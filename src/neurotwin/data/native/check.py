"""The start-up check of the sessions a run reads: bad data found before training starts.

Two levels (`--check_data`):

- ``headers``: the session opens (tiers, unit ids, coordinates, the first video); the tiers
  the run reads are present; every trial has all four trial files; each file's .npy header
  reads, holds a float array of the expected shape (videos (H, W, T) of the session's frame
  size, responses (N, T), behavior and pupil_center (2, T)) and the file is as long as its
  header says; the four files of a trial have one T.
- ``full``: also no NaN within the valid frames (before the video's first NaN frame) of the
  training tier's videos, responses, behaviour and pupil centre: one vectorised pass over
  those trials, in threads.

What was checked is remembered per file by size and modification time in
``meta/checked_neurotwin.json``: a second run re-reads only files that changed, so it takes
seconds. A data folder that cannot be written is checked in full every time (with a warning).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neurotwin.data.native import layout
from neurotwin.data.native.npy import check_length, read_header, why_unreadable
from neurotwin.data.native.reader import NativeSession, find_sessions
from neurotwin.errors import DataFormatError
from neurotwin.files import write_text

log = logging.getLogger(__name__)

MODES = ("full", "headers", "off")
CACHE_VERSION = 1
_LEVEL = {"headers": 1, "full": 2}


@dataclass
class CheckReport:
    """What the check read: sessions, trial files, how many were already known good."""

    mode: str
    sessions: list[str] = field(default_factory=list)
    files: int = 0
    unchanged: int = 0
    scanned_trials: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.mode == "off":
            return "data check: off (files are checked as they are first read)"
        what = "headers" if self.mode == "headers" else "headers and NaN in training trials"
        return (
            f"data check ({what}): {len(self.sessions)} session(s), {self.files} trial files "
            f"({self.unchanged} unchanged since the last check, {self.scanned_trials} training "
            f"trials read) in {self.seconds:.1f} s"
        )


def check_sessions(
    data_dir: str | Path,
    mouse_ids: Sequence[str] | None = None,
    tiers: Sequence[str] = (layout.TRAIN_TIER,),
    train_tier: str = layout.TRAIN_TIER,
    mode: str = "full",
    workers: int | None = None,
) -> CheckReport:
    """Check every session a run reads (see the module docstring); DataFormatError naming the
    file and field of the first problem found."""
    if mode not in MODES:
        raise ValueError(f"check mode {mode!r} not in {MODES}")
    report = CheckReport(mode)
    if mode == "off":
        return report
    start = time.perf_counter()
    for path in find_sessions(data_dir, mouse_ids):
        session = NativeSession(path)
        for tier in dict.fromkeys(tiers):
            session.trial_ids(tier)  # an error naming the tiers present if it has none
        SessionCheck(session, train_tier, mode, workers).run(report)
        report.sessions.append(session.name)
    report.seconds = time.perf_counter() - start
    return report


class SessionCheck:
    """The check of one session, with its cache of files already found good."""

    def __init__(self, session: NativeSession, train_tier: str, mode: str, workers: int | None):
        self.session = session
        self.train_tier = train_tier
        self.level = _LEVEL[mode]
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.cache_path = session.path / layout.CHECK_CACHE_FILE
        self.key = {
            "version": CACHE_VERSION,
            "n_trials": session.n_trials,
            "n_neurons": session.n_neurons_total,
            "frame_shape": list(session.frame_shape),
            "train_tier": train_tier,
            "tiers": _stat(session.path / layout.TIERS_FILE),
        }

    def run(self, report: CheckReport) -> None:
        known = self._read_cache()
        names = layout.TRIAL_ARRAYS + ((layout.OPTO,) if self.session.opto_channels else ())
        listed = {name: _listing(self.session.path / "data" / name) for name in names}
        entries: dict[str, list[Any]] = {}
        frames: dict[int, int] = {}
        for trial in range(self.session.n_trials):
            for name in names:
                rel = f"{name}/{trial}.npy"
                stat = listed[name].get(f"{trial}.npy")
                if stat is None:
                    raise DataFormatError(
                        self.session.path / "data" / rel,
                        f"file not found (trial {trial} is in {layout.TIERS_FILE} and has a "
                        "video; every trial needs all four trial files, and its opto file "
                        "where data/opto/ exists)",
                        name,
                    )
                old = known.get(rel)
                if old is not None and old[:2] == stat:
                    entry = old
                    report.unchanged += 1
                else:
                    entry = [*stat, self._header_frames(name, trial), 0]
                entries[rel] = entry
                report.files += 1
                t = frames.setdefault(trial, entry[2])
                if entry[2] != t:
                    raise DataFormatError(
                        self.session.path / "data" / rel,
                        f"{entry[2]} frames, but the trial's video has {t}",
                        name,
                    )
        if self.level >= _LEVEL["full"]:
            self._scan_training_trials(entries, report)
        self._write_cache(entries)

    # -- headers -----------------------------------------------------------------------------
    def _header_frames(self, name: str, trial: int) -> int:
        """Read and check one trial file's header; returns its number of frames T."""
        path = self.session.path / "data" / name / f"{trial}.npy"
        h = read_header(path, name)
        if h.dtype.kind != "f":
            raise DataFormatError(path, f"expected a float array, got dtype {h.dtype}", name)
        n, (height, width) = self.session.n_neurons_total, self.session.frame_shape
        expected = {
            layout.VIDEOS: ((height, width), "(H, W, T) with the frame size of trial 0's video"),
            layout.RESPONSES: ((n,), f"(N, T) with N = {n} neurons (meta/neurons/unit_ids.npy)"),
            layout.BEHAVIOR: ((2,), "(2, T): pupil dilation, running speed"),
            layout.PUPIL_CENTER: ((2,), "(2, T): gaze x, y"),
            layout.OPTO: ((self.session.opto_channels,), "(K, T) with trial 0's K channels"),
        }[name]
        lead, meaning = expected
        if name == layout.OPTO and len(h.shape) == 1 and lead == (1,):
            lead = ()  # a (T,) opto file is one channel
        if len(h.shape) != len(lead) + 1 or h.shape[:-1] != lead:
            shape = (*lead, "T")
            raise DataFormatError(path, f"expected shape {shape} {meaning}, got {h.shape}", name)
        check_length(path, h, name)
        return int(h.shape[-1])

    # -- the NaN pass --------------------------------------------------------------------------
    def _scan_training_trials(self, entries: dict[str, list[Any]], report: CheckReport) -> None:
        tiers = self.session.tiers
        todo = [
            trial
            for trial in np.flatnonzero(tiers == self.train_tier).tolist()
            if any(entries[f"{n}/{trial}.npy"][3] < _LEVEL["full"] for n in layout.TRIAL_ARRAYS)
        ]
        if not todo:
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for problem in pool.map(self._nan_in_trial, todo):
                if problem is not None:
                    raise problem
        for trial in todo:
            for name in layout.TRIAL_ARRAYS:
                entries[f"{name}/{trial}.npy"][3] = _LEVEL["full"]
        report.scanned_trials += len(todo)

    def _nan_in_trial(self, trial: int) -> DataFormatError | None:
        """The first NaN within the valid frames of a training trial, as an error (or None)."""
        folder = self.session.path / "data"
        video_path = folder / layout.VIDEOS / f"{trial}.npy"
        video = _read(video_path, layout.VIDEOS)
        if isinstance(video, DataFormatError):
            return video
        valid = ~np.isnan(video[0, 0, :])
        length = int(np.argmin(valid)) if not valid.all() else int(valid.size)
        if length == 0:
            return DataFormatError(video_path, "the first frame is NaN: the trial has no frames", layout.VIDEOS)  # fmt: skip
        for name in layout.TRIAL_ARRAYS:
            path = folder / name / f"{trial}.npy"
            a = video if name == layout.VIDEOS else _read(path, name)
            if isinstance(a, DataFormatError):
                return a
            bad = np.isnan(a[..., :length])
            if bad.any():
                where = np.argwhere(bad)[0].tolist()
                frame, channel = where[-1], where[:-1]
                what = {layout.VIDEOS: "pixel", layout.RESPONSES: "neuron"}.get(name, "row")
                return DataFormatError(
                    path,
                    f"NaN at frame {frame} ({what} {', '.join(map(str, channel))}) within the "
                    f"{length} valid frames of training trial {trial} (a trial ends where its "
                    "video turns NaN; before that every value must be a number)",
                    name,
                )
        return None

    # -- the cache -----------------------------------------------------------------------------
    def _read_cache(self) -> dict[str, list[Any]]:
        try:
            cached = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(cached, dict) or cached.get("key") != self.key:
            return {}
        files = cached.get("files")
        return files if isinstance(files, dict) else {}

    def _write_cache(self, entries: dict[str, list[Any]]) -> None:
        text = json.dumps({"key": self.key, "files": entries}, separators=(",", ":"))
        try:
            write_text(self.cache_path, text)
        except OSError as e:  # read-only data: checked again next time
            log.warning("could not remember the data check in %s (%s)", self.cache_path, e)


def _stat(path: Path) -> list[int]:
    s = path.stat()
    return [int(s.st_size), int(s.st_mtime_ns)]


def _listing(folder: Path) -> dict[str, list[int]]:
    """{file name: [size, mtime_ns]} of the .npy files in a trial-array folder."""
    if not folder.is_dir():
        raise DataFormatError(folder, "folder not found")
    out = {}
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.endswith(".npy") and not e.name.startswith("."):
                s = e.stat()
                out[e.name] = [int(s.st_size), int(s.st_mtime_ns)]
    return out


def _read(path: Path, field: str) -> np.ndarray | DataFormatError:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        try:
            return why_unreadable(path, field, e)
        except DataFormatError as damaged:
            return damaged

"""The native on-disk layout (Sensorium 2023 session folders): names, tiers, and a writer.

Every data source (real Sensorium downloads, synthetic mice, converted Allen recordings) ends up
as one folder per session in this layout, so that one reader (`neurotwin.data.sensorium`) serves all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Trial-wise arrays under data/{name}/{trial}.npy and their per-trial shapes.
VIDEOS = "videos"  # (H, W, T); frames past the trial's end are NaN
RESPONSES = "responses"  # (N, T)
BEHAVIOR = "behavior"  # (2, T): pupil dilation, running speed
PUPIL_CENTER = "pupil_center"  # (2, T): gaze x, y
TRIAL_ARRAYS = (VIDEOS, RESPONSES, BEHAVIOR, PUPIL_CENTER)

TIERS_FILE = "meta/trials/tiers.npy"
UNIT_IDS_FILE = "meta/neurons/unit_ids.npy"
COORDINATES_FILE = "meta/neurons/cell_motor_coordinates.npy"  # (N, 3) microns; int64 as published
STATISTICS_DIR = "meta/statistics"  # {array}/all/{stat}.npy, as shipped (see sensorium.py)
STATISTIC_NAMES = ("mean", "std", "min", "max", "median")

TRAIN_TIER = "train"
ORACLE_TIER = "oracle"
TEST_TIERS = ("live_test_main", "live_test_bonus", "final_test_main", "final_test_bonus")
TIERS = (TRAIN_TIER, ORACLE_TIER, *TEST_TIERS, "none")

# Extra files neurotwin writes beside the published ones (never required by the reader).
SESSION_META_FILE = "meta/neurotwin.json"  # source, units, flags of converted/synthetic sessions
NOISELESS = "noiseless_responses"  # synthetic only: data/noiseless_responses/{trial}.npy, (N, T)


@dataclass
class SessionArrays:
    """Everything one session folder holds, in memory, ready to be written.

    `trials` maps a trial index to its four arrays (videos (H,W,T), responses (N,T),
    behavior (2,T), pupil_center (2,T)). `statistics[array][stat]` are the shipped statistics.
    `extra_meta` holds additional `meta/...` arrays by relative path (e.g. "neurons/area.npy").
    """

    tiers: np.ndarray
    unit_ids: np.ndarray
    coordinates: np.ndarray
    trials: Mapping[int, Mapping[str, np.ndarray]]
    statistics: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    extra_meta: Mapping[str, np.ndarray] = field(default_factory=dict)
    extra_data: Mapping[str, Mapping[int, np.ndarray]] = field(default_factory=dict)


def trial_statistics(arrays: Iterable[np.ndarray], axis_keep: int | None) -> dict[str, np.ndarray]:
    """mean/std/min/max/median over trials and frames, keeping `axis_keep` (None: one scalar).

    Each array is (..., T); NaN frames (padding past a trial's end) are ignored.
    """
    stacked = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        if axis_keep is None:
            stacked.append(a.reshape(-1))
        else:
            stacked.append(np.moveaxis(a, axis_keep, 0).reshape(a.shape[axis_keep], -1))
    joined = np.concatenate(stacked, axis=-1)
    funcs = {
        "mean": np.nanmean,
        "std": np.nanstd,
        "min": np.nanmin,
        "max": np.nanmax,
        "median": np.nanmedian,
    }
    return {k: np.asarray(f(joined, axis=-1), dtype=np.float32) for k, f in funcs.items()}


def write_session(folder: str | Path, session: SessionArrays, overwrite: bool = False) -> Path:
    """Write `session` as a native session folder, atomically (temp folder, then rename)."""
    folder = Path(folder)
    if folder.exists():
        if not overwrite:
            raise FileExistsError(f"{folder} already exists")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name in TRIAL_ARRAYS:
            (tmp / "data" / name).mkdir(parents=True)
        for trial, arrays in session.trials.items():
            for name in TRIAL_ARRAYS:
                np.save(tmp / "data" / name / f"{int(trial)}.npy", arrays[name])
        for name, by_trial in session.extra_data.items():
            (tmp / "data" / name).mkdir(parents=True, exist_ok=True)
            for trial, array in by_trial.items():
                np.save(tmp / "data" / name / f"{int(trial)}.npy", array)
        _save(tmp / TIERS_FILE, np.asarray(session.tiers))
        _save(tmp / UNIT_IDS_FILE, np.asarray(session.unit_ids))
        _save(tmp / COORDINATES_FILE, np.asarray(session.coordinates))
        for array_name, stats in session.statistics.items():
            for stat, value in stats.items():
                _save(tmp / STATISTICS_DIR / array_name / "all" / f"{stat}.npy", np.asarray(value))
        for rel, value in session.extra_meta.items():
            _save(tmp / "meta" / rel, np.asarray(value))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)

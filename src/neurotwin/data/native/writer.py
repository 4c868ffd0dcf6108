"""Writer of the native layout: a session held in memory -> a session folder, atomically."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurotwin.data.native.layout import (
    COORDINATES_FILE,
    STATISTICS_DIR,
    TIERS_FILE,
    TRIAL_ARRAYS,
    UNIT_IDS_FILE,
)
from neurotwin.files import staged_folder


@dataclass
class SessionArrays:
    """Everything one session folder holds, in memory, ready to be written.

    `trials` maps a trial index to its four arrays (videos (H,W,T), responses (N,T),
    behavior (2,T), pupil_center (2,T)). `statistics[array][stat]` are the shipped statistics.
    `extra_meta` holds additional `meta/...` arrays by relative path (e.g. "neurons/area.npy");
    `extra_data` additional trial-wise arrays by name (data/{name}/{trial}.npy).
    """

    tiers: np.ndarray
    unit_ids: np.ndarray
    coordinates: np.ndarray
    trials: Mapping[int, Mapping[str, np.ndarray]]
    statistics: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    extra_meta: Mapping[str, np.ndarray] = field(default_factory=dict)
    extra_data: Mapping[str, Mapping[int, np.ndarray]] = field(default_factory=dict)


def write_session(folder: str | Path, session: SessionArrays, overwrite: bool = False) -> Path:
    """Write `session` as a native session folder: built under a temporary name, then renamed
    into place (replacing an older `folder` only with `overwrite`)."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists")
    with staged_folder(folder) as tmp:
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
    return folder


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)

"""Which visual area each neuron is in and which stimulus each trial showed, from a session's meta.

The metrics are broken down by these labels where a session has them:

- areas: `meta/neurons/area.npy` (one string per neuron), as the Allen converters write it
  (2-photon: the targeted structure; Neuropixels: each unit's structure acronym).
- stimuli: the first of `meta/trials/stimulus.npy` (Allen presentations: natural_scenes,
  static_gratings, ...) and `meta/trials/movie.npy` (Allen movies: natural_movie_one, ...) that
  exists, one string per trial file.

The published Sensorium 2023 folders carry neither, so their metrics have no breakdown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurotwin.data import native
from neurotwin.errors import DataFormatError

AREA_FILE = "meta/neurons/area.npy"
STIMULUS_FILES = ("meta/trials/stimulus.npy", "meta/trials/movie.npy")


def _labels(path: Path, expected: int, what: str) -> np.ndarray:
    labels = np.load(path, allow_pickle=False)
    if labels.dtype.kind == "S":
        labels = labels.astype(str)
    if labels.dtype.kind != "U" or labels.shape != (expected,):
        raise DataFormatError(
            path,
            f"expected {expected} strings (one per {what}), got dtype {labels.dtype} "
            f"shape {labels.shape}",
            path.stem,
        )
    return labels


def neuron_areas(session: native.NativeSession) -> np.ndarray | None:
    """The area of each of the session's neurons (`limit_neurons` applied), or None."""
    path = session.path / AREA_FILE
    if not path.is_file():
        return None
    areas = _labels(path, session.n_neurons_total, "neuron")
    return areas if session.neuron_index is None else areas[session.neuron_index]


def trial_stimuli(session: native.NativeSession, trial_ids: np.ndarray) -> np.ndarray | None:
    """The stimulus of each trial in `trial_ids`, or None."""
    for rel in STIMULUS_FILES:
        path = session.path / rel
        if path.is_file():
            return _labels(path, session.n_trials, "trial")[np.asarray(trial_ids, dtype=np.int64)]
    return None


def groups(labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """{label: boolean mask} in sorted label order ({} without labels)."""
    if labels is None:
        return {}
    return {str(label): labels == label for label in sorted(set(labels.tolist()))}

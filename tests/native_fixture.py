"""Small session folders in the exact native (Sensorium 2023) layout, for tests.

    from native_fixture import write_native_session, write_native_dataset

`write_native_session(folder, ...)` writes one session folder (atomically, through
`neurotwin.data.native.write_session`) and returns its path; `write_native_dataset(root, k)`
writes k sessions with published-style folder names. Arrays follow the published layout:
videos (H, W, T), responses (N, T), behavior (2, T), pupil_center (2, T), all float, NaN past a
trial's end; tiers shuffled over trial indices as in the real data; test tiers with hidden
responses (all zeros or all NaN); shipped statistics in meta/statistics/{array}/all/.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neurotwin.data import native

DEFAULT_TIERS = ("train",) * 6 + ("oracle",) * 2 + ("live_test_main", "final_test_main")


def published_name(i: int) -> str:
    """A folder name in the published style: dynamic<mouse>-<session>-<scan>-Video-<hash>."""
    return f"dynamic{29001 + i}-{i + 1}-{i + 2}-Video-{'%032x' % (0xABC + i)}"


def write_native_session(
    folder: str | Path,
    n_neurons: int = 7,
    tiers: Sequence[str] = DEFAULT_TIERS,
    trial_lengths: int | Sequence[int] | None = None,
    n_frames: int = 24,
    frame_shape: tuple[int, int] = (6, 8),
    seed: int = 0,
    hidden_tiers: Sequence[str] = native.TEST_TIERS,
    hidden: str = "zeros",
    shuffle_tiers: bool = True,
    shipped_statistics: bool | str = True,
    noiseless: bool = False,
    dtype: type = np.float32,
    meta: dict | None = None,
    overwrite: bool = False,
    return_arrays: bool = False,
) -> Path | tuple[Path, native.SessionArrays]:
    """Write a session folder with chosen sizes; returns its path.

    `trial_lengths`: valid frames per trial (int for all, a sequence per trial in file order;
    None: every third trial is NaN-padded to 3/4 of `n_frames`). `hidden`: "zeros" or "nan", the
    way responses of `hidden_tiers` are withheld. `meta` is written to meta/neurotwin.json.
    `shipped_statistics`: True writes meta/statistics over the training trials and frames;
    "per_frame" over trials only, keeping the frame axis (as the published statistics were made);
    False writes none. `return_arrays`: also return the `native.SessionArrays` written.
    """
    rng = np.random.default_rng(seed)
    tiers = np.array(list(tiers))
    if shuffle_tiers:
        tiers = tiers[rng.permutation(len(tiers))]
    n_trials = len(tiers)
    if trial_lengths is None:
        lengths = [n_frames if i % 3 else max(1, 3 * n_frames // 4) for i in range(n_trials)]
    elif isinstance(trial_lengths, int):
        lengths = [trial_lengths] * n_trials
    else:
        lengths = [int(x) for x in trial_lengths]
        assert len(lengths) == n_trials, "one trial length per trial"
    h, w = frame_shape
    trials, rates = {}, {}
    for i in range(n_trials):
        t = lengths[i]
        video = rng.uniform(0, 255, size=(h, w, n_frames))
        behavior = np.stack(
            [rng.normal(50, 10, n_frames), np.abs(rng.normal(0, 5, n_frames))]
        )  # pupil dilation, running speed
        pupil = rng.normal(120, 5, size=(2, n_frames))
        rate = rng.gamma(2.0, 0.5, size=(n_neurons, 1)) * (1 + rng.uniform(0, 1, (1, n_frames)))
        response = rng.poisson(rate).astype(np.float64) * rng.uniform(0.5, 1.5, rate.shape)
        for a in (video, behavior, pupil, response, rate):
            a[..., t:] = np.nan
        if tiers[i] in hidden_tiers:
            response = (
                np.zeros_like(response) if hidden == "zeros" else np.full_like(response, np.nan)
            )
        trials[i] = {
            native.VIDEOS: video.astype(dtype),
            native.RESPONSES: response.astype(dtype),
            native.BEHAVIOR: behavior.astype(dtype),
            native.PUPIL_CENTER: pupil.astype(dtype),
        }
        rates[i] = rate.astype(dtype)
    statistics = {}
    train = [i for i in range(n_trials) if tiers[i] == native.TRAIN_TIER]
    if shipped_statistics == "per_frame":
        for name in native.TRIAL_ARRAYS:
            stack = np.stack([trials[i][name] for i in train]).astype(np.float64)
            statistics[name] = {
                stat: getattr(np, f"nan{stat}")(stack, axis=0).astype(np.float32)
                for stat in native.STATISTIC_NAMES
            }
    elif shipped_statistics:
        for name, keep in zip(native.TRIAL_ARRAYS, (None, 0, 0, 0)):
            statistics[name] = native.trial_statistics([trials[i][name] for i in train], keep)
    extra_meta = {}
    session = native.SessionArrays(
        tiers=tiers,
        unit_ids=np.arange(1, n_neurons + 1, dtype=np.int64) * 3,
        coordinates=rng.integers(-1000, 1000, size=(n_neurons, 3)).astype(np.int64),
        trials=trials,
        statistics=statistics,
        extra_meta=extra_meta,
        extra_data={native.NOISELESS: rates} if noiseless else {},
    )
    path = native.write_session(folder, session, overwrite=overwrite)
    if meta is not None:
        import json

        (path / native.SESSION_META_FILE).write_text(json.dumps(meta))
    return (path, session) if return_arrays else path


def write_native_dataset(root: str | Path, n_sessions: int = 3, **kwargs) -> list[Path]:
    """`n_sessions` sessions under `root` with published-style names (different neuron counts)."""
    root = Path(root)
    out = []
    for i in range(n_sessions):
        kw = {"n_neurons": 5 + 2 * i, "seed": 100 + i, **kwargs}
        out.append(write_native_session(root / published_name(i), **kw))
    return out

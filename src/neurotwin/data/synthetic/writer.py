"""Writing synthetic sessions: folder names, the session folders (atomically), their
neurotwin.json, and `ensure_synthetic` (the built-in default dataset)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurotwin.data import native
from neurotwin.data.synthetic.load import RF_TRUTH_DIR
from neurotwin.data.synthetic.mouse import (
    Clip,
    LazyNoiseless,
    LazyStatistics,
    LazyTrials,
    Mouse,
    clip_length,
)
from neurotwin.data.synthetic.params import (
    ADDED_PARAMS,
    FRAME_RATE,
    GENERATOR_VERSION,
    HIDDEN_TIERS,
    RECORDING_ORDER_FILE,
    S_SHARED_CLIP,
    VIDEO_IDS_FILE,
    ModelParams,
    SyntheticSizes,
    resolve,
)
from neurotwin.data.synthetic.population import threads_for
from neurotwin.data.synthetic.receptive_fields import CELL_TYPES, RF_TRUTH_COLUMNS, rf_truth
from neurotwin.data.synthetic.statistics import skip_rule
from neurotwin.errors import ConfigError, NeurotwinError
from neurotwin.files import staged_folder, temporary_name, write_text

logger = logging.getLogger("neurotwin.data.synthetic")


def _hashed_params(params: ModelParams) -> dict[str, Any]:
    """The parameters a session name hashes: options added later only where not default."""
    values = dataclasses.asdict(params)
    default = dataclasses.asdict(ModelParams())
    return {k: v for k, v in values.items() if k not in ADDED_PARAMS or v != default[k]}


def _extra_meta(mouse: Mouse) -> dict[str, np.ndarray]:
    """meta/ files beyond the published ones: clip ids, receptive-field truth, recording order."""
    extra = {VIDEO_IDS_FILE: mouse.video_ids()}
    for column, values in rf_truth(mouse.pop, mouse.sizes).items():
        extra[f"{RF_TRUTH_DIR}/{column}.npy"] = values
    if mouse.drift is not None:
        extra[RECORDING_ORDER_FILE] = mouse.drift.order.astype(np.int64)
    return extra


def session_names(mice: int, seed: int, sizes: SyntheticSizes, params: ModelParams) -> list[str]:
    """Folder names in the published pattern: dynamic{animal}-{session}-{scan}-Video-{hash}."""
    blob = json.dumps(
        [GENERATOR_VERSION, seed, dataclasses.asdict(sizes), _hashed_params(params)],
        sort_keys=True,
    )
    digest = hashlib.md5(blob.encode()).hexdigest()
    return [f"dynamic{90001 + k}-1-{seed % 100 + 1}-Video-{digest}" for k in range(mice)]


def generate(
    out_dir: str | Path,
    mice: int = 3,
    preset: str = "small",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    variants: Sequence[str] = (),
    **sizes: Any,
) -> list[Path]:
    """Write `mice` synthetic sessions under `out_dir`; returns their folders.

    `sizes`: fields of `SyntheticSizes` (height, width, frames, neurons, train_trials,
    oracle_clips, oracle_repeats, test_clips, test_repeats, short_fraction) or of `ModelParams`
    (e.g. mean_rate), overriding the preset and `variants` (names in VARIANTS: harder options
    that real data has, applied in order before the overrides). None values are ignored. Each session appears
    atomically (written aside, then renamed); an existing session folder is an error unless
    `overwrite`.
    """
    if not isinstance(mice, (int, np.integer)) or mice < 1:
        raise ConfigError(f"synthetic mice={mice!r}: expected an integer >= 1")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"synthetic seed={seed!r}: expected an integer >= 0")
    size_cfg, params = resolve(preset, sizes, tuple(variants))
    out = Path(out_dir)
    names = session_names(mice, seed, size_cfg, params)
    if not overwrite:
        for name in names:
            if (out / name).exists():
                raise NeurotwinError(
                    f"{out / name}: session folder already exists (pass overwrite=True / "
                    "--overwrite to replace it)"
                )
    if skip_rule([size_cfg.frames]) == 0:
        logger.warning(
            "synthetic trials have %d frames: too short for Sensorium's rule of leaving out the "
            "first frames of each trial, so the metrics score every frame (metrics.frames_to_skip)",
            size_cfg.frames,
        )
    out.mkdir(parents=True, exist_ok=True)
    shared = shared_clips(seed, size_cfg)
    folders = []
    with threads_for(size_cfg):
        for k, name in enumerate(names):
            mouse = Mouse(seed, k, size_cfg, params, shared, progress)
            try:
                folders.append(_write_mouse(out, name, mouse, preset, mice, tuple(variants)))
            finally:
                mouse.bar.close()
    return folders


def shared_clips(seed: int, s: SyntheticSizes) -> list[tuple[str, Clip, int]]:
    """(tier, clip, repeats) of the oracle and test clips, the same for every mouse."""
    shared = []
    tiers = [(native.ORACLE_TIER, s.oracle_clips, s.oracle_repeats)]
    tiers += [("live_test_main", s.test_clips, s.test_repeats)]
    tiers += [("final_test_main", s.test_clips, s.test_repeats)]
    for tier, n_clips, repeats in tiers:
        for _ in range(n_clips):
            key = (seed, S_SHARED_CLIP, len(shared))
            shared.append((tier, Clip(key, len(shared), clip_length(key, s)), repeats))
    return shared


def _write_mouse(
    out: Path, name: str, mouse: Mouse, preset: str, mice: int, variants: tuple[str, ...]
) -> Path:
    session = native.SessionArrays(
        tiers=mouse.tiers,
        unit_ids=mouse.unit_ids,
        coordinates=mouse.pop.coordinates,
        trials=LazyTrials(mouse),
        statistics=LazyStatistics(mouse),
        extra_meta=_extra_meta(mouse),
        extra_data={native.NOISELESS: LazyNoiseless(mouse)},
    )
    mouse.spill_dir = temporary_name(out / f"{name}.noiseless")
    try:
        # the session appears complete, neurotwin.json included, in one rename (or not at all)
        with staged_folder(out / name) as staging:
            native.write_session(staging, session, overwrite=True)
            meta = _session_meta(mouse, preset, mice, variants)
            write_text(
                staging / native.SESSION_META_FILE,
                json.dumps(meta, indent=2, sort_keys=True) + "\n",
            )
    finally:
        shutil.rmtree(mouse.spill_dir, ignore_errors=True)
    return out / name


def _session_meta(
    mouse: Mouse, preset: str, mice: int, variants: tuple[str, ...]
) -> dict[str, Any]:
    s, p, pop = mouse.sizes, mouse.p, mouse.pop
    tiers, counts = np.unique(mouse.tiers, return_counts=True)
    lengths = np.array([c.length for c in mouse.clips])
    ceilings = {}
    for tier, ceiling in sorted(mouse.ceilings.items()):
        c = ceiling.result()
        ceilings[tier] = {
            "mean": float(c.mean()),
            "median": float(np.median(c)),
            "skip_frames": ceiling.skip,
        }
    median_exact = all(a.median_exact for a in mouse.stats.values())
    return {
        "source": "synthetic",
        "generator": "neurotwin.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": mouse.seed,
        "mouse_index": mouse.index,
        "mice": mice,
        "preset": preset,
        "variants": list(variants),
        "sizes": dataclasses.asdict(s),
        "params": dataclasses.asdict(p),
        "frame_rate_hz": FRAME_RATE,
        "tiers": {str(t): int(n) for t, n in zip(tiers, counts)},
        "hidden_tiers": list(HIDDEN_TIERS),
        "short_trials": int((lengths < s.frames).sum()),
        "units": {
            "videos": "grey level 0..255",
            "responses": "counts x per-neuron scale (arbitrary units)",
            "behavior": ["pupil dilation (a.u.)", "running speed (cm/s)"],
            "pupil_center": "gaze x, y (eye-camera pixels)",
            "cell_motor_coordinates": "micrometres",
        },
        "shipped_statistics": {
            "computed_over": "train-tier trials, separately for every frame (as published)",
            "median": "exact" if median_exact else "over a subset of the training trials",
        },
        "extra_files": _extra_files(mouse),
        "ceiling_correlation": {
            "frames": "per tier, all but the first skip_frames of every trial (the metrics' "
            "rule, metrics.frames_to_skip, as validation and prediction)",
            "by_tier": ceilings,
        },
        "mouse": {
            "pupil_baseline": pop.behavior.pupil_baseline,
            "eye_center": list(pop.behavior.eye_center),
            "gaze_shift_px_per_eye_px": mouse.gaze_shift_per_eye_px(),
            "cell_types": {
                name: int((pop.cell_type == i).sum()) for i, name in enumerate(CELL_TYPES)
            },
            "retinotopy": mouse.maps,
        },
        "rf_truth": {
            "folder": f"meta/{RF_TRUTH_DIR}",
            "columns": RF_TRUTH_COLUMNS,
            "frame": {"height": s.height, "width": s.width},
            "gaze": "fields as placed at the resting gaze (mouse.eye_center); at gaze g (eye px) "
            "every field moves by gaze_shift_px_per_eye_px * (g - eye_center) pixels",
        },
        "slow_drift": None
        if mouse.drift is None
        else {
            "log_gain_sd": p.drift_amplitude,
            "recording_order": f"meta/{RECORDING_ORDER_FILE}",
            "note": "each trial file's position in the recording; the drift is part of the "
            "noiseless rates and no input carries it",
        },
    }


def _extra_files(mouse: Mouse) -> list[str]:
    files = [f"data/{native.NOISELESS}", f"meta/{VIDEO_IDS_FILE}", f"meta/{RF_TRUTH_DIR}/"]
    return files + ([f"meta/{RECORDING_ORDER_FILE}"] if mouse.drift is not None else [])


def _session_folders(data_dir: Path) -> list[Path]:
    """Session folders under data_dir, as the reader sees them (sub-folders with data/, meta/)."""
    from neurotwin.data.native import is_session_folder

    if not data_dir.is_dir():
        return []
    return sorted((d for d in data_dir.iterdir() if is_session_folder(d)), key=lambda d: d.name)


def ensure_synthetic(data_dir: str | Path, progress: bool = True) -> list[Path]:
    """Write the default synthetic dataset (preset "small", 3 mice, seed 0) into `data_dir` if it
    holds no session folder yet; returns the session folders found or written.

    Safe to call from several processes at once (a lock file serialises them, where available).
    """
    data_dir = Path(data_dir)
    existing = _session_folders(data_dir)
    if existing:
        return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    with _lock(data_dir / ".synthetic.lock"):
        existing = _session_folders(data_dir)
        if existing:
            return existing
        logger.info("no session in %s: writing the built-in synthetic dataset", data_dir)
        folders = generate(data_dir, progress=progress)
        logger.info("wrote %d synthetic sessions to %s", len(folders), data_dir)
        return folders


@contextlib.contextmanager
def _lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

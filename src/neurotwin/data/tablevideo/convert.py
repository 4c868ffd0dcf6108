"""A response table, a trial table and their movie files -> one native session folder.

Each trial's movie is decoded, resampled to the response bins (`video.frames_in_bins`), resized
where asked, and written with the trial's binned responses; trials shorter than the longest are
NaN-padded, as the native layout expects. Statistics are those of the training tier.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from neurotwin.data.allen.resample import area_resize
from neurotwin.data.allen.trials import write
from neurotwin.data.native import SessionArrays, layout, training_statistics
from neurotwin.data.tablevideo import tables
from neurotwin.data.tablevideo.video import covered_bins, frames_in_bins, read_movie
from neurotwin.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)


def convert_table_video(
    responses: str | Path,
    trials: str | Path,
    videos: str | Path,
    out: str | Path,
    bin_ms: float,
    fps: float | None = None,
    frame_size: tuple[int, int] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the session `out/name` (name: the response table's file stem) and return its path.

    `fps` is the rate the movies were shown at (default: each file's own rate); `frame_size`
    (H, W) resizes by area averaging (default: the files' size, which must then agree)."""
    if not bin_ms > 0:
        raise DataFormatError(responses, f"--bin_ms must be > 0, got {bin_ms}", "bin_ms")
    if fps is not None and not fps > 0:
        raise DataFormatError(videos, f"--fps must be > 0, got {fps}", "fps")
    bin_s = bin_ms / 1000.0
    folder = Path(out) / (name or Path(responses).stem)
    if folder.exists() and not overwrite:
        raise ConfigError(f"{folder} already exists: give --overwrite to replace it")
    specs = tables.read_trials(trials, videos)
    table = tables.ResponseTable(responses)
    _check_trial_sets(specs, table, Path(trials))
    arrays = {}
    iterator = specs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(specs, desc="trials", unit="trial")
    for index, spec in enumerate(iterator):
        arrays[index] = _trial(spec, table, bin_s, fps, frame_size, Path(trials))
    _check_frame_sizes(arrays, specs)
    session = _pad(arrays, specs, table)
    meta = {
        "source": "table-video",
        "responses": str(responses),
        "trials": str(trials),
        "videos": str(videos),
        "response_kind": table.kind,
        "bin_ms": bin_ms,
        "frame_rate_hz": 1000.0 / bin_ms,  # the native frames are the response bins
        "movie_fps": fps,
        "frame_size": list(session.trials[0][layout.VIDEOS].shape[:2]),
    }
    write(folder, session, meta, overwrite)
    log.info(
        "%s: %d trials, %d units, %d bins of %g ms", folder, len(specs), len(table.unit_ids),
        session.trials[0][layout.RESPONSES].shape[1], bin_ms,
    )  # fmt: skip
    return folder


def _check_trial_sets(specs, table: tables.ResponseTable, trials_path: Path) -> None:
    listed = {s.trial_id for s in specs}
    without = sorted(listed - table.trial_ids)
    if without:
        raise DataFormatError(
            table.path,
            f"trial(s) {without[:10]} of the trial table ({trials_path}) have no responses",
            tables.TRIAL,
        )
    unknown = sorted(table.trial_ids - listed)
    if unknown:
        raise DataFormatError(
            trials_path,
            f"trial(s) {unknown[:10]} have responses ({table.path}) but no row here (video, tier)",
            tables.TRIAL,
        )


def _trial(spec, table, bin_s: float, fps: float | None, frame_size, trials_path: Path) -> dict:
    """The native arrays of one trial, unpadded: videos (H, W, T), responses (N, T), ..."""
    if not spec.video.is_file():
        raise DataFormatError(
            trials_path, f"trial {spec.trial_id}: video file {spec.video} not found", tables.VIDEO
        )
    movie = read_movie(spec.video)
    rate = fps or movie.file_fps
    if rate is None:
        raise DataFormatError(spec.video, "the file states no frame rate: give --fps", "fps")
    if fps and movie.file_fps and not math.isclose(fps, movie.file_fps, rel_tol=0.01):
        log.warning("%s: the file says %.3g frames/s; using --fps %g", spec.video, movie.file_fps, fps)  # fmt: skip
    available = covered_bins(movie.n_frames, rate, bin_s)
    n_bins = table.rate_bins(spec.trial_id)
    if n_bins is None:
        n_bins = available
    elif n_bins > available:
        raise DataFormatError(
            spec.video,
            f"trial {spec.trial_id}: {movie.n_frames} frames at {rate:g}/s cover {available} "
            f"bins of {bin_s * 1000:g} ms; its rates have {n_bins}",
            "video",
        )
    if n_bins < 1:
        raise DataFormatError(spec.video, f"trial {spec.trial_id}: shorter than one bin", "video")
    frames = frames_in_bins(movie.frames, rate, bin_s, n_bins)
    if frame_size is not None:
        frames = area_resize(frames, frame_size)
    behavior = np.zeros((2, n_bins), np.float32)
    pupil_center = np.zeros((2, n_bins), np.float32)
    rows = {layout.BEHAVIOR: behavior, layout.PUPIL_CENTER: pupil_center}
    for column, values in spec.behavior.items():
        if len(values) < n_bins or not np.all(np.isfinite(values[:n_bins])):
            raise DataFormatError(
                trials_path,
                f"trial {spec.trial_id}: expected {n_bins} finite values (one per bin), got "
                f"{len(values)}",
                column,
            )
        array, row = tables.BEHAVIOR_COLUMNS[column]
        rows[array][row] = values[:n_bins]
    return {
        layout.VIDEOS: np.moveaxis(frames, 0, -1).astype(np.float32),
        layout.RESPONSES: table.binned(spec.trial_id, n_bins, bin_s),
        layout.BEHAVIOR: behavior,
        layout.PUPIL_CENTER: pupil_center,
    }


def _check_frame_sizes(arrays: dict, specs) -> None:
    sizes = {i: a[layout.VIDEOS].shape[:2] for i, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        first = specs[0]
        odd = next(i for i, s in sizes.items() if s != sizes[0])
        raise DataFormatError(
            specs[odd].video,
            f"frames of {sizes[odd]}, but {first.video} has {sizes[0]}: give --frame_size H W",
            "video",
        )


def _pad(arrays: dict, specs, table: tables.ResponseTable) -> SessionArrays:
    """NaN-pad every trial to the longest; statistics over the training trials."""
    length = max(a[layout.RESPONSES].shape[1] for a in arrays.values())
    trials = {}
    for i, a in arrays.items():
        trials[i] = {}
        for name, x in a.items():
            padded = np.full((*x.shape[:-1], length), np.nan, dtype=np.float32)
            padded[..., : x.shape[-1]] = x
            trials[i][name] = padded
    tiers = np.asarray([s.tier for s in specs])
    train = [trials[i] for i in trials if tiers[i] == layout.TRAIN_TIER]
    if not train:
        log.warning("no trial of tier 'train': statistics from all trials")
        train = list(trials.values())
    return SessionArrays(
        tiers=tiers,
        unit_ids=table.unit_ids.astype(np.int64),
        coordinates=np.zeros((len(table.unit_ids), 3), np.float32),
        trials=trials,
        statistics=training_statistics(train),
        extra_meta={
            "trials/trial_id.npy": np.asarray([s.trial_id for s in specs], dtype=np.int64),
            "trials/video.npy": np.asarray([s.video.name for s in specs], dtype=str),
        },
    )

"""Allen Brain Observatory 2-photon (Visual Coding ophys) NWB v1 -> native session folder.

Reads, with h5py only, the paths allensdk's `BrainObservatoryNwbDataSet`
(allensdk/core/brain_observatory_nwb_data_set.py) reads:

- dF/F: processing/brain_observatory_pipeline/DfOverF/imaging_plane_1/{data (N, T), timestamps (T,)}
- cells: processing/brain_observatory_pipeline/ImageSegmentation/cell_specimen_ids (N,) and
  .../ImageSegmentation/imaging_plane_1/roi_list (N,) names -> .../imaging_plane_1/<roi>/img_mask
- natural movies: stimulus/presentation/natural_movie_{one,two,three}_stimulus (or without the
  `_stimulus` suffix) with data (frame index per displayed frame) and frame_duration (n, 2):
  the [start, end) of each displayed frame as 2-photon frame indices (allensdk casts them to int)
- movie frames: stimulus/templates/natural_movie_*_image_stack/data (F, 304, 608) uint8
- running speed: .../BehavioralTimeSeries/running_speed/{data, timestamps} (cm/s)
- eye tracking (only some experiments): .../PupilTracking/pupil_size/{data, timestamps} and
  .../EyeTracking/pupil_location_spherical/{data (n, 2) degrees, timestamps}
- natural scenes, static and drifting gratings (`convert_ophys_presentations`, one trial per
  presentation): stimulus/presentation/{natural_scenes,static_gratings,drifting_gratings}_stimulus
  with data (scenes: the image index, -1 the grey blank; gratings: one column per name in
  `features`, e.g. orientation, spatial_frequency, phase / temporal_frequency, orientation,
  blank_sweep) and frame_duration; images in stimulus/templates/natural_scenes_image_stack/data
  (118, 918, 1174) uint8 (allensdk's get_abstract_feature_series_stimulus_table and
  get_stimulus_template read the same paths)
- metadata: general/session_id (ophys experiment id), general/experiment_container_id,
  general/session_type, general/subject/genotype (Cre line = first ';' part, as allensdk),
  general/optophysiology/imaging_plane_1/{location, "imaging depth", indicator}, general/fov.

Alignment: displayed movie frame i spans 2-photon samples [start_i, end_i); its response is the
mean of the dF/F samples in that span, or the nearest sample when the span is empty
(start == end). Behaviour and pupil use the same span in seconds (timestamps[start],
timestamps[end]). Extracted events (`response="events"`) come from allensdk's events file
(`ophys_experiment_events/<id>_events.npz`, key "ev", (N, T) on the same timestamps).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from neurotwin.data.allen import nwb, presentations, trials
from neurotwin.data.allen.resample import area_resize, fill_nan, interval_mean
from neurotwin.errors import DataFormatError

log = logging.getLogger(__name__)

PIPELINE = "processing/brain_observatory_pipeline"
DFF = f"{PIPELINE}/DfOverF/imaging_plane_1"
SEGMENTATION = f"{PIPELINE}/ImageSegmentation"
RUNNING = f"{PIPELINE}/BehavioralTimeSeries/running_speed"
PUPIL_SIZE = f"{PIPELINE}/PupilTracking/pupil_size"
PUPIL_LOCATION = f"{PIPELINE}/EyeTracking/pupil_location_spherical"
PRESENTATION = "stimulus/presentation"
TEMPLATES = "stimulus/templates"
PLANE = "general/optophysiology/imaging_plane_1"


def convert_ophys(
    nwb_path: str | Path,
    out_dir: str | Path,
    *,
    response: str = "dff",
    dff_offset: str = "shift",
    events_path: str | Path | None = None,
    movies: Sequence[str] | None = None,
    frame_size: tuple[int, int] = (36, 64),
    clip_length: int = 300,
    heldout_clips: Sequence[str] = trials.DEFAULT_HELDOUT,
    test_fraction: float = 0.5,
    test_tier: str = "final_test_main",
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert one ophys experiment NWB file; returns the session folder written under out_dir."""
    nwb_path = Path(nwb_path)
    _check_response(nwb_path, response, dff_offset)
    with nwb.open_nwb(nwb_path) as f:
        timestamps, traces, cell_ids, meta, centroids, centroid_units, coordinates, depth = _cells(
            f, nwb_path, response, events_path
        )
        running_t, running = nwb.read_series(f, RUNNING, "running speed", timestamps)
        eye = _eye_tracking(f)
        names = _movie_names(f, movies)
        recordings = []
        for movie in names:
            recordings.append(
                _movie(f, movie, timestamps, traces, running_t, running, eye, frame_size)
            )
    n_cells = cell_ids.size
    offset = np.zeros(n_cells)
    if response == "dff" and dff_offset != "none":
        offset = _nonnegative(recordings, dff_offset)
    area = meta.get("targeted_structure") or ""
    extra = _cell_meta(meta, area, depth, centroids, offset)
    session = trials.build_session(
        recordings,
        cell_ids.astype(np.int64),
        coordinates,
        clip_length=clip_length,
        heldout_clips=heldout_clips,
        test_fraction=test_fraction,
        test_tier=test_tier,
        extra_meta=extra,
        source=nwb_path,
    )
    exp_id = meta.get("ophys_experiment_id")
    folder = Path(out_dir) / (name or f"allen-ophys-{exp_id if exp_id else nwb_path.stem}")
    json_meta = {
        **_experiment_meta(nwb_path, meta, depth, response, dff_offset, eye, running),
        "experiment_container_id": meta.get("experiment_container_id"),
        "genotype": meta.get("genotype"),
        "indicator": meta.get("indicator"),
        "response_offset": "stored responses = dF/F - meta/neurons/response_offset.npy "
        "(shift: each cell's negative minimum, so responses are >= 0 for the Poisson loss)"
        if response == "dff" and dff_offset == "shift"
        else None,
        "alignment": "mean of 2-photon samples in each displayed frame's [start, end); "
        "nearest sample when empty",
        "behavior": ["pupil_size (pixels, area) or zeros", "running_speed (cm/s)"],
        "pupil_center": "pupil_location_spherical (degrees; columns as stored: x, y)",
        "coordinates": f"ROI centroid x, y ({centroid_units}), imaging depth (um)",
        **trials.split_meta(
            recordings, frame_size, clip_length, heldout_clips, test_fraction, test_tier
        ),
    }
    return trials.write(folder, session, json_meta, overwrite)


def convert_ophys_presentations(
    nwb_path: str | Path,
    out_dir: str | Path,
    stimulus: str,
    *,
    response: str = "dff",
    dff_offset: str = "shift",
    events_path: str | Path | None = None,
    frame_size: tuple[int, int] = (36, 64),
    window: Sequence[float] | None = None,
    bin_s: float = 1.0 / 30.0,
    heldout_clips: Sequence[str] = (),
    test_fraction: float = 0.5,
    test_tier: str = "final_test_main",
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """One stimulus shown as presentations (natural_scenes, static_gratings, drifting_gratings)
    -> a session folder with one trial per presentation: mean dF/F (or events) in each
    `bin_s` bin of `window` (s after onset; default: the presentation's duration)."""
    nwb_path = Path(nwb_path)
    if stimulus not in presentations.STIMULI:
        raise DataFormatError(
            nwb_path, f"stimulus must be one of {presentations.STIMULI}, got {stimulus!r}"
        )
    _check_response(nwb_path, response, dff_offset)
    window = tuple(window) if window is not None else presentations.DEFAULT_WINDOW[stimulus]
    with nwb.open_nwb(nwb_path) as f:
        timestamps, traces, cell_ids, meta, centroids, _, coordinates, depth = _cells(
            f, nwb_path, response, events_path
        )
        running_t, running = nwb.read_series(f, RUNNING, "running speed", timestamps)
        eye = _eye_tracking(f)
        pres = _presentations(f, stimulus, timestamps, frame_size)
    traces = np.asarray(traces, np.float64)
    offset = np.zeros(cell_ids.size)
    if response == "dff" and dff_offset == "shift":
        offset = np.minimum(traces.min(axis=1), 0.0)
        traces = traces - offset[:, None]
    elif response == "dff" and dff_offset == "clip":
        traces = np.maximum(traces, 0.0)

    behavior, center = presentations.behavior_samplers(running_t, running, eye)
    area = meta.get("targeted_structure") or ""
    extra = _cell_meta(meta, area, depth, centroids, offset)
    session = presentations.build_session(
        pres,
        lambda a, b: interval_mean(timestamps, traces, a, b),
        behavior,
        center,
        cell_ids.astype(np.int64),
        coordinates,
        frame_size,
        window,
        bin_s,
        heldout_clips,
        test_fraction,
        test_tier,
        extra,
        nwb_path,
    )
    exp_id = meta.get("ophys_experiment_id")
    folder = Path(out_dir) / (
        name or f"allen-ophys-{exp_id if exp_id else nwb_path.stem}-{stimulus}"
    )
    json_meta = {
        **_experiment_meta(nwb_path, meta, depth, response, dff_offset, eye, running),
        "alignment": "mean of the 2-photon samples in each bin after the onset (half a 2-photon "
        "frame before the frame the presentation starts in, so that 1/30 s bins hold one sample "
        "each); nearest sample when a bin holds none",
        **presentations.split_meta(
            pres, frame_size, window, bin_s, heldout_clips, test_fraction, test_tier
        ),
    }
    return trials.write(folder, session, json_meta, overwrite)


def _check_response(nwb_path: Path, response: str, dff_offset: str) -> None:
    if response not in ("dff", "events"):
        raise DataFormatError(nwb_path, f"response must be 'dff' or 'events', got {response!r}")
    if dff_offset not in ("shift", "clip", "none"):
        raise DataFormatError(
            nwb_path, f"dff_offset must be 'shift', 'clip' or 'none', got {dff_offset!r}"
        )


def _experiment_meta(nwb_path: Path, meta: dict, depth, response, dff_offset, eye, running) -> dict:
    """The meta/neurotwin.json entries both conversions write."""
    return {
        "source": "allen_brain_observatory_ophys",
        "modality": "2-photon calcium imaging",
        "nwb_file": str(nwb_path.resolve()),
        "ophys_experiment_id": meta.get("ophys_experiment_id"),
        "session_type": meta.get("session_type"),
        "targeted_structure": meta.get("targeted_structure") or "",
        "imaging_depth_um": depth,
        "cre_line": meta.get("cre_line"),
        "responses": response,
        "response_units": "dF/F" if response == "dff" else "extracted events (a.u.)",
        "dff_offset": dff_offset if response == "dff" else None,
        "has_eye_tracking": eye is not None,
        "has_running_speed": running is not None,
    }


def _presentations(f: h5py.File, stimulus: str, timestamps: np.ndarray, frame_size):
    """stimulus/presentation/<stimulus>_stimulus: data (frame index, or parameter columns
    named by `features`), frame_duration [start, end) in 2-photon frames -> Presentations."""
    path = f"{PRESENTATION}/{stimulus}_stimulus"
    nwb.group(f, path, f"{stimulus} presentations")
    data = nwb.read(f, f"{path}/data", ndim=(1, 2), what="per presentation values")
    dur = nwb.read(f, f"{path}/frame_duration", ndim=2, what="[start, end) 2-photon frames")
    data = data.reshape(data.shape[0], -1)
    if dur.shape != (data.shape[0], 2):
        raise DataFormatError(
            nwb.file_path(f),
            f"expected ({data.shape[0]}, 2), got {dur.shape}",
            f"{path}/frame_duration",
        )
    start = dur[:, 0].astype(np.int64)
    if start.size and (start.min() < 0 or start.max() >= timestamps.size):
        raise DataFormatError(
            nwb.file_path(f),
            f"start frames outside [0, {timestamps.size})",
            f"{path}/frame_duration",
        )
    # a sample stands for [t - period / 2, t + period / 2): bins of one period then hold one each
    period = float(np.median(np.diff(timestamps))) if timestamps.size > 1 else 1.0 / 30
    onsets = timestamps[start] - period / 2
    if stimulus == "natural_scenes":
        template = nwb.read(
            f, f"{TEMPLATES}/natural_scenes_image_stack/data", ndim=3, what="scene images (K, h, w)"
        )
        values = {"frame": data[:, 0]}
        return presentations.from_parameters(
            stimulus, onsets, values, frame_size, template, nwb.file_path(f)
        )
    names = [str(n) for n in nwb.read_strings(f, f"{path}/features")]
    if len(names) != data.shape[1]:
        raise DataFormatError(
            nwb.file_path(f),
            f"{len(names)} feature names for {data.shape[1]} columns",
            f"{path}/features",
        )
    values = {n: data[:, i].astype(np.float64) for i, n in enumerate(names)}
    if "blank_sweep" in values:  # drifting gratings: blank sweeps carry parameters too
        blank = values.pop("blank_sweep") > 0
        for v in values.values():
            v[blank] = np.nan
    return presentations.from_parameters(
        stimulus, onsets, values, frame_size, None, nwb.file_path(f)
    )


# ------------------------------------------------------------------------------------------------


def _cell_meta(meta: dict, area: str, depth, centroids: np.ndarray, offset: np.ndarray) -> dict:
    """meta/neurons/* arrays: area, depth, Cre line, ROI centroid, the dF/F offset removed."""
    n = len(centroids)
    return {
        "neurons/area.npy": np.asarray([area] * n, dtype=str),
        "neurons/depth.npy": np.full(n, np.nan if depth is None else depth, np.float32),
        "neurons/cre_line.npy": np.asarray([meta.get("cre_line") or ""] * n, dtype=str),
        "neurons/roi_centroid_px.npy": centroids.astype(np.float32),
        "neurons/response_offset.npy": np.asarray(offset, np.float32),
    }


def _cells(f: h5py.File, nwb_path: Path, response: str, events_path):
    """Frame times, traces (dF/F or events, (N, T)), cell ids, metadata and coordinates."""
    timestamps = nwb.read(f, f"{DFF}/timestamps", ndim=1, what="2-photon frame times (s)")
    dff = nwb.read(f, f"{DFF}/data", ndim=2, what="dF/F, (cells, frames)")
    if dff.shape[1] != timestamps.size:
        raise DataFormatError(
            nwb_path,
            f"dF/F must be (cells, frames) with frames = len(timestamps) = {timestamps.size}; "
            f"got shape {dff.shape}",
            f"{DFF}/data",
        )
    cell_ids = nwb.read(f, f"{SEGMENTATION}/cell_specimen_ids", ndim=1, what="cell ids")
    if cell_ids.size != dff.shape[0]:
        raise DataFormatError(
            nwb_path,
            f"{cell_ids.size} cell ids for {dff.shape[0]} dF/F traces",
            f"{SEGMENTATION}/cell_specimen_ids",
        )
    traces = dff
    if response == "events":
        traces = _read_events(events_path, dff.shape, nwb_path)
    meta = _metadata(f)
    centroids, centroid_units = _roi_centroids(f, cell_ids.size, meta.get("fov"))
    depth = meta.get("imaging_depth_um")
    coordinates = np.column_stack(
        [centroids, np.full(cell_ids.size, np.nan if depth is None else float(depth))]
    )
    coordinates = np.nan_to_num(coordinates, nan=0.0)
    return timestamps, traces, cell_ids, meta, centroids, centroid_units, coordinates, depth


def _nonnegative(recordings, mode: str) -> np.ndarray:
    """Make dF/F non-negative (Poisson loss): 'shift' subtracts each cell's minimum when it is
    negative (returned as the offset), 'clip' sets negative values to 0 (offset 0)."""
    n = recordings[0].responses[0].shape[0] if recordings and recordings[0].responses else 0
    if mode == "clip":
        for rec in recordings:
            rec.responses = [np.maximum(r, 0.0) for r in rec.responses]
        return np.zeros(n)
    lowest = np.zeros(n)
    for rec in recordings:
        for r in rec.responses:
            finite = np.where(np.isfinite(r), r, np.inf)
            if finite.size:
                lowest = np.minimum(lowest, finite.min(axis=1))
    for rec in recordings:
        rec.responses = [r - lowest[:, None] for r in rec.responses]
    return lowest


def _read_events(path: str | Path | None, shape: tuple[int, int], nwb_path: Path) -> np.ndarray:
    if path is None:
        raise DataFormatError(
            nwb_path,
            "response 'events' needs the experiment's events file (allensdk "
            "BrainObservatoryCache: ophys_experiment_events/<id>_events.npz); give --events PATH",
        )
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "events file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "ev" not in z:
                raise DataFormatError(path, f"no array 'ev' (has {sorted(z.files)})", "ev")
            ev = np.asarray(z["ev"], dtype=np.float64)
    except (OSError, ValueError) as e:
        raise DataFormatError(path, f"not a readable .npz file ({e})") from None
    if ev.shape != tuple(shape):
        raise DataFormatError(
            path, f"events must match dF/F shape {tuple(shape)}, got {ev.shape}", "ev"
        )
    return ev


def _metadata(f: h5py.File) -> dict:
    meta: dict = {}
    exp = nwb.read_str(f, "general/session_id")
    meta["ophys_experiment_id"] = int(exp) if exp and exp.strip().isdigit() else exp
    cont = nwb.read_str(f, "general/experiment_container_id")
    meta["experiment_container_id"] = int(cont) if cont and cont.strip().isdigit() else cont
    meta["session_type"] = nwb.read_str(f, "general/session_type")
    genotype = nwb.read_str(f, "general/subject/genotype")
    meta["genotype"] = genotype
    # allensdk: cre_line = genotype.split(';')[0]; we also drop the allele ("Cux2-CreERT2/wt").
    meta["cre_line"] = genotype.split(";")[0].split("/")[0].strip() if genotype else None
    location = nwb.read_str(f, f"{PLANE}/location")
    if location:
        m = re.search(r"area:\s*([A-Za-z0-9]+)", location)
        location = m.group(1) if m else location.strip()
    meta["targeted_structure"] = location
    depth = nwb.read_str(f, f"{PLANE}/imaging depth")
    try:
        meta["imaging_depth_um"] = int(float(depth.split()[0])) if depth else None
    except ValueError:
        meta["imaging_depth_um"] = None
    meta["indicator"] = nwb.read_str(f, f"{PLANE}/indicator")
    meta["fov"] = nwb.read_str(f, "general/fov")
    return meta


def _roi_centroids(f: h5py.File, n: int, fov: str | None) -> tuple[np.ndarray, str]:
    """(N, 2) ROI centroids (x = column, y = row) from img_mask, in um when general/fov gives
    the scale ("400x400 microns (512 x 512 pixels)"), else in pixels; NaN when missing."""
    plane = f"{SEGMENTATION}/imaging_plane_1"
    out = np.full((n, 2), np.nan)
    if not nwb.has(f, f"{plane}/roi_list"):
        log.warning("%s: no %s/roi_list: cell x, y set to 0", f.filename, plane)
        return out, "pixels"
    roi_names = nwb.read_strings(f, f"{plane}/roi_list")
    if roi_names.size != n:
        raise DataFormatError(
            nwb.file_path(f), f"{roi_names.size} ROIs for {n} cells", f"{plane}/roi_list"
        )
    shape = None
    for i, roi in enumerate(roi_names):
        mask = nwb.read(f, f"{plane}/{roi}/img_mask", ndim=2, what="ROI mask")
        shape = mask.shape
        ys, xs = np.nonzero(mask)
        if xs.size:
            w = np.asarray(mask[ys, xs], dtype=np.float64)
            out[i] = (np.average(xs, weights=w), np.average(ys, weights=w))
    scale = _fov_scale(fov, shape)
    if scale is None:
        return out, "pixels"
    return out * np.asarray(scale), "um"


def _fov_scale(fov: str | None, shape: tuple[int, int] | None) -> tuple[float, float] | None:
    if not fov:
        return None
    um = re.search(r"([\d.]+)\s*x\s*([\d.]+)\s*micro", fov)
    px = re.search(r"([\d.]+)\s*x\s*([\d.]+)\s*pix", fov)
    if not um:
        return None
    if px:
        w_px, h_px = float(px.group(1)), float(px.group(2))
    elif shape is not None:
        h_px, w_px = shape
    else:
        return None
    return float(um.group(1)) / w_px, float(um.group(2)) / h_px


def _eye_tracking(f: h5py.File):
    if not (nwb.has(f, PUPIL_SIZE) and nwb.has(f, PUPIL_LOCATION)):
        return None
    size_t, size = nwb.read_series(f, PUPIL_SIZE, "pupil size")
    loc = nwb.read(f, f"{PUPIL_LOCATION}/data", ndim=2, what="pupil location (n, 2)")
    loc_t = nwb.read(f, f"{PUPIL_LOCATION}/timestamps", ndim=(1, 2)).reshape(-1)
    if loc.shape[0] != loc_t.size and loc.shape[1] == loc_t.size:
        loc = loc.T
    if loc.shape != (loc_t.size, 2):
        raise DataFormatError(
            nwb.file_path(f),
            f"expected ({loc_t.size}, 2), got {loc.shape}",
            f"{PUPIL_LOCATION}/data",
        )
    x, okx = fill_nan(loc_t, loc[:, 0])
    y, oky = fill_nan(loc_t, loc[:, 1])
    if size is None or not (okx and oky):
        return None
    return size_t, size, loc_t, np.stack([x, y])


def _movie_names(f: h5py.File, wanted: Sequence[str] | None) -> list[str]:
    present = [m for m in trials.MOVIES if _presentation_path(f, m) is not None]
    expected = [m + "_stimulus" for m in trials.MOVIES]
    return trials.pick_movies(f, PRESENTATION, present, wanted, expected)


def _presentation_path(f: h5py.File, movie: str) -> str | None:
    for candidate in (f"{PRESENTATION}/{movie}_stimulus", f"{PRESENTATION}/{movie}"):
        if nwb.has(f, candidate) and isinstance(f[candidate], h5py.Group):
            return candidate
    return None


def _movie(f, movie, timestamps, traces, running_t, running, eye, frame_size):
    path = _presentation_path(f, movie)
    frame = nwb.read(f, f"{path}/data", ndim=(1, 2), what="movie frame per display frame")
    frame = frame.reshape(frame.shape[0], -1)[:, 0].astype(np.int64)
    dur = nwb.read(f, f"{path}/frame_duration", ndim=2, what="[start, end) 2-photon frames")
    if dur.shape != (frame.size, 2):
        raise DataFormatError(
            nwb.file_path(f),
            f"expected shape ({frame.size}, 2), got {dur.shape}",
            f"{path}/frame_duration",
        )
    start, end = dur[:, 0].astype(np.int64), dur[:, 1].astype(np.int64)
    order = np.lexsort((end, start))  # allensdk sorts the table by (start, end)
    frame, start, end = frame[order], start[order], end[order]
    n_t = timestamps.size
    if start.min() < 0 or end.max() > n_t or np.any(end < start):
        raise DataFormatError(
            nwb.file_path(f),
            f"frame intervals must lie in [0, {n_t}] 2-photon frames with start <= end",
            f"{path}/frame_duration",
        )
    template = nwb.movie_frames(f, movie)
    n_frames = template.shape[0]
    if frame.min() < 0 or frame.max() >= n_frames:
        raise DataFormatError(
            nwb.file_path(f), f"movie frame index outside [0, {n_frames})", f"{path}/data"
        )
    frames = area_resize(template, frame_size)
    # display span in seconds: [t(start), t(end)); end == n_t -> one frame period past the end
    period = float(np.median(np.diff(timestamps))) if n_t > 1 else 1.0 / 30
    t_ext = np.concatenate([timestamps, [timestamps[-1] + period]])
    t0, t1 = t_ext[start], t_ext[end]
    lo, hi = max(int(start.min()) - 1, 0), min(int(end.max()) + 2, n_t)  # this movie's span
    resp = interval_mean(timestamps[lo:hi], traces[:, lo:hi], t0, t1)  # (N, rows)
    run = interval_mean(running_t, running, t0, t1) if running is not None else np.zeros(frame.size)
    if eye is not None:
        size_t, size, loc_t, loc = eye
        pupil = interval_mean(size_t, size, t0, t1)
        center = interval_mean(loc_t, loc, t0, t1)
    else:
        pupil, center = np.zeros(frame.size), np.zeros((2, frame.size))
    return trials.movie_recording(movie, frames, frame, resp, pupil, run, center, t0)

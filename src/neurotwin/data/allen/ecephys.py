"""Allen Visual Coding Neuropixels session NWB (NWB 2, EcephysProjectCache) -> native session.

Reads, with h5py only, the HDF5 layout that allensdk's `EcephysNwbSessionApi`
(allensdk/brain_observatory/ecephys/ecephys_session_api/ecephys_nwb_session_api.py) reads
through pynwb:

- units: /units DynamicTable: id (n,), spike_times (all spikes, float64 s) + spike_times_index
  (n,) VectorIndex of end offsets, quality ("good"), isi_violations, amplitude_cutoff,
  presence_ratio, peak_channel_id, ...
- channels: /general/extracellular_ephys/electrodes DynamicTable: id, location (structure
  acronym: VISp, VISl, LGd, ... ; "" or "None" outside the brain), x, y, z (CCF anterior-posterior,
  dorsal-ventral, left-right, um; NaN without CCF), probe_vertical_position,
  probe_horizontal_position (um), probe_id, valid_data
- stimulus: /intervals/natural_movie_{one,three}_presentations TimeIntervals: start_time,
  stop_time (s), frame (movie frame index), stimulus_name, stimulus_block, ...
- running: /processing/running/running_speed/{data (cm/s), timestamps (interval starts)}
- eye tracking (some sessions): /processing/filtered_gaze_mapping (else raw_gaze_mapping)
  /pupil_area/{data, timestamps} and /screen_coordinates_spherical/{data (n, 2): [:, 0] = y
  (altitude), [:, 1] = x (azimuth), degrees}
- natural scenes and gratings (`convert_ecephys_presentations`, one trial per presentation):
  /intervals/{natural_scenes,static_gratings,drifting_gratings}_presentations with start_time,
  frame (scene image, -1 blank) or orientation, spatial_frequency, phase, temporal_frequency
  (numbers, or strings: "null" for blank sweeps, "[0.04, 0.04]" lists as allensdk's tables)
- movie frames are not in the session file: from stimulus/templates/<movie>_image_stack/data
  when present, else a templates file (`natural_movie_<n>.h5` from EcephysProjectCache, which is
  an .npy, or any NWB/HDF5 with stimulus/templates, e.g. an ophys experiment file).

Units are kept by allensdk's default quality filters (`neurotwin.data.allen.units`). Responses
are exact spike counts per unit in each displayed frame's [start_time, stop_time).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from neurotwin.data.allen import nwb, presentations, trials
from neurotwin.data.allen.resample import area_resize, count_in_intervals, fill_nan, interval_mean
from neurotwin.data.allen.units import (
    AMPLITUDE_CUTOFF_MAXIMUM,
    ISI_VIOLATIONS_MAXIMUM,
    PRESENCE_RATIO_MINIMUM,
    read_channels,
    read_units,
    select_units,
    unit_filter_meta,
)
from neurotwin.errors import DataFormatError

log = logging.getLogger(__name__)

INTERVALS = "intervals"
RUNNING = "processing/running/running_speed"
GAZE_MODULES = ("processing/filtered_gaze_mapping", "processing/raw_gaze_mapping")
TEMPLATES = "stimulus/templates"
ECEPHYS_MOVIES = ("natural_movie_one", "natural_movie_three")


def convert_ecephys(
    nwb_path: str | Path,
    out_dir: str | Path,
    *,
    templates: Mapping[str, str | Path] | str | Path | None = None,
    movies: Sequence[str] | None = None,
    areas: Sequence[str] | None = None,
    amplitude_cutoff_maximum: float = AMPLITUDE_CUTOFF_MAXIMUM,
    presence_ratio_minimum: float = PRESENCE_RATIO_MINIMUM,
    isi_violations_maximum: float = ISI_VIOLATIONS_MAXIMUM,
    filter_by_validity: bool = True,
    frame_size: tuple[int, int] = (36, 64),
    clip_length: int = 300,
    heldout_clips: Sequence[str] = trials.DEFAULT_HELDOUT,
    test_fraction: float = 0.5,
    test_tier: str = "final_test_main",
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert one Neuropixels session NWB; returns the session folder written under out_dir.

    `templates`: a movie -> file mapping, or one file holding stimulus/templates for every movie
    (used when the session file has no stimulus/templates).
    """
    nwb_path = Path(nwb_path)
    filters = (amplitude_cutoff_maximum, presence_ratio_minimum, isi_violations_maximum)
    with nwb.open_nwb(nwb_path) as f:
        s = _read_session(f, areas, *filters, filter_by_validity)
        names = _movie_names(f, movies)
        recordings = [
            _movie(f, m, s.spikes, s.running_t, s.running, s.eye, templates, frame_size)
            for m in names
        ]
    session = trials.build_session(
        recordings,
        s.unit_ids,
        s.coords,
        clip_length=clip_length,
        heldout_clips=heldout_clips,
        test_fraction=test_fraction,
        test_tier=test_tier,
        extra_meta=s.unit_meta(),
        source=nwb_path,
    )
    folder = Path(out_dir) / (name or f"allen-ecephys-{s.sid if s.sid else nwb_path.stem}")
    json_meta = {
        **s.meta(nwb_path, areas),
        "unit_filters": unit_filter_meta(*filters, filter_by_validity),
        "response_units": "spikes per displayed movie frame",
        "alignment": "spikes in each displayed frame's [start_time, stop_time)",
        "behavior": ["pupil_area (pixels^2) or zeros", "running_speed (cm/s)"],
        "pupil_center": "screen_coordinates_spherical (degrees: azimuth x, altitude y)",
        **trials.split_meta(
            recordings, frame_size, clip_length, heldout_clips, test_fraction, test_tier
        ),
    }
    return trials.write(folder, session, json_meta, overwrite)


# ------------------------------------------------------------------------------------------------


def _coordinates(channels: dict, unit_channel: np.ndarray) -> tuple[np.ndarray, str]:
    rows = np.asarray([channels["row"][int(c)] for c in unit_channel])
    if all(k in channels for k in ("x", "y", "z")):
        ccf = np.column_stack([channels["x"][rows], channels["y"][rows], channels["z"][rows]])
        if np.all(np.isfinite(ccf)) and np.any(ccf != 0):
            return ccf.astype(np.float32), (
                "CCF of the peak channel (anterior-posterior, dorsal-ventral, left-right; um)"
            )
    probe = channels["probe_id"][rows] if "probe_id" in channels else np.zeros(rows.size)
    _, probe_index = np.unique(probe, return_inverse=True)
    pos = np.column_stack(
        [
            channels["probe_horizontal_position"][rows],
            channels["probe_vertical_position"][rows],
            probe_index.astype(np.float64),
        ]
    )
    return pos.astype(np.float32), (
        "peak channel position on the probe (horizontal um, vertical um, probe index)"
    )


def _gaze(f: h5py.File):
    for module in GAZE_MODULES:
        area, coords = f"{module}/pupil_area", f"{module}/screen_coordinates_spherical"
        if not (nwb.has(f, area) and nwb.has(f, coords)):
            continue
        a = nwb.read(f, f"{area}/data", ndim=1, what="pupil area")
        at = nwb.read(f, f"{area}/timestamps", ndim=1)
        c = nwb.read(f, f"{coords}/data", ndim=2, what="gaze (n, 2): altitude, azimuth")
        ct = nwb.read(f, f"{coords}/timestamps", ndim=1)
        if a.size != at.size or c.shape != (ct.size, 2):
            raise DataFormatError(
                nwb.file_path(f),
                f"pupil area {a.shape} / times {at.shape}, "
                f"gaze {c.shape} / times {ct.shape} do not match",
                module,
            )
        a, ok_a = fill_nan(at, a)
        x, ok_x = fill_nan(ct, c[:, 1])
        y, ok_y = fill_nan(ct, c[:, 0])
        if ok_a and ok_x and ok_y:
            return at, a, ct, np.stack([x, y])
    return None


def _movie_names(f: h5py.File, wanted: Sequence[str] | None) -> list[str]:
    present = [m for m in trials.MOVIES if nwb.has(f, f"{INTERVALS}/{m}_presentations")]
    expected = [m + "_presentations" for m in ECEPHYS_MOVIES]
    return trials.pick_movies(f, INTERVALS, present, wanted, expected)


def _frames_column(f: h5py.File, path: str, n: int) -> np.ndarray:
    raw = nwb.dataset(f, path, "movie frame index")[()]
    raw = np.asarray(raw).reshape(-1)
    if raw.shape[0] != n:
        raise DataFormatError(nwb.file_path(f), f"{raw.shape[0]} rows, expected {n}", path)
    if np.issubdtype(raw.dtype, np.number):
        frames = raw.astype(np.float64)
    else:  # some tables store parameters as strings
        try:
            frames = np.asarray([float(nwb.decode(v)) for v in raw])
        except ValueError:
            raise DataFormatError(nwb.file_path(f), "frame column is not numeric", path) from None
    if not np.all(np.isfinite(frames)) or np.any(frames != np.round(frames)):
        raise DataFormatError(nwb.file_path(f), "frame indices must be whole numbers", path)
    return frames.astype(np.int64)


def _template(f: h5py.File, movie: str, templates) -> np.ndarray:
    inside = f"{TEMPLATES}/{movie}_image_stack/data"
    if nwb.has(f, inside):
        return nwb.movie_frames(f, movie)
    source = templates.get(movie) if isinstance(templates, Mapping) else templates
    if source is None:
        raise DataFormatError(
            nwb.file_path(f),
            f"no frames for {movie}: the session file has no {inside}; give --templates "
            f"{movie}=PATH (EcephysProjectCache natural_movie_templates/natural_movie_<n>.h5, an "
            ".npy (F, h, w), or an NWB file with stimulus/templates)",
            inside,
        )
    return read_template_file(source, movie)


def read_template_file(path: str | Path, movie: str) -> np.ndarray:
    """Movie frames (F, h, w) from an .npy (EcephysProjectCache stores natural_movie_<n>.h5
    files that are .npy inside) or an HDF5/NWB file with stimulus/templates."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, f"template file for {movie} not found")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"\x93NUMPY"):
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
        if arr.ndim != 3:
            raise DataFormatError(path, f"expected frames (F, h, w), got shape {arr.shape}")
        return arr
    with nwb.open_nwb(path) as g:
        return nwb.read(
            g, f"{TEMPLATES}/{movie}_image_stack/data", ndim=3, what="movie frames (F, h, w)"
        )


def _movie(f, movie, spikes, running_t, running, eye, templates, frame_size):
    table = f"{INTERVALS}/{movie}_presentations"
    start = nwb.read(f, f"{table}/start_time", ndim=1, what="presentation start (s)")
    stop = nwb.table_column(f, table, "stop_time", start.size)
    frame = _frames_column(f, f"{table}/frame", start.size)
    order = np.argsort(start, kind="stable")
    start, stop, frame = start[order], stop[order], frame[order]
    if np.any(stop < start):
        raise DataFormatError(nwb.file_path(f), "stop_time before start_time", table)
    template = _template(f, movie, templates)
    n_frames = template.shape[0]
    if frame.size and (frame.min() < 0 or frame.max() >= n_frames):
        raise DataFormatError(
            nwb.file_path(f),
            f"frame index outside the movie's [0, {n_frames}) frames",
            f"{table}/frame",
        )
    frames = area_resize(template, frame_size)
    counts = (
        np.stack([count_in_intervals(s, start, stop) for s in spikes])
        if spikes
        else (np.zeros((0, start.size)))
    )
    run = (
        interval_mean(running_t, running, start, stop)
        if running is not None
        else np.zeros(start.size)
    )
    if eye is not None:
        at, a, ct, c = eye
        pupil, center = interval_mean(at, a, start, stop), interval_mean(ct, c, start, stop)
    else:
        pupil, center = np.zeros(start.size), np.zeros((2, start.size))
    return trials.movie_recording(movie, frames, frame, counts, pupil, run, center, start)


@dataclass
class _Session:
    """What both conversions read from a session file: the units kept by the quality filters
    (their tables, area, peak channel, sorted spike times, coordinates) and the behaviour."""

    sid: int | str | None
    session_type: str | None
    units: dict
    channels: dict
    keep: np.ndarray
    unit_area: list
    unit_channel: np.ndarray
    spikes: list[np.ndarray]
    coords: np.ndarray
    coord_kind: str
    running_t: np.ndarray | None
    running: np.ndarray | None
    eye: tuple | None

    @property
    def unit_ids(self) -> np.ndarray:
        return self.units["id"][self.keep].astype(np.int64)

    def meta(self, nwb_path: Path, areas: Sequence[str] | None) -> dict:
        """The meta/neurotwin.json entries both conversions write."""
        return {
            "source": "allen_visual_coding_neuropixels",
            "modality": "Neuropixels extracellular electrophysiology",
            "nwb_file": str(nwb_path.resolve()),
            "ecephys_session_id": self.sid,
            "session_type": self.session_type,
            "areas": sorted(set(self.unit_area)),
            "area_filter": list(areas) if areas else None,
            "n_units_in_file": int(self.units["id"].size),
            "n_units_kept": int(len(self.keep)),
            "responses": "spike counts",
            "has_eye_tracking": self.eye is not None,
            "has_running_speed": self.running is not None,
            "coordinates": self.coord_kind,
        }

    def unit_meta(self) -> dict:
        return _unit_meta(self.units, self.channels, self.keep, self.unit_area, self.unit_channel)


def _read_session(f: h5py.File, areas, amp_max, pr_min, isi_max, by_validity) -> _Session:
    session_id = nwb.read_str(f, "identifier")
    units, channels = read_units(f), read_channels(f)
    keep, unit_area, unit_channel = select_units(
        f, units, channels, areas, amp_max, pr_min, isi_max, by_validity
    )
    return _Session(
        int(session_id) if session_id and session_id.strip().isdigit() else session_id,
        nwb.read_str(f, "general/stimulus"),  # nwbfile.stimulus_notes
        units,
        channels,
        keep,
        unit_area,
        unit_channel,
        [np.sort(units["spike_times"][i]) for i in keep],
        *_coordinates(channels, unit_channel),
        *nwb.read_series(f, RUNNING, "running speed (cm/s)"),
        _gaze(f),
    )


def _unit_meta(units: dict, channels: dict, keep, unit_area, unit_channel) -> dict:
    """meta/neurons/* arrays of the kept units: area, peak channel, probe, depth, quality."""
    extra = {
        "neurons/area.npy": np.asarray(unit_area, dtype=str),
        "neurons/peak_channel_id.npy": np.asarray(unit_channel, dtype=np.int64),
        "neurons/probe_id.npy": np.asarray(
            [channels["probe_id"][channels["row"][c]] for c in unit_channel], dtype=np.int64
        )
        if "probe_id" in channels
        else np.zeros(len(keep), np.int64),
        "neurons/depth.npy": np.asarray(
            [channels["probe_vertical_position"][channels["row"][c]] for c in unit_channel],
            dtype=np.float32,
        ),
    }
    for col in ("isi_violations", "amplitude_cutoff", "presence_ratio", "firing_rate"):
        if col in units:
            extra[f"neurons/{col}.npy"] = np.asarray(units[col][keep], dtype=np.float32)
    return extra


def convert_ecephys_presentations(
    nwb_path: str | Path,
    out_dir: str | Path,
    stimulus: str,
    *,
    templates: str | Path | None = None,
    areas: Sequence[str] | None = None,
    amplitude_cutoff_maximum: float = AMPLITUDE_CUTOFF_MAXIMUM,
    presence_ratio_minimum: float = PRESENCE_RATIO_MINIMUM,
    isi_violations_maximum: float = ISI_VIOLATIONS_MAXIMUM,
    filter_by_validity: bool = True,
    frame_size: tuple[int, int] = (36, 64),
    window: Sequence[float] | None = None,
    bin_s: float = 0.01,
    heldout_clips: Sequence[str] = (),
    test_fraction: float = 0.5,
    test_tier: str = "final_test_main",
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """One stimulus shown as presentations (natural_scenes, static_gratings, drifting_gratings)
    -> a session folder with one trial per presentation: spike counts per unit in each `bin_s`
    bin of `window` (s after onset; default the presentation's duration; mouse-vision: 10 ms
    bins over 0-250 ms). `templates`: the scene images when the session file has none."""
    nwb_path = Path(nwb_path)
    if stimulus not in presentations.STIMULI:
        raise DataFormatError(
            nwb_path, f"stimulus must be one of {presentations.STIMULI}, got {stimulus!r}"
        )
    window = tuple(window) if window is not None else presentations.DEFAULT_WINDOW[stimulus]
    with nwb.open_nwb(nwb_path) as f:
        s = _read_session(
            f,
            areas,
            amplitude_cutoff_maximum,
            presence_ratio_minimum,
            isi_violations_maximum,
            filter_by_validity,
        )
        pres = _presentations(f, stimulus, templates, frame_size)

    behavior, center = presentations.behavior_samplers(s.running_t, s.running, s.eye)
    session = presentations.build_session(
        pres,
        lambda a, b: np.stack([count_in_intervals(unit, a, b) for unit in s.spikes]),
        behavior,
        center,
        s.unit_ids,
        s.coords,
        frame_size,
        window,
        bin_s,
        heldout_clips,
        test_fraction,
        test_tier,
        s.unit_meta(),
        nwb_path,
    )
    stem = s.sid if s.sid else nwb_path.stem
    folder = Path(out_dir) / (name or f"allen-ecephys-{stem}-{stimulus}")
    json_meta = {
        **s.meta(nwb_path, areas),
        "response_units": f"spikes per {bin_s * 1000:g} ms bin",
        "alignment": "spikes in each bin [onset + start, onset + start + bin) of the window",
        **presentations.split_meta(
            pres, frame_size, window, bin_s, heldout_clips, test_fraction, test_tier
        ),
    }
    return trials.write(folder, session, json_meta, overwrite)


def _presentations(f: h5py.File, stimulus: str, templates, frame_size):
    """intervals/<stimulus>_presentations (start_time; frame or orientation, spatial_frequency,
    phase, temporal_frequency) -> Presentations."""
    table = f"{INTERVALS}/{stimulus}_presentations"
    nwb.group(f, table, f"{stimulus} presentations")
    start = nwb.read(f, f"{table}/start_time", ndim=1, what="presentation start (s)")
    names = (
        ["frame"] if stimulus == "natural_scenes" else ["orientation", "spatial_frequency", "phase"]
    )
    if stimulus == "drifting_gratings":
        names = ["orientation", "temporal_frequency", "spatial_frequency"]
    values = {}
    for col in names:
        path = f"{table}/{col}"
        if not nwb.has(f, path):
            if col == "spatial_frequency" and stimulus == "drifting_gratings":
                continue
            raise DataFormatError(nwb.file_path(f), f"missing column {col!r}", path)
        values[col] = presentations.parameter_column(
            nwb.dataset(f, path)[()], path, nwb.file_path(f)
        )
        if values[col].size != start.size:
            raise DataFormatError(
                nwb.file_path(f), f"{values[col].size} rows, {start.size} starts", path
            )
    images = _scene_templates(f, templates) if stimulus == "natural_scenes" else None
    return presentations.from_parameters(
        stimulus, start, values, frame_size, images, nwb.file_path(f)
    )


def _scene_templates(f: h5py.File, templates) -> np.ndarray:
    """The 118 scene images: inside the file, else an .npy (K, h, w), an NWB/HDF5 file with
    stimulus/templates/natural_scenes_image_stack, or EcephysProjectCache's folder of
    natural_scene_<k>.tiff (read with Pillow)."""
    inside = f"{TEMPLATES}/natural_scenes_image_stack/data"
    if nwb.has(f, inside):
        return nwb.read(f, inside, ndim=3, what="scene images (K, h, w)")
    if isinstance(templates, Mapping):
        templates = templates.get("natural_scenes")
    if templates is None:
        raise DataFormatError(
            nwb.file_path(f),
            f"no scene images: the session file has no {inside}; give --templates "
            "natural_scenes=PATH (EcephysProjectCache's natural_scene_templates folder, an .npy "
            "(118, h, w), or an NWB file with stimulus/templates)",
            inside,
        )
    path = Path(templates)
    if path.is_dir():
        return _tiff_folder(path)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 3:
            raise DataFormatError(path, f"expected images (K, h, w), got shape {arr.shape}")
        return arr
    with nwb.open_nwb(path) as g:
        return nwb.read(g, inside, ndim=3, what="scene images (K, h, w)")


def _tiff_folder(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("natural_scene_*.tiff"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not files:
        raise DataFormatError(folder, "no natural_scene_<k>.tiff files")
    numbers = [int(p.stem.rsplit("_", 1)[1]) for p in files]
    if numbers != list(range(len(files))):
        raise DataFormatError(
            folder, f"expected natural_scene_0..{len(files) - 1}.tiff, got {numbers[:5]}..."
        )
    try:
        from PIL import Image
    except ImportError:
        raise DataFormatError(
            folder, "reading .tiff images needs Pillow (pip install pillow)"
        ) from None
    return np.stack([np.asarray(Image.open(p).convert("L")) for p in files])

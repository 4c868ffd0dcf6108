"""Allen Visual Coding Neuropixels session NWB -> the spike table layout (one session folder).

Units are read and filtered exactly as for `allen-ecephys` (neurotwin.data.allen.units: the
units and electrodes tables, allensdk's default quality filters, optional areas); a unit's
population is the structure of its peak channel (`population="area"`) or its probe. Trials are
the presentations of one stimulus, `intervals/<stimulus>_presentations` (TimeIntervals: id,
start_time, stop_time and one column per stimulus parameter), with every parameter column kept
as a condition variable. In allensdk-written files a parameter column of mixed types is stored
as strings, "" where not applicable (`add_stimulus_presentations`); such columns are read back
as numbers, with NaN for "", "null", "nan" and "None", when every other value is a number. A
trial's `condition` joins its condition columns (`CONDITION_COLUMNS` per stimulus) as
"orientation=90|temporal_frequency=2|contrast=0.8"; presentations without any (blank sweeps)
are "blank". Spikes are kept within `margin_s` of the first and last presentation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from neurotwin.data.allen import ecephys, nwb, units
from neurotwin.data.spikes import write_session
from neurotwin.errors import DataFormatError

log = logging.getLogger(__name__)

# stimulus -> the parameters that define a condition (allensdk stimulus tables' columns)
CONDITION_COLUMNS = {
    "drifting_gratings": ("orientation", "temporal_frequency", "contrast"),
    "drifting_gratings_75_repeats": ("orientation", "temporal_frequency", "contrast"),
    "drifting_gratings_contrast": ("orientation", "contrast"),
    "static_gratings": ("orientation", "spatial_frequency", "phase"),
    "natural_scenes": ("frame",),
    "natural_movie_one": ("frame",),
    "natural_movie_three": ("frame",),
    "flashes": ("color",),
    "gabors": ("orientation", "x_position", "y_position"),
    "dot_motion": ("Dir", "Speed"),
}
MISSING = {"", "null", "nan", "none"}
SKIPPED = {"id", "tags", "timeseries"}
BLANK = "blank"


def _numbers(values: np.ndarray) -> np.ndarray | None:
    """Strings -> float64 (NaN where missing) if every present value is a number, else None."""
    out = np.full(values.size, np.nan)
    present = False
    for i, v in enumerate(values):
        text = str(v).strip()
        if text.lower() in MISSING:
            continue
        try:
            out[i] = float(text)
        except ValueError:
            return None
        present = True
    return out if present else None


def read_presentations(f: h5py.File, stimulus: str) -> pd.DataFrame:
    """The presentations table of `stimulus`: id, start_time, stop_time, parameter columns."""
    table = f"{ecephys.INTERVALS}/{stimulus}_presentations"
    if not nwb.has(f, table):
        found = sorted(k for k in f[ecephys.INTERVALS].keys()) if nwb.has(f, "intervals") else []
        raise DataFormatError(
            nwb.file_path(f), f"no presentations of {stimulus!r} (found {found})", table
        )
    group = nwb.group(f, table)
    ids = nwb.read(f, f"{table}/id", ndim=1, what="presentation ids").astype(np.int64)
    columns: dict[str, np.ndarray] = {"id": ids}
    for name in group.keys():
        ragged = name.endswith("_index") or f"{name}_index" in group
        if name in SKIPPED or ragged or not isinstance(group[name], h5py.Dataset):
            continue
        raw = group[name]
        if raw.ndim != 1 or raw.shape[0] != ids.size:
            continue
        if np.issubdtype(raw.dtype, np.number) or raw.dtype == bool:
            columns[name] = nwb.table_column(f, table, name, ids.size).astype(np.float64)
        else:
            text = nwb.read_strings(f, f"{table}/{name}")
            numbers = _numbers(text)
            columns[name] = numbers if numbers is not None else text
    for required in ("start_time", "stop_time"):
        if required not in columns:
            raise DataFormatError(nwb.file_path(f), "missing column", f"{table}/{required}")
    return pd.DataFrame(columns)


def condition_names(presentations: pd.DataFrame, columns: Sequence[str], where: str) -> list[str]:
    missing = [c for c in columns if c not in presentations.columns]
    if missing:
        raise DataFormatError(
            where,
            f"condition column(s) {missing} not in the presentations table "
            f"(columns: {list(presentations.columns)})",
        )
    names = []
    for _, row in presentations[list(columns)].iterrows():
        parts = []
        for c in columns:
            v = row[c]
            if isinstance(v, float) and np.isnan(v):
                continue
            if isinstance(v, str) and v.strip().lower() in MISSING:
                continue
            parts.append(f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}")
        names.append("|".join(parts) if parts else BLANK)
    return names


def convert_allen_spikes(
    nwb_path: str | Path,
    out_dir: str | Path,
    *,
    stimulus: str = "drifting_gratings",
    areas: Sequence[str] | None = None,
    population: str = "area",
    condition_columns: Sequence[str] | None = None,
    margin_s: float = 1.0,
    amplitude_cutoff_maximum: float = units.AMPLITUDE_CUTOFF_MAXIMUM,
    presence_ratio_minimum: float = units.PRESENCE_RATIO_MINIMUM,
    isi_violations_maximum: float = units.ISI_VIOLATIONS_MAXIMUM,
    filter_by_validity: bool = True,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert one session NWB's units and `stimulus` presentations; returns the folder."""
    nwb_path = Path(nwb_path)
    if population not in ("area", "probe"):
        raise DataFormatError(nwb_path, f"population must be area or probe, got {population!r}")
    columns = condition_columns or CONDITION_COLUMNS.get(stimulus)
    if not columns:
        raise DataFormatError(
            nwb_path,
            f"no default condition columns for {stimulus!r}; give condition_columns "
            f"(defaults exist for {sorted(CONDITION_COLUMNS)})",
        )
    with nwb.open_nwb(nwb_path) as f:
        session_id = nwb.read_str(f, "identifier")
        table = units.read_units(f)
        channels = units.read_channels(f)
        keep, unit_area, unit_channel = units.select_units(
            f,
            table,
            channels,
            areas,
            amplitude_cutoff_maximum,
            presence_ratio_minimum,
            isi_violations_maximum,
            filter_by_validity,
        )
        presentations = read_presentations(f, stimulus)
        probe_names = _probe_names(f, channels, unit_channel)
        lo = presentations["start_time"].min() - margin_s
        hi = presentations["stop_time"].max() + margin_s
        unit_ids = table["id"][keep].astype(np.int64)
        times, owners = [], []
        for uid, i in zip(unit_ids, keep):
            t = table["spike_times"][i]
            t = t[(t >= lo) & (t < hi)]
            times.append(t)
            owners.append(np.full(t.size, uid, dtype=np.int64))
    rows = [channels["row"][int(c)] for c in unit_channel]
    unit_table = pd.DataFrame(
        {
            "unit_id": unit_ids,
            "population": np.asarray(unit_area if population == "area" else probe_names, object),
            "area": np.asarray(unit_area, dtype=object),
            "probe": np.asarray(probe_names, dtype=object),
            "peak_channel_id": unit_channel.astype(np.int64),
            "depth": np.asarray(channels["probe_vertical_position"][rows], dtype=np.float64),
        }
    )
    for col in ("amplitude_cutoff", "presence_ratio", "isi_violations", "firing_rate"):
        if col in table:
            unit_table[col] = np.asarray(table[col][keep], dtype=np.float64)
    spikes = pd.DataFrame({"unit_id": np.concatenate(owners), "time": np.concatenate(times)})
    where = f"{nwb_path} [{ecephys.INTERVALS}/{stimulus}_presentations]"
    trials = _trials(presentations, columns, where)
    sid = int(session_id) if session_id and session_id.strip().isdigit() else session_id
    meta = {
        "source": "allen_visual_coding_neuropixels",
        "nwb_file": str(nwb_path.resolve()),
        "ecephys_session_id": sid,
        "stimulus": stimulus,
        "condition_columns": list(columns),
        "population": population,
        "area_filter": list(areas) if areas else None,
        "unit_filters": units.unit_filter_meta(
            amplitude_cutoff_maximum,
            presence_ratio_minimum,
            isi_violations_maximum,
            filter_by_validity,
        ),
        "n_units_in_file": int(table["id"].size),
        "n_units_kept": int(len(keep)),
        "spike_window_s": [float(lo), float(hi)],
    }
    folder = Path(out_dir) / (name or f"allen-spikes-{sid or nwb_path.stem}-{stimulus}")
    folder = write_session(folder, unit_table, spikes, trials, meta=meta, overwrite=overwrite)
    log.info(
        "%s: %d units, %d spikes, %d trials of %s (%d conditions)",
        folder,
        len(unit_table),
        len(spikes),
        len(trials),
        stimulus,
        trials["condition"].nunique(),
    )
    return folder


def _probe_names(f: h5py.File, channels: dict, unit_channel: np.ndarray) -> list[str]:
    """Each unit's probe: the electrodes table's group_name (probeA, ...) or probe<id>."""
    rows = [channels["row"][int(c)] for c in unit_channel]
    if nwb.has(f, f"{units.ELECTRODES}/group_name"):
        names = nwb.table_column(
            f, units.ELECTRODES, "group_name", channels["id"].size, numeric=False
        )
        return [str(names[r]) for r in rows]
    probe = channels.get("probe_id")
    return [f"probe{int(probe[r])}" if probe is not None else "probe" for r in rows]


def _trials(presentations: pd.DataFrame, columns: Sequence[str], where: str) -> pd.DataFrame:
    start = presentations["start_time"].to_numpy(np.float64)
    stop = presentations["stop_time"].to_numpy(np.float64)
    bad = np.flatnonzero(~(stop > start))
    if bad.size:
        raise DataFormatError(
            where,
            f"presentation {int(presentations['id'].iloc[bad[0]])} does not end after it starts",
            "stop_time",
        )
    trials = pd.DataFrame(
        {
            "trial_id": presentations["id"].to_numpy(np.int64),
            "start": start,
            "stop": stop,
            "condition": condition_names(presentations, columns, where),
        }
    )
    for col in presentations.columns:
        if col not in ("id", "start_time", "stop_time") and col not in trials.columns:
            trials[col] = presentations[col].to_numpy()
    return trials.sort_values("start", kind="stable").reset_index(drop=True)

"""The units and channels tables of an Allen Neuropixels session NWB, and allensdk's default
unit filters: the reading both converters of Neuropixels files share (`ecephys`: spike counts per
movie frame or presentation; `spikes`: the spike table layout).

Units are kept as allensdk's get_units does by default (allensdk.brain_observatory.ecephys
UNIT_FILTER_DEFAULTS and probes.Probes.get_units_table): quality == "good", peak channel
valid_data and inside the brain, amplitude_cutoff <= 0.1, presence_ratio >= 0.95,
isi_violations <= 0.5; `unit_filter_meta` records the filters applied in a session's meta.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from neurotwin.data.allen import nwb
from neurotwin.errors import DataFormatError

UNITS = "units"
ELECTRODES = "general/extracellular_ephys/electrodes"

# optional columns of the electrodes table (CCF x, y, z; positions on the probe, um)
CHANNEL_COLUMNS = ("x", "y", "z", "probe_vertical_position", "probe_horizontal_position", "probe_id", "valid_data")  # fmt: skip

# allensdk.brain_observatory.ecephys.UNIT_FILTER_DEFAULTS
AMPLITUDE_CUTOFF_MAXIMUM = 0.1
PRESENCE_RATIO_MINIMUM = 0.95
ISI_VIOLATIONS_MAXIMUM = 0.5


def unit_filter_meta(
    amp_max: float | None, pr_min: float | None, isi_max: float | None, by_validity: bool
) -> dict[str, Any]:
    """The filters `select_units` applied, as a session's meta.json records them."""
    return {
        "quality": "good" if by_validity else None,
        "valid_data_and_in_brain": by_validity,
        "amplitude_cutoff_maximum": amp_max,
        "presence_ratio_minimum": pr_min,
        "isi_violations_maximum": isi_max,
    }


def read_units(f: h5py.File) -> dict:
    """The units table: id, spike_times (read lazily per unit), peak_channel_id, the quality
    metrics, firing_rate and quality where present."""
    nwb.group(f, UNITS, "units table")
    ids = nwb.read(f, f"{UNITS}/id", ndim=1, what="unit ids")
    out: dict = {"id": ids}
    spike_times = nwb.RaggedColumn(f, f"{UNITS}/spike_times", f"{UNITS}/spike_times_index")
    if len(spike_times) != ids.size:
        raise DataFormatError(
            nwb.file_path(f),
            f"{len(spike_times)} spike trains for {ids.size} units",
            f"{UNITS}/spike_times_index",
        )
    out["spike_times"] = spike_times
    for col in ("peak_channel_id", "isi_violations", "amplitude_cutoff", "presence_ratio"):
        out[col] = nwb.table_column(f, UNITS, col, ids.size)
    for col in ("firing_rate",):
        if nwb.has(f, f"{UNITS}/{col}"):
            out[col] = nwb.table_column(f, UNITS, col, ids.size)
    if nwb.has(f, f"{UNITS}/quality"):
        out["quality"] = nwb.table_column(f, UNITS, "quality", ids.size, numeric=False)
    return out


def read_channels(f: h5py.File) -> dict:
    """The electrodes (channels) table: id, row (id -> row), location, positions, probe_id,
    valid_data where present."""
    nwb.group(f, ELECTRODES, "electrodes (channels) table")
    ids = nwb.read(f, f"{ELECTRODES}/id", ndim=1, what="channel ids")
    out: dict = {"id": ids, "row": {int(c): i for i, c in enumerate(ids)}}
    out["location"] = nwb.table_column(f, ELECTRODES, "location", ids.size, numeric=False)
    for col in CHANNEL_COLUMNS:
        if nwb.has(f, f"{ELECTRODES}/{col}"):
            out[col] = nwb.table_column(f, ELECTRODES, col, ids.size)
    for col in ("probe_vertical_position", "probe_horizontal_position"):
        if col not in out:
            raise DataFormatError(
                nwb.file_path(f), "missing dataset (channel position)", f"{ELECTRODES}/{col}"
            )
    return out


def select_units(
    f: h5py.File,
    units: dict,
    channels: dict,
    areas: Sequence[str] | None,
    amp_max: float | None,
    pr_min: float | None,
    isi_max: float | None,
    by_validity: bool,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The units the filters keep (allensdk's defaults: `UNIT_FILTER_DEFAULTS`): their rows,
    areas (peak channel's structure) and peak channel ids; DataFormatError if none is kept."""
    n = units["id"].size
    keep = np.ones(n, bool)
    rows = np.full(n, -1)
    for i, c in enumerate(units["peak_channel_id"].astype(np.int64)):
        rows[i] = channels["row"].get(int(c), -1)
    if np.any(rows < 0):
        bad = units["peak_channel_id"][rows < 0][:5].tolist()
        raise DataFormatError(
            nwb.file_path(f),
            f"peak channel(s) {bad} not in {ELECTRODES}/id",
            f"{UNITS}/peak_channel_id",
        )
    location = np.asarray([str(v) for v in channels["location"][rows]], dtype=object)
    in_brain = ~np.isin(location, ["", "None", "none", "nan"])
    if by_validity:
        if "valid_data" in channels:
            keep &= channels["valid_data"][rows].astype(bool)
        keep &= in_brain
        if "quality" in units:
            keep &= units["quality"] == "good"
    with np.errstate(invalid="ignore"):
        keep &= units["amplitude_cutoff"] <= (amp_max if amp_max is not None else np.inf)
        keep &= units["presence_ratio"] >= (pr_min if pr_min is not None else -np.inf)
        keep &= units["isi_violations"] <= (isi_max if isi_max is not None else np.inf)
    if areas:
        keep &= np.isin(location, list(areas))
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        raise DataFormatError(
            nwb.file_path(f),
            f"no unit passes the filters (areas={list(areas) if areas else 'all'}, "
            f"amplitude_cutoff <= {amp_max}, presence_ratio >= {pr_min}, isi_violations <= "
            f"{isi_max}; areas in file: {sorted(set(location[in_brain]))})",
            UNITS,
        )
    unit_channel = units["peak_channel_id"][idx].astype(np.int64)
    return idx, location[idx].tolist(), unit_channel

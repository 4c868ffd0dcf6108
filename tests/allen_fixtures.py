"""Small NWB files in the Allen Brain Observatory layouts, written with h5py, for tests.

    from allen_fixtures import write_ophys_nwb, write_ecephys_nwb

`write_ophys_nwb(path, ...)`: a Visual Coding 2-photon experiment file (NWB 1, as
BrainObservatoryCache stores `ophys_experiment_data/<id>.nwb`) with the groups and datasets that
allensdk's BrainObservatoryNwbDataSet reads. `write_ecephys_nwb(path, ...)`: a Visual Coding
Neuropixels session file (NWB 2, as EcephysProjectCache stores `session_<id>/session_<id>.nwb`)
with the units/electrodes tables, natural movie presentation intervals, running and gaze.
Movies are short (frames per movie given), images small; everything else follows the real
names, shapes, dtypes and table layouts. Both return a dict of the ground truth used to build the
file, so tests can check converted values exactly.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import h5py
import numpy as np

STR = h5py.string_dtype("utf-8")
FRAME_RATE = 30.0  # 2-photon and stimulus frames


def _s(group, name, value):
    """NWB 1 (Allen ophys) strings are fixed-length byte strings: h5py reads them as np.bytes_
    (allensdk's get_metadata checks `v.dtype.type is np.bytes_`)."""
    if isinstance(value, (list, tuple)):
        group.create_dataset(name, data=np.asarray([str(v).encode() for v in value]))
    else:
        group.create_dataset(name, data=np.bytes_(str(value).encode()))


def _s2(group, name, value):
    """NWB 2 (pynwb-written) strings are variable-length UTF-8."""
    group.create_dataset(name, data=np.asarray(value, dtype=object), dtype=STR)


def _ts_attrs(obj, ancestry="TimeSeries", nwb2=False):
    if nwb2:
        obj.attrs["namespace"] = "core"
        obj.attrs["neurodata_type"] = ancestry
        obj.attrs["object_id"] = str(uuid.uuid4())
        obj.attrs["description"] = "no description"
        obj.attrs["comments"] = "no comments"
    else:
        obj.attrs["neurodata_type"] = "TimeSeries"
        obj.attrs["ancestry"] = np.asarray([b"TimeSeries", ancestry.encode()])


def _ts_data(g, data, timestamps, unit):
    """An NWB 2 TimeSeries' data (with unit/conversion/resolution) and timestamps."""
    d = g.create_dataset("data", data=data)
    d.attrs["unit"] = unit
    d.attrs["conversion"] = 1.0
    d.attrs["resolution"] = -1.0
    t = g.create_dataset("timestamps", data=timestamps)
    t.attrs["interval"] = 1
    t.attrs["unit"] = "seconds"


def dff_value(cell: int, sample: int | np.ndarray) -> np.ndarray:
    """The fixture's dF/F of `cell` at 2-photon sample index `sample` (a known function)."""
    return 0.5 * cell + 0.01 * np.asarray(sample, dtype=np.float64)


def running_value(t: np.ndarray) -> np.ndarray:
    return 10.0 + 2.0 * np.asarray(t)


# ------------------------------------------------------------------------------------------------
# 2-photon (NWB 1)
# ------------------------------------------------------------------------------------------------


def write_ophys_nwb(
    path: str | Path,
    n_cells: int = 4,
    movies: dict[str, int] | None = None,
    repeats: int = 4,
    template_shape: tuple[int, int] = (12, 24),
    eye_tracking: bool = True,
    experiment_id: int = 501940850,
    mask_shape: tuple[int, int] = (32, 32),
    seed: int = 0,
) -> dict:
    """Write an ophys experiment NWB; returns the ground truth (dict)."""
    movies = movies or {"natural_movie_one": 12, "natural_movie_three": 8}
    rng = np.random.default_rng(seed)
    gap = 5  # 2-photon samples between repeats / movies
    rows: dict[str, dict[str, list]] = {}
    k = 10  # first stimulus sample
    for movie, n_frames in movies.items():
        frame, start, end = [], [], []
        for _ in range(repeats):
            for i in range(n_frames):
                s = k
                if i == 1:  # a displayed frame spanning two 2-photon samples
                    e = k + 2
                elif i == 2:  # an empty span (start == end): nearest sample is used
                    e = k
                else:
                    e = k + 1
                frame.append(i)
                start.append(s)
                end.append(e)
                k = max(e, k + 1) if i != 2 else k
            k += gap
        rows[movie] = {"frame": frame, "start": start, "end": end}
    n_t = k + 10
    t0 = 12.5
    timestamps = t0 + np.arange(n_t) / FRAME_RATE
    cells = np.arange(n_cells)
    dff = dff_value(cells[:, None], np.arange(n_t)[None, :]).astype(np.float32)
    cell_ids = 517000000 + np.arange(n_cells) * 7
    centroids = rng.uniform(4, mask_shape[1] - 4, size=(n_cells, 2)).round()
    truth = {
        "timestamps": timestamps,
        "dff": dff,
        "cell_ids": cell_ids,
        "rows": rows,
        "experiment_id": experiment_id,
        "n_t": n_t,
        "templates": {},
        "centroid_px": centroids,
        "mask_shape": mask_shape,
    }
    with h5py.File(path, "w") as f:
        f.attrs["nwb_version"] = "NWB-1.0.5"
        _s(f, "nwb_version", "NWB-1.0.5")
        _s(f, "identifier", f"Allen Brain Observatory: Visual Coding {experiment_id}")
        _s(f, "session_description", "Brain Observatory Visual Coding 2-photon experiment")
        _s(f, "session_start_time", "Thu Mar 31 10:09:44 2016")
        _s(f, "file_create_date", ["2017-05-23T00:00:00"])
        for g in ("acquisition/timeseries", "acquisition/images", "analysis", "epochs"):
            f.create_group(g)
        gen = f.create_group("general")
        _s(gen, "session_id", str(experiment_id))
        _s(gen, "experiment_container_id", "511510736")
        _s(gen, "session_type", "three_session_A")
        _s(gen, "specimen_name", "Cux2-CreERT2;Camk2a-tTA;Ai93-222426")
        _s(gen, "fov", f"400x400 microns ({mask_shape[1]} x {mask_shape[0]} pixels)")
        _s(gen, "generated_by", ["Allen Institute for Brain Science", "ophys_nwb", "3.0"])
        subj = gen.create_group("subject")
        _s(subj, "genotype", "Cux2-CreERT2/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/Ai93(TITL-GCaMP6f)")
        _s(subj, "age", "104 days")
        _s(subj, "sex", "male")
        plane = gen.create_group("optophysiology/imaging_plane_1")
        _s(plane, "location", "VISp")
        _s(plane, "imaging depth", "175 microns")
        _s(plane, "indicator", "GCaMP6f")
        _s(plane, "excitation_lambda", "910 nanometers")
        _s(
            gen.create_group("devices"),
            "2-photon microscope",
            "Nikon A1R-MP multiphoton microscope. nikona1rmp Please see the technical whitepaper",
        )

        pipe = f.create_group("processing/brain_observatory_pipeline")
        pipe.attrs["neurodata_type"] = "Module"
        for name in ("DfOverF", "Fluorescence"):
            ts = pipe.create_group(f"{name}/imaging_plane_1")
            _ts_attrs(ts, "RoiResponseSeries")
            ts.create_dataset("data", data=dff)  # (cells, frames), as allensdk indexes it
            ts.create_dataset("timestamps", data=timestamps)
            _s(ts, "roi_names", [f"roi_{i}" for i in cells])
            ts.create_dataset("num_samples", data=n_t)
        seg = pipe.create_group("ImageSegmentation")
        seg.create_dataset("cell_specimen_ids", data=cell_ids.astype(np.int64))
        _s(seg, "roi_ids", [str(580000000 + i) for i in cells])
        iplane = seg.create_group("imaging_plane_1")
        _s(iplane, "roi_list", [f"roi_{i}" for i in cells])
        _s(iplane, "imaging_plane_name", "imaging_plane_1")
        for i in cells:
            mask = np.zeros(mask_shape, dtype=np.uint8)
            x, y = centroids[i].astype(int)
            mask[y - 1 : y + 2, x - 1 : x + 2] = 1  # 3x3 square centred on (x, y)
            roi = iplane.create_group(f"roi_{i}")
            roi.create_dataset("img_mask", data=mask)
            ys, xs = np.nonzero(mask)
            roi.create_dataset("pix_mask", data=np.stack([xs, ys]).astype(np.uint16))
            _s(roi, "roi_description", "")
        ref = iplane.create_group("reference_images/maximum_intensity_projection_image")
        ref.create_dataset("data", data=np.zeros(mask_shape, np.uint8))

        run = pipe.create_group("BehavioralTimeSeries/running_speed")
        _ts_attrs(run)
        run.create_dataset("data", data=running_value(timestamps - t0))
        run.create_dataset("timestamps", data=timestamps)
        truth["running_t"] = timestamps
        if eye_tracking:
            et_t = t0 + np.arange(0, n_t * 2) / (2 * FRAME_RATE)  # eye camera at 60 Hz
            size = 100.0 + np.arange(et_t.size, dtype=np.float64)
            size[7] = np.nan  # a blink
            loc = np.stack([np.sin(et_t), np.cos(et_t)], axis=1)
            for name, data in (
                ("PupilTracking/pupil_size", size),
                ("EyeTracking/pupil_location_spherical", loc),
                ("EyeTracking/pupil_location", loc * 0.1),
            ):
                g = pipe.create_group(name)
                _ts_attrs(g, "SpatialSeries")
                g.create_dataset("data", data=data)
                g.create_dataset("timestamps", data=et_t)
            truth["eye"] = {"t": et_t, "size": size, "loc": loc}

        for movie, r in rows.items():
            n_frames = movies[movie]
            g = f.create_group(f"stimulus/presentation/{movie}_stimulus")
            _ts_attrs(g, "IndexSeries")
            g.create_dataset("data", data=np.asarray(r["frame"], dtype=np.float32))
            dur = np.stack([r["start"], r["end"]], axis=1).astype(np.float64)
            g.create_dataset("frame_duration", data=dur)
            g.create_dataset("timestamps", data=timestamps[np.asarray(r["start"])])
            g.create_dataset("num_samples", data=len(r["frame"]))
            tmpl = rng.integers(0, 256, size=(n_frames, *template_shape), dtype=np.uint8)
            tg = f.create_group(f"stimulus/templates/{movie}_image_stack")
            _ts_attrs(tg, "ImageSeries")
            tg.create_dataset("data", data=tmpl)
            tg.create_dataset(
                "dimension",
                data=np.asarray([template_shape[1], template_shape[0], n_frames], dtype=np.int32),
            )
            truth["templates"][movie] = tmpl
        sp = f.create_group("stimulus/presentation/spontaneous_stimulus")
        _ts_attrs(sp, "IntervalSeries")
        sp.create_dataset("data", data=np.asarray([1, -1], dtype=np.int8))
        sp.create_dataset("frame_duration", data=np.asarray([[0, 5], [5, 6]], dtype=np.float64))
        sp.create_dataset("timestamps", data=timestamps[[0, 5]])
    return truth


# ------------------------------------------------------------------------------------------------
# Neuropixels (NWB 2)
# ------------------------------------------------------------------------------------------------


def _typed(obj, namespace, neurodata_type):
    obj.attrs["namespace"] = namespace
    obj.attrs["neurodata_type"] = neurodata_type
    obj.attrs["object_id"] = str(uuid.uuid4())


def _module(group, description):
    group.attrs["namespace"] = "core"
    group.attrs["neurodata_type"] = "ProcessingModule"
    group.attrs["description"] = description
    group.attrs["object_id"] = str(uuid.uuid4())


def _table(group, colnames, description):
    group.attrs["namespace"] = "hdmf-common"
    group.attrs["neurodata_type"] = "DynamicTable"
    group.attrs["colnames"] = np.asarray(colnames, dtype=object)
    group.attrs["description"] = description
    group.attrs["object_id"] = str(uuid.uuid4())


def _col(group, name, data, description="", dtype=None):
    if dtype is STR:
        ds = group.create_dataset(name, data=np.asarray(data, dtype=object), dtype=STR)
    else:
        ds = group.create_dataset(name, data=np.asarray(data, dtype=dtype))
    ds.attrs["namespace"] = "hdmf-common"
    ds.attrs["neurodata_type"] = "VectorData"
    ds.attrs["description"] = description or name
    ds.attrs["object_id"] = str(uuid.uuid4())
    return ds


def _index(group, name, target, ends):
    ds = group.create_dataset(name, data=np.asarray(ends, dtype=np.uint64))
    ds.attrs["namespace"] = "hdmf-common"
    ds.attrs["neurodata_type"] = "VectorIndex"
    ds.attrs["target"] = target.ref
    ds.attrs["description"] = f"index for {target.name}"
    ds.attrs["object_id"] = str(uuid.uuid4())


def _ids(group, n, start=0):
    ds = group.create_dataset("id", data=np.arange(start, start + n, dtype=np.int64))
    ds.attrs["namespace"] = "hdmf-common"
    ds.attrs["neurodata_type"] = "ElementIdentifiers"
    ds.attrs["object_id"] = str(uuid.uuid4())
    return ds


def write_ecephys_nwb(
    path: str | Path,
    movies: dict[str, int] | None = None,
    repeats: dict[str, int] | None = None,
    templates_inside: bool = True,
    template_shape: tuple[int, int] = (12, 24),
    eye_tracking: bool = True,
    ccf: bool = True,
    session_id: int = 715093703,
    seed: int = 0,
) -> dict:
    """Write a Neuropixels session NWB; returns the ground truth (dict)."""
    movies = movies or {"natural_movie_one": 12, "natural_movie_three": 8}
    repeats = repeats or {"natural_movie_one": 4, "natural_movie_three": 2}
    rng = np.random.default_rng(seed)
    # channels: 2 probes x 4 channels
    ch_ids = np.asarray([850100000 + i for i in range(8)], dtype=np.int64)
    probe_ids = np.repeat([810755797, 810755799], 4)
    location = ["VISp", "VISp", "CA1", "", "VISl", "VISl", "LGd", "VISl"]
    valid = np.asarray([1, 1, 1, 1, 1, 0, 1, 1], dtype=bool)
    vert = np.tile([20.0, 40.0, 60.0, 80.0], 2)
    horiz = np.tile([43.0, 11.0, 59.0, 27.0], 2)
    ccf_xyz = rng.uniform(1000, 9000, size=(8, 3)) if ccf else np.full((8, 3), np.nan)
    # units: (peak channel index, quality, isi, amp cutoff, presence ratio)
    unit_spec = [
        (0, "good", 0.1, 0.01, 0.99),  # kept, VISp
        (1, "good", 0.2, 0.05, 0.96),  # kept, VISp
        (4, "good", 0.0, 0.02, 0.99),  # kept, VISl
        (6, "good", 0.3, 0.09, 0.97),  # kept, LGd
        (2, "good", 0.1, 0.01, 0.99),  # kept, CA1
        (0, "good", 0.6, 0.01, 0.99),  # isi_violations > 0.5
        (1, "good", 0.1, 0.2, 0.99),  # amplitude_cutoff > 0.1
        (4, "good", 0.1, 0.01, 0.92),  # presence_ratio < 0.95 (>= 0.9)
        (3, "good", 0.1, 0.01, 0.99),  # outside the brain
        (5, "good", 0.1, 0.01, 0.99),  # invalid channel
        (7, "noise", 0.1, 0.01, 0.99),  # not "good"
    ]
    n_units = len(unit_spec)
    unit_ids = 950900000 + np.arange(n_units) * 3
    # presentation table rows
    frame_dur = 1.0 / FRAME_RATE
    t = 30.0
    pres: dict[str, dict[str, list]] = {}
    for movie, n_frames in movies.items():
        st, sp, fr, blk = [], [], [], []
        for _rep in range(repeats[movie]):
            for i in range(n_frames):
                st.append(t)
                sp.append(t + frame_dur)
                fr.append(float(i))
                blk.append(2.0 if movie == "natural_movie_one" else 4.0)
                t += frame_dur
            t += 1.0
        pres[movie] = {"start_time": st, "stop_time": sp, "frame": fr, "stimulus_block": blk}
        t += 5.0
    t_end = t + 10.0
    spikes = []
    for _ in range(n_units):
        n = int(rng.integers(200, 400))
        s = np.sort(rng.uniform(0.0, t_end, size=n))
        # spikes exactly on frame boundaries (start counts, stop does not)
        s = np.sort(np.concatenate([s, next(iter(pres.values()))["start_time"][:3]]))
        spikes.append(s)
    truth = {
        "unit_ids": unit_ids,
        "spikes": spikes,
        "pres": pres,
        "channel_ids": ch_ids,
        "location": location,
        "unit_spec": unit_spec,
        "ccf": ccf_xyz,
        "vert": vert,
        "horiz": horiz,
        "probe_ids": probe_ids,
        "templates": {},
        "session_id": session_id,
    }
    with h5py.File(path, "w") as f:
        f.attrs["namespace"] = "core"
        f.attrs["neurodata_type"] = "NWBFile"
        f.attrs["nwb_version"] = "2.2.2"
        f.attrs["object_id"] = str(uuid.uuid4())
        _s2(f, "identifier", str(session_id))
        _s2(f, "session_description", "Data and metadata for an Ecephys session")
        _s2(f, "session_start_time", "2019-01-19T00:54:18-08:00")
        _s2(f, "timestamps_reference_time", "2019-01-19T00:54:18-08:00")
        _s2(f, "file_create_date", ["2019-10-03T10:00:00-07:00"])
        for g in (
            "acquisition",
            "analysis",
            "stimulus/presentation",
            "stimulus/templates",
            "general/devices",
        ):
            f.create_group(g)
        _s2(f["general"], "stimulus", "brain_observatory_1.1")
        subj = f.create_group("general/subject")
        subj.attrs["namespace"] = "core"
        subj.attrs["neurodata_type"] = "Subject"
        _s2(subj, "genotype", "Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt")
        _s2(subj, "species", "Mus musculus")
        _s2(subj, "age", "P118D")
        ecephys = f.create_group("general/extracellular_ephys")
        for p in np.unique(probe_ids):
            dev = f["general/devices"].create_group(f"probe{p}")
            dev.attrs["namespace"] = "ndx-aibs-ecephys"  # allensdk's extension, not cached here
            dev.attrs["neurodata_type"] = "EcephysProbe"
            dev.attrs["object_id"] = str(uuid.uuid4())
            dev.attrs["description"] = "Neuropixels 1.0 Probe"
            dev.attrs["manufacturer"] = "imec"
            dev.attrs["probe_id"] = int(p)
            dev.attrs["sampling_rate"] = 29999.9
            eg = ecephys.create_group(f"probe{p}")
            eg["device"] = h5py.SoftLink(f"/general/devices/probe{p}")
            eg.attrs["object_id"] = str(uuid.uuid4())
            eg.attrs["namespace"] = "ndx-aibs-ecephys"
            eg.attrs["neurodata_type"] = "EcephysElectrodeGroup"
            eg.attrs["description"] = "Ecephys Electrode Group"
            eg.attrs["location"] = "See electrode locations"
            eg.attrs["probe_id"] = int(p)
            eg.attrs["has_lfp_data"] = True
            eg.attrs["lfp_sampling_rate"] = 1250.0
        el = ecephys.create_group("electrodes")
        cols = [
            "location",
            "group",
            "group_name",
            "x",
            "y",
            "z",
            "probe_vertical_position",
            "probe_horizontal_position",
            "probe_id",
            "local_index",
            "valid_data",
            "imp",
            "filtering",
        ]
        _table(el, cols, "metadata about extracellular electrodes")
        el.attrs["namespace"] = "core"
        el.attrs["neurodata_type"] = "DynamicTable"
        ids = el.create_dataset("id", data=ch_ids)
        _typed(ids, "hdmf-common", "ElementIdentifiers")
        _col(el, "location", location, dtype=STR)
        refs = [ecephys[f"probe{p}"].ref for p in probe_ids]
        grp = el.create_dataset("group", data=refs, dtype=h5py.ref_dtype)
        _typed(grp, "hdmf-common", "VectorData")
        grp.attrs["description"] = "electrode group"
        _col(el, "group_name", [f"probe{p}" for p in probe_ids], dtype=STR)
        for name, col in zip("xyz", ccf_xyz.T):
            _col(el, name, col, dtype=np.float64)
        _col(el, "probe_vertical_position", vert.astype(np.int64))
        _col(el, "probe_horizontal_position", horiz.astype(np.int64))
        _col(el, "probe_id", probe_ids.astype(np.int64))
        _col(el, "local_index", np.tile(np.arange(4), 2).astype(np.int64))
        _col(el, "valid_data", valid)
        _col(el, "imp", np.full(8, np.nan))
        _col(
            el,
            "filtering",
            ["AP band: 500 Hz high-pass; LFP band: 1000 Hz low-pass"] * 8,
            dtype=STR,
        )

        u = f.create_group("units")
        ucols = [
            "spike_times",
            "spike_amplitudes",
            "quality",
            "isi_violations",
            "amplitude_cutoff",
            "presence_ratio",
            "peak_channel_id",
            "firing_rate",
            "local_index",
            "cluster_id",
            "snr",
            "waveform_mean",
        ]
        _table(u, ucols, "Autogenerated by NWBFile")
        u.attrs["namespace"] = "core"
        u.attrs["neurodata_type"] = "Units"
        uid = u.create_dataset("id", data=unit_ids.astype(np.int64))
        _typed(uid, "hdmf-common", "ElementIdentifiers")
        flat = np.concatenate(spikes)
        ends = np.cumsum([s.size for s in spikes])
        st_ds = _col(u, "spike_times", flat, dtype=np.float64)
        _index(u, "spike_times_index", st_ds, ends)
        amp_ds = _col(u, "spike_amplitudes", np.full(flat.size, 1e-4), dtype=np.float64)
        _index(u, "spike_amplitudes_index", amp_ds, ends)
        # mean waveform per unit: ragged (channels, 82 samples) blocks, 2 channels per unit here
        wf = _col(u, "waveform_mean", np.zeros((2 * n_units, 82), np.float32), dtype=np.float32)
        _index(u, "waveform_mean_index", wf, 2 * np.arange(1, n_units + 1))
        _col(u, "quality", [s[1] for s in unit_spec], dtype=STR)
        _col(u, "isi_violations", [s[2] for s in unit_spec], dtype=np.float64)
        _col(u, "amplitude_cutoff", [s[3] for s in unit_spec], dtype=np.float64)
        _col(u, "presence_ratio", [s[4] for s in unit_spec], dtype=np.float64)
        _col(u, "peak_channel_id", [ch_ids[s[0]] for s in unit_spec], dtype=np.int64)
        _col(u, "firing_rate", [s.size / t_end for s in spikes], dtype=np.float64)
        _col(u, "local_index", np.arange(n_units), dtype=np.int64)
        _col(u, "cluster_id", np.arange(n_units), dtype=np.int64)
        _col(u, "snr", np.full(n_units, 3.0), dtype=np.float64)

        for movie, r in pres.items():
            g = f.create_group(f"intervals/{movie}_presentations")
            pcols = [
                "start_time",
                "stop_time",
                "stimulus_name",
                "stimulus_block",
                "frame",
                "stimulus_index",
                "tags",
                # real files also hold a `timeseries` column (refs to stimulus timestamps)
            ]
            _table(g, pcols, f"Presentation times and stimuli details for '{movie}' stimuli")
            g.attrs["namespace"] = "core"
            g.attrs["neurodata_type"] = "TimeIntervals"
            n = len(r["frame"])
            _ids(g, n)
            _col(g, "start_time", r["start_time"], dtype=np.float64)
            _col(g, "stop_time", r["stop_time"], dtype=np.float64)
            _col(g, "stimulus_name", [movie] * n, dtype=STR)
            _col(g, "stimulus_block", r["stimulus_block"], dtype=np.float64)
            _col(g, "frame", r["frame"], dtype=np.float64)
            _col(g, "stimulus_index", np.full(n, 3.0), dtype=np.float64)
            tags = _col(g, "tags", ["stimulus_time_interval"] * n, dtype=STR)
            _index(g, "tags_index", tags, np.arange(1, n + 1))
            tmpl = rng.integers(0, 256, size=(movies[movie], *template_shape), dtype=np.uint8)
            truth["templates"][movie] = tmpl
            if templates_inside:
                tg = f.create_group(f"stimulus/templates/{movie}_image_stack")
                _ts_attrs(tg, "ImageSeries", nwb2=True)
                _ts_data(tg, tmpl, np.arange(movies[movie]) / FRAME_RATE, "NA")

        run_t = np.arange(0.0, t_end, 1.0 / 60.0)
        speed = running_value(run_t)
        speed[5] = np.nan
        for name, data, ts in (
            ("running_speed", speed, run_t),
            ("running_speed_end_times", speed, run_t + 1.0 / 60.0),
            ("running_wheel_rotation", speed * 0.01, run_t),
        ):
            g = f.create_group(f"processing/running/{name}")
            _ts_attrs(g, "TimeSeries", nwb2=True)
            _ts_data(g, data, ts, "cm/s")
        _module(f["processing/running"], "Running speed processing module")
        truth["running"] = (run_t, speed)
        if eye_tracking:
            et = np.arange(0.0, t_end, 1.0 / 60.0)
            area = 500.0 + np.sin(et)
            sph = np.stack([np.cos(et), np.sin(2 * et)], axis=1)  # [:, 0] y, [:, 1] x
            for mod in ("raw_gaze_mapping", "filtered_gaze_mapping"):
                for name, data in (
                    ("pupil_area", area),
                    ("eye_area", area * 3),
                    ("screen_coordinates", sph * 2),
                    ("screen_coordinates_spherical", sph),
                ):
                    g = f.create_group(f"processing/{mod}/{name}")
                    _ts_attrs(g, "TimeSeries", nwb2=True)
                    _ts_data(g, data, et, "Pixels ^ 2" if "area" in name else "Degrees")
            for mod in ("raw_gaze_mapping", "filtered_gaze_mapping"):
                _module(f[f"processing/{mod}"], f"Gaze mapping processing module {mod}")
            truth["eye"] = {"t": et, "area": area, "sph": sph}
    return truth


def write_template_npy(path: str | Path, frames: np.ndarray) -> Path:
    """Movie frames as EcephysProjectCache stores them (natural_movie_<n>.h5 is an .npy)."""
    path = Path(path)
    with open(path, "wb") as fh:
        np.save(fh, frames)
    return path


# ------------------------------------------------------------------------------------------------
# Natural scenes and gratings (one trial per presentation)
# ------------------------------------------------------------------------------------------------

# Per stimulus: (conditions, repeats, blanks, 2-photon frames per presentation, gap after each)
OPHYS_PRESENTATIONS = {
    "natural_scenes": (8, 3, 2, 8, 0),
    "static_gratings": (4, 3, 2, 8, 0),
    "drifting_gratings": (2, 2, 1, 60, 30),
}
STATIC_GRATINGS = [(0.0, 0.02, 0.0), (30.0, 0.08, 0.25), (90.0, 0.02, 0.5), (150.0, 0.32, 0.75)]
DRIFTING_GRATINGS = [(0.0, 2.0), (135.0, 8.0)]  # orientation (deg), temporal frequency (Hz)


def _presentation_order(n_cond: int, repeats: int, blanks: int, rng) -> np.ndarray:
    """Condition per presentation (-1: blank) in a shuffled order, as the sessions interleave."""
    order = np.concatenate([np.repeat(np.arange(n_cond), repeats), -np.ones(blanks, np.int64)])
    return order[rng.permutation(order.size)]


def add_ophys_presentations(path: str | Path, truth: dict, seed: int = 1) -> dict:
    """Append natural scenes, static and drifting gratings to a file of `write_ophys_nwb`.

    The recording is extended past its movies (dF/F, fluorescence, running and eye tracking keep
    their known functions of time) and each stimulus gets its presentation group as
    BrainObservatoryNwbDataSet reads it: natural_scenes_stimulus (IndexSeries: data = image
    index, -1 blank), static/drifting_gratings_stimulus (AbstractFeatureSeries: data columns
    named by `features`; drifting: temporal_frequency, orientation, blank_sweep), frame_duration
    [start, end) in 2-photon frames, and stimulus/templates/natural_scenes_image_stack.
    Returns `truth` with "presentations": {stimulus: {"condition", "start", "end"}}.
    """
    rng = np.random.default_rng(seed)
    n_cells = truth["dff"].shape[0]
    k = truth["n_t"]
    rows = {}
    for stim, (n_cond, reps, blanks, length, gap) in OPHYS_PRESENTATIONS.items():
        cond = _presentation_order(n_cond, reps, blanks, rng)
        start = k + (length + gap) * np.arange(cond.size)
        rows[stim] = {"condition": cond, "start": start, "end": start + length}
        k = int(start[-1] + length + gap + 5)
    n_t = k + 10
    t0 = truth["timestamps"][0]
    timestamps = t0 + np.arange(n_t) / FRAME_RATE
    dff = dff_value(np.arange(n_cells)[:, None], np.arange(n_t)[None, :]).astype(np.float32)
    scenes = rng.integers(
        0, 256, size=(OPHYS_PRESENTATIONS["natural_scenes"][0], 12, 16), dtype=np.uint8
    )
    with h5py.File(path, "a") as f:
        pipe = f["processing/brain_observatory_pipeline"]
        for name in ("DfOverF", "Fluorescence"):
            g = pipe[f"{name}/imaging_plane_1"]
            for key, value in (("data", dff), ("timestamps", timestamps), ("num_samples", n_t)):
                del g[key]
                g.create_dataset(key, data=value)
        run = pipe["BehavioralTimeSeries/running_speed"]
        for key, value in (("data", running_value(timestamps - t0)), ("timestamps", timestamps)):
            del run[key]
            run.create_dataset(key, data=value)
        if "eye" in truth:
            et_t = t0 + np.arange(0, n_t * 2) / (2 * FRAME_RATE)
            size = 100.0 + np.arange(et_t.size, dtype=np.float64)
            loc = np.stack([np.sin(et_t), np.cos(et_t)], axis=1)
            for name, data in (
                ("PupilTracking/pupil_size", size),
                ("EyeTracking/pupil_location_spherical", loc),
                ("EyeTracking/pupil_location", loc * 0.1),
            ):
                for key, value in (("data", data), ("timestamps", et_t)):
                    del pipe[name][key]
                    pipe[name].create_dataset(key, data=value)
            truth["eye"] = {"t": et_t, "size": size, "loc": loc}
        for stim, r in rows.items():
            g = f.create_group(f"stimulus/presentation/{stim}_stimulus")
            cond = r["condition"]
            if stim == "natural_scenes":
                _ts_attrs(g, "IndexSeries")
                g.create_dataset("data", data=cond.astype(np.float32))
                tg = f.create_group("stimulus/templates/natural_scenes_image_stack")
                _ts_attrs(tg, "ImageSeries")
                tg.create_dataset("data", data=scenes)
            else:
                _ts_attrs(g, "AbstractFeatureSeries")
                if stim == "static_gratings":
                    table = np.asarray(
                        [STATIC_GRATINGS[c] if c >= 0 else (np.nan,) * 3 for c in cond]
                    )
                    features = ["orientation", "spatial_frequency", "phase"]
                else:
                    table = np.asarray(
                        [
                            (DRIFTING_GRATINGS[c][1], DRIFTING_GRATINGS[c][0], 0.0)
                            if c >= 0
                            else (0.0, 0.0, 1.0)
                            for c in cond
                        ]
                    )
                    features = ["temporal_frequency", "orientation", "blank_sweep"]
                g.create_dataset("data", data=table.astype(np.float64))
                _s(g, "features", features)
                _s(g, "feature_units", ["degrees", "cycles/degree", "unitless"])
            g.create_dataset(
                "frame_duration", data=np.stack([r["start"], r["end"]], 1).astype(np.float64)
            )
            g.create_dataset("timestamps", data=timestamps[r["start"]])
            g.create_dataset("num_samples", data=cond.size)
    truth.update(n_t=n_t, timestamps=timestamps, dff=dff, running_t=timestamps, presentations=rows)
    truth["templates"]["natural_scenes"] = scenes
    return truth


def add_ecephys_presentations(path: str | Path, truth: dict, seed: int = 1) -> dict:
    """Append natural scenes, static and drifting gratings presentation tables to a file of
    `write_ecephys_nwb`, before its movies (t < 30 s, inside the spike trains).

    intervals/<stimulus>_presentations TimeIntervals with start_time, stop_time, stimulus_name
    and the parameter columns of allensdk's tables: natural_scenes `frame` (float, -1 blank);
    static_gratings `orientation` (float, NaN blank), `spatial_frequency` and `phase` as strings
    ("null" for blanks, lists such as "[0.25, 0.25]"); drifting_gratings `orientation`,
    `temporal_frequency` (float), `spatial_frequency` (string). Scene images go into
    stimulus/templates/natural_scenes_image_stack. Returns `truth` with "presentations".
    """
    rng = np.random.default_rng(seed)
    durations = {
        "natural_scenes": (0.25, 0.0),
        "static_gratings": (0.25, 0.0),
        "drifting_gratings": (2.0, 1.0),
    }
    t = 2.0
    rows = {}
    scenes = rng.integers(
        0, 256, size=(OPHYS_PRESENTATIONS["natural_scenes"][0], 12, 16), dtype=np.uint8
    )
    with h5py.File(path, "a") as f:
        for stim, (n_cond, reps, blanks, _, _) in OPHYS_PRESENTATIONS.items():
            cond = _presentation_order(n_cond, reps, blanks, rng)
            dur, gap = durations[stim]
            start = t + (dur + gap) * np.arange(cond.size)
            rows[stim] = {"condition": cond, "start": start, "end": start + dur}
            t = float(start[-1] + dur + gap + 0.5)
            g = f.create_group(f"intervals/{stim}_presentations")
            cols = ["start_time", "stop_time", "stimulus_name"]
            n = cond.size
            _ids(g, n)
            _col(g, "start_time", start, dtype=np.float64)
            _col(g, "stop_time", start + dur, dtype=np.float64)
            _col(g, "stimulus_name", [stim] * n, dtype=STR)
            if stim == "natural_scenes":
                _col(g, "frame", cond.astype(np.float64), dtype=np.float64)
                cols.append("frame")
                tg = f.create_group("stimulus/templates/natural_scenes_image_stack")
                _ts_attrs(tg, "ImageSeries", nwb2=True)
                _ts_data(tg, scenes, np.arange(len(scenes), dtype=np.float64), "NA")
            elif stim == "static_gratings":
                ori = [STATIC_GRATINGS[c][0] if c >= 0 else np.nan for c in cond]
                sf = [str(STATIC_GRATINGS[c][1]) if c >= 0 else "null" for c in cond]
                ph = [
                    f"[{STATIC_GRATINGS[c][2]}, {STATIC_GRATINGS[c][2]}]" if c >= 0 else "null"
                    for c in cond
                ]
                _col(g, "orientation", ori, dtype=np.float64)
                _col(g, "spatial_frequency", sf, dtype=STR)
                _col(g, "phase", ph, dtype=STR)
                cols += ["orientation", "spatial_frequency", "phase"]
            else:
                ori = [DRIFTING_GRATINGS[c][0] if c >= 0 else np.nan for c in cond]
                tf = [DRIFTING_GRATINGS[c][1] if c >= 0 else np.nan for c in cond]
                sf = ["0.04" if c >= 0 else "null" for c in cond]
                _col(g, "orientation", ori, dtype=np.float64)
                _col(g, "temporal_frequency", tf, dtype=np.float64)
                _col(g, "spatial_frequency", sf, dtype=STR)
                cols += ["orientation", "temporal_frequency", "spatial_frequency"]
            _table(g, cols, f"Presentation times and stimuli details for '{stim}' stimuli")
            g.attrs["namespace"] = "core"
            g.attrs["neurodata_type"] = "TimeIntervals"
    truth["presentations"] = rows
    truth["templates"]["natural_scenes"] = scenes
    return truth


# Stimulus presentation tables beside the movies (NWB 2, Neuropixels)
# ------------------------------------------------------------------------------------------------

# drifting gratings parameters as the Visual Coding Neuropixels files store them (Brain
# Observatory 1.1: 8 directions x 5 temporal frequencies, contrast 0.8, 0.04 cycles/degree,
# 2 s per presentation, blank sweeps with no orientation / temporal frequency / contrast)
GRATING_STRINGS = {
    "color": "[1.0, 1.0, 1.0]",
    "mask": "None",
    "phase": "[42471.86666667, 42471.86666667]",
    "size": "[250.0, 250.0]",
    "units": "deg",
}


def add_drifting_gratings(
    path: str | Path,
    orientations: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0),
    temporal_frequencies: tuple[float, ...] = (1.0, 2.0),
    repeats: int = 2,
    blanks: int = 2,
    duration: float = 0.5,
    gap: float = 0.25,
    t0: float = 1.0,
    as_strings: bool = False,
    seed: int = 0,
) -> dict:
    """Add `intervals/drifting_gratings_presentations` (TimeIntervals) to an NWB file written by
    `write_ecephys_nwb`, in a random condition order, starting at `t0` (before the movies).

    `as_strings`: parameter columns as allensdk's `add_stimulus_presentations` writes columns of
    mixed types (all values str, "" where not applicable) instead of float64 with NaN.
    Returns the rows written (dict of columns, presentation order).
    """
    rng = np.random.default_rng(seed)
    conditions = [(o, tf) for o in orientations for tf in temporal_frequencies] * repeats
    conditions += [(np.nan, np.nan)] * blanks
    order = rng.permutation(len(conditions))
    n = len(conditions)
    ori = np.asarray([conditions[i][0] for i in order], dtype=np.float64)
    tf = np.asarray([conditions[i][1] for i in order], dtype=np.float64)
    contrast = np.where(np.isnan(ori), np.nan, 0.8)
    sf = np.where(np.isnan(ori), np.nan, 0.04)
    start = t0 + np.arange(n) * (duration + gap)
    rows = {
        "id": np.arange(100, 100 + n, dtype=np.int64),
        "start_time": start,
        "stop_time": start + duration,
        "orientation": ori,
        "temporal_frequency": tf,
        "contrast": contrast,
        "spatial_frequency": sf,
    }
    with h5py.File(path, "a") as f:
        g = f.create_group("intervals/drifting_gratings_presentations")
        numeric = ["contrast", "orientation", "spatial_frequency", "temporal_frequency"]
        cols = ["start_time", "stop_time", "stimulus_name", "stimulus_block", "color"]
        cols += ["contrast", "mask", "opacity", "orientation", "phase", "size"]
        cols += ["spatial_frequency", "temporal_frequency", "units", "stimulus_index", "tags"]
        _table(g, cols, "Presentation times and stimuli details for 'drifting_gratings' stimuli")
        g.attrs["namespace"] = "core"
        g.attrs["neurodata_type"] = "TimeIntervals"
        ids = g.create_dataset("id", data=rows["id"])
        _typed(ids, "hdmf-common", "ElementIdentifiers")
        _col(g, "start_time", start, dtype=np.float64)
        _col(g, "stop_time", rows["stop_time"], dtype=np.float64)
        _col(g, "stimulus_name", ["drifting_gratings"] * n, dtype=STR)
        _col(g, "stimulus_block", np.full(n, 2.0), dtype=np.float64)
        _col(g, "opacity", np.ones(n), dtype=np.float64)
        _col(g, "stimulus_index", np.full(n, 8.0), dtype=np.float64)
        for name, value in GRATING_STRINGS.items():
            _col(g, name, [value] * n, dtype=STR)
        for name in numeric:
            values = rows[name]
            if as_strings:
                text = ["" if np.isnan(v) else str(v) for v in values]
                _col(g, name, text, dtype=STR)
            else:
                _col(g, name, values, dtype=np.float64)
        tags = _col(g, "tags", ["stimulus_time_interval"] * n, dtype=STR)
        _index(g, "tags_index", tags, np.arange(1, n + 1))
    return rows

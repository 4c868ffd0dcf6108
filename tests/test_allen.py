"""Allen converters: small NWB files in the Allen schemas -> native sessions, read back and checked."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from allen_fixtures import (
    dff_value,
    running_value,
    write_ecephys_nwb,
    write_ophys_nwb,
    write_template_npy,
)
from neurotwin.cli import data as data_cli
from neurotwin.data import native
from neurotwin.data.allen.ecephys import convert_ecephys
from neurotwin.data.allen.ophys import convert_ophys
from neurotwin.data.allen.resample import area_resize, count_in_intervals, interval_mean
from neurotwin.data.native import NativeSession
from neurotwin.errors import DataFormatError

SIZE = (6, 8)
CLIP = 4


def _trials_meta(folder: Path) -> dict[str, np.ndarray]:
    return {
        k: np.load(folder / "meta" / "trials" / f"{k}.npy") for k in ("movie", "clip", "repeat")
    }


@pytest.fixture(scope="module")
def ophys(tmp_path_factory):
    root = tmp_path_factory.mktemp("ophys")
    truth = write_ophys_nwb(root / "501940850.nwb")
    folder = convert_ophys(root / "501940850.nwb", root / "out", frame_size=SIZE, clip_length=CLIP)
    return truth, folder


@pytest.fixture(scope="module")
def ecephys(tmp_path_factory):
    root = tmp_path_factory.mktemp("ecephys")
    truth = write_ecephys_nwb(root / "session_715093703.nwb")
    folder = convert_ecephys(
        root / "session_715093703.nwb", root / "out", frame_size=SIZE, clip_length=5
    )
    return truth, folder


# ------------------------------------------------------------------------------------------------
# helpers


def test_area_resize_block_mean_and_constant():
    x = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    out = area_resize(x, (2, 3))
    expected = x.reshape(2, 2, 2, 3, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # non-integer factor: a constant image stays constant, the total mass is kept
    y = np.full((1, 7, 13), 3.0, np.float32)
    np.testing.assert_allclose(area_resize(y, (3, 5)), 3.0, rtol=1e-6)
    z = np.random.default_rng(0).random((1, 12, 24)).astype(np.float32)
    assert area_resize(z, (5, 7)).mean() == pytest.approx(z.mean(), rel=1e-5)


def test_interval_mean_and_counts():
    t = np.arange(10, dtype=float)
    v = np.stack([t * 2, -t])
    out = interval_mean(t, v, np.array([0.0, 2.0, 4.5]), np.array([2.0, 2.0, 4.6]))
    # [0, 2): samples 0, 1; [2, 2): empty -> nearest (2); [4.5, 4.6): empty -> nearest to 4.55
    np.testing.assert_allclose(out, [[1.0, 4.0, 10.0], [-0.5, -2.0, -5.0]])
    spikes = np.array([0.0, 0.5, 1.0, 1.0, 2.0])
    np.testing.assert_array_equal(count_in_intervals(spikes, [0.0, 1.0], [1.0, 2.0]), [2, 2])


# ------------------------------------------------------------------------------------------------
# ophys


def test_ophys_readback_values(ophys):
    truth, folder = ophys
    s = NativeSession(folder)
    assert s.frame_shape == SIZE and s.n_neurons == 4
    np.testing.assert_array_equal(s.unit_ids, truth["cell_ids"])
    meta = _trials_meta(folder)
    cells = np.arange(4)[:, None]
    for trial in range(s.n_trials):
        movie, clip, rep = meta["movie"][trial], meta["clip"][trial], meta["repeat"][trial]
        rows = truth["rows"][movie]
        n_frames = truth["templates"][movie].shape[0]
        data = s.load_trial(trial)
        assert s.trial_length(trial) == min(CLIP, n_frames - clip * CLIP)
        for j in range(s.trial_length(trial)):
            i = clip * CLIP + j
            row = rep * n_frames + i
            start, end = rows["start"][row], rows["end"][row]
            samples = np.arange(start, max(end, start + 1))  # empty span -> sample `start`
            expected = dff_value(cells, samples).mean(axis=1)
            np.testing.assert_allclose(data["responses"][:, j], expected, rtol=1e-5)
            t = truth["timestamps"]
            t_span = t[samples] - t[0]
            np.testing.assert_allclose(
                data["behavior"][1, j], running_value(t_span).mean(), rtol=1e-5
            )
        frames = area_resize(truth["templates"][movie][clip * CLIP : clip * CLIP + CLIP], SIZE)
        np.testing.assert_allclose(
            data["videos"][:, :, : frames.shape[0]], np.moveaxis(frames, 0, -1), rtol=1e-5
        )
        assert np.isnan(data["videos"][:, :, frames.shape[0] :]).all()
    # the frames spanning two samples / none exist in the fixture: both rules were exercised
    assert any(e - s_ == 2 for s_, e in zip(rows["start"], rows["end"]))
    assert any(e == s_ for s_, e in zip(rows["start"], rows["end"]))


def test_ophys_tiers_meta_coordinates(ophys):
    truth, folder = ophys
    s = NativeSession(folder)
    meta = _trials_meta(folder)
    held = (meta["movie"] == "natural_movie_one") & (meta["clip"] == 0)
    assert set(s.tiers[~held]) == {"train"}
    # 4 repeats of the held-out clip: the first 2 oracle, the last 2 test
    assert list(s.tiers[held]) == ["oracle", "oracle", "final_test_main", "final_test_main"]
    assert s.n_trials == 4 * 3 + 4 * 2  # nm1: 12 frames = 3 clips, nm3: 8 frames = 2 clips
    m = s.meta
    assert m["source"] == "allen_brain_observatory_ophys"
    assert m["ophys_experiment_id"] == 501940850 and m["session_type"] == "three_session_A"
    assert m["cre_line"] == "Cux2-CreERT2" and m["has_eye_tracking"] is True
    assert m["imaging_depth_um"] == 175 and m["targeted_structure"] == "VISp"
    assert list(np.load(folder / "meta/neurons/area.npy")) == ["VISp"] * 4
    np.testing.assert_allclose(np.load(folder / "meta/neurons/depth.npy"), 175)
    um_per_px = 400 / truth["mask_shape"][1]
    np.testing.assert_allclose(s.coordinates[:, :2], truth["centroid_px"] * um_per_px, rtol=1e-5)
    np.testing.assert_allclose(s.coordinates[:, 2], 175)
    stats = s.statistics(shipped=True)
    assert stats["responses"]["mean"].shape == (4,)
    # pupil from eye tracking (NaN blink interpolated): finite, non-zero
    trial = s.load_trial(0)
    assert np.isfinite(trial["behavior"]).all() and np.all(trial["behavior"][0] > 0)


def test_ophys_events_and_no_eye_tracking(tmp_path):
    truth = write_ophys_nwb(tmp_path / "x.nwb", eye_tracking=False, movies={"natural_movie_one": 8})
    ev = np.zeros_like(truth["dff"], dtype=np.float64)
    ev[1, truth["rows"]["natural_movie_one"]["start"][0]] = 2.5
    np.savez(tmp_path / "x_events.npz", ev=ev)
    folder = convert_ophys(
        tmp_path / "x.nwb",
        tmp_path / "out",
        response="events",
        events_path=tmp_path / "x_events.npz",
        frame_size=SIZE,
        clip_length=CLIP,
    )
    s = NativeSession(folder)
    assert s.meta["has_eye_tracking"] is False and s.meta["responses"] == "events"
    first = s.load_trial(0)
    assert first["responses"][1, 0] == pytest.approx(2.5) and first["responses"].sum() == 2.5
    assert not first["behavior"][0].any() and not first["pupil_center"].any()
    with pytest.raises(DataFormatError, match="events"):
        convert_ophys(tmp_path / "x.nwb", tmp_path / "o2", response="events")
    np.savez(tmp_path / "bad.npz", ev=ev[:, :-1])
    with pytest.raises(DataFormatError, match="must match dF/F shape"):
        convert_ophys(
            tmp_path / "x.nwb", tmp_path / "o3", response="events", events_path=tmp_path / "bad.npz"
        )


def _ophys_variant(tmp_path, edit):
    path = tmp_path / "bad.nwb"
    write_ophys_nwb(path, movies={"natural_movie_one": 8}, repeats=2)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


DFF = "processing/brain_observatory_pipeline/DfOverF/imaging_plane_1"


@pytest.mark.parametrize(
    "edit, field, problem",
    [
        (lambda f: f.__delitem__(DFF), f"{DFF}/timestamps", "missing dataset"),
        (
            lambda f: (
                f.__delitem__(f"{DFF}/data"),
                f.create_dataset(f"{DFF}/data", data=np.zeros((3, 5))),
            ),
            f"{DFF}/data",
            "dF/F must be (cells, frames)",
        ),
        (
            lambda f: f.__delitem__("stimulus/presentation/natural_movie_one_stimulus"),
            "stimulus/presentation",
            "no natural movie stimulus",
        ),
        (
            lambda f: f.__delitem__("stimulus/templates/natural_movie_one_image_stack"),
            "stimulus/templates/natural_movie_one_image_stack/data",
            "missing dataset",
        ),
        (
            lambda f: f.__delitem__(
                "processing/brain_observatory_pipeline/ImageSegmentation/cell_specimen_ids"
            ),
            "processing/brain_observatory_pipeline/ImageSegmentation/cell_specimen_ids",
            "missing dataset",
        ),
    ],
)
def test_ophys_bad_files(tmp_path, edit, field, problem):
    path = _ophys_variant(tmp_path, edit)
    with pytest.raises(DataFormatError) as e:
        convert_ophys(path, tmp_path / "out")
    assert e.value.path == path and e.value.field == field
    assert problem in str(e.value) and str(path) in str(e.value)


def test_not_an_nwb_file(tmp_path):
    bad = tmp_path / "x.nwb"
    bad.write_text("hello")
    with pytest.raises(DataFormatError, match="not a readable NWB/HDF5"):
        convert_ophys(bad, tmp_path / "out")
    with pytest.raises(DataFormatError, match="file not found"):
        convert_ecephys(tmp_path / "missing.nwb", tmp_path / "out")


# ------------------------------------------------------------------------------------------------
# ecephys


def test_ecephys_units_counts_behaviour(ecephys):
    truth, folder = ecephys
    s = NativeSession(folder)
    spec = truth["unit_spec"]
    kept = [i for i in range(5)]  # fixture: the first 5 units pass allensdk's default filters
    np.testing.assert_array_equal(s.unit_ids, truth["unit_ids"][kept])
    areas = [truth["location"][spec[i][0]] for i in kept]
    assert list(np.load(folder / "meta/neurons/area.npy")) == areas
    np.testing.assert_allclose(s.coordinates, truth["ccf"][[spec[i][0] for i in kept]], rtol=1e-5)
    meta = _trials_meta(folder)
    pres = truth["pres"]
    for trial in range(s.n_trials):
        movie, clip, rep = meta["movie"][trial], meta["clip"][trial], meta["repeat"][trial]
        n_frames = truth["templates"][movie].shape[0]
        data = s.load_trial(trial)
        for j in range(s.trial_length(trial)):
            row = rep * n_frames + clip * 5 + j
            t0, t1 = pres[movie]["start_time"][row], pres[movie]["stop_time"][row]
            counts = [np.sum((truth["spikes"][u] >= t0) & (truth["spikes"][u] < t1)) for u in kept]
            np.testing.assert_array_equal(data["responses"][:, j], counts)
            rt, rv = truth["running"]
            inside = (rt >= t0) & (rt < t1) & np.isfinite(rv)
            assert data["behavior"][1, j] == pytest.approx(rv[inside].mean())
            et = truth["eye"]["t"]
            e_in = (et >= t0) & (et < t1)
            assert data["behavior"][0, j] == pytest.approx(truth["eye"]["area"][e_in].mean())
            sph = truth["eye"]["sph"][e_in].mean(axis=0)
            np.testing.assert_allclose(data["pupil_center"][:, j], [sph[1], sph[0]], rtol=1e-5)
    assert s.meta["ecephys_session_id"] == 715093703
    assert s.meta["unit_filters"]["presence_ratio_minimum"] == 0.95
    assert s.tier_counts == {"final_test_main": 2, "oracle": 2, "train": 4 * 2 + 2 * 2}
    # spikes exactly on a frame's start count in that frame (the fixture put 3 there)
    assert s.load_trial(0)["responses"][:, 0].min() >= 1


def test_ecephys_filters_and_areas(tmp_path):
    write_ecephys_nwb(tmp_path / "s.nwb")
    f1 = convert_ecephys(
        tmp_path / "s.nwb", tmp_path / "o", areas=["VISp", "VISl"], frame_size=SIZE, clip_length=5
    )
    assert list(np.load(f1 / "meta/neurons/area.npy")) == ["VISp", "VISp", "VISl"]
    f2 = convert_ecephys(
        tmp_path / "s.nwb",
        tmp_path / "o",
        presence_ratio_minimum=0.9,
        name="loose",
        frame_size=SIZE,
        clip_length=5,
    )
    assert NativeSession(f2).n_neurons == 6  # + the unit with presence ratio 0.92
    f3 = convert_ecephys(
        tmp_path / "s.nwb",
        tmp_path / "o",
        filter_by_validity=False,
        name="all",
        frame_size=SIZE,
        clip_length=5,
    )
    assert NativeSession(f3).n_neurons == 8  # + out-of-brain, invalid channel, "noise"
    with pytest.raises(DataFormatError, match="no unit passes the filters"):
        convert_ecephys(tmp_path / "s.nwb", tmp_path / "o", areas=["VISam"], name="x")


def test_ecephys_templates_outside_and_no_ccf_no_eye(tmp_path):
    truth = write_ecephys_nwb(
        tmp_path / "s.nwb",
        templates_inside=False,
        ccf=False,
        eye_tracking=False,
        movies={"natural_movie_one": 10},
        repeats={"natural_movie_one": 2},
    )
    with pytest.raises(DataFormatError, match="--templates") as e:
        convert_ecephys(tmp_path / "s.nwb", tmp_path / "o")
    assert e.value.field == "stimulus/templates/natural_movie_one_image_stack/data"
    npy = write_template_npy(
        tmp_path / "natural_movie_1.h5", truth["templates"]["natural_movie_one"]
    )
    folder = convert_ecephys(
        tmp_path / "s.nwb",
        tmp_path / "o",
        frame_size=SIZE,
        clip_length=5,
        templates={"natural_movie_one": npy},
    )
    s = NativeSession(folder)
    assert s.meta["has_eye_tracking"] is False and "probe" in s.meta["coordinates"]
    np.testing.assert_allclose(s.coordinates[:, 1], truth["vert"][[0, 1, 4, 6, 2]])
    assert not s.load_trial(0)["pupil_center"].any()
    video = s.load_trial(0)["videos"]
    np.testing.assert_allclose(
        video,
        np.moveaxis(area_resize(truth["templates"]["natural_movie_one"][:5], SIZE), 0, -1),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "edit, field, problem",
    [
        (lambda f: f.__delitem__("units"), "units", "missing group"),
        (
            lambda f: f.__delitem__("units/spike_times_index"),
            "units/spike_times_index",
            "missing dataset",
        ),
        (
            lambda f: (
                f.__delitem__("intervals/natural_movie_one_presentations"),
                f.__delitem__("intervals/natural_movie_three_presentations"),
            ),
            "intervals",
            "no natural movie stimulus",
        ),
        (
            lambda f: (
                f.__delitem__("units/presence_ratio"),
                f["units"].create_dataset("presence_ratio", data=np.ones(3)),
            ),
            "units/presence_ratio",
            "column has 3 rows",
        ),
        (
            lambda f: f.__delitem__("intervals/natural_movie_one_presentations/frame"),
            "intervals/natural_movie_one_presentations/frame",
            "missing dataset",
        ),
    ],
)
def test_ecephys_bad_files(tmp_path, edit, field, problem):
    path = tmp_path / "bad.nwb"
    write_ecephys_nwb(path, movies={"natural_movie_one": 6, "natural_movie_three": 6})
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(DataFormatError) as e:
        convert_ecephys(path, tmp_path / "out", clip_length=3)
    assert e.value.path == path and e.value.field == field and problem in str(e.value)


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_converts_and_guards_allensdk(tmp_path, capsys):
    write_ophys_nwb(tmp_path / "o.nwb", movies={"natural_movie_one": 8}, repeats=2)
    rc = data_cli.main(
        [
            "allen-ophys",
            "--nwb",
            str(tmp_path / "o.nwb"),
            "--out",
            str(tmp_path / "data"),
            "--frame-size",
            "4",
            "6",
            "--clip-length",
            "4",
            "--heldout-clips",
            "natural_movie_one:1",
            "--test-fraction",
            "0",
        ]
    )
    assert rc == 0
    s = NativeSession(tmp_path / "data" / "allen-ophys-501940850")
    assert s.frame_shape == (4, 6) and s.tier_counts == {"oracle": 2, "train": 2}
    write_ecephys_nwb(
        tmp_path / "e.nwb", movies={"natural_movie_three": 6}, repeats={"natural_movie_three": 2}
    )
    rc = data_cli.main(
        [
            "allen-ecephys",
            "--nwb",
            str(tmp_path / "e.nwb"),
            "--out",
            str(tmp_path / "data"),
            "--areas",
            "VISp",
            "LGd",
            "--clip_length",
            "3",
        ]
    )
    assert rc == 0
    assert NativeSession(tmp_path / "data" / "allen-ecephys-715093703").n_neurons == 3
    with h5py.File(tmp_path / "o.nwb", "a") as f:
        del f[DFF]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        data_cli.main(
            ["allen-ophys", "--nwb", str(tmp_path / "o.nwb"), "--out", str(tmp_path / "d2")]
        )
    assert stop.value.code == 2 and "DfOverF" in capsys.readouterr().err
    if importlib.util.find_spec("allensdk") is None:
        with pytest.raises(SystemExit) as stop:
            data_cli.main(
                ["allen-ecephys", "--session-id", "715093703", "--out", str(tmp_path / "d3")]
            )
        assert stop.value.code == 2
        assert re.search(r"neurotwin\[allen\].*--nwb PATH", capsys.readouterr().err)


def test_meta_json_is_valid(ophys, ecephys):
    for folder in (ophys[1], ecephys[1]):
        meta = json.loads((folder / native.SESSION_META_FILE).read_text())
        assert meta["source"].startswith("allen") and meta["clip_length"] in (CLIP, 5)


def test_ophys_negative_dff_is_shifted(tmp_path):
    truth = write_ophys_nwb(tmp_path / "n.nwb", movies={"natural_movie_one": 8}, repeats=2)
    with h5py.File(tmp_path / "n.nwb", "a") as f:
        f[f"{DFF}/data"][...] = truth["dff"] - 1.0  # cell 0 and 1 go negative
    raw = convert_ophys(
        tmp_path / "n.nwb",
        tmp_path / "o",
        dff_offset="none",
        name="raw",
        frame_size=SIZE,
        clip_length=CLIP,
    )
    shifted = convert_ophys(tmp_path / "n.nwb", tmp_path / "o", frame_size=SIZE, clip_length=CLIP)
    offset = np.load(shifted / "meta/neurons/response_offset.npy")
    assert offset[0] < 0 and offset[3] == 0
    a, b = NativeSession(raw), NativeSession(shifted)
    lowest = min(np.nanmin(b.load_trial(t)["responses"]) for t in range(b.n_trials))
    assert lowest == pytest.approx(0.0, abs=1e-6)
    for t in range(a.n_trials):
        np.testing.assert_allclose(
            b.load_trial(t)["responses"] + offset[:, None],
            a.load_trial(t)["responses"],
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize("name", ["allen_ophys", "allen_ecephys"])
def test_presets_load(name):
    from neurotwin import config as cfg

    preset = cfg.load_yaml(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    assert preset.data.data_dir == f"data/{name}" and preset.train.criterion == "poisson"


def test_allensdk_reads_the_fixtures(tmp_path):
    """Where allensdk is installed (Python <= 3.11, see neurotwin.data.allen), its own readers
    open the fixtures and agree with the converters."""
    pytest.importorskip("allensdk")
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession
    from allensdk.core.brain_observatory_nwb_data_set import BrainObservatoryNwbDataSet

    truth = write_ophys_nwb(tmp_path / "o.nwb")
    ds = BrainObservatoryNwbDataSet(str(tmp_path / "o.nwb"))
    _, dff = ds.get_dff_traces()
    np.testing.assert_allclose(dff, truth["dff"])
    assert ds.get_metadata()["imaging_depth_um"] == 175
    table = ds.get_stimulus_table("natural_movie_one")
    assert list(table["start"]) == truth["rows"]["natural_movie_one"]["start"]
    etruth = write_ecephys_nwb(tmp_path / "e.nwb")
    session = EcephysSession.from_nwb_path(str(tmp_path / "e.nwb"))
    assert sorted(session.units.index) == sorted(etruth["unit_ids"][:5])
    folder = convert_ecephys(tmp_path / "e.nwb", tmp_path / "out", frame_size=SIZE)
    np.testing.assert_array_equal(
        sorted(NativeSession(folder).unit_ids), sorted(session.units.index)
    )


def test_fetch_by_id_through_allensdk_cache(tmp_path, monkeypatch):
    """The --experiment-id / --session-id code path, with allensdk's caches stubbed (no network)."""
    import sys
    import types

    ophys_nwb = tmp_path / "ophys_experiment_data" / "501940850.nwb"
    ophys_nwb.parent.mkdir()
    write_ophys_nwb(ophys_nwb, movies={"natural_movie_one": 8}, repeats=2)
    ecephys_nwb = tmp_path / "session_715093703" / "session_715093703.nwb"
    ecephys_nwb.parent.mkdir()
    truth = write_ecephys_nwb(
        ecephys_nwb,
        movies={"natural_movie_one": 6},
        repeats={"natural_movie_one": 2},
        templates_inside=False,
    )
    movie_file = write_template_npy(
        tmp_path / "natural_movie_1.h5", truth["templates"]["natural_movie_one"]
    )
    calls = []

    class BrainObservatoryCache:
        EVENTS_DATA_KEY = "EVENTS_DATA"

        def __init__(self, manifest_file):
            calls.append(("boc", Path(manifest_file).name))

        def get_ophys_experiment_data(self, experiment_id):
            calls.append(("ophys", experiment_id))
            return types.SimpleNamespace(nwb_file=str(ophys_nwb))

    class EcephysProjectCache:
        SESSION_NWB_KEY, NATURAL_MOVIE_KEY = "session_nwb", "natural_movie"

        @classmethod
        def from_warehouse(cls, manifest):
            return cls()

        def get_session_data(self, session_id):
            calls.append(("ecephys", session_id))

        def get_natural_movie_template(self, number):
            calls.append(("movie", number))

        def get_cache_path(self, file_name, key, *args):
            return str(ecephys_nwb if key == self.SESSION_NWB_KEY else movie_file)

    modules = {
        "allensdk": types.ModuleType("allensdk"),
        "allensdk.core": types.ModuleType("allensdk.core"),
        "allensdk.core.brain_observatory_cache": types.ModuleType("boc"),
        "allensdk.brain_observatory": types.ModuleType("bo"),
        "allensdk.brain_observatory.ecephys": types.ModuleType("e"),
        "allensdk.brain_observatory.ecephys.ecephys_project_cache": types.ModuleType("epc"),
    }
    modules["allensdk.core.brain_observatory_cache"].BrainObservatoryCache = BrainObservatoryCache
    modules[
        "allensdk.brain_observatory.ecephys.ecephys_project_cache"
    ].EcephysProjectCache = EcephysProjectCache
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    out = tmp_path / "data"
    common = ["--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--clip-length", "3"]
    assert data_cli.main(["allen-ophys", "--experiment-id", "501940850", *common]) == 0
    assert data_cli.main(["allen-ecephys", "--session-id", "715093703", *common]) == 0
    assert ("ophys", 501940850) in calls and ("ecephys", 715093703) in calls
    assert ("movie", 1) in calls
    assert NativeSession(out / "allen-ophys-501940850").n_trials == 2 * 3
    assert NativeSession(out / "allen-ecephys-715093703").n_trials == 2 * 2

"""The native layout's reader on small folders written in that layout (Sensorium 2023)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from native_fixture import published_name, write_native_dataset, write_native_session
from neurotwin.data import native
from neurotwin.data.native import NativeSession, find_sessions, reader, session_alias, statistics
from neurotwin.errors import DataFormatError

# ---------------------------------------------------------------------------------------------
# find_sessions and aliases
# ---------------------------------------------------------------------------------------------


def test_find_sessions_all_sorted_and_by_alias(native_dataset):
    names = [published_name(i) for i in range(3)]
    found = find_sessions(native_dataset)
    assert [p.name for p in found] == sorted(names)
    # by folder name and by short alias, in the order given, duplicates dropped
    picked = find_sessions(native_dataset, ["29003-3-4", names[0], "29003-3-4"])
    assert [p.name for p in picked] == [names[2], names[0]]
    assert session_alias(found[1]) == "29002-2-3"


def test_find_sessions_viv1t_letter_and_plain_names(tmp_path):
    write_native_session(tmp_path / native.SENSORIUM_2023_MICE["A"], n_neurons=3)
    write_native_session(tmp_path / "mouse_x", n_neurons=3, meta={"alias": "mx"})
    write_native_session(tmp_path / "plain", n_neurons=3)
    (tmp_path / "not_a_session").mkdir()
    (tmp_path / ".hidden_tmp").mkdir()
    assert [p.name for p in find_sessions(tmp_path, ["A"])] == [native.SENSORIUM_2023_MICE["A"]]
    assert [p.name for p in find_sessions(tmp_path, ["29156-11-10"])] == [
        native.SENSORIUM_2023_MICE["A"]
    ]
    assert [p.name for p in find_sessions(tmp_path, ["mx", "plain"])] == ["mouse_x", "plain"]
    assert len(find_sessions(tmp_path)) == 3


def test_unknown_alias_lists_sessions(native_dataset):
    with pytest.raises(DataFormatError) as e:
        find_sessions(native_dataset, ["29156-11-10"])
    msg = str(e.value)
    assert "29156-11-10" in msg and published_name(0) in msg and "(29001-1-2)" in msg
    assert e.value.field == "mouse_ids"


def test_missing_or_empty_data_dir(tmp_path):
    with pytest.raises(DataFormatError, match="data folder not found"):
        find_sessions(tmp_path / "nowhere")
    with pytest.raises(DataFormatError, match="no session folder"):
        find_sessions(tmp_path)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def test_arrays_read_back_identical(tmp_path):
    lengths = [24, 10, 24, 17, 24, 5, 24, 24, 1, 24]
    path, written = write_native_session(
        tmp_path / "s",
        trial_lengths=lengths,
        seed=3,
        noiseless=True,
        return_arrays=True,
        dtype=np.float64,
    )
    s = NativeSession(path)
    assert s.name == "s" and s.path == path
    np.testing.assert_array_equal(s.tiers, written.tiers)
    assert s.tiers.dtype.kind == "U"
    np.testing.assert_array_equal(s.unit_ids, written.unit_ids)
    np.testing.assert_array_equal(s.coordinates, written.coordinates.astype(np.float32))
    assert s.coordinates.dtype == np.float32 and s.coordinates.shape == (7, 3)
    assert s.n_neurons == 7 and s.frame_shape == (6, 8) and s.n_trials == 10
    assert s.has_noiseless
    for trial, arrays in written.trials.items():
        got = s.load_trial(trial)
        assert set(got) == set(native.TRIAL_ARRAYS)
        for name in native.TRIAL_ARRAYS:
            assert got[name].dtype == arrays[name].dtype
            np.testing.assert_array_equal(got[name], arrays[name])  # NaN == NaN here
        assert s.trial_length(trial) == lengths[trial]
        np.testing.assert_array_equal(
            s.load_noiseless(trial), written.extra_data[native.NOISELESS][trial]
        )
        part = s.load_trial(trial, frames=slice(2, 9))
        np.testing.assert_array_equal(part[native.VIDEOS], arrays[native.VIDEOS][..., 2:9])


def test_tiers_and_trial_ids(native_session):
    s = NativeSession(native_session)
    assert s.tier_counts == {"train": 6, "oracle": 2, "live_test_main": 1, "final_test_main": 1}
    train = s.trial_ids("train")
    assert train.dtype == np.int64 and np.all(np.diff(train) > 0)
    np.testing.assert_array_equal(train, np.flatnonzero(s.tiers == "train"))
    both = s.trial_ids(["train", "oracle"])
    assert len(both) == 8 and set(both) >= set(train)
    assert s.meta == {}


def test_hidden_responses_detected(tmp_path):
    for hidden in ("zeros", "nan"):
        s = NativeSession(write_native_session(tmp_path / hidden, hidden=hidden))
        assert s.responses_hidden("live_test_main") and s.responses_hidden("final_test_main")
        assert not s.responses_hidden("train") and not s.responses_hidden("oracle")
        # hidden NaN responses of a test trial are not an error
        s.load_trial(int(s.trial_ids("live_test_main")[0]))


def test_limit_neurons(native_session):
    full = NativeSession(native_session)
    s = NativeSession(native_session, limit_neurons=4)
    assert s.n_neurons == 4 and len(s.unit_ids) == 4 and s.coordinates.shape == (4, 3)
    index = s.neuron_index
    assert np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(s.unit_ids, full.unit_ids[index])
    t = int(s.trial_ids("train")[0])
    np.testing.assert_array_equal(
        s.load_trial(t)["responses"], full.load_trial(t)["responses"][index]
    )
    for shipped in (False, True):
        np.testing.assert_array_equal(
            s.statistics(shipped)["responses"]["std"],
            full.statistics(shipped)["responses"]["std"][index],
        )
    assert NativeSession(native_session, limit_neurons=50).n_neurons == 7


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def _valid_frames(written, name):
    """All valid frames of the training trials, channels first, from the arrays written."""
    parts = []
    for trial, arrays in written.trials.items():
        if written.tiers[trial] != "train":
            continue
        a = np.asarray(arrays[name], dtype=np.float64)
        padded = np.isnan(arrays["videos"]).all(axis=(0, 1))  # whole NaN frames
        a = a[..., ~padded]
        parts.append(a.reshape(1, -1) if name == "videos" else a)
    return np.concatenate(parts, axis=1)


def test_statistics_match_the_data(tmp_path):
    path, written = write_native_session(tmp_path / "s", seed=5, return_arrays=True)
    s = NativeSession(path)
    stats = s.statistics()
    assert set(stats) == set(native.TRIAL_ARRAYS)
    for name in native.TRIAL_ARRAYS:
        x = _valid_frames(written, name)
        assert not np.isnan(x).any()
        expected = {
            "mean": x.mean(1),
            "std": x.std(1),
            "min": x.min(1),
            "max": x.max(1),
            "median": np.median(x, 1),
        }
        for stat, value in expected.items():
            got = stats[name][stat]
            assert got.dtype == np.float32
            assert got.shape == (() if name == "videos" else (x.shape[0],)), (name, stat)
            np.testing.assert_allclose(got, value[0] if name == "videos" else value, rtol=1e-5)
    # cached beside the data, with the key that produced it
    cache = path / native.COMPUTED_STATISTICS_DIR / "train"
    info = json.loads((cache / "info.json").read_text())
    assert info["n_trials"] == 6 and info["tier"] == "train"
    np.testing.assert_array_equal(
        np.load(cache / "responses" / "std.npy"), stats["responses"]["std"]
    )
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_statistics_cache_is_used_and_invalidated(native_session, monkeypatch):
    s = NativeSession(native_session)
    first = s.statistics()

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(reader, "compute_statistics", boom)
    again = NativeSession(native_session).statistics()
    np.testing.assert_array_equal(again["videos"]["mean"], first["videos"]["mean"])
    # a different training tier invalidates the cache
    tiers = np.load(native_session / native.TIERS_FILE)
    tiers[int(np.flatnonzero(tiers == "train")[0])] = "none"
    np.save(native_session / native.TIERS_FILE, tiers)
    with pytest.raises(AssertionError, match="recomputed"):
        NativeSession(native_session).statistics()


def test_shipped_statistics_only_when_asked(native_session):
    s = NativeSession(native_session)
    shipped = s.statistics(shipped=True)
    stored = np.load(native_session / "meta/statistics/responses/all/mean.npy")
    np.testing.assert_array_equal(shipped["responses"]["mean"], stored)
    # change the shipped file: computed statistics do not move
    np.save(native_session / "meta/statistics/responses/all/mean.npy", stored + 100)
    assert np.all(s.statistics()["responses"]["mean"] < 50)
    assert np.all(s.statistics(shipped=True)["responses"]["mean"] > 50)


def test_median_from_subsample_when_large(native_session, monkeypatch):
    exact = NativeSession(native_session).statistics()["responses"]["median"]
    monkeypatch.setattr(statistics, "MEDIAN_BUDGET", 60)
    approx = NativeSession(native_session).statistics(recompute=True)["responses"]["median"]
    assert approx.shape == exact.shape
    np.testing.assert_allclose(approx, exact, atol=1.5)


# ---------------------------------------------------------------------------------------------
# Bad input: a clear DataFormatError naming the file and field
# ---------------------------------------------------------------------------------------------


def test_error_missing_session_folder(tmp_path):
    with pytest.raises(DataFormatError, match="session folder not found") as e:
        NativeSession(tmp_path / "missing")
    assert e.value.path == tmp_path / "missing"


def test_error_missing_file(native_session):
    os.remove(native_session / native.UNIT_IDS_FILE)
    with pytest.raises(DataFormatError, match="file not found") as e:
        NativeSession(native_session)
    assert e.value.path.name == "unit_ids.npy" and e.value.field == "unit_ids"


def test_error_missing_trial_file(native_session):
    os.remove(native_session / "data/behavior/3.npy")
    s = NativeSession(native_session)
    with pytest.raises(DataFormatError, match="file not found") as e:
        s.load_trial(3)
    assert e.value.path == native_session / "data/behavior/3.npy"


def test_error_missing_statistics_file(native_session):
    os.remove(native_session / "meta/statistics/videos/all/std.npy")
    with pytest.raises(DataFormatError, match="file not found") as e:
        NativeSession(native_session).statistics(shipped=True)
    assert e.value.path.name == "std.npy" and "videos" in str(e.value.path)


def test_error_wrong_shape(native_session):
    path = native_session / "data/responses/2.npy"
    np.save(path, np.zeros((3, 24), np.float32))  # 3 neurons instead of 7
    s = NativeSession(native_session)
    with pytest.raises(DataFormatError, match=r"expected shape \(7, 24\), got \(3, 24\)") as e:
        s.load_trial(2)
    assert e.value.path == path and e.value.field == "responses"


def test_error_wrong_frame_count(native_session):
    path = native_session / "data/pupil_center/4.npy"
    np.save(path, np.zeros((2, 20), np.float32))
    with pytest.raises(DataFormatError, match="20 frames") as e:
        NativeSession(native_session).load_trial(4)
    assert e.value.path == path


def test_error_wrong_dtype(native_session):
    path = native_session / "data/videos/1.npy"
    np.save(path, np.zeros((6, 8, 24), np.int16))
    with pytest.raises(DataFormatError, match="float") as e:
        NativeSession(native_session).load_trial(1)
    assert e.value.path == path and e.value.field == "videos"


def test_error_wrong_meta_dtype_and_shape(native_session):
    np.save(native_session / native.UNIT_IDS_FILE, np.arange(7.0))
    with pytest.raises(DataFormatError, match="integer") as e:
        NativeSession(native_session)
    assert e.value.field == "unit_ids"
    np.save(native_session / native.UNIT_IDS_FILE, np.arange(7))
    np.save(native_session / native.COORDINATES_FILE, np.zeros((6, 3)))
    with pytest.raises(DataFormatError, match=r"\(7, 3\)") as e:
        NativeSession(native_session)
    assert e.value.field == "cell_motor_coordinates"
    np.save(native_session / native.COORDINATES_FILE, np.zeros((7, 3)))
    np.save(native_session / native.TIERS_FILE, np.zeros(10, np.int64))
    with pytest.raises(DataFormatError, match="string array") as e:
        NativeSession(native_session)
    assert e.value.path.name == "tiers.npy"


def test_error_tiers_length_mismatch(native_session):
    tiers = np.load(native_session / native.TIERS_FILE)
    np.save(native_session / native.TIERS_FILE, tiers[:-1])
    with pytest.raises(DataFormatError, match="9 entries, but .* holds 10 trial files") as e:
        NativeSession(native_session)
    assert e.value.path == native_session / native.TIERS_FILE and e.value.field == "tiers"


def test_error_unknown_tier_name(native_session):
    tiers = np.load(native_session / native.TIERS_FILE)
    tiers[0] = "validation"
    np.save(native_session / native.TIERS_FILE, tiers)
    with pytest.raises(DataFormatError, match="unknown tier names \\['validation'\\]"):
        NativeSession(native_session)


def test_error_nan_in_training_responses(native_session):
    s = NativeSession(native_session)
    trial = int(s.trial_ids("train")[0])
    path = native_session / f"data/responses/{trial}.npy"
    r = np.load(path)
    r[0, 1] = np.nan
    np.save(path, r)
    with pytest.raises(DataFormatError, match="NaN responses within") as e:
        s.load_trial(trial)
    assert e.value.path == path and e.value.field == "responses"
    with pytest.raises(DataFormatError, match="NaN") as e:
        NativeSession(native_session).statistics()
    assert e.value.path == path


def test_error_empty_tier(native_session):
    s = NativeSession(native_session)
    with pytest.raises(DataFormatError, match="tier 'live_test_bonus' has no trials") as e:
        s.trial_ids("live_test_bonus")
    assert e.value.path == native_session / native.TIERS_FILE
    with pytest.raises(DataFormatError, match="unknown tier"):
        s.trial_ids("validation")


def test_error_video_without_frames(native_session):
    path = native_session / "data/videos/0.npy"
    np.save(path, np.full((6, 8, 24), np.nan, np.float32))
    with pytest.raises(DataFormatError, match="no frames") as e:
        NativeSession(native_session).trial_length(0)
    assert e.value.path == path


def test_dataset_of_three_sessions_reads(tmp_path):
    paths = write_native_dataset(tmp_path, 3)
    sizes = [NativeSession(p).n_neurons for p in paths]
    assert sizes == [5, 7, 9]


def test_error_nan_in_training_behavior(native_session):
    s = NativeSession(native_session)
    trial = int(s.trial_ids("train")[1])
    path = native_session / f"data/behavior/{trial}.npy"
    b = np.load(path)
    b[1, 0] = np.nan
    np.save(path, b)
    with pytest.raises(DataFormatError, match="NaN behavior values") as e:
        s.load_trial(trial)
    assert e.value.path == path and e.value.field == "behavior"


def test_error_data_dir_is_a_session(native_session):
    with pytest.raises(DataFormatError, match="is itself a session folder"):
        find_sessions(native_session)


def test_limit_data(native_session):
    s = NativeSession(native_session)
    train = s.trial_ids("train")
    some = s.trial_ids("train", limit=4, seed=2)
    assert len(some) == 4 and set(some) <= set(train) and np.all(np.diff(some) > 0)
    np.testing.assert_array_equal(some, s.trial_ids("train", limit=4, seed=2))
    np.testing.assert_array_equal(s.trial_ids("train", limit=100), train)
    with pytest.raises(DataFormatError, match="limit_data"):
        s.trial_ids("train", limit=0)

"""The spike table layout: every validation error names its file and column; writing is atomic;
binning equals a direct count; the loader's split, filters and interleaving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurotwin.data.spikes import SPIKES_FILE, TRIALS_FILE, UNITS_FILE, read_session, write_session
from neurotwin.data.spikes.loader import SpikeData, SpikeDataOptions, bin_trials, split_trials
from neurotwin.errors import ConfigError, DataFormatError


def tables(seed: int = 0, n_trials: int = 12):
    rng = np.random.default_rng(seed)
    units = pd.DataFrame(
        {
            "unit_id": np.array([7, 3, 11, 5], dtype=np.int64),
            "population": ["V1", "LM", "V1", "LM"],
            "depth": [100.0, 200.0, 300.0, 400.0],
        }
    )
    start = 1.0 + 0.5 * np.arange(n_trials)
    trials = pd.DataFrame(
        {
            "trial_id": np.arange(n_trials, dtype=np.int64) + 40,
            "start": start,
            "stop": start + 0.3,
            "condition": [f"c{i % 3}" for i in range(n_trials)],
            "orientation": [float(30 * (i % 3)) for i in range(n_trials)],
        }
    )
    times = np.sort(rng.uniform(0.0, start[-1] + 1.0, 3000))
    spikes = pd.DataFrame({"unit_id": rng.choice(units["unit_id"], times.size), "time": times})
    # a few spikes exactly on window edges
    edge = pd.DataFrame({"unit_id": [7, 3], "time": [start[2], start[4] + 0.1]})
    spikes = pd.concat([spikes, edge]).sort_values("time", kind="stable").reset_index(drop=True)
    return units, spikes, trials


@pytest.fixture
def session_dir(tmp_path):
    return write_session(tmp_path / "s1", *tables())


def test_read_back_groups_units_by_population(session_dir):
    s = read_session(session_dir)
    assert s.populations == ["LM", "V1"] and s.population_sizes == [2, 2]
    assert s.units["unit_id"].tolist() == [3, 5, 7, 11]  # file order kept within a population
    assert "depth" in s.units.columns and "orientation" in s.trials.columns
    assert np.all(np.diff(s.times) >= 0)
    np.testing.assert_array_equal(
        s.unit_ids[s.unit_index], pd.read_parquet(session_dir / SPIKES_FILE)["unit_id"]
    )


def _rewrite(folder, name, table):
    table.to_parquet(folder / name, index=False)


BAD_CASES = {
    "missing column": (
        UNITS_FILE,
        "population",
        lambda u, s, t: (u.drop(columns="population"), s, t),
    ),
    "float unit ids": (UNITS_FILE, "unit_id", lambda u, s, t: (u.astype({"unit_id": float}), s, t)),
    "duplicate unit": (UNITS_FILE, "unit_id", lambda u, s, t: (pd.concat([u, u.iloc[:1]]), s, t)),
    "empty population": (
        UNITS_FILE,
        "population",
        lambda u, s, t: (u.assign(population=["V1", "", "V1", "LM"]), s, t),
    ),
    "unknown unit": (
        SPIKES_FILE,
        "unit_id",
        lambda u, s, t: (u, s.assign(unit_id=s["unit_id"].replace(5, 99)), t),
    ),
    "unsorted times": (
        SPIKES_FILE,
        "time",
        lambda u, s, t: (u, s.iloc[::-1].reset_index(drop=True), t),
    ),
    "NaN time": (
        SPIKES_FILE,
        "time",
        lambda u, s, t: (u, s.assign(time=s["time"].where(s.index != 9)), t),
    ),
    "float32 time": (SPIKES_FILE, "time", lambda u, s, t: (u, s.astype({"time": np.float32}), t)),
    "missing time": (SPIKES_FILE, "time", lambda u, s, t: (u, s.drop(columns="time"), t)),
    "empty trial": (
        TRIALS_FILE,
        "stop",
        lambda u, s, t: (u, s, t.assign(stop=t["stop"].where(t.index != 3, t["start"]))),
    ),
    "overlapping trials": (
        TRIALS_FILE,
        "start",
        lambda u, s, t: (u, s, t.assign(stop=t["stop"] + 0.25)),
    ),
    "NaN start": (
        TRIALS_FILE,
        "start",
        lambda u, s, t: (u, s, t.assign(start=t["start"].where(t.index != 2))),
    ),
    "missing condition": (
        TRIALS_FILE,
        "condition",
        lambda u, s, t: (u, s, t.drop(columns="condition")),
    ),
    "duplicate trial": (
        TRIALS_FILE,
        "trial_id",
        lambda u, s, t: (u, s, t.assign(trial_id=np.int64(1))),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_and_column(session_dir, case):
    file, column, change = BAD_CASES[case]
    u, s, t = change(*tables())
    for name, table in ((UNITS_FILE, u), (SPIKES_FILE, s), (TRIALS_FILE, t)):
        _rewrite(session_dir, name, table)
    with pytest.raises(DataFormatError) as e:
        read_session(session_dir)
    assert e.value.path == session_dir / file
    assert e.value.field == column
    assert file in str(e.value) and column in str(e.value)


def test_not_parquet(session_dir):
    (session_dir / TRIALS_FILE).write_text("not parquet")
    with pytest.raises(DataFormatError, match="not a readable parquet"):
        read_session(session_dir)


def test_write_is_atomic_and_checked(tmp_path):
    units, spikes, trials = tables()
    bad = spikes.assign(unit_id=spikes["unit_id"].replace(5, 99))
    with pytest.raises(DataFormatError):
        write_session(tmp_path / "s", units, bad, trials)
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary left
    write_session(tmp_path / "s", units, spikes.iloc[::-1], trials)  # sorted on the way
    with pytest.raises(DataFormatError, match="already exists"):
        write_session(tmp_path / "s", units, spikes, trials)
    write_session(tmp_path / "s", units, spikes.iloc[:10], trials, overwrite=True)
    assert len(pd.read_parquet(tmp_path / "s" / SPIKES_FILE)) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


@pytest.mark.parametrize("bin_ms,history", [(1.0, 30), (2.5, 8), (10.0, 0)])
def test_binning_equals_direct_count(session_dir, bin_ms, history):
    s = read_session(session_dir)
    bin_s, n_bins = bin_ms / 1000, int(300 / bin_ms)
    w = s.trials["start"].to_numpy()
    binned = bin_trials(s, w, bin_s, n_bins, history).dense()
    assert binned.shape == (len(w), s.n_units, history + n_bins)
    spikes = pd.read_parquet(session_dir / SPIKES_FILE)
    for k, start in enumerate(w):
        for n, uid in enumerate(s.unit_ids):
            times = spikes.loc[spikes["unit_id"] == uid, "time"].to_numpy()
            direct = [
                np.sum((times >= start + b * bin_s) & (times < start + (b + 1) * bin_s))
                for b in range(-history, n_bins)
            ]
            np.testing.assert_array_equal(binned[k, n], direct)
    assert binned.sum() > 100


def test_loader_split_filters_and_order(tmp_path):
    for i in range(2):
        write_session(tmp_path / f"s{i}", *tables(seed=i, n_trials=30))
    opts = SpikeDataOptions(
        data_dir=str(tmp_path), batch_size=4, history_ms=20, val_fraction=0.2, test_fraction=0.2
    )
    data = SpikeData(opts)
    assert data.n_bins == 300 and data.n_history == 20  # window: the shortest trial
    for st in data.sessions.values():  # stratified: every condition in every split
        assert set(st.rows("train")["condition"]) == {"c0", "c1", "c2"}
        assert (
            st.trials.groupby("condition")["split"].apply(lambda x: (x == "test").sum()) == 2
        ).all()
    # training batches: one session each, a function of (seed, epoch) only
    first = [(b.session, tuple(b.trial_ids)) for b in data.batches("train", epoch=3, seed=1)]
    again = [
        (b.session, tuple(b.trial_ids)) for b in SpikeData(opts).batches("train", epoch=3, seed=1)
    ]
    other = [(b.session, tuple(b.trial_ids)) for b in data.batches("train", epoch=4, seed=1)]
    assert first == again and first != other
    assert {s for s, _ in first} == {"s0", "s1"}
    assert sum(len(t) for _, t in first) == data.n_trials("train")
    sessions = [s for s, _ in first]
    assert sessions != sorted(sessions)  # interleaved, not one session after the other
    filtered = SpikeData(SpikeDataOptions(data_dir=str(tmp_path), filters=["orientation=30"]))
    assert set(filtered.sessions["s0"].trials["condition"]) == {"c1"}
    only = SpikeData(SpikeDataOptions(data_dir=str(tmp_path), conditions=["c0", "c2"]))
    assert set(only.sessions["s1"].trials["condition"]) == {"c0", "c2"}
    with pytest.raises(ConfigError, match="no column 'contrast'"):
        SpikeData(SpikeDataOptions(data_dir=str(tmp_path), filters=["contrast=0.8"]))
    with pytest.raises(ConfigError, match="--val_fraction"):
        SpikeDataOptions(val_fraction=1.5)


def test_split_keeps_a_training_trial():
    split = split_trials(np.array(["a", "a", "b"], dtype=object), 0.4, 0.4, (0, 1))
    assert (split[np.array([0, 1])] == "train").any() and split[2] == "train"

"""`neurotwin-data allen-spikes`: a Neuropixels session NWB (real schema, written by
allen_fixtures) -> the spike table layout, checked value by value against the fixture's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from allen_fixtures import add_drifting_gratings, write_ecephys_nwb
from neurotwin.cli import data as data_cli
from neurotwin.data.allen.spikes import convert_allen_spikes
from neurotwin.data.spikes import read_session
from neurotwin.errors import DataFormatError

# unit_spec rows 0-4 pass allensdk's default filters (allen_fixtures.write_ecephys_nwb)
KEPT_ROWS = [0, 1, 2, 3, 4]
KEPT_AREAS = ["VISp", "VISp", "VISl", "LGd", "CA1"]


@pytest.fixture(scope="module", params=[False, True], ids=["float-columns", "string-columns"])
def nwb_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("allen") / "session_715093703.nwb"
    truth = write_ecephys_nwb(path)
    rows = add_drifting_gratings(path, as_strings=request.param)
    return path, truth, rows


def test_units_spikes_and_trials(nwb_file, tmp_path):
    path, truth, rows = nwb_file
    folder = convert_allen_spikes(path, tmp_path)
    session = read_session(folder)
    units = session.units.set_index("unit_id")
    ids = truth["unit_ids"][KEPT_ROWS]
    assert sorted(units.index) == sorted(ids.tolist())
    for uid, area in zip(ids, KEPT_AREAS):
        assert units.loc[uid, "population"] == area
        assert units.loc[uid, "probe"].startswith("probe")
    # every spike of a kept unit within a second of the presentations, exactly
    lo, hi = rows["start_time"].min() - 1.0, rows["stop_time"].max() + 1.0
    spikes = pd.read_parquet(folder / "spikes.parquet")
    for row, uid in zip(KEPT_ROWS, ids):
        expected = truth["spikes"][row]
        expected = expected[(expected >= lo) & (expected < hi)]
        got = spikes.loc[spikes["unit_id"] == uid, "time"].to_numpy()
        np.testing.assert_array_equal(np.sort(got), np.sort(expected))
    trials = session.trials.set_index("trial_id")
    assert len(trials) == len(rows["id"])
    for i, tid in enumerate(rows["id"]):
        t = trials.loc[tid]
        assert t["start"] == rows["start_time"][i] and t["stop"] == rows["stop_time"][i]
        ori, tf = rows["orientation"][i], rows["temporal_frequency"][i]
        if np.isnan(ori):
            assert t["condition"] == "blank" and np.isnan(t["orientation"])
        else:
            assert t["condition"] == f"orientation={ori:g}|temporal_frequency={tf:g}|contrast=0.8"
            assert t["orientation"] == ori and t["temporal_frequency"] == tf
    # other columns kept as condition variables: strings stay strings
    assert (trials["mask"] == "None").all() and (trials["units"] == "deg").all()
    assert trials["spatial_frequency"].dtype == np.float64
    assert session.trials["condition"].nunique() == 4 * 2 + 1


def test_areas_probe_populations_and_cli(nwb_file, tmp_path, capsys):
    path, truth, _ = nwb_file
    out = tmp_path / "out"
    code = data_cli.main(
        [
            "allen-spikes",
            "--nwb",
            str(path),
            "--areas",
            "VISp",
            "VISl",
            "--population",
            "probe",
            "--out",
            str(out),
            "--name",
            "s",
        ]
    )
    assert code == 0
    session = read_session(out / "s")
    assert sorted(session.units["area"]) == ["VISl", "VISp", "VISp"]
    assert set(session.units["population"]) <= {"probe810755797", "probe810755799"}
    assert session.meta["stimulus"] == "drifting_gratings"


def test_missing_stimulus_names_the_table(nwb_file, tmp_path):
    path, _, _ = nwb_file
    with pytest.raises(DataFormatError, match="static_gratings") as e:
        convert_allen_spikes(path, tmp_path, stimulus="static_gratings")
    assert e.value.field == "intervals/static_gratings_presentations"
    assert not any(tmp_path.iterdir())  # nothing half-written

"""Allen natural scenes and gratings -> one trial per presentation (2-photon and Neuropixels),
read back and checked against the fixtures' ground truth; then an encoding run on them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from allen_fixtures import (
    DRIFTING_GRATINGS,
    STATIC_GRATINGS,
    add_ecephys_presentations,
    add_ophys_presentations,
    write_ecephys_nwb,
    write_ophys_nwb,
)
from neurotwin.cli import data as data_cli
from neurotwin.data import native
from neurotwin.data.allen.ecephys import convert_ecephys_presentations
from neurotwin.data.allen.ophys import convert_ophys_presentations
from neurotwin.data.allen.presentations import parameter_column, parse_heldout, render_grating
from neurotwin.data.allen.resample import area_resize
from neurotwin.data.native import NativeSession
from neurotwin.errors import DataFormatError

SIZE = (6, 8)
BIN = 1.0 / 30.0


@pytest.fixture(scope="module")
def ophys(tmp_path_factory):
    root = tmp_path_factory.mktemp("ophys_pres")
    path = root / "501940850.nwb"
    truth = add_ophys_presentations(path, write_ophys_nwb(path))
    return truth, path, root


@pytest.fixture(scope="module")
def ecephys(tmp_path_factory):
    root = tmp_path_factory.mktemp("ecephys_pres")
    path = root / "session_715093703.nwb"
    truth = add_ecephys_presentations(path, write_ecephys_nwb(path))
    return truth, path, root


def _trials(folder):
    s = NativeSession(folder)
    return s, [s.load_trial(i) for i in range(s.n_trials)]


def _expected_dff(truth, onset_frame, n_bins):
    """Bins of one 2-photon period from half a period before the onset frame: sample k each."""
    return truth["dff"][:, onset_frame : onset_frame + n_bins]


def test_ophys_natural_scenes(ophys):
    truth, path, root = ophys
    folder = convert_ophys_presentations(
        path, root / "out", "natural_scenes", frame_size=SIZE, dff_offset="none"
    )
    session, trials = _trials(folder)
    rows = truth["presentations"]["natural_scenes"]
    shown = rows["condition"] >= 0  # the grey blanks are dropped
    assert session.n_trials == shown.sum() and session.n_frames == 8  # 250 ms in 1/30 s bins
    cond = np.load(folder / "meta/trials/condition.npy")
    np.testing.assert_array_equal(cond, rows["condition"][shown])
    images = area_resize(truth["templates"]["natural_scenes"], SIZE)
    for i, trial in enumerate(trials):
        np.testing.assert_allclose(
            trial[native.VIDEOS], np.repeat(images[cond[i]][:, :, None], 8, 2), rtol=1e-6
        )
        np.testing.assert_allclose(
            trial[native.RESPONSES], _expected_dff(truth, rows["start"][shown][i], 8), rtol=1e-5
        )
    meta = json.loads((folder / native.SESSION_META_FILE).read_text())
    assert meta["responses_per"] == "presentation" and meta["stimulus"] == "natural_scenes"
    # every image held out by default: its first repeat(s) oracle, the last half test
    assert session.tier_counts == {"oracle": 8, "final_test_main": 16}
    assert set(np.load(folder / "meta/neurons/area.npy")) == {"VISp"}


def test_ophys_gratings_are_rendered_from_their_parameters(ophys):
    truth, path, root = ophys
    folder = convert_ophys_presentations(
        path, root / "out", "static_gratings", frame_size=SIZE, test_fraction=0.0
    )
    session, trials = _trials(folder)
    assert session.tier_counts == {"oracle": 12}
    ori = np.load(folder / "meta/trials/orientation.npy")
    sf = np.load(folder / "meta/trials/spatial_frequency.npy")
    shown = truth["presentations"]["static_gratings"]["condition"]
    shown = shown[shown >= 0]
    np.testing.assert_allclose(ori, [STATIC_GRATINGS[c][0] for c in shown])
    for i, trial in enumerate(trials):
        o, f, ph = STATIC_GRATINGS[shown[i]]
        np.testing.assert_allclose(
            trial[native.VIDEOS][:, :, 3], render_grating(SIZE, o, f, ph), rtol=1e-6
        )
        assert sf[i] == f
    folder = convert_ophys_presentations(path, root / "out", "drifting_gratings", frame_size=SIZE)
    session, trials = _trials(folder)
    assert session.n_trials == 4 and session.n_frames == 60  # 2 s in 1/30 s bins; the blank dropped
    tf = np.load(folder / "meta/trials/temporal_frequency.npy")
    for trial, f in zip(trials, tf):
        o = {d[1]: d[0] for d in DRIFTING_GRATINGS}[f]
        np.testing.assert_allclose(
            trial[native.VIDEOS][:, :, 10],
            render_grating(SIZE, o, 0.04, 0.0, f, 10.5 * BIN),
            rtol=1e-5,
        )
        assert not np.allclose(
            trial[native.VIDEOS][:, :, 0], trial[native.VIDEOS][:, :, 10]
        )  # it drifts


def test_ecephys_counts_in_bins_and_string_parameters(ecephys):
    truth, path, root = ecephys
    folder = convert_ecephys_presentations(
        path,
        root / "out",
        "static_gratings",
        frame_size=SIZE,
        heldout_clips=["static_gratings:0-1"],
    )
    session, trials = _trials(folder)
    assert session.n_frames == 25  # mouse-vision's 10 ms bins over 250 ms
    rows = truth["presentations"]["static_gratings"]
    shown = rows["condition"] >= 0
    kept = {int(u): i for i, u in enumerate(truth["unit_ids"])}
    for i, trial in enumerate(trials):
        onset = rows["start"][shown][i]
        for n, uid in enumerate(session.unit_ids):
            spikes = truth["spikes"][kept[int(uid)]]
            edges = onset + np.arange(26) * 0.01
            direct = [np.sum((spikes >= edges[k]) & (spikes < edges[k + 1])) for k in range(25)]
            np.testing.assert_array_equal(trial[native.RESPONSES][n], direct)
    phase = np.load(folder / "meta/trials/phase.npy")  # parsed from "[0.25, 0.25]" strings
    np.testing.assert_allclose(phase, [STATIC_GRATINGS[c][2] for c in rows["condition"][shown]])
    cond = np.load(folder / "meta/trials/condition.npy")
    tiers = session.tiers
    assert set(tiers[cond >= 2]) == {"train"} and set(tiers[cond < 2]) == {
        "oracle",
        "final_test_main",
    }
    folder = convert_ecephys_presentations(
        path, root / "out", "natural_scenes", frame_size=SIZE, window=(0.05, 0.2), bin_s=0.05
    )
    assert NativeSession(folder).n_frames == 3


def test_presentation_helpers_and_errors(ecephys):
    np.testing.assert_allclose(
        parameter_column(np.asarray(["0.04", "null", "[0.5, 0.5]"], dtype=object), "c", "f"),
        [0.04, np.nan, 0.5],
    )
    assert parse_heldout(["natural_movie_one:0"], "natural_scenes", 4) == {0, 1, 2, 3}
    assert parse_heldout(["natural_scenes:1-2", "natural_scenes:0"], "natural_scenes", 4) == {
        0,
        1,
        2,
    }
    with pytest.raises(DataFormatError, match="conditions 0..3"):
        parse_heldout(["natural_scenes:7"], "natural_scenes", 4)
    with pytest.raises(DataFormatError, match="INDEX"):
        parse_heldout(["natural_scenes:x"], "natural_scenes", 4)
    truth, path, root = ecephys
    with pytest.raises(DataFormatError, match="locally_sparse"):
        convert_ecephys_presentations(path, root / "o", "locally_sparse_noise")


def test_cli_writes_one_folder_per_stimulus_and_encoding_runs_on_scenes(ophys, tmp_path):
    truth, path, _ = ophys
    out = tmp_path / "allen"
    argv = [
        "allen-ophys",
        "--nwb",
        str(path),
        "--out",
        str(out),
        "--frame-size",
        "6",
        "8",
        "--clip-length",
        "4",
    ]
    assert (
        data_cli.main(
            [*argv, "--stimuli", "natural_movies", "natural_scenes", "--test-fraction", "0"]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "allen-ophys-501940850",
        "allen-ophys-501940850-natural_scenes",
    ]
    from neurotwin.encoding.regression import RegressionOptions
    from neurotwin.encoding.run import EncodeOptions, EncodeSettings, run_encoding
    from neurotwin.encoding.splits import SplitOptions
    from neurotwin.encoding.stimuli import StimulusOptions

    settings = EncodeSettings(
        encode=EncodeOptions(model=["pixels"], output_dir=str(tmp_path / "enc")),
        stimuli=StimulusOptions(
            data_dir=str(out), mouse_ids=["allen-ophys-501940850-natural_scenes"]
        ),
        backbone={"pixels_size": [3, 4]},
        splits=SplitOptions(split="random", n_splits=3),
        regression=RegressionOptions(regressor="pls", pls_components=2),
    )
    import pandas as pd

    result = run_encoding(settings)
    scores = pd.read_parquet(result["scores"])
    # 8 images, each one stimulus (its repeats averaged over the 250 ms window), 3 repeats each
    assert set(scores["repeat"].dropna()) == {0, 1, 2}
    assert scores.loc[scores["metric"] == "noise_ceiling", "value"].notna().any()
    assert set(scores["area"]) == {"VISp"}

"""Synthetic mice, part 2: output pinned to the values the generator gave before it became a
package, the receptive-field truth table (its conventions checked against the filters
themselves), the torch truth module against the stored noiseless rates, and the harder variants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotwin.data import native, synthetic
from neurotwin.data.native import NativeSession
from neurotwin.data.synthetic import VARIANTS, drift, writer
from neurotwin.data.synthetic.load import session_population
from neurotwin.errors import ConfigError, DataFormatError
from test_synthetic import TINY  # the same tiny sizes as the first part

SMALL = dict(
    height=18,
    width=32,
    frames=40,
    neurons=40,
    train_trials=4,
    oracle_clips=1,
    oracle_repeats=2,
    test_clips=1,
    test_repeats=1,
)


def test_default_output_is_pinned(tmp_path: Path) -> None:
    """Values of seed 3, mouse 1 of the TINY sizes as the one-file generator (before the split
    into a package and the new options) wrote them: the defaults must never change."""
    folder = synthetic.generate(tmp_path, mice=1, seed=3, progress=False, **TINY)[0]
    assert folder.name == "dynamic90001-1-4-Video-06f495dcb5327b753b09e8102a17070c"
    tiers = ["live_test_main", "train", "oracle", "oracle", "train", "train", "train", "oracle"]
    tiers += ["train", "oracle", "train", "final_test_main", "oracle", "live_test_main"]
    tiers += ["final_test_main", "oracle", "train", "train"]
    assert np.load(folder / native.TIERS_FILE).tolist() == tiers
    unit_ids = [4, 5, 6, 17, 25, 27, 28, 29, 30, 31, 32, 40]
    assert np.load(folder / native.UNIT_IDS_FILE).tolist() == unit_ids
    load = lambda name, trial: np.load(folder / "data" / name / f"{trial}.npy")  # noqa: E731
    expected = [
        (native.NOISELESS, 3, (slice(0, 4), 10), [0.40077603, 0.11216376, 0.12497984, 5.630488]),
        (native.VIDEOS, 5, (2, 3, slice(0, 4)), [102.05262, 51.324657, 69.1107, 75.31321]),
        (native.BEHAVIOR, 7, (slice(None), 5), [18.532959, 1.5029689]),
        (native.PUPIL_CENTER, 11, (slice(None), 5), [244.48059, 146.98584]),
    ]
    for name, trial, index, values in expected:
        np.testing.assert_allclose(load(name, trial)[index], values, rtol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One session at the small preset's frame size with surrounds and large gaze shifts."""
    root = tmp_path_factory.mktemp("truth")
    return synthetic.generate(
        root, mice=1, seed=11, progress=False, variants=["surround", "gaze_shifts"], **SMALL
    )[0]


def test_rf_truth_table_matches_the_filters(small: Path) -> None:
    """The table's centre (x = column, y = row), orientation (wave vector from +x towards +y) and
    spatial frequency (cycles/pixel) are those of the spatial filters the neurons apply."""
    truth = synthetic.read_rf_truth(small)
    pop, sizes, _, meta = session_population(small)
    H, W = sizes.height, sizes.width
    assert set(truth) == set(synthetic.RF_TRUTH_COLUMNS) and meta["rf_truth"]["columns"]
    assert all(len(v) == SMALL["neurons"] for v in truth.values())
    y, x = np.mgrid[0:H, 0:W].astype(float)
    inside = (truth["center_x"] > 4) & (truth["center_x"] < W - 5)
    inside &= (truth["center_y"] > 4) & (truth["center_y"] < H - 5)
    gabor = np.isin(truth["cell_type"], ["simple", "complex"])
    checked = 0
    for i in np.flatnonzero(inside):
        rf = pop.rf[i].reshape(H, W).astype(float)
        if gabor[i]:  # energy of the quadrature pair: the envelope, centred on the truth
            j = np.flatnonzero(np.flatnonzero(pop.cell_type == 1) == i)
            partner = pop.rf_quadrature[j[0]].reshape(H, W) if len(j) else 0 * rf
            weight = rf**2 + partner**2
        else:
            weight = np.clip(rf * truth["polarity"][i], 0, None) ** 2
        cx, cy = (weight * x).sum() / weight.sum(), (weight * y).sum() / weight.sum()
        assert abs(cx - truth["center_x"][i]) < 0.5 and abs(cy - truth["center_y"][i]) < 0.5, i
        if gabor[i]:  # a grating of the table's orientation and frequency drives it best
            theta = np.radians(truth["orientation_deg"][i])
            f = truth["spatial_frequency_cpp"][i]

            def drive(angle: float, freq: float, rf: np.ndarray = rf) -> float:
                phase = 2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle))
                return float(np.abs((rf * np.exp(1j * phase)).sum()))

            best = drive(theta, f)
            assert best > 2 * drive(theta + np.pi / 2, f), i
            assert best > max(drive(theta + d, f) for d in (-0.5, 0.5)), i
            if not len(j):  # simple cells: the filter's own best frequency (to 1%)
                peak = max(drive(theta, g) for g in np.geomspace(0.01, 0.5, 400))
                assert drive(theta, truth["preferred_sf_cpp"][i]) > 0.99 * peak, i
        checked += 1
    assert checked >= 10
    kinds = truth["cell_type"]
    assert np.isnan(truth["orientation_deg"][kinds == "center_surround"]).all()
    assert (truth["polarity"][kinds == "complex"] == 0).all()
    assert set(truth["surround"][kinds == "center_surround"]) == {"linear"}
    divisive = truth["surround"] == "divisive"
    assert divisive.any() and set(kinds[divisive]) <= {"simple", "complex"}
    assert (truth["surround_sigma_px"][divisive] > truth["sigma_orth_px"][divisive]).all()


def _trial_inputs(session: NativeSession, trial: int):
    d = session.load_trial(trial)
    length = session.trial_length(trial)
    video = torch.from_numpy(np.moveaxis(d[native.VIDEOS][..., :length], -1, 0).copy())
    behavior = torch.from_numpy(d[native.BEHAVIOR][:, :length].copy())
    pupil = torch.from_numpy(d[native.PUPIL_CENTER][:, :length].copy())
    return video[None, None], behavior[None], pupil[None], length


@pytest.mark.parametrize("variants", [(), ("strong_behavior",), ("surround", "gaze_shifts")])
def test_truth_module_reproduces_the_noiseless_rates(
    variants: tuple[str, ...], small: Path, tmp_path: Path
) -> None:
    if variants == ("surround", "gaze_shifts"):
        folder = small
    else:
        folder = synthetic.generate(
            tmp_path, mice=1, seed=4, progress=False, variants=variants, **SMALL
        )[0]
    model = synthetic.GroundTruthModel.from_sessions([folder])
    session = NativeSession(folder)
    assert model.sessions == [session.name]
    for trial in range(session.n_trials):
        video, behavior, pupil, length = _trial_inputs(session, trial)
        with torch.no_grad():
            rates = model(video, session.name, behavior, pupil)[0].numpy()
        expected = session.load_noiseless(trial)[:, :length]
        assert rates.shape == expected.shape and rates.dtype == np.float32
        np.testing.assert_allclose(rates, expected, rtol=1e-4, atol=1e-4 * expected.max())
    # batches of several trials give the same rates as one at a time
    items = [_trial_inputs(session, t) for t in range(2)]
    n = min(it[3] for it in items)
    batch = [torch.cat([it[k][..., :n] for it in items]) for k in range(3)]
    with torch.no_grad():
        together = model(batch[0], session.name, batch[1], batch[2])
        alone = model(
            items[1][0][..., :n], session.name, items[1][1][..., :n], items[1][2][..., :n]
        )
    torch.testing.assert_close(together[1:], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="unknown session"):
        model(video, "nope", behavior, pupil)


def test_truth_module_needs_a_synthetic_session(native_session: Path) -> None:
    with pytest.raises(DataFormatError, match="neurotwin.json"):
        synthetic.GroundTruthModel.from_sessions([native_session])


def test_surround_suppresses_iso_more_than_cross(small: Path) -> None:
    """A large grating at the preferred orientation drives a divisive-surround cell less than a
    small one; a cross-oriented surround suppresses less than an iso-oriented one."""
    truth = synthetic.read_rf_truth(small)
    model = synthetic.GroundTruthModel.from_sessions([small])
    name = small.name
    H, W = SMALL["height"], SMALL["width"]
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    t = np.arange(60, dtype=np.float32)[:, None, None]
    cells = np.flatnonzero(truth["surround"] == "divisive")

    def response(i: int, center_deg: float, surround_deg: float | None, radius: float) -> float:
        f = truth["spatial_frequency_cpp"][i]
        r = np.hypot(x - truth["center_x"][i], y - truth["center_y"][i])

        def grating(deg: float) -> np.ndarray:
            a = np.radians(deg)
            return np.cos(2 * np.pi * f * (x * np.cos(a) + y * np.sin(a)) - 2 * np.pi * t / 15)

        frames = np.where(r <= radius, grating(center_deg), 0.0)
        if surround_deg is not None:
            frames = np.where(r > radius, grating(surround_deg), frames)
        video = torch.from_numpy(128 + 100 * frames.astype(np.float32))[None, None]
        with torch.no_grad():
            return float(model(video, name)[0, i, 30:].mean())

    iso_wins = 0
    for i in cells:
        theta = float(truth["orientation_deg"][i])
        radius = 2.0 * float(truth["sigma_orth_px"][i])
        small_disk = response(i, theta, None, radius)
        iso = response(i, theta, theta, radius)
        cross = response(i, theta, theta + 90, radius)
        assert iso < small_disk, i
        iso_wins += cross > iso
    assert len(cells) >= 5 and iso_wins >= 0.8 * len(cells)


def test_variants(tmp_path: Path) -> None:
    base = synthetic.PRESETS["small"]
    sizes, params = synthetic.params.resolve("small", {}, ("many_neurons",))
    assert sizes.neurons == 8 * base.neurons and sizes.train_trials == base.train_trials // 3
    _, hard = synthetic.params.resolve("small", {"drift_amplitude": 0.1}, ("hard",))
    assert hard.surround_fraction > 0 and hard.gaze_gain > 0.3 and hard.drift_amplitude == 0.1
    assert set(VARIANTS) >= {"many_neurons", "strong_behavior", "gaze_shifts", "slow_drifts"}
    with pytest.raises(ConfigError, match="variant"):
        synthetic.generate(tmp_path, variants=["nope"])
    with pytest.raises(ConfigError, match="surround_fraction"):
        synthetic.generate(tmp_path, surround_fraction=2.0)
    # a variant changes the session (its name too) but not the neurons' placement or filters
    plain = synthetic.generate(tmp_path / "a", mice=1, seed=2, progress=False, **SMALL)[0]
    gaze = synthetic.generate(
        tmp_path / "b", mice=1, seed=2, progress=False, variants=["gaze_shifts"], **SMALL
    )[0]
    assert plain.name != gaze.name
    np.testing.assert_array_equal(
        np.load(plain / native.COORDINATES_FILE), np.load(gaze / native.COORDINATES_FILE)
    )
    spread = {}
    for key, folder in (("plain", plain), ("gaze", gaze)):
        pupil = np.concatenate(
            [np.load(p) for p in (folder / "data/pupil_center").glob("*.npy")], 1
        )
        spread[key] = np.nanstd(np.diff(pupil, axis=1))
    assert spread["gaze"] > 1.5 * spread["plain"]
    meta = json.loads((gaze / native.SESSION_META_FILE).read_text())
    assert meta["variants"] == ["gaze_shifts"] and meta["slow_drift"] is None


def test_slow_drift_is_a_smooth_gain_over_the_recording(tmp_path: Path) -> None:
    folder = synthetic.generate(
        tmp_path, mice=1, seed=6, progress=False, variants=["slow_drifts"], **SMALL
    )[0]
    order = np.load(folder / "meta" / synthetic.RECORDING_ORDER_FILE)
    session = NativeSession(folder)
    assert sorted(order.tolist()) == list(range(session.n_trials))
    model = synthetic.GroundTruthModel.from_sessions([folder])  # rates without the drift
    meta = json.loads((folder / native.SESSION_META_FILE).read_text())
    assert meta["slow_drift"]["log_gain_sd"] == 0.3
    d = drift.SlowDrift(synthetic.params.rng(6, synthetic.params.S_DRIFT, 0), 40, len(order), 0.3)
    np.testing.assert_array_equal(d.order, order)
    means = []
    for trial in range(session.n_trials):
        video, behavior, pupil, length = _trial_inputs(session, trial)
        with torch.no_grad():
            rates = model(video, session.name, behavior, pupil)[0].numpy()
        log_ratio = np.log(session.load_noiseless(trial)[:, :length] / rates)
        # the drift the generator's SlowDrift gives at each frame of the trial's recording slot
        expected = d.log_gain(trial, SMALL["frames"])[:, :length]
        np.testing.assert_allclose(log_ratio, expected, atol=2e-3)
        assert np.abs(np.diff(log_ratio, 2, axis=1)).max() < 0.01  # smooth in time
        means.append(log_ratio.mean())
    assert 0.05 < np.std(means) < 0.6  # of the order of the drift's s.d.


def test_cli_variant_and_param(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from neurotwin.cli.data import main

    argv = ["synthetic", "--out", str(tmp_path), "--mice", "1", "--no_progress"]
    argv += [x for k, v in TINY.items() for x in (f"--{k}", str(v))]
    assert main(argv + ["--variant", "surround", "--param", "surround_strength=2,2"]) == 0
    (folder,) = list(tmp_path.iterdir())
    meta = json.loads((folder / native.SESSION_META_FILE).read_text())
    assert meta["variants"] == ["surround"] and meta["params"]["surround_strength"] == [2.0, 2.0]
    strength = synthetic.read_rf_truth(folder)["surround_strength"]
    assert np.allclose(strength[synthetic.read_rf_truth(folder)["surround"] == "divisive"], 2.0)
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--param", "surround_strength"])
    assert stop.value.code == 2 and "NAME=VALUE" in capsys.readouterr().err
    assert (
        writer.session_names(1, 0, synthetic.SyntheticSizes(), synthetic.ModelParams())[0]
        == (synthetic.session_names(1, 0, synthetic.SyntheticSizes(), synthetic.ModelParams())[0])
    )

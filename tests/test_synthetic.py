"""Synthetic ground-truth mice: exact native layout, determinism, padding, repeats, statistics,
ceiling, CLI, ensure_synthetic, and read-back through the Sensorium reader."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from neurotwin import metrics
from neurotwin.data import native, synthetic
from neurotwin.data.synthetic import writer
from neurotwin.data.synthetic.mouse import Mouse
from neurotwin.errors import ConfigError, NeurotwinError

TINY = dict(
    height=8,
    width=12,
    frames=24,
    neurons=12,
    train_trials=8,
    oracle_clips=2,
    oracle_repeats=3,
    test_clips=1,
    test_repeats=2,
    short_fraction=0.4,
)
N_TRIALS = 8 + 2 * 3 + 2 * 1 * 2
ARRAYS = (*native.TRIAL_ARRAYS, native.NOISELESS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny synthetic mice (read-only use)."""
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.generate(root, mice=2, seed=3, progress=False, **TINY)


def _load(folder: Path, name: str, trial: int) -> np.ndarray:
    return np.load(folder / "data" / name / f"{trial}.npy")


def _tiers(folder: Path) -> np.ndarray:
    return np.load(folder / native.TIERS_FILE)


def _length(video: np.ndarray) -> int:
    nan = np.flatnonzero(np.isnan(video[0, 0]))
    return int(nan[0]) if nan.size else video.shape[-1]


def _trial_ids(folder: Path, tier: str) -> np.ndarray:
    return np.flatnonzero(_tiers(folder) == tier)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_layout_is_exact(tiny: list[Path]) -> None:
    assert len(tiny) == 2 and tiny[0].parent == tiny[1].parent
    assert sorted(p.name for p in tiny[0].parent.iterdir()) == sorted(p.name for p in tiny)
    H, W, T, N = TINY["height"], TINY["width"], TINY["frames"], TINY["neurons"]
    for folder in tiny:
        assert re.fullmatch(r"dynamic\d+-\d+-\d+-Video-[0-9a-f]{32}", folder.name)
        expected = [f"data/{a}/{i}.npy" for a in ARRAYS for i in range(N_TRIALS)]
        expected += [native.TIERS_FILE, native.UNIT_IDS_FILE, native.COORDINATES_FILE]
        expected += [
            f"{native.STATISTICS_DIR}/{a}/all/{s}.npy"
            for a in native.TRIAL_ARRAYS
            for s in native.STATISTIC_NAMES
        ]
        expected += [f"meta/{synthetic.VIDEO_IDS_FILE}", native.SESSION_META_FILE]
        expected += [f"meta/{synthetic.RF_TRUTH_DIR}/{c}.npy" for c in synthetic.RF_TRUTH_COLUMNS]
        assert _files(folder) == sorted(expected)
        tiers = _tiers(folder)
        assert tiers.dtype.kind == "U" and tiers.shape == (N_TRIALS,)
        counts = dict(zip(*np.unique(tiers, return_counts=True)))
        assert counts == {"train": 8, "oracle": 6, "live_test_main": 2, "final_test_main": 2}
        assert set(tiers) <= set(native.TIERS)
        ids = np.load(folder / native.UNIT_IDS_FILE)
        assert ids.dtype.kind == "i" and ids.shape == (N,) and len(set(ids)) == N
        coords = np.load(folder / native.COORDINATES_FILE)
        assert coords.dtype == np.float32 and coords.shape == (N, 3)
        assert np.isfinite(coords).all()
        shapes = {
            native.VIDEOS: (H, W, T),
            native.RESPONSES: (N, T),
            native.BEHAVIOR: (2, T),
            native.PUPIL_CENTER: (2, T),
            native.NOISELESS: (N, T),
        }
        for trial in range(N_TRIALS):
            for name, shape in shapes.items():
                a = _load(folder, name, trial)
                assert a.shape == shape and a.dtype == np.float32, (name, trial)
        video_ids = np.load(folder / "meta" / synthetic.VIDEO_IDS_FILE)
        assert video_ids.shape == (N_TRIALS,) and video_ids.dtype.kind == "i"
        meta = json.loads((folder / native.SESSION_META_FILE).read_text())
        assert meta["source"] == "synthetic" and meta["seed"] == 3
        assert meta["sizes"] == {**TINY} and "mean_rate" in meta["params"]
        assert meta["hidden_tiers"] == ["final_test_main"]


def test_value_ranges(tiny: list[Path]) -> None:
    folder = tiny[0]
    videos = np.stack([_load(folder, native.VIDEOS, i) for i in range(N_TRIALS)])
    assert np.nanmin(videos) >= 0 and np.nanmax(videos) <= 255 and np.nanstd(videos) > 20
    for trial in range(N_TRIALS):
        T = _length(_load(folder, native.VIDEOS, trial))
        behavior = _load(folder, native.BEHAVIOR, trial)[:, :T]
        assert (behavior >= 0).all()  # pupil dilation and running speed
        responses = _load(folder, native.RESPONSES, trial)[:, :T]
        assert (responses >= 0).all()
        assert (_load(folder, native.NOISELESS, trial)[:, :T] > 0).all()


def test_sessions_differ(tiny: list[Path]) -> None:
    a, b = tiny
    assert not np.array_equal(
        np.load(a / native.COORDINATES_FILE), np.load(b / native.COORDINATES_FILE)
    )
    assert not np.array_equal(_tiers(a), _tiers(b))  # trial files are in random order


def test_deterministic_under_seed(tiny: list[Path], tmp_path: Path) -> None:
    again = synthetic.generate(tmp_path / "a", mice=2, seed=3, progress=False, **TINY)
    for x, y in zip(tiny, again):
        assert x.name == y.name
        assert _files(x) == _files(y)
        for rel in _files(x):
            assert (x / rel).read_bytes() == (y / rel).read_bytes(), rel
    other = synthetic.generate(tmp_path / "b", mice=1, seed=4, progress=False, **TINY)[0]
    assert other.name != tiny[0].name
    assert not np.array_equal(
        _load(other, native.RESPONSES, 0), _load(tiny[0], native.RESPONSES, 0)
    )


def test_short_trials_are_nan_padded(tiny: list[Path]) -> None:
    T = TINY["frames"]
    short = 0
    for folder in tiny:
        for trial in range(N_TRIALS):
            video = _load(folder, native.VIDEOS, trial)
            length = _length(video)
            assert length > 0
            short += length < T
            assert np.isfinite(video[..., :length]).all()
            assert np.isnan(video[..., length:]).all()
            for name in ARRAYS[1:]:
                a = _load(folder, name, trial)
                assert np.isfinite(a[:, :length]).all(), (name, trial)
                if name != native.RESPONSES or _tiers(folder)[trial] != "final_test_main":
                    assert np.isnan(a[:, length:]).all(), (name, trial)
    assert short > 0


def test_oracle_repeats_show_identical_videos(tiny: list[Path]) -> None:
    clips = {}
    for folder in tiny:
        tiers = _tiers(folder)
        video_ids = np.load(folder / "meta" / synthetic.VIDEO_IDS_FILE)
        oracle = np.flatnonzero(tiers == "oracle")
        assert len(set(video_ids[oracle])) == TINY["oracle_clips"]
        for vid in set(video_ids[oracle]):
            trials = np.flatnonzero(video_ids == vid)
            assert len(trials) == TINY["oracle_repeats"] and set(tiers[trials]) == {"oracle"}
            videos = [_load(folder, native.VIDEOS, t) for t in trials]
            for v in videos[1:]:
                np.testing.assert_array_equal(v, videos[0])
            behaviors = [_load(folder, native.BEHAVIOR, t) for t in trials]
            assert not np.array_equal(behaviors[0], behaviors[1], equal_nan=True)
            if vid in clips:  # shared by every mouse
                np.testing.assert_array_equal(videos[0], clips[vid])
            clips[vid] = videos[0]
        train = np.flatnonzero(tiers == "train")
        assert len(set(video_ids[train])) == len(train)  # a new clip per training trial


def test_hidden_test_responses_are_zeros(tiny: list[Path]) -> None:
    folder = tiny[0]
    tiers = _tiers(folder)
    for trial in np.flatnonzero(tiers == "final_test_main"):
        assert not _load(folder, native.RESPONSES, trial).any()
        assert np.nanmax(_load(folder, native.NOISELESS, trial)) > 0
    for trial in np.flatnonzero(tiers == "live_test_main"):
        assert np.nanmax(_load(folder, native.RESPONSES, trial)) > 0


def test_noiseless_rates_predict_responses(tiny: list[Path]) -> None:
    for folder in tiny:
        ceiling = synthetic.session_ceiling(folder, tiers=("train", "oracle"), skip_frames=0)
        assert ceiling.shape == (TINY["neurons"],)
        assert ceiling.mean() > 0.3 and (ceiling > 0).mean() > 0.9
        meta = json.loads((folder / native.SESSION_META_FILE).read_text())
        assert meta["ceiling_correlation"]["by_tier"]["train"]["mean"] > 0.3
        # the ceilings in meta are the folder's, scored with the metrics' first-frames rule
        for tier, recorded in meta["ceiling_correlation"]["by_tier"].items():
            lengths = [_length(_load(folder, native.VIDEOS, t)) for t in _trial_ids(folder, tier)]
            assert recorded["skip_frames"] == metrics.frames_to_skip(lengths), tier
            again = synthetic.session_ceiling(folder, tiers=(tier,))
            assert recorded["mean"] == pytest.approx(float(again.mean()), abs=1e-12), tier
    # shuffled in time, the noiseless rates predict nothing
    folder = tiny[0]
    trials = np.flatnonzero(_tiers(folder) == "train")
    x = [_load(folder, native.NOISELESS, t) for t in trials]
    y = [_load(folder, native.RESPONSES, t) for t in trials]
    assert synthetic.ceiling_correlation(x, y).mean() > 0.3
    rolled = [np.roll(_load(folder, native.NOISELESS, t), 7, axis=1) for t in trials]
    assert synthetic.ceiling_correlation(rolled, y).mean() < 0.3


def test_ceiling_correlation_definition() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, 40))
    y = 2 * x + 1
    y[2] = -x[2]
    np.testing.assert_allclose(synthetic.ceiling_correlation(x, y), [1, 1, -1])
    flat = np.ones((1, 40))
    assert synthetic.ceiling_correlation(flat, x[:1])[0] == 0
    # NaN frames are ignored, trials are pooled, skip_frames drops the start of every trial
    a, b = rng.random((2, 30)), rng.random((2, 30))
    a_nan, b_nan = np.concatenate([a, np.full((2, 5), np.nan)], 1), b.copy()
    b_nan = np.concatenate([b_nan, np.zeros((2, 5))], 1)
    expected = [np.corrcoef(a[i], b[i])[0, 1] for i in range(2)]
    np.testing.assert_allclose(synthetic.ceiling_correlation([a_nan], [b_nan]), expected)
    pooled = synthetic.ceiling_correlation([a[:, :10], a[:, 10:]], [b[:, :10], b[:, 10:]])
    np.testing.assert_allclose(pooled, expected)
    skipped = synthetic.ceiling_correlation([a, a], [b, b], skip_frames=5)
    np.testing.assert_allclose(skipped, [np.corrcoef(a[i, 5:], b[i, 5:])[0, 1] for i in range(2)])
    with pytest.raises(ValueError):
        synthetic.ceiling_correlation([a], [b, b])


def test_ceiling_skips_like_the_metrics() -> None:
    """By default the ceiling leaves out what validation and prediction leave out: the first 50
    frames of every trial once a trial is longer than 50 valid frames, else nothing."""
    rng = np.random.default_rng(1)
    long, short = rng.random((2, 2, 70)), rng.random((2, 2, 70))
    short[:, :, 40:] = np.nan  # a NaN-padded trial with 40 valid frames
    skip = metrics.SKIP_FRAMES
    expected = [
        np.corrcoef(long[0, i, skip:], long[1, i, skip:])[0, 1] for i in range(2)
    ]  # the short trial has no frame past the skip
    got = synthetic.ceiling_correlation([long[0], short[0]], [long[1], short[1]])
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # only short trials: every valid frame counts
    only_short = synthetic.ceiling_correlation([short[0]], [short[1]])
    expected = [np.corrcoef(short[0, i, :40], short[1, i, :40])[0, 1] for i in range(2)]
    np.testing.assert_allclose(only_short, expected, rtol=1e-10)


def test_statistics_match_the_data(tiny: list[Path]) -> None:
    """Shipped statistics: over the training trials, for every frame (as published)."""
    for folder in tiny:
        train = np.flatnonzero(_tiers(folder) == "train")
        for name in native.TRIAL_ARRAYS:
            stack = np.stack([_load(folder, name, t) for t in train]).astype(np.float64)
            expected = {
                "mean": np.nanmean(stack, 0),
                "std": np.nanstd(stack, 0),
                "min": np.nanmin(stack, 0),
                "max": np.nanmax(stack, 0),
                "median": np.nanmedian(stack, 0),
            }
            for stat, value in expected.items():
                path = folder / native.STATISTICS_DIR / name / "all" / f"{stat}.npy"
                got = np.load(path)
                assert got.dtype == np.float32 and got.shape == stack.shape[1:], path
                np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-4, err_msg=str(path))
        meta = json.loads((folder / native.SESSION_META_FILE).read_text())
        assert meta["shipped_statistics"]["median"] == "exact"
    # the public helper computes the same thing from arrays in memory
    trials = [{n: _load(folder, n, t) for n in native.TRIAL_ARRAYS} for t in train]
    for name, stats in synthetic.shipped_statistics(trials).items():
        for stat, value in stats.items():
            path = folder / native.STATISTICS_DIR / name / "all" / f"{stat}.npy"
            np.testing.assert_array_equal(value, np.load(path), err_msg=str(path))


def test_streaming_paths_give_the_same_session(
    tiny: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions too big to cache: noiseless rates recomputed, medians from a subset."""
    monkeypatch.setattr(Mouse, "NOISELESS_CACHE_BYTES", 0)
    monkeypatch.setattr(Mouse, "MEDIAN_BYTES", 3 * TINY["neurons"] * TINY["frames"] * 4)
    folder = synthetic.generate(tmp_path, mice=1, seed=3, progress=False, **TINY)[0]
    for rel in _files(tiny[0]):
        if rel.endswith(("/all/median.npy", ".json")):
            continue
        assert (folder / rel).read_bytes() == (tiny[0] / rel).read_bytes(), rel
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # spill removed
    meta = json.loads((folder / native.SESSION_META_FILE).read_text())
    assert meta["shipped_statistics"]["median"] != "exact"
    # noiseless rates asked for before (or without) their trial: recomputed, identically
    mouse = Mouse(
        3,
        0,
        synthetic.SyntheticSizes(**TINY),
        synthetic.ModelParams(),
        writer.shared_clips(3, synthetic.SyntheticSizes(**TINY)),
        False,
    )
    for trial in (0, N_TRIALS - 1):
        np.testing.assert_array_equal(
            mouse.noiseless_of(trial), _load(folder, native.NOISELESS, trial)
        )
    assert np.isfinite(np.load(folder / native.STATISTICS_DIR / "responses/all/median.npy")).all()


def test_bad_arguments(tmp_path: Path, tiny: list[Path]) -> None:
    with pytest.raises(ConfigError, match="preset"):
        synthetic.generate(tmp_path, preset="huge")
    with pytest.raises(ConfigError, match="unknown synthetic option"):
        synthetic.generate(tmp_path, neuronz=3)
    with pytest.raises(ConfigError, match="frames"):
        synthetic.generate(tmp_path, frames=1)
    with pytest.raises(ConfigError, match="mice"):
        synthetic.generate(tmp_path, mice=0)
    with pytest.raises(NeurotwinError, match="already exists"):
        synthetic.generate(tiny[0].parent, mice=1, seed=3, progress=False, **TINY)
    assert not any(tmp_path.iterdir())


def test_presets() -> None:
    small, full = synthetic.PRESETS["small"], synthetic.PRESETS["sensorium"]
    assert small.frames > metrics.SKIP_FRAMES and 50 <= small.neurons <= 100
    assert 40 <= small.train_trials <= 80 and small.oracle_repeats >= 4
    assert (full.height, full.width, full.frames) == (36, 64, 300)
    n_full = full.train_trials + full.oracle_clips * full.oracle_repeats
    n_full += 2 * full.test_clips * full.test_repeats
    assert full.neurons == 8000 and n_full == 700


def _sizes_argv() -> list[str]:
    return [x for k, v in TINY.items() for x in (f"--{k}", str(v))]


def test_cli(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys) -> None:
    from neurotwin.cli.data import main

    out = tmp_path / "out"
    argv = ["synthetic", "--out", str(out), "--mice", "1", "--seed", "5", "--no_progress"]
    with caplog.at_level(logging.INFO):
        assert main(argv + _sizes_argv()) == 0
    sessions = [p for p in out.iterdir()]
    assert len(sessions) == 1 and len(list((sessions[0] / "data/videos").iterdir())) == N_TRIALS
    assert str(out.resolve()) in caplog.text and sessions[0].name in caplog.text
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv + _sizes_argv())
    assert exit_.value.code == 2 and "already exists" in capsys.readouterr().err
    assert main(argv + _sizes_argv() + ["--overwrite"]) == 0
    with pytest.raises(SystemExit) as exit_:
        main(["synthetic", "--out", str(tmp_path / "x"), "--frames", "1", "--no_progress"])
    assert exit_.value.code == 2 and "frames" in capsys.readouterr().err


def test_ensure_synthetic(tmp_path: Path, tiny: list[Path], monkeypatch: pytest.MonkeyPatch):
    # a folder that already holds sessions is left alone
    assert synthetic.ensure_synthetic(tiny[0].parent) == sorted(tiny)
    # an empty (or missing) folder gets the default dataset (made tiny here to stay fast)
    calls = []
    real = synthetic.generate

    def fake(out_dir, **kwargs):
        calls.append(kwargs)
        return real(out_dir, mice=2, seed=0, progress=False, **TINY)

    monkeypatch.setattr(writer, "generate", fake)
    written = synthetic.ensure_synthetic(tmp_path / "data")
    assert len(written) == 2 and len(calls) == 1
    assert synthetic.ensure_synthetic(tmp_path / "data") == written and len(calls) == 1


def test_read_back_through_the_reader(tiny: list[Path]) -> None:
    assert native.find_sessions(tiny[0].parent) == sorted(tiny)
    folder = tiny[0]
    session = native.NativeSession(folder)
    np.testing.assert_array_equal(session.tiers, _tiers(folder))
    np.testing.assert_array_equal(session.unit_ids, np.load(folder / native.UNIT_IDS_FILE))
    np.testing.assert_array_equal(session.coordinates, np.load(folder / native.COORDINATES_FILE))
    assert session.frame_shape == (TINY["height"], TINY["width"])
    assert session.n_neurons == TINY["neurons"] and session.has_noiseless
    assert session.meta["source"] == "synthetic"
    assert session.responses_hidden("final_test_main")
    assert not session.responses_hidden("live_test_main")
    assert not session.responses_hidden("train")
    for trial in range(N_TRIALS):
        arrays = session.load_trial(trial)
        for name in native.TRIAL_ARRAYS:
            np.testing.assert_array_equal(arrays[name], _load(folder, name, trial))
        np.testing.assert_array_equal(
            session.load_noiseless(trial), _load(folder, native.NOISELESS, trial)
        )
        assert session.trial_length(trial) == _length(_load(folder, native.VIDEOS, trial))
    shipped = session.statistics(shipped=True)
    for name in native.TRIAL_ARRAYS:
        for stat in native.STATISTIC_NAMES:
            np.testing.assert_array_equal(
                shipped[name][stat],
                np.load(folder / native.STATISTICS_DIR / name / "all" / f"{stat}.npy"),
            )

"""neurotwin-encode end to end: ground truth recovered, the cache, the tables, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from neurotwin.cli import encode as cli
from neurotwin.data import native
from neurotwin.encoding import run as run_module
from neurotwin.encoding.regression import RegressionOptions
from neurotwin.encoding.run import EncodeOptions, EncodeSettings, run_encoding
from neurotwin.encoding.stimuli import StimulusOptions
from neurotwin.encoding.tables import PREDICTIVITY_COLUMNS, SCORE_COLUMNS

pytestmark = pytest.mark.usefixtures("one_thread")

H, W, T, CLIPS, REPEATS, NEURONS, NOISE = 6, 8, 40, 6, 5, 12, 1.0


def write_linear_session(folder, seed=0):
    """A session whose neurons are known linear read-outs of the pixels plus noise (sd NOISE,
    independent per repeat): an encoding model on the pixels can reach noise-corrected r = 1.
    Half the neurons are in VISp, half in VISl."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(NEURONS, H * W)) / np.sqrt(H * W)
    trials, tiers = {}, []
    for _ in range(CLIPS):
        video = rng.uniform(0, 255, size=(H, W, T)).astype(np.float32)
        signal = weights @ (video.reshape(H * W, T) / 255 - 0.5) * 8
        for _ in range(REPEATS):
            trials[len(tiers)] = {
                native.VIDEOS: video,
                native.RESPONSES: (signal + NOISE * rng.normal(size=signal.shape)).astype(
                    np.float32
                ),
                native.BEHAVIOR: np.zeros((2, T), np.float32),
                native.PUPIL_CENTER: np.zeros((2, T), np.float32),
            }
            tiers.append(native.ORACLE_TIER)
    areas = np.asarray(["VISp"] * (NEURONS // 2) + ["VISl"] * (NEURONS - NEURONS // 2))
    session = native.SessionArrays(
        tiers=np.asarray(tiers),
        unit_ids=np.arange(NEURONS) + 100,
        coordinates=np.zeros((NEURONS, 3)),
        trials=trials,
        extra_meta={"neurons/area.npy": areas},
    )
    return native.write_session(folder, session, overwrite=True)


def _settings(data_dir, out, **backbone):
    return EncodeSettings(
        encode=EncodeOptions(model=["pixels"], output_dir=str(out)),
        stimuli=StimulusOptions(data_dir=str(data_dir)),
        backbone={"pixels_size": [H, W], **backbone},
        regression=RegressionOptions(regressor="ridge", alphas=[1.0]),
    )


@pytest.fixture
def linear_data(tmp_path):
    write_linear_session(tmp_path / "data" / "linear-mouse")
    return tmp_path / "data"


def test_pixels_recover_a_linear_ground_truth(linear_data, tmp_path):
    """Noise-corrected r of the fit to the repeat average ~ 1 (tolerance 0.1): the model is
    exact up to the noise, and the noise ceiling removes what the noise costs."""
    result = run_encoding(_settings(linear_data, tmp_path / "out"))
    table = result["table"]
    assert list(table.columns) == PREDICTIVITY_COLUMNS
    assert set(table["area"]) == {"VISp", "VISl", "all"}
    row = table[table["area"] == "all"].iloc[0]
    assert row["n_neurons"] == NEURONS
    assert row["median_noise_corrected_r"] == pytest.approx(1.0, abs=0.1)
    # the true reliability of a mean of 5 repeats: var(signal) / (var(signal) + 1 / 5)
    scores = pd.read_parquet(result["scores"])
    assert list(scores.columns[: len(SCORE_COLUMNS)]) == SCORE_COLUMNS
    assert scores["repeat"].isna().any() and set(scores["repeat"].dropna()) == set(range(REPEATS))
    single = scores[(scores["repeat"] == 0) & (scores["metric"] == "noise_corrected_r")]["value"]
    assert single.median() == pytest.approx(1.0, abs=0.15)  # one repeat, its own ceiling
    assert set(scores["metric"]) == {"r", "r2", "noise_ceiling", "noise_corrected_r"}
    summary = json.loads(result["summary"].read_text())
    assert summary["best_layer"]["oracle"] == {"pixels": "pixels"}
    assert {p.name for p in result["figures"]} == {"heatmap_oracle.png", "by_layer_oracle.png"}
    assert not list((tmp_path / "out").rglob(".*tmp*"))  # nothing half-written left


def test_embedding_cache_hit_and_miss_on_a_changed_stimulus(linear_data, tmp_path, monkeypatch):
    calls = []
    real = run_module.embed_frames
    monkeypatch.setattr(
        run_module, "embed_frames", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    settings = _settings(linear_data, tmp_path / "out")
    first = run_encoding(settings)["table"]
    assert len(calls) == 1
    files = sorted((tmp_path / "out" / "embeddings").rglob("*.npy"))
    assert len(files) == 1
    second = run_encoding(settings)["table"]
    assert len(calls) == 1  # read from the cache
    pd.testing.assert_frame_equal(first, second)
    video = linear_data / "linear-mouse" / "data" / "videos" / "0.npy"
    frames = np.load(video)
    frames[0, 0, 0] += 1.0  # one pixel of one repeat: a new distinct frame
    np.save(video, frames)
    run_encoding(settings)
    assert len(calls) == 2
    assert len(sorted((tmp_path / "out" / "embeddings").rglob("*.npy"))) == 2
    run_encoding(_settings(linear_data, tmp_path / "out", pixels_size=[3, 4]))  # another model key
    assert len(calls) == 3


def test_cli_pixels_on_synthetic_mice_then_a_random_resnet18(synthetic_mice, tmp_path, capsys):
    """The done-when runs at test size: pixels + ridge give a positive noise-corrected r on the
    oracle tier; a random-weight torchvision:resnet18 run completes; a second model in the same
    folder adds the per-neuron scatter."""
    out = tmp_path / "enc"
    argv = ["--data_dir", str(synthetic_mice), "--output_dir", str(out), "--quiet"]
    assert (
        cli.main(
            [
                *argv,
                "--model",
                "pixels",
                "--regressor",
                "ridge",
                "--pixels_size",
                "9",
                "16",
                "--lags",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "median_noise_corrected_r" in printed and f"wrote {out / 'scores.parquet'}" in printed
    table = pd.read_parquet(out / "predictivity.parquet")
    assert table.loc[table["model"] == "pixels", "median_noise_corrected_r"].iloc[0] > 0.1
    rc = cli.main(
        [
            *argv,
            "--model",
            "torchvision:resnet18",
            "--weights",
            "none",
            "--layers",
            "layer1",
            "layer2",
            "--input_size",
            "32",
            "32",
            "--pooling",
            "mean",
        ]
    )
    assert rc == 0
    table = pd.read_parquet(out / "predictivity.parquet")
    assert set(table["model"]) == {"pixels", "torchvision:resnet18:random"}
    assert (out / "figures" / "scatter_oracle.png").is_file()
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["session"].nunique() == 2 and set(scores["tier"]) == {"oracle"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data_dir", "/nonexistent"], "data folder not found"),
        (["--model", "caffe:net"], "unknown backbone"),
        (["--split", "kfold"], "split"),
        (["--tiers", "validation"], "tiers must be among"),
        (["--model", "pixels", "--weights", "a", "b"], "--weights values"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(synthetic_mice, tmp_path, capsys, args, message):
    argv = ["--data_dir", str(synthetic_mice), "--output_dir", str(tmp_path / "o"), *args]
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err

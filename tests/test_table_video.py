"""neurotwin-data table-video: response tables (pickle, parquet) + movie files (encoded with
PyAV/FFmpeg here: lossless FFV1 in Matroska, MPEG-4 and H.264 in MP4) -> a native session that
NativeSession reads and train.py trains on. Known frames and spike times give the exact binned
values expected; each kind of bad input gives a DataFormatError naming the file and field, and
leaves no session folder behind."""

from __future__ import annotations

import csv
import fractions
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

av = pytest.importorskip("av")

from neurotwin.cli import data as data_cli  # noqa: E402
from neurotwin.cli import train as train_cli  # noqa: E402
from neurotwin.data.native import NativeSession  # noqa: E402
from neurotwin.data.tablevideo import convert_table_video  # noqa: E402
from neurotwin.data.tablevideo.video import frame_weights, frames_in_bins, read_movie  # noqa: E402
from neurotwin.errors import DataFormatError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAME = (16, 24)


def write_movie(path: Path, frames: np.ndarray, fps: float, codec: str = "ffv1") -> Path:
    """(F, H, W) uint8 grey frames -> a video file encoded by FFmpeg through PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames.shape[1:]
        stream.pix_fmt = "gray" if codec == "ffv1" else "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="gray")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def movie(seed: int, n_frames: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n_frames, *FRAME), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# decoding and resampling
# ------------------------------------------------------------------------------------------------


def test_lossless_movie_decodes_to_its_frames_and_rate(tmp_path):
    frames = movie(0, 30)
    m = read_movie(write_movie(tmp_path / "m.mkv", frames, 60))
    np.testing.assert_array_equal(m.frames, frames.astype(np.float32))
    assert m.file_fps == 60 and m.frames.dtype == np.float32


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_lossy_mp4_decodes_close_to_its_frames(tmp_path, codec):
    frames = np.repeat(np.linspace(20, 230, 12, dtype=np.uint8)[:, None, None], 16, 1)
    frames = np.repeat(frames, 24, 2)  # flat grey levels: little for a codec to lose
    m = read_movie(write_movie(tmp_path / "m.mp4", frames, 30, codec))
    assert m.frames.shape == frames.shape and m.file_fps == 30
    assert np.abs(m.frames - frames).max() <= 3  # grey levels; limited-range YUV round trip


def test_frames_are_resampled_to_bins_by_time_on_screen():
    frames = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    # 60 frames/s into 50 ms bins: three frames a bin, their mean
    down = frames_in_bins(frames, 60.0, 0.05, 2)
    np.testing.assert_allclose(down[:, 0, 0], [1.0, 4.0], atol=1e-6)
    # into 10 ms bins: each bin the frame on screen (or the two it straddles, by time)
    up = frames_in_bins(frames, 60.0, 0.01, 10)[:, 0, 0]
    edges = np.arange(11) * 0.01
    for i in range(10):
        k0, k1 = int(edges[i] * 60), int(math.ceil(edges[i + 1] * 60 - 1e-9)) - 1
        if k0 == k1:
            assert up[i] == pytest.approx(k0)
        else:  # straddles frames k0, k0 + 1: weights by the time each is shown
            w1 = (edges[i + 1] - (k0 + 1) / 60) / 0.01
            assert up[i] == pytest.approx(k0 * (1 - w1) + (k0 + 1) * w1, abs=1e-5)
    w = frame_weights(6, 60.0, 0.025, 4)  # 25 ms bins: 1.5 frames each
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w[0, :2], [2 / 3, 1 / 3])


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------

TIERS = ["train"] * 8 + ["oracle"] * 3 + ["final_test_main"]
UNITS = [3, 7, 11, 20, 21]


def recording(folder: Path, kind: str = "spikes", fmt: str = "parquet", fps: float = 60.0,
              seconds: float = 1.0) -> dict:  # fmt: skip
    """A small recording: one movie file per trial (the last trial shorter), unit responses
    that follow each movie's brightness, the two tables in `fmt`."""
    videos = folder / "videos"
    videos.mkdir(parents=True)
    rng = np.random.default_rng(1)
    trial_rows, response_rows, truth = [], [], {}
    for i, tier in enumerate(TIERS):
        trial_id = 100 + i
        n_frames = int(seconds * fps) - (int(fps // 4) if i == len(TIERS) - 1 else 0)
        frames = movie(i, n_frames)
        write_movie(videos / f"clip_{i}.mkv", frames, fps)
        trial_rows.append({"trial_id": trial_id, "video": f"clip_{i}.mkv", "tier": tier})
        brightness = frames.mean(axis=(1, 2)) / 255.0  # per frame
        for u in UNITS:
            rate_hz = 5.0 + 40.0 * brightness * (u % 4 + 1) / 4
            if kind == "spikes":
                # a Poisson spike train of each frame's rate, times within the frame
                counts = rng.poisson(rate_hz / fps)
                times = np.concatenate([(k + rng.random(c)) / fps for k, c in enumerate(counts)])
                times = np.concatenate([times, [-0.1, seconds + 1.0]])  # before / after the movie
                response_rows.append({"unit_id": u, "trial_id": trial_id, "spike_times": times})
                truth[trial_id, u] = times
            else:  # a rate per 50 ms bin the movie covers
                n_bins = int(np.floor(n_frames / fps / 0.05 + 1e-6))
                rates = rng.random(n_bins) * 3
                response_rows.append({"unit_id": u, "trial_id": trial_id, "rates": rates})
    trials, responses = pd.DataFrame(trial_rows), pd.DataFrame(response_rows)
    suffix = ".parquet" if fmt == "parquet" else ".pkl"
    paths = {"trials": folder / f"trials{suffix}", "responses": folder / f"responses{suffix}"}
    for name, table in (("trials", trials), ("responses", responses)):
        if fmt == "parquet":
            table.to_parquet(paths[name])
        else:
            table.to_pickle(paths[name])
    return {**paths, "videos": videos, "truth": truth, "fps": fps}


def test_spike_table_converts_to_exact_counts_and_binned_frames(tmp_path):
    rec = recording(tmp_path / "rec")
    folder = convert_table_video(
        rec["responses"], rec["trials"], rec["videos"], tmp_path / "data", bin_ms=50.0
    )
    assert folder == tmp_path / "data" / "responses"
    s = NativeSession(folder)
    assert s.n_neurons == len(UNITS) and s.frame_shape == FRAME and s.n_frames == 20
    np.testing.assert_array_equal(s.unit_ids, UNITS)
    assert list(s.tiers) == TIERS
    np.testing.assert_array_equal(np.load(folder / "meta/trials/trial_id.npy"), 100 + np.arange(12))
    for index in (0, 9):
        trial = s.load_trial(index)
        times = [rec["truth"][100 + index, u] for u in UNITS]
        for row, t in enumerate(times):  # counts in [50 k, 50 (k + 1)) ms
            expected = [np.sum((t >= k * 0.05) & (t < (k + 1) * 0.05)) for k in range(20)]
            np.testing.assert_array_equal(trial["responses"][row], expected)
        frames = movie(index, 60).astype(np.float32)
        np.testing.assert_allclose(
            trial["videos"], np.moveaxis(frames.reshape(20, 3, *FRAME).mean(1), 0, -1), atol=1e-3
        )  # 3 frames of 60 Hz in each 50 ms bin, decoded losslessly
        np.testing.assert_array_equal(trial["behavior"], 0)
    last = s.load_trial(11)  # 45 frames = 0.75 s: 15 bins, then NaN padding
    assert s.trial_length(11) == 15
    assert (
        np.isfinite(last["responses"][:, :15]).all() and np.isnan(last["responses"][:, 15:]).all()
    )
    assert np.isnan(last["videos"][..., 15:]).all()


def test_rate_table_in_pickle_with_behaviour_and_resize(tmp_path):
    rec = recording(tmp_path / "rec", kind="rates", fmt="pickle", fps=30.0)
    trials = pd.read_pickle(rec["trials"])
    responses = pd.read_pickle(rec["responses"])
    bins = {t: (20 if t != 111 else 15) for t in trials.trial_id}  # 50 ms bins of 1 s (0.77 s)
    trials["running_speed"] = [np.arange(bins[t], dtype=float) for t in trials.trial_id]
    trials["pupil_x"] = [np.full(bins[t], 2.5) for t in trials.trial_id]
    trials.to_pickle(rec["trials"])
    folder = convert_table_video(
        rec["responses"], rec["trials"], rec["videos"], tmp_path / "data", bin_ms=50.0,
        frame_size=(8, 12), name="lgn",
    )  # fmt: skip
    s = NativeSession(folder)
    assert s.frame_shape == (8, 12) and s.n_frames == 20
    for index in (0, 11):
        trial, t = s.load_trial(index), 100 + index
        rates = np.stack([responses.rates[(responses.trial_id == t) & (responses.unit_id == u)].item() for u in UNITS])  # fmt: skip
        np.testing.assert_allclose(trial["responses"][:, : bins[t]], rates, rtol=1e-6)
        np.testing.assert_array_equal(trial["behavior"][1, : bins[t]], np.arange(bins[t]))
        np.testing.assert_array_equal(trial["pupil_center"][0, : bins[t]], 2.5)
        np.testing.assert_array_equal(trial["pupil_center"][1, : bins[t]], 0)
    # 30 Hz into 50 ms bins: 1.5 frames a bin, then area-resized 16x24 -> 8x12 (2x2 means)
    frames = movie(0, 30).astype(np.float32)
    binned = frames_in_bins(frames, 30.0, 0.05, 20).reshape(20, 8, 2, 12, 2).mean((2, 4))
    np.testing.assert_allclose(s.load_trial(0)["videos"], np.moveaxis(binned, 0, -1), atol=1e-3)


def test_fps_flag_overrides_the_files_rate(tmp_path):
    rec = recording(tmp_path / "rec", fps=60.0)
    folder = convert_table_video(
        rec["responses"], rec["trials"], rec["videos"], tmp_path / "data", bin_ms=50.0, fps=30.0
    )  # 60 frames shown at 30 Hz: 2 s, 40 bins of 1.5 frames
    assert NativeSession(folder).n_frames == 40


def _expect_error(rec, tmp_path, match, field=None, **kw):
    out = tmp_path / "data"
    with pytest.raises(DataFormatError, match=match) as e:
        convert_table_video(rec["responses"], rec["trials"], rec["videos"], out, bin_ms=50.0, **kw)
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    if field:
        assert e.value.field == field
    return str(e.value)


def test_missing_video_is_named(tmp_path):
    rec = recording(tmp_path / "rec")
    (rec["videos"] / "clip_4.mkv").unlink()
    msg = _expect_error(rec, tmp_path, "trial 104: video file .*clip_4.mkv not found", "video")
    assert "trials.parquet" in msg


def test_trial_without_responses_is_named(tmp_path):
    rec = recording(tmp_path / "rec")
    table = pd.read_parquet(rec["responses"])
    table[table.trial_id != 102].to_parquet(rec["responses"])
    msg = _expect_error(rec, tmp_path, r"trial\(s\) \[102\] of the trial table", "trial_id")
    assert "responses.parquet" in msg


def test_responses_of_an_unlisted_trial_or_a_missing_unit_are_named(tmp_path):
    rec = recording(tmp_path / "rec")
    trials = pd.read_parquet(rec["trials"])
    trials[trials.trial_id != 105].to_parquet(rec["trials"])
    _expect_error(rec, tmp_path, r"trial\(s\) \[105\] have responses", "trial_id")
    trials.to_parquet(rec["trials"])
    table = pd.read_parquet(rec["responses"])
    table[(table.trial_id != 103) | (table.unit_id != 7)].to_parquet(rec["responses"])
    _expect_error(rec, tmp_path, r"trial 103 has no row for unit\(s\) \[7\]", "unit_id")


@pytest.mark.parametrize("damage", ["cut", "junk"])
def test_unreadable_frames_are_named(tmp_path, damage):
    rec = recording(tmp_path / "rec")
    path = rec["videos"] / "clip_6.mkv"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "cut" else b"\x00junk" * 500)
    msg = _expect_error(rec, tmp_path, "unreadable frames", "video")
    assert "clip_6.mkv" in msg


def test_schema_errors_name_the_column(tmp_path):
    rec = recording(tmp_path / "rec")
    trials = pd.read_parquet(rec["trials"])
    trials.assign(tier="training").to_parquet(rec["trials"])
    _expect_error(rec, tmp_path, "tier 'training' is not one of", "tier")
    trials.drop(columns="video").to_parquet(rec["trials"])
    _expect_error(rec, tmp_path, r"missing column\(s\) \['video'\]", "video")
    trials.to_parquet(rec["trials"])
    table = pd.read_parquet(rec["responses"])
    table.rename(columns={"spike_times": "spikes"}).to_parquet(rec["responses"])
    _expect_error(rec, tmp_path, "exactly one of the columns 'spike_times'")


def test_rates_longer_than_the_movie_are_an_error(tmp_path):
    rec = recording(tmp_path / "rec", kind="rates", fmt="pickle")
    responses = pd.read_pickle(rec["responses"])
    responses["rates"] = [np.ones(25) for _ in responses.trial_id]  # 25 bins of 50 ms > 1 s
    responses.to_pickle(rec["responses"])
    _expect_error(rec, tmp_path, "cover 20 bins of 50 ms; its rates have 25", "video")


# ------------------------------------------------------------------------------------------------
# the converted session trains through train.py
# ------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_cli_output_trains_through_train_py(tmp_path):
    rec = recording(tmp_path / "rec", seconds=2.0)
    data = tmp_path / "data"
    argv = ["table-video", "--responses", str(rec["responses"]), "--trials", str(rec["trials"]),
            "--videos", str(rec["videos"]), "--fps", "60", "--bin_ms", "40", "--out", str(data),
            "--name", "dlgn-mouse"]  # fmt: skip
    assert data_cli.main(argv) == 0
    assert NativeSession(data / "dlgn-mouse").n_frames == 50
    with pytest.raises(SystemExit):  # an existing session is kept unless --overwrite
        data_cli.main(argv)
    out = tmp_path / "run"
    train_cli.main(
        ["--data_dir", str(data), "--output_dir", str(out), "--epochs", "2", "--crop_frame", "20",
         "--batch_size", "4", "--num_workers", "0", "--device", "cpu", "--verbose", "0",
         "--core", "conv3d", "--core_num_layers", "1", "--core_hidden_dim", "4",
         "--core_spatial_input_kernel", "5", "--core_temporal_input_kernel", "5"]
    )  # fmt: skip
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert all(math.isfinite(float(r["val_correlation"])) for r in rows)
    assert (out / "checkpoints/best.pt").is_file()

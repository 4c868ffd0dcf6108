"""The start-up data check (neurotwin.data.native.check) and the statistics cache: what a
second run reads again, a changed file found although statistics were cached, the modes, and
--recompute_statistics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from native_fixture import write_native_dataset
from neurotwin.cli import train as train_cli
from neurotwin.data import native
from neurotwin.data.native import check
from neurotwin.data.native import reader as native_reader
from neurotwin.errors import DataFormatError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_native_dataset(root, 2)
    return root


def sessions(data: Path) -> list[Path]:
    return native.find_sessions(data)


def a_training_trial(session: Path) -> int:
    return int(np.flatnonzero(np.load(session / native.TIERS_FILE) == "train")[0])


def put_nan(path: Path, frame: int = 3) -> None:
    """A NaN at `frame` of row 0 (inside the valid frames), the file's time moved on."""
    a = np.load(path)
    a[0, frame] = np.nan
    np.save(path, a)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later modification time


def test_a_second_check_reads_only_the_files_that_changed(data):
    first = check.check_sessions(data, tiers=("train", "oracle"))
    n_train = sum(int((np.load(s / native.TIERS_FILE) == "train").sum()) for s in sessions(data))
    assert first.files == 2 * 10 * 4 and first.unchanged == 0
    assert first.scanned_trials == n_train
    second = check.check_sessions(data, tiers=("train", "oracle"))
    assert second.unchanged == second.files and second.scanned_trials == 0
    # one training file rewritten (same values, a new time): that trial alone is read again
    session = sessions(data)[0]
    path = session / "data/behavior" / f"{a_training_trial(session)}.npy"
    np.save(path, np.load(path))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = check.check_sessions(data)
    assert third.unchanged == third.files - 1 and third.scanned_trials == 1


def test_nan_written_after_the_statistics_were_cached_is_found_at_start_up(data, capsys, tmp_path):
    """Issue 14, item 1: a cached statistics file used to switch the check off."""
    session = native.NativeSession(sessions(data)[1])
    session.statistics()  # cached in meta/statistics_neurotwin/
    check.check_sessions(data)  # and the check remembered as passed
    trial = a_training_trial(session.path)
    path = session.path / "data/responses" / f"{trial}.npy"
    put_nan(path)
    with pytest.raises(SystemExit) as e:
        train_cli.main(
            ["--data_dir", str(data), "--output_dir", str(tmp_path / "run"), "--core", "conv3d"]
            + ["--crop_frame", "8", "--num_workers", "0", "--device", "cpu", "--epochs", "8"]
        )
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{path} [responses]: NaN at frame 3 (neuron 0)" in err
    assert f"training trial {trial}" in err
    assert not (tmp_path / "run").exists()


def test_a_changed_file_invalidates_the_statistics_cache(data, monkeypatch):
    path = sessions(data)[0]
    native.NativeSession(path).statistics()
    calls = []
    real = native_reader.compute_statistics
    monkeypatch.setattr(
        native_reader, "compute_statistics", lambda s, t: calls.append(1) or real(s, t)
    )
    native.NativeSession(path).statistics()
    assert calls == []  # cached
    trial = a_training_trial(path)
    video = path / "data/videos" / f"{trial}.npy"
    a = np.load(video)
    np.save(video, a * 2)
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    stats = native.NativeSession(path).statistics()
    assert calls == [1]  # computed again from the changed file
    assert native.NativeSession(path).statistics()[native.VIDEOS]["max"] == stats[native.VIDEOS]["max"]  # fmt: skip
    assert calls == [1]  # and cached again
    native.NativeSession(path).statistics(recompute=True)  # --recompute_statistics
    assert calls == [1, 1]


def test_recompute_statistics_reaches_the_loaders(data, monkeypatch):
    from neurotwin.config import DataConfig
    from neurotwin.data import loaders

    seen = []
    real = native.NativeSession.statistics
    monkeypatch.setattr(
        native.NativeSession,
        "statistics",
        lambda self, **kw: seen.append(kw.get("recompute")) or real(self, **kw),
    )
    config = DataConfig(data_dir=str(data), crop_frame=8, num_workers=0, recompute_statistics=True)
    loaders.build_loaders(config, {"train": "train"}, seed=0)
    assert seen == [True, True]


def test_headers_mode_leaves_the_nan_pass_out_and_off_reads_nothing(data):
    session = sessions(data)[0]
    put_nan(session / "data/pupil_center" / f"{a_training_trial(session)}.npy")
    check.check_sessions(data, mode="headers")  # headers fine
    with pytest.raises(DataFormatError, match="pupil_center.*NaN at frame 3"):
        check.check_sessions(data, mode="full")  # the full pass is not remembered as passed
    (session / "data/videos/4.npy").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match=r"videos/4.npy \[videos\]: not a .npy file"):
        check.check_sessions(data, mode="headers")
    assert check.check_sessions(data, mode="off").files == 0


def test_a_tier_the_run_reads_must_be_present(data):
    with pytest.raises(DataFormatError, match=r"tier 'final_test_bonus' has no trials"):
        check.check_sessions(data, tiers=("train", "final_test_bonus"))


def test_the_reader_explains_a_file_np_load_refuses(data):
    """Never numpy's advice to load a damaged file with allow_pickle."""
    session = sessions(data)[0]
    tiers = session / native.TIERS_FILE
    tiers.write_bytes(tiers.read_bytes()[:70])
    with pytest.raises(DataFormatError) as e:
        native.NativeSession(session)
    assert "[tiers]" in str(e.value) and "allow_pickle" not in str(e.value)
    np.save(tiers, np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match="holds Python objects"):
        native.NativeSession(session)

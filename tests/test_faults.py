"""Fault injection. A training killed with SIGKILL at random steps and in the middle of
checkpoint writes, then resumed, ends with the weights of an uninterrupted run; damaged
checkpoints and damaged data files of every kind end in one clear line; nothing half-written
is left under a final name, and the temporaries a kill leaves are removed by the next run.

The kills are real: `fault_driver.py` runs the real entry point in a subprocess and sends
itself SIGKILL at the chosen point (after an optimiser step, or with half of a file written).
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from native_fixture import write_native_dataset
from neurotwin.cli import predict as predict_cli
from neurotwin.cli import train as train_cli
from neurotwin.data import native
from neurotwin.files import parse_temporary
from neurotwin.run import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")

DRIVER = Path(__file__).with_name("fault_driver.py")
STEPS_PER_EPOCH = 3  # 2 sessions x 6 training trials / batch 2, one step per 2 batches
EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small sessions in the native layout (read only: copy before damaging)."""
    root = tmp_path_factory.mktemp("fault_data")
    write_native_dataset(root, 2)
    return root


def flags(data: Path, out: Path, epochs: int = EPOCHS) -> list[str]:
    return [
        "--data_dir", str(data), "--output_dir", str(out), "--core", "conv3d",
        "--core_num_layers", "1", "--core_hidden_dim", "4", "--core_spatial_input_kernel", "3",
        "--core_temporal_input_kernel", "3", "--crop_frame", "12", "--batch_size", "2",
        "--num_workers", "0", "--epochs", str(epochs), "--lr", "0.01", "--device", "cpu",
        "--verbose", "0", "--seed", "3", "--lr_patience", "1", "--max_reduce", "3",
    ]  # fmt: skip


def killed(*args: str) -> subprocess.CompletedProcess:
    """Run the driver; it must end by SIGKILL (the injected crash), not by an error."""
    p = subprocess.run(
        [sys.executable, str(DRIVER), *args], capture_output=True, text=True, timeout=600
    )
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])
    return p


def one_line_error(capsys, call: Callable[[], object], code: int = 2) -> str:
    """`call` exits with `code` after one line on stderr and no traceback; returns the line."""
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if parse_temporary(p) is not None]


def final_files_load(run: Path) -> None:
    """Every checkpoint under its final name is complete (loads)."""
    for p in (run / "checkpoints").glob("*.pt"):
        torch.load(p, weights_only=True)


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------
# Kill and resume
# ------------------------------------------------------------------------------------------------


def test_kills_at_random_steps_and_in_checkpoint_writes_resume_to_the_same_weights(
    data, tmp_path, capsys
):
    rng = random.Random(14)
    ref, run = tmp_path / "ref", tmp_path / "run"
    train_cli.main(flags(data, ref))  # uninterrupted

    # 1. killed at a random step of epoch 1: no checkpoint yet, nothing to resume
    killed("train", "--kill-at-step", str(rng.randint(1, STEPS_PER_EPOCH)), "--", *flags(data, run))
    assert RunFolder(run).never_saved()
    err = one_line_error(capsys, lambda: train_cli.main(["--restore", str(run)]))
    assert "never saved a checkpoint" in err and f"--output_dir {run}" in err

    # 2. started over with the same command; killed with half of epoch 1's best.pt written
    #    (last.pt of epoch 1 complete): the resume rebuilds best.pt from last.pt
    killed("train", "--kill-in-write", "best.pt:1", "--", *flags(data, run))
    assert [t.target for t in map(parse_temporary, temporaries(run))] == ["best.pt"]
    final_files_load(run)

    # 3. resumed; killed with half of the next last.pt written (epoch 2)
    killed("train", "--kill-in-write", "last.pt:1", "--", *flags(data, run), "--restore", str(run))
    assert [t.target for t in map(parse_temporary, temporaries(run))] == ["last.pt"]
    final_files_load(run)
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 1

    # 4. resumed; killed at a random step of epochs 2-3
    step = rng.randint(1, (EPOCHS - 1) * STEPS_PER_EPOCH - 1)
    killed("train", "--kill-at-step", str(step), "--", *flags(data, run), "--restore", str(run))
    assert temporaries(run) == []  # the killed write's temporary was removed at start-up
    final_files_load(run)

    # 5. resumed to the end (in this process)
    train_cli.main([*flags(data, run), "--restore", str(run)])
    assert temporaries(run) == []
    for name in ("last.pt", "best.pt"):
        a = torch.load(ref / "checkpoints" / name, weights_only=True)
        b = torch.load(run / "checkpoints" / name, weights_only=True)
        assert a["epoch"] == b["epoch"], name
        assert a["scheduler"]["plateau"] == b["scheduler"]["plateau"], name
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (name, key)
    keep = ("epoch", "train_loss", "val_loss", "val_correlation", "lr")
    assert [{k: r[k] for k in keep} for r in rows(ref)] == [{k: r[k] for k in keep} for r in rows(run)]  # fmt: skip
    log = (run / "train.log").read_text()
    assert "removed " in log and "left by process" in log  # the cleanup is reported


def test_a_killed_prediction_leaves_a_temporary_the_next_one_removes(data, tmp_path, capsys):
    run = tmp_path / "run"
    train_cli.main(flags(data, run, epochs=1))
    killed("predict", "--kill-in-write", "predictions.npy:1", "--", "--output_dir", str(run))
    left = temporaries(run)
    assert [parse_temporary(p).target for p in left if p.parent == run] == ["predictions"]
    assert not (run / "predictions").exists()  # nothing under the final name
    predict_cli.main(["--output_dir", str(run), "--verbose", "0"])
    assert temporaries(run) == [] and (run / "predictions/metrics.json").is_file()


# ------------------------------------------------------------------------------------------------
# Damaged checkpoints
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    train_cli.main(flags(data, run, epochs=1))
    return run


def _flip_middle(p: Path) -> None:
    b = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    local = info.header_offset  # the local header's own name and extra lengths
    name_len, extra_len = (int.from_bytes(b[local + k : local + k + 2], "little") for k in (26, 28))
    start = local + 30 + name_len + extra_len + 8  # inside the first tensor's bytes
    b[start : start + 16] = bytes(x ^ 0xFF for x in b[start : start + 16])
    p.write_bytes(bytes(b))


def _zip_without_pickle(p: Path) -> None:
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/notes.txt", "not a checkpoint")


DAMAGE = {
    "zero bytes": (lambda p: p.write_bytes(b""), "empty file (0 bytes"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated"),
    "first 100 bytes": (lambda p: p.write_bytes(p.read_bytes()[:100]), "truncated"),
    "not a zip": (lambda p: p.write_text("model: weights\n"), "not a PyTorch checkpoint"),
    "damaged record": (_flip_middle, "fails its checksum"),
    "zip without data.pkl": (_zip_without_pickle, "no data.pkl"),
    "python objects": (
        lambda p: torch.save({"model": np.zeros(3), "epoch": 1, "config": {}}, p),
        "holds Python objects",
    ),
    "a tensor": (lambda p: torch.save(torch.zeros(3), p), "holds a Tensor"),
    "a dict of other keys": (lambda p: torch.save({"weights": 1}, p), "missing keys"),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_checkpoint_is_one_clear_line(trained, tmp_path, capsys, how):
    damage, expected = DAMAGE[how]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for name in ("last.pt", "best.pt"):
        damage(run / "checkpoints" / name)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for call in (
        lambda: train_cli.main(["--restore", str(run), "--epochs", "2"]),
        lambda: predict_cli.main(["--output_dir", str(run), "--verbose", "0"]),
    ):
        err = one_line_error(capsys, call)
        assert str(run / "checkpoints") in err and expected in err, err
        assert "weights_only" not in err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written


# ------------------------------------------------------------------------------------------------
# Damaged data files
# ------------------------------------------------------------------------------------------------


def _train_trial(session: Path) -> int:
    tiers = np.load(session / native.TIERS_FILE)
    return int(np.flatnonzero(tiers == "train")[1])


def _edit(rel: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], str]:
    """Replace the array at `rel` (`{train}` = a training trial) by `change(array)`."""

    def apply(session: Path) -> str:
        path = session / rel.format(train=_train_trial(session))
        np.save(path, change(np.load(path)))
        return str(path.relative_to(session))

    return apply


def _with_nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[(0,) * (a.ndim - 1) + (2,)] = np.nan  # frame 2: inside every trial's valid frames
    return a


def _video_nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[1, 1, 2] = np.nan  # one pixel (not the first, which marks a trial's end) of frame 2
    return a


def _bytes(rel: str, change: Callable[[bytes], bytes]) -> Callable[[Path], str]:
    def apply(session: Path) -> str:
        path = session / rel.format(train=_train_trial(session))
        path.write_bytes(change(path.read_bytes()))
        return str(path.relative_to(session))

    return apply


def _remove(rel: str) -> Callable[[Path], str]:
    def apply(session: Path) -> str:
        path = session / rel
        path.unlink()
        return rel

    return apply


FILE_DAMAGE = {
    "video missing": (_remove("data/videos/3.npy"), "videos", "file not found"),
    "behaviour missing": (_remove("data/behavior/4.npy"), "behavior", "file not found"),
    "video not .npy": (_bytes("data/videos/5.npy", lambda b: b"\x00" * 64), "videos", "not a .npy file"),
    "responses truncated": (_bytes("data/responses/6.npy", lambda b: b[: len(b) // 2]), "responses", "truncated"),
    "pupil truncated": (_bytes("data/pupil_center/7.npy", lambda b: b[:-8]), "pupil_center", "truncated"),
    "video frame size": (_edit("data/videos/2.npy", lambda a: a[:-1]), "videos", "expected shape"),
    "responses neurons": (_edit("data/responses/2.npy", lambda a: a[:-1]), "responses", "expected shape (7, 'T')"),
    "behaviour rows": (_edit("data/behavior/1.npy", lambda a: np.vstack([a, a[:1]])), "behavior", "expected shape (2, 'T')"),
    "pupil integer": (_edit("data/pupil_center/0.npy", lambda a: np.zeros(a.shape, np.int16)), "pupil_center", "float"),
    "responses frames": (_edit("data/responses/8.npy", lambda a: a[:, :-2]), "responses", "frames, but the trial's video has"),
    "video NaN": (_edit("data/videos/{train}.npy", _video_nan), "videos", "NaN at frame 2 (pixel 1, 1)"),
    "responses NaN": (_edit("data/responses/{train}.npy", _with_nan), "responses", "NaN at frame 2"),
    "behaviour NaN": (_edit("data/behavior/{train}.npy", _with_nan), "behavior", "NaN at frame 2"),
    "pupil NaN": (_edit("data/pupil_center/{train}.npy", _with_nan), "pupil_center", "NaN at frame 2"),
    "tiers too long": (_edit(native.TIERS_FILE, lambda a: np.append(a, "train")), "tiers", "entries"),
    "tier unknown": (_edit(native.TIERS_FILE, lambda a: np.where(a == "oracle", "orcale", a)), "tiers", "unknown tier"),
    "tiers not .npy": (_bytes(native.TIERS_FILE, lambda b: b[:5]), "tiers", "not a .npy file"),
    "unit ids float": (_edit(native.UNIT_IDS_FILE, lambda a: a.astype(float)), "unit_ids", "integer"),
    "coordinates shape": (_edit(native.COORDINATES_FILE, lambda a: a[:, :2]), "cell_motor_coordinates", "(7, 3)"),
    "session json": (_bytes(native.SESSION_META_FILE, lambda b: b"{oops"), None, "not valid JSON"),
    "shipped statistics": (_remove("meta/statistics/responses/all/std.npy"), "responses/std", "file not found"),
}  # fmt: skip


@pytest.mark.parametrize("what", list(FILE_DAMAGE))
def test_damaged_data_stops_training_before_anything_is_written(data, tmp_path, capsys, what):
    damage, field, expected = FILE_DAMAGE[what]
    root = tmp_path / "data"
    shutil.copytree(data, root)
    session = sorted(p for p in root.iterdir() if p.is_dir())[1]
    if what == "session json":
        (session / native.SESSION_META_FILE).write_text(json.dumps({"source": "test"}))
    rel = damage(session)
    run = tmp_path / "run"
    extra = ["--shipped_statistics", "true"] if what == "shipped statistics" else []
    err = one_line_error(capsys, lambda: train_cli.main([*flags(root, run), *extra]))
    assert f"{session / rel}" in err and expected in err, err
    if field is not None:
        assert f"[{field}]" in err, err
    assert not run.exists()  # no run folder
    assert temporaries(root) == []

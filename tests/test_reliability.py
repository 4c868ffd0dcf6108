"""Issue 14's smaller cases: synthetic data only when asked, stale temporaries, a run that
failed before its first checkpoint, YAML errors, the help, the messages of the command lines,
and the README's pointers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from native_fixture import write_native_dataset
from neurotwin import config as cfg
from neurotwin import files
from neurotwin.cli import predict as predict_cli
from neurotwin.cli import train as train_cli
from neurotwin.data import native, synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def fails(capsys, argv, main=train_cli.main, code: int = 2) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability_data")
    write_native_dataset(root, 2)
    return root


def tiny(data: Path, out: Path, *more: str) -> list[str]:
    return [
        "--data_dir", str(data), "--output_dir", str(out), "--core", "conv3d",
        "--core_num_layers", "1", "--core_hidden_dim", "4", "--crop_frame", "12",
        "--batch_size", "2", "--num_workers", "0", "--epochs", "1", "--device", "cpu",
        "--verbose", "0", *more,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Synthetic data only when asked
# ------------------------------------------------------------------------------------------------


def test_a_data_dir_given_with_the_demo_preset_is_never_filled_with_synthetic_mice(
    tmp_path, capsys
):
    missing = tmp_path / "no_such_dir"
    err = fails(capsys, ["--config", DEMO, "--data_dir", str(missing), "--output_dir", str(tmp_path / "r")])  # fmt: skip
    assert f"{missing} [data_dir]: data folder not found" in err and "--generate_synthetic" in err
    assert not missing.exists() and not (tmp_path / "r").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    err = fails(capsys, ["--config", DEMO, "--data_dir", str(empty), "--output_dir", str(tmp_path / "r")])  # fmt: skip
    assert "holds no session folder" in err and list(empty.iterdir()) == []


def test_generate_synthetic_writes_where_it_says_without_bars_off_a_terminal(
    tmp_path, capsys, monkeypatch
):
    real = synthetic.generate
    sizes = dict(mice=1, height=6, width=8, neurons=5, train_trials=4, frames=20)
    sizes |= dict(oracle_clips=1, oracle_repeats=2, test_clips=1, test_repeats=1)
    monkeypatch.setattr(synthetic, "generate", lambda out, progress=True: real(out, progress=progress, **sizes))  # fmt: skip
    folder = tmp_path / "mine"
    argv = ["--config", DEMO, "--data_dir", str(folder), "--generate_synthetic", "--epochs", "1"]
    train_cli.main([*argv, "--crop_frame", "12", "--output_dir", str(tmp_path / "run")])
    out = capsys.readouterr()
    assert f"no session in {folder.resolve()}: writing the built-in synthetic dataset there" in out.out  # fmt: skip
    assert native.find_sessions(folder)
    assert "it/s" not in out.err and "%|" not in out.err  # stderr is not a terminal


def test_neurotwin_data_synthetic_draws_no_bars_off_a_terminal(tmp_path, capsys):
    from neurotwin.cli.data import main

    argv = ["synthetic", "--out", str(tmp_path / "s"), "--mice", "1", "--neurons", "4"]
    argv += ["--train_trials", "2", "--frames", "60", "--height", "6", "--width", "8"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "it/s" not in err and "%|" not in err


# ------------------------------------------------------------------------------------------------
# Stale temporaries
# ------------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _temporary(folder: Path, target: str, pid: int, host: str | None) -> Path:
    name = f".{target}.{pid}-{host}-0123abcd.tmp" if host else f".{target}.{pid}-0123abcd.tmp"
    path = folder / name
    path.mkdir(parents=True)
    (path / "part.npy").write_bytes(b"half")
    return path


def test_stale_temporaries_go_and_those_of_live_writers_stay(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = files.host_tag()
        dead = _temporary(tmp_path, "predictions", _dead_pid(), here)
        running = _temporary(tmp_path, "predictions", live.pid, here)
        other_host = _temporary(tmp_path, "metrics.csv", _dead_pid(), "ffffff")
        old_other = _temporary(tmp_path, "config.yaml", _dead_pid(), "eeeeee")
        long_ago = time.time() - files.FOREIGN_STALE_SECONDS - 60
        for p in (old_other, old_other / "part.npy"):
            os.utime(p, (long_ago, long_ago))
        cleanup = files.remove_stale_temporaries(tmp_path)
        assert {t.path for t in cleanup.removed} == {dead, old_other}
        assert {t.path for t in cleanup.kept} == {running, other_host}
        assert running.exists() and other_host.exists() and not dead.exists()
        assert any("left by process" in line for line in cleanup.lines())
        assert any("may still be writing" in line for line in cleanup.lines())
    finally:
        live.kill()
        live.wait()


def test_the_next_write_of_a_target_clears_the_leftover_of_a_killed_one(tmp_path, caplog):
    left = _temporary(tmp_path, "predictions", _dead_pid(), files.host_tag())
    with files.staged_folder(tmp_path / "predictions") as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert not left.exists() and (tmp_path / "predictions/metrics.json").is_file()
    assert f"removed {left}" in caplog.text
    old = tmp_path / f".last.pt.tmp-{_dead_pid()}-0123abcd"  # the naming of release 0.1
    old.write_bytes(b"x")
    long_ago = time.time() - files.FOREIGN_STALE_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    files.write_text(tmp_path / "last.pt", "new")
    assert not old.exists() and (tmp_path / "last.pt").read_text() == "new"


# ------------------------------------------------------------------------------------------------
# A run that failed before its first checkpoint
# ------------------------------------------------------------------------------------------------


def test_an_error_during_training_goes_to_train_log_and_the_folder_can_be_reused(
    data, tmp_path, capsys
):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    session = native.find_sessions(root)[0]
    trial = int(np.flatnonzero(np.load(session / native.TIERS_FILE) == "train")[0])
    path = session / "data/responses" / f"{trial}.npy"
    good = np.load(path)
    bad = good.copy()
    bad[:, :] = np.nan  # every frame: any crop meets it
    np.save(path, bad)
    run = tmp_path / "run"
    # with the check off and the shipped statistics, found only when first read (in epoch 1)
    err = fails(capsys, tiny(root, run, "--check_data", "off", "--shipped_statistics", "true"))
    assert str(path) in err and "NaN" in err
    log = (run / "train.log").read_text().strip().splitlines()
    assert str(path) in log[-1] and log[-1].startswith("error: ")
    assert "no checkpoint was saved" in log[-1] and f"--output_dir {run}" in log[-1]
    err = fails(capsys, ["--restore", str(run)])
    assert "never saved a checkpoint" in err
    np.save(path, good)
    train_cli.main(tiny(root, run, "--shipped_statistics", "true", "--verbose", "1"))  # over again
    assert "stopped before its first checkpoint: starting it over" in capsys.readouterr().out
    log = (run / "train.log").read_text()
    assert "error:" not in log and (run / "checkpoints/last.pt").is_file()


def test_ctrl_c_names_the_run_folder(data, tmp_path, capsys, monkeypatch):
    from neurotwin.training import video

    run = tmp_path / "run"

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "train", interrupted)
    err = fails(capsys, tiny(data, run), code=130)
    assert err == "train.py: interrupted"  # nothing written yet: nothing to resume
    (run / "checkpoints").mkdir(parents=True)
    cfg.save_yaml(cfg.Config(), run / "config.yaml")
    err = fails(capsys, tiny(data, run), code=130)
    assert f"before the first checkpoint; train again with --output_dir {run}" in err
    (run / "checkpoints/last.pt").write_bytes(b"")
    err = fails(capsys, tiny(data, run), code=130)
    assert err == f"train.py: interrupted; resume with --restore {run}"


def test_a_crop_longer_than_every_trial_is_refused(data, tmp_path, capsys):
    err = fails(capsys, tiny(data, tmp_path / "run", "--crop_frame", "1000"))
    assert "--crop_frame 1000: longer than every training trial (the longest has 24 frames)" in err  # fmt: skip
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# Config files, help and messages
# ------------------------------------------------------------------------------------------------


def test_a_yaml_syntax_error_keeps_its_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_size: 4\n   crop_frame: 3\n")
    err = fails(capsys, ["--config", str(bad)])
    assert f"{bad}, line 3, column 14: not valid YAML: mapping values are not allowed here" in err
    assert "'crop_frame: 3'" in err
    bad.write_text("model: {core: conv3d\ntrain: {}\n")
    err = fails(capsys, ["--config", str(bad)])
    assert "line 2, column 6" in err and "began at line 1, column 8" in err


def test_help_says_each_default_once_and_grad_checkpointing_as_the_readme():
    parser = train_cli.build_parser()
    helps = {a.dest: a.help for a in parser._actions if a.help}
    for dest, text in helps.items():
        assert not ("(none:" in text and "(default: none)" in text), dest
    assert helps["mouse_ids"].endswith("(default: none = every session found)")
    readme = (ROOT / "README.md").read_text()
    for phrase in ("on only when one trial does not fit without it", "on for CUDA, off elsewhere"):
        assert phrase in helps["grad_checkpointing"] and phrase in readme, phrase


def test_predict_names_the_checkpoint_choices(tmp_path, capsys):
    run = tmp_path / "run"
    cfg.save_yaml(cfg.Config(), run / "config.yaml")
    err = fails(capsys, ["--output_dir", str(run), "--checkpoint", "nonsense"], predict_cli.main)
    assert "--checkpoint nonsense: expected best | last or the path of a checkpoint file" in err
    err = fails(capsys, ["--output_dir", str(run)], predict_cli.main)
    assert "never saved a checkpoint" in err


def test_the_readme_points_only_inside_the_repository_and_says_what_errors_mean():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for doc in docs:
        text = doc.read_text()
        assert "/work/" not in text and "../shared" not in text, doc
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if not target.startswith(("http://", "https://")):
                assert (doc.parent / target).exists(), (doc, target)
    readme = (ROOT / "README.md").read_text()
    assert f"<session>/data/{native.NOISELESS}/" + "{trial}.npy" in readme
    assert "negative FEVE" in readme
    troubleshooting = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    for message in (
        "data folder not found", "NaN at frame", "truncated", "not a .npy file",
        "expected shape", "never saved a checkpoint", "empty file (0 bytes",
        "fails its checksum", "holds Python objects", "already holds a run",
        "not valid YAML", "--crop_frame", "left by process",
    ):  # fmt: skip
        assert message in troubleshooting, message

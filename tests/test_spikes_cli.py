"""`neurotwin-spikes fit / predict` end to end: flags over YAML over defaults, the saved config,
outputs, resume with --restore, predict again from the best checkpoint, one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from neurotwin.cli import spikes as cli

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [
    "--model",
    "glm_vae",
    "--batch_size",
    "16",
    "--history_ms",
    "70",
    "--d_model",
    "16",
    "--ff_dim",
    "32",
    "--latent_dim",
    "1",
    "--stimulus_basis",
    "6",
    "--device",
    "cpu",
    "--verbose",
    "0",
]


@pytest.fixture
def data_dir(spike_sessions):
    return spike_sessions


def test_fit_restore_predict(data_dir, tmp_path):
    out = tmp_path / "run"
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({"train": {"epochs": 5, "lr": 0.05}, "data": {"bin_ms": 2}}))
    cli.main(
        [
            "fit",
            "--config",
            str(preset),
            "--data_dir",
            str(data_dir),
            "--output_dir",
            str(out),
            "--epochs",
            "2",
            *SMALL,
        ]
    )
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2  # the flag over the YAML
    assert saved["train"]["lr"] == 0.05 and saved["data"]["bin_ms"] == 2.0  # the YAML
    assert saved["train"]["lr_patience"] == 5  # the default
    assert saved["model"]["name"] == "glm_vae"
    for name in (
        "couplings.parquet",
        "coupling_units.parquet",
        "latents.parquet",
        "metrics.json",
        "metrics.csv",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (out / name).is_file(), name
    for session in ("session_0", "session_1"):
        for figure in ("couplings", "psth", "latents"):
            assert (out / "figures" / f"{figure}_{session}.png").stat().st_size > 1000
    couplings = pd.read_parquet(out / "couplings.parquet")
    assert {"session", "source", "target", "lag_ms", "value", "lower", "upper"} <= set(couplings)
    assert set(couplings["session"]) == {"session_0", "session_1"}
    assert (couplings["lower"] <= couplings["value"]).all()
    latents = pd.read_parquet(out / "latents.parquet")
    assert list(latents.columns[:2]) == ["session", "trial_id"]
    assert {"z0", "z1", "split", "trial_index"} <= set(latents.columns) and len(latents) == 80
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["bits_per_spike"]) == {"train", "validation", "test"}
    pops = metrics["bits_per_spike"]["test"]["sessions"]["session_1"]["populations"]
    assert set(pops) == {"A", "B"}
    assert metrics["best_epoch"] in (1, 2) and metrics["bin_ms"] == 2.0

    cli.main(["fit", "--restore", str(out), "--epochs", "3"])
    rows = pd.read_csv(out / "metrics.csv")
    assert rows["epoch"].tolist() == [1, 2, 3]  # resumed at epoch 3, not started over
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 3

    before = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").unlink()
    cli.main(["predict", "--output_dir", str(out), "--device", "cpu"])
    after = json.loads((out / "metrics.json").read_text())
    for split, scores in before["bits_per_spike"].items():
        assert after["bits_per_spike"][split]["all"] == pytest.approx(scores["all"], rel=1e-5)
    assert after["best_epoch"] == before["best_epoch"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "nope"], "unknown spike model 'nope'"),
        (["--bin_ms", "-1"], "--bin_ms: must be > 0"),
        (["--epochs", "two"], "--epochs: expected an integer"),
        (["--optimizer", "lbfgs"], "--optimizer: lbfgs needs a deterministic"),
    ],
)
def test_bad_options_one_line_exit_2(data_dir, tmp_path, capsys, argv, message):
    base = ["fit", "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "r"), *SMALL]
    with pytest.raises(SystemExit) as e:
        cli.main([*base, *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_flag_and_existing_run(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["fit", "--bogus", "1"])
    assert e.value.code == 2
    out = tmp_path / "run"
    args = ["fit", "--data_dir", str(data_dir), "--output_dir", str(out), "--epochs", "1", *SMALL]
    cli.main(args)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err

"""Config: YAML <-> dataclass <-> flags round trips, precedence, and clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml

from neurotwin import config as cfg
from neurotwin.cli import train as train_cli
from neurotwin.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "configs").glob("*.yaml"))


def parse(argv: list[str]) -> cfg.Config:
    return train_cli.resolve_config(train_cli.build_parser().parse_args(argv))


def test_defaults_round_trip(tmp_path):
    config = cfg.Config()
    path = cfg.save_yaml(config, tmp_path / "config.yaml")
    assert cfg.load_yaml(path) == config


def test_non_default_values_round_trip(tmp_path):
    config = parse(
        [
            "--mouse_ids",
            "a",
            "b",
            "--limit_data",
            "7",
            "--adam_eps",
            "1e-10",
            "--grad_checkpointing",
            "1",
            "--autocast",
            "enable",
            "--schedule_free",
            "--core",
            "conv3d",
            "--core_lr",
            "0.01",
            "--wandb",
            "group-x",
            "--transform_output",
            "2",
        ]
    )
    assert config.data.mouse_ids == ["a", "b"]
    assert config.train.adam_eps == 1e-10
    assert config.train.grad_checkpointing == 1
    assert config.train.schedule_free is True
    assert config.model.core.name == "conv3d"
    path = cfg.save_yaml(config, tmp_path / "config.yaml")
    again = cfg.load_yaml(path)
    assert again == config
    # and the file is plain YAML a person can read
    assert yaml.safe_load(path.read_text())["train"]["core_lr"] == 0.01


def test_flag_over_yaml_over_default(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "data: {batch_size: 4, crop_frame: 60}\ntrain: {lr: 0.01}\nmodel: {core: {name: conv3d}}\n"
    )
    config = parse(["--config", str(preset), "--batch_size", "2"])
    assert config.data.batch_size == 2  # flag beats YAML
    assert config.data.crop_frame == 60  # YAML beats default
    assert config.train.lr == 0.01
    assert config.model.core.name == "conv3d"
    assert config.train.epochs == cfg.TrainConfig().epochs  # default


def test_unknown_yaml_key_is_a_clear_error(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("train: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        parse(["--config", str(preset)])
    preset.write_text("trainer: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match="trainer"):
        parse(["--config", str(preset)])


def test_unknown_flag_is_rejected(capsys):
    with pytest.raises(SystemExit) as e:
        train_cli.build_parser().parse_args(["--learning_rate", "0.1"])
    assert e.value.code == 2
    assert "learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, where",
    [
        (["--epochs", "ten"], "epochs"),
        (["--lr", "fast"], "lr"),
        (["--autocast", "sometimes"], "autocast"),
        (["--transform_output", "5"], "transform_output"),
        (["--schedule_free", "maybe"], "schedule_free"),
    ],
)
def test_bad_flag_values(argv, where):
    with pytest.raises(ConfigError, match=where):
        parse(argv)


def test_bad_yaml_value(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("data: {batch_size: many}\n")
    with pytest.raises(ConfigError, match="batch_size"):
        parse(["--config", str(preset)])


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    preset = tmp_path / "bad.yaml"
    preset.write_text("train: {nope: 1}\n")
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--config", str(preset)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert err.startswith("train.py: error:") and "nope" in err


def test_cli_reports_bad_values_found_at_run_time(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--epochs", "0", "--output_dir", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "epochs" in err and "Traceback" not in err


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_presets_load(preset):
    config = cfg.load_yaml(preset)
    assert isinstance(config, cfg.Config)


def test_presets_exist():
    names = {p.name for p in PRESETS}
    assert {"demo.yaml", "viv1t.yaml", "cnn3d.yaml"} <= names


def test_viv1t_preset_has_published_training_settings():
    config = cfg.load_yaml(REPO / "configs" / "viv1t.yaml")
    assert config.model.core.name == "vivit"
    assert config.train.schedule_free is True
    assert config.data.crop_frame == 300 and config.data.batch_size == 1
    assert config.train.lr == pytest.approx(0.0073) and config.train.core_lr == pytest.approx(
        0.0126
    )


def test_restore_uses_the_saved_config_as_base(tmp_path):
    """--restore DIR: the run's config.yaml, then a preset, then flags; outputs stay in DIR."""
    import torch

    run = tmp_path / "run"
    saved = cfg.Config()
    saved.data.batch_size = 3
    saved.train.epochs = 5
    saved.run.output_dir = str(run)
    cfg.save_yaml(saved, run / "config.yaml")
    (run / "checkpoints").mkdir()
    torch.save({"model": {}, "epoch": 2, "config": cfg.to_dict(saved)}, run / "checkpoints/last.pt")

    config = parse(["--restore", str(run), "--epochs", "9"])
    assert config.data.batch_size == 3  # from the saved run, not the default
    assert config.train.epochs == 9  # the flag
    assert Path(config.run.output_dir) == run
    assert config.run.restore == str(run)

    preset = tmp_path / "p.yaml"
    preset.write_text("data: {crop_frame: 40}\n")
    config = parse(["--config", str(preset), "--restore", str(run)])
    assert config.data.crop_frame == 40 and config.data.batch_size == 3


def test_restore_of_a_missing_run_is_a_clear_error(tmp_path):
    from neurotwin.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no such run"):
        parse(["--restore", str(tmp_path / "nothing")])


def test_every_leaf_has_a_flag():
    parser = argparse.ArgumentParser()
    cfg.add_config_flags(parser)
    flags = {a.dest for a in parser._actions}
    assert {leaf.flag for leaf in cfg.LEAVES} <= flags
    # ViV1T's names
    assert {"core", "readout", "batch_size", "micro_batch_size", "crop_frame", "restore"} <= flags


def test_wandb_without_the_package_is_a_clear_error(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--wandb", "group", "--output_dir", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "pip install neurotwin[wandb]" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_bad_data_folder_is_one_line_and_leaves_no_output(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_cli.main(
            ["--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "r")]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], False),
        (["--compile"], True),
        (["--compile", "true"], True),
        (["--compile", "0"], False),
        (["--compile", "auto"], "auto"),
    ],
)
def test_compile_flag_takes_a_bare_flag_a_boolean_or_auto(argv, expected):
    assert cfg.parse_config(argv).train.compile == expected


def test_compile_flag_rejects_other_values():
    with pytest.raises(ConfigError, match="--compile: 'maybe' is not one of"):
        cfg.parse_config(["--compile", "maybe"])


def test_grad_checkpointing_takes_auto():
    assert cfg.parse_config(["--grad_checkpointing", "auto"]).train.grad_checkpointing == "auto"
    assert cfg.parse_config(["--grad_checkpointing", "1"]).train.grad_checkpointing == 1
    assert cfg.parse_config([]).train.grad_checkpointing is None
    with pytest.raises(ConfigError, match="--grad_checkpointing: 'maybe' is not one of"):
        cfg.parse_config(["--grad_checkpointing", "maybe"])


def test_gpu_preset_compiles_on_cuda_only():
    """viv1t.yaml's fast settings: compile and autocast resolve per device."""
    from neurotwin.training.trainer import autocast_enabled

    config = cfg.parse_config(["--config", "configs/viv1t.yaml"])
    assert config.train.compile == "auto" and config.train.autocast == "auto"
    assert config.train.grad_checkpointing == "auto"
    assert not autocast_enabled(config.train.autocast, torch.device("cpu"))

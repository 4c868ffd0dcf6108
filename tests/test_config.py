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


def test_every_option_has_a_flag():
    parser = argparse.ArgumentParser()
    cfg.add_config_flags(parser)
    flags = {a.dest for a in parser._actions}
    assert {flag.name for flag in cfg.flags()} <= flags
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
    from neurotwin.run import autocast_enabled

    config = cfg.parse_config(["--config", "configs/viv1t.yaml"])
    assert config.train.compile == "auto" and config.train.autocast == "auto"
    assert config.train.grad_checkpointing == "auto"
    assert not autocast_enabled(config.train.autocast, torch.device("cpu"))


# ----------------------------------------------------------------------------------------------
# Part options: owned by the part, checked, flags grouped by part, older configs
# ----------------------------------------------------------------------------------------------

LEGACY_RUN = REPO / "tests" / "fixtures" / "legacy_run"


def test_option_of_another_part_is_an_error_naming_its_owner(tmp_path):
    with pytest.raises(ConfigError, match="^--core_emb_dim belongs to core vivit; the chosen core is conv3d$"):  # fmt: skip
        parse(["--core", "conv3d", "--core_emb_dim", "16"])
    with pytest.raises(ConfigError, match="--core_dropout belongs to core conv2d, conv3d; the chosen core is vivit"):  # fmt: skip
        parse(["--core_dropout", "0.1"])  # the default core is vivit
    preset = tmp_path / "p.yaml"
    preset.write_text("model: {core: {name: conv3d, core_emb_dim: 5}}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: model.core.core_emb_dim belongs to core vivit"):
        parse(["--config", str(preset)])
    with pytest.raises(ConfigError, match="--readout_grid_mode belongs to readout gaussian"):
        parse(["--readout", "factorized", "--readout_grid_mode", "0"])
    with pytest.raises(ConfigError, match="unknown core option"):
        cfg.from_dict({"model": {"core": {"name": "conv3d", "core_nope": 1}}})
    with pytest.raises(ConfigError, match="unknown core 'nope'; known: .*conv3d"):
        parse(["--core", "nope"])


def test_a_layer_that_picks_another_part_drops_the_previous_parts_options():
    """demo.yaml's conv3d options do not apply to --core vivit; the option both own stays."""
    config = parse(["--config", "configs/demo.yaml", "--core", "vivit", "--core_emb_dim", "16"])
    assert config.model.core.name == "vivit" and config.model.core.core_emb_dim == 16
    assert config.model.core.core_behavior_mode == 0  # demo.yaml's, shared by both cores
    assert not hasattr(config.model.core, "core_temporal_input_kernel")


def test_option_ranges_are_checked_where_the_options_are_declared():
    with pytest.raises(ConfigError, match="--core_num_layers: must be >= 1, got 0"):
        parse(["--core", "conv3d", "--core_num_layers", "0"])
    with pytest.raises(ConfigError, match="--core_head_dim: must be a multiple of 4"):
        parse(["--core_head_dim", "6"])
    with pytest.raises(ConfigError, match="--readout_init_sigma: must be > 0"):
        parse(["--readout_init_sigma", "0"])
    config = cfg.Config()
    config.train.epochs = 0  # set after construction: caught before a run starts
    with pytest.raises(ConfigError, match="--epochs: must be >= 1"):
        cfg.check_config(config)


def test_saved_config_holds_a_version_and_the_chosen_parts_options_only(tmp_path):
    config = parse(["--config", "configs/demo.yaml"])
    saved = yaml.safe_load(cfg.save_yaml(config, tmp_path / "config.yaml").read_text())
    assert saved["version"] == cfg.CONFIG_VERSION
    core = saved["model"]["core"]
    assert core["name"] == "conv3d" and "core_emb_dim" not in core and "core_dropout" in core
    assert saved["model"]["output_activation"] == "elu1"  # a part without options: its name
    assert cfg.load_yaml(tmp_path / "config.yaml") == config
    with pytest.raises(ConfigError, match="version 9"):
        cfg.from_dict({"version": 9})


def test_a_previous_release_config_loads_without_the_other_parts_fields():
    """tests/fixtures/legacy_run/config.yaml was written by neurotwin 0.1 (commit 1bb85e4): its
    core section holds all 32 core_* fields of every core, its readout every readout's."""
    values = cfg.read_yaml(LEGACY_RUN / "config.yaml")
    assert "version" not in values and cfg.is_legacy(values)
    assert set(cfg.LEGACY_FIELDS["core"]) <= set(values["model"]["core"])
    config = cfg.load_yaml(LEGACY_RUN / "config.yaml")
    core = config.model.core
    assert core.name == "conv3d" and (core.core_num_layers, core.core_hidden_dim) == (1, 4)
    assert core.core_behavior_mode == 2 and not hasattr(core, "core_emb_dim")
    assert config.model.readout.name == "gaussian" and not hasattr(config.model.readout, "readout_dropout")  # fmt: skip
    assert config.model.shifter.shifter_mode == 1 and config.model.output_activation.name == "elu1"
    assert config.data.crop_frame == 32 and config.train.lr == 0.01
    # the same from the config dict a checkpoint of that release holds
    state = torch.load(LEGACY_RUN / "checkpoints" / "last.pt", weights_only=True)
    assert cfg.from_dict(state["config"]) == config
    # a hand-written preset without a version is not legacy: foreign options stay errors
    partial = {"model": {"core": {"name": "conv3d", "core_emb_dim": 5}}}
    assert not cfg.is_legacy(partial)


def test_help_groups_flags_by_part_and_states_each_default_once(capsys):
    parser = train_cli.build_parser()
    groups = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups}
    assert groups["core options of conv2d, conv3d, conv_gru, pretrained"] == [
        "core_num_layers",
        "core_hidden_dim",
        "core_spatial_input_kernel",
        "core_spatial_hidden_kernel",
    ]  # one flag for the option the four cores share
    assert "core_emb_dim" in groups["core options of vivit"]
    assert "readout_grid_mode" in groups["readout options of gaussian"]
    # the option every core has (other tests may register more cores)
    every = next(t for t, dests in groups.items() if "core_behavior_mode" in dests)
    assert "conv2d, conv3d, conv_gru, dwiseneuro, pretrained" in every and every.endswith("vivit")
    assert "lr" in groups["train options"] and "core" in groups[next(t for t in groups if t.startswith("core ("))]  # fmt: skip
    for action in parser._actions:
        if action.dest != "help":
            assert action.help.count("default:") == 1, action.dest
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "core options of vivit:" in out and "(default: 112)" in out

"""`train.py` / `neurotwin-train`: train a model from a YAML preset and flags.

    python train.py --config configs/demo.yaml --output_dir runs/demo
    python train.py --restore runs/demo --epochs 50          # resume (and extend) a run
    torchrun --nproc_per_node 4 train.py --config configs/viv1t.yaml --output_dir runs/v

Flags override the YAML preset, which overrides the defaults. With `--restore DIR` the restored
run's saved config.yaml is the base instead (a `--config` preset and flags go on top), and outputs
go to DIR unless `--output_dir` says otherwise. Bad options end with one line on stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from neurotwin import config as cfg
from neurotwin.cli.console import exit_on_error
from neurotwin.run import RunFolder, find_checkpoint
from neurotwin.training.checkpoint import load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a neurotwin model. Every option is a flag named after its field in the "
        "config (a part's options in the group of the parts that own them); flags override the "
        "--config YAML, which overrides the defaults.",
    )
    cfg.add_config_flags(parser)
    return parser


def resolve_config(args: argparse.Namespace, cls: type = cfg.Config) -> Any:
    """The run's config (a `cls`, the tree the flags were made from): defaults < YAML < flags,
    or, when restoring, saved < YAML < flags. Every family's training command resolves so.

    A --data_dir given on the command line is never filled with synthetic mice because a
    preset (or the restored config) asks for them: only --generate_synthetic beside it does."""
    config = _layered_config(args, cls)
    data = config.data
    if hasattr(data, "generate_synthetic") and "data_dir" in vars(args):
        if "generate_synthetic" not in vars(args):
            data.generate_synthetic = False
    return config


def _layered_config(args: argparse.Namespace, cls: type) -> Any:
    config = cfg.resolve(args, cls=cls)
    if not config.run.restore:
        return config
    checkpoint = find_checkpoint(config.run.restore, "last")
    run = RunFolder.of_checkpoint(checkpoint)
    saved_file = run.config_file
    if saved_file.is_file():
        saved, source = cfg.read_yaml(saved_file), str(saved_file)
    else:
        saved, source = load_checkpoint(checkpoint)["config"], f"{checkpoint} [config]"
    merged = cfg.resolve(args, base=[(source, saved)], cls=cls)
    merged.run.restore = str(config.run.restore)
    yaml_run = cfg.read_yaml(args.config).get("run", {}) if getattr(args, "config", None) else {}
    if "output_dir" not in vars(args) and "output_dir" not in (yaml_run or {}):
        merged.run.output_dir = str(run.path)
    merged.run.clear_output_dir = False  # never delete the run being resumed
    return merged


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = None
    with exit_on_error(parser.prog, lambda: _how_to_go_on(config)):
        config = resolve_config(args)
        from neurotwin.training.video import train  # here: --help needs no data stack

        return train(config)


def _how_to_go_on(config: cfg.Config | None) -> str:
    """What an interrupted run's folder allows: resume it, start it over, or nothing."""
    if config is None:
        return ""
    run = RunFolder(config.run.output_dir)
    if run.holds_a_run():
        return f"; resume with --restore {run.path}"
    if run.never_saved():
        return f" before the first checkpoint; train again with --output_dir {run.path}"
    return ""


if __name__ == "__main__":  # pragma: no cover
    main()

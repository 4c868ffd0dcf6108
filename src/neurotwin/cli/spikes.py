"""`neurotwin-spikes`: fit a spike-train model (GLM, GLM-Transformer) and write what it found.

    neurotwin-spikes fit --data_dir D --model glm_vae --output_dir O [--config YAML] [--flag v]
    neurotwin-spikes fit --restore O [--epochs 300]     # resume (and extend) a run
    neurotwin-spikes predict --output_dir O [--data_dir D] [--device cpu]

As `train.py`: flags override the YAML preset, which overrides the defaults; with `--restore O`
the run's saved config.yaml is the base (a preset and flags go on top) and outputs stay in O
unless `--output_dir` says otherwise. The resolved config is saved as O/config.yaml. `fit` ends
by writing the outputs of the best checkpoint (couplings.parquet, coupling_units.parquet,
latents.parquet, metrics.json, figures/); `predict` writes them again from O's best
checkpoint. Bad options end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurotwin.cli import options
from neurotwin.errors import NeurotwinError

PROG = "neurotwin-spikes"


def build_parser() -> argparse.ArgumentParser:
    from neurotwin.training.spike_task import SpikeConfig

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser(
        "fit",
        help="train a spike model",
        description="Train a spike model. Every option is a flag named after its leaf in the "
        "config; flags override the --config YAML, which overrides the defaults.",
    )
    options.add_flags(fit, SpikeConfig)
    predict = sub.add_parser("predict", help="write the outputs of a trained run again")
    predict.add_argument("--output_dir", required=True, help="the run folder")
    predict.add_argument("--data_dir", default=None, help="data folder (default: the run's)")
    predict.add_argument("--device", default=None, help="cpu | cuda | cuda:K | mps")
    predict.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default=None,
        help="which checkpoint (default: best, or last when the run set restore_best false)",
    )
    return parser


def _run_dir(checkpoint: Path) -> Path:
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


def fit_config(args: argparse.Namespace):
    """defaults < YAML < flags, or, with --restore, saved config < YAML < flags."""
    from neurotwin.config import read_yaml
    from neurotwin.run import CONFIG_FILE
    from neurotwin.training.checkpoint import load_checkpoint, resolve_checkpoint
    from neurotwin.training.spike_task import SpikeConfig

    restore = getattr(args, "restore", None)
    if not restore:
        return options.resolve(args, SpikeConfig)
    checkpoint = resolve_checkpoint(restore, "last")
    run_dir = _run_dir(checkpoint)
    saved_file = run_dir / CONFIG_FILE
    if saved_file.is_file():
        base, source = read_yaml(saved_file), str(saved_file)
    else:
        base, source = load_checkpoint(checkpoint)["config"], f"{checkpoint} [config]"
    config = options.resolve(args, SpikeConfig, base=base, source=source)
    given = options.given(args, SpikeConfig).get("run", {})
    yaml_run = read_yaml(args.config).get("run", {}) if getattr(args, "config", None) else {}
    if "output_dir" not in given and "output_dir" not in yaml_run:
        config.run.output_dir = str(run_dir)
    config.run.restore = str(restore)
    config.run.clear_output_dir = False  # never delete the run being resumed
    return config


def run_fit(args: argparse.Namespace) -> dict[str, Any]:
    from neurotwin.predict_spikes import write_outputs
    from neurotwin.training.spike_loop import fit

    config = fit_config(args)
    result = fit(config)
    metrics = write_outputs(
        result["task"], config.run.output_dir, result["best_epoch"], result["weights_epoch"]
    )
    _report(metrics, config.run.output_dir)
    return result


def _report(metrics: dict[str, Any], output_dir: str | Path) -> None:
    from neurotwin.predict_spikes import scores_table

    table = scores_table(metrics).round(4)
    print(
        f"Poisson log-likelihood, bits/spike over a homogeneous rate (weights of epoch "
        f"{metrics['weights_epoch']}):\n{table.to_string()}\noutputs in {output_dir}",
        flush=True,
    )


def run_predict(args: argparse.Namespace) -> dict[str, Any]:
    from neurotwin.config import from_dict, read_yaml
    from neurotwin.predict_spikes import write_outputs
    from neurotwin.run import CONFIG_FILE
    from neurotwin.training.checkpoint import load_checkpoint, resolve_checkpoint
    from neurotwin.training.spike_task import SpikeConfig, SpikeTask

    out = Path(args.output_dir)
    saved = out / CONFIG_FILE
    if saved.is_file():
        values = read_yaml(saved)
    else:
        values = load_checkpoint(resolve_checkpoint(out, "last"))["config"]
    which = args.checkpoint or (
        "best" if values.get("train", {}).get("restore_best", True) else "last"
    )
    if args.checkpoint is None and not (out / "checkpoints" / f"{which}.pt").is_file():
        which = "last"  # no epoch improved on validation (e.g. no validation trials)
    checkpoint = resolve_checkpoint(out, which)
    if args.data_dir:
        values.setdefault("data", {})["data_dir"] = args.data_dir
    if args.device is not None:
        values.setdefault("run", {})["device"] = args.device
    values.setdefault("run", {})["restore"] = None
    config = from_dict(values, str(saved), SpikeConfig)
    task = SpikeTask(config)
    state = load_checkpoint(checkpoint, map_location=task.device)
    task.load_state_dict(state, str(checkpoint))
    best_epoch = state.get("scheduler", {}).get("plateau", {}).get("best_epoch")
    metrics = write_outputs(task, out, best_epoch, int(state["epoch"]))
    _report(metrics, out)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run_fit(args) if args.command == "fit" else run_predict(args)
        return 0
    except NeurotwinError as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; resume with fit --restore <output_dir>", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":  # pragma: no cover
    main()

"""`neurotwin-spikes`: fit a spike-train model (GLM, GLM-Transformer) and write what it found.

    neurotwin-spikes fit --data_dir D --model glm_vae --output_dir O [--config YAML] [--flag v]
    neurotwin-spikes fit --restore O [--epochs 300]     # resume (and extend) a run
    neurotwin-spikes predict --output_dir O [--data_dir D] [--device cpu]

As `train.py` (its `resolve_config`, the same training loop): flags override the YAML preset,
which overrides the defaults; with `--restore O` the run's saved config.yaml is the base (a
preset and flags go on top) and outputs stay in O unless `--output_dir` says otherwise. The
resolved config is saved as O/config.yaml. `fit` ends by writing the outputs of the weights the
run ends with (couplings.parquet, coupling_units.parquet, latents.parquet, metrics.json,
figures/): the best epoch's, or the last with `--restore_best false`; `predict` writes them
again from the same checkpoint. Bad options end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurotwin.cli.console import exit_on_error, log_messages

PROG = "neurotwin-spikes"


def build_parser() -> argparse.ArgumentParser:
    from neurotwin.config import add_config_flags
    from neurotwin.training.spikes import SpikeConfig

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser(
        "fit",
        help="train a spike model",
        description="Train a spike model. Every option is a flag named after its field in the "
        "config (model.name is --model); flags override the --config YAML, which overrides the "
        "defaults.",
    )
    add_config_flags(fit, cls=SpikeConfig)
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


def run_fit(args: argparse.Namespace) -> dict[str, Any]:
    from neurotwin.cli.train import resolve_config
    from neurotwin.predict_spikes import write_outputs
    from neurotwin.training.spikes import SpikeConfig, fit

    config = resolve_config(args, SpikeConfig)
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
    from neurotwin.predict_spikes import load_trained, write_outputs

    task, state = load_trained(args.output_dir, args.checkpoint, args.data_dir, args.device)
    best_epoch = state.get("scheduler", {}).get("plateau", {}).get("best_epoch")
    metrics = write_outputs(task, args.output_dir, best_epoch, int(state["epoch"]))
    _report(metrics, args.output_dir)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    log_messages()
    parser = build_parser()
    args = parser.parse_args(argv)
    with exit_on_error(f"{PROG} {args.command}", _how_to_go_on):
        run_fit(args) if args.command == "fit" else run_predict(args)
    return 0


def _how_to_go_on() -> str:
    return "; resume with fit --restore <output_dir>"


if __name__ == "__main__":  # pragma: no cover
    main()

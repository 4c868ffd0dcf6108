"""`predict.py` / `neurotwin-predict`: predictions and Sensorium metrics of a trained run.

    python predict.py --output_dir runs/demo [--checkpoint best|last|PATH] [--tiers oracle ...]
                      [--data_dir DIR] [--device cuda] [--batch_size 8]

Writes OUTPUT_DIR/predictions/ (metrics.json, metrics.csv, {session}/{tier}.npz and, for test tiers,
submission_{tier}.csv; see neurotwin.predict) and prints a metrics table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from neurotwin.data import native
from neurotwin.errors import NeurotwinError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="predict every trial of a trained run's sessions and score them "
        "(Sensorium 2023 metrics); outputs go to OUTPUT_DIR/predictions/",
    )
    parser.add_argument("--output_dir", required=True, help="the run folder written by train.py")
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="best | last (OUTPUT_DIR/checkpoints/{name}.pt) or the path of a checkpoint file "
        "(default: best)",
    )
    parser.add_argument(
        "--tiers",
        nargs="+",
        default=None,
        choices=[t for t in native.TIERS],
        metavar="TIER",
        help=f"tiers to predict (default: every tier the sessions have except 'none'); "
        f"choices: {' '.join(native.TIERS)}",
    )
    parser.add_argument(
        "--data_dir", default=None, help="data folder (default: the data_dir in config.yaml)"
    )
    parser.add_argument(
        "--device", default=None, help="cpu | cuda | cuda:K | mps (default: the run's, else best)"
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="trials per forward pass; only trials of equal length share one (default: the "
        "run's batch_size)",
    )
    parser.add_argument("--verbose", type=int, default=1, help="0: quiet, 1: table and progress")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    if args.batch_size is not None and args.batch_size < 1:
        build_parser().error(f"--batch_size must be >= 1, got {args.batch_size}")
    from neurotwin.predict import predict_run

    try:
        predict_run(**vars(args))  # the flags are predict_run's arguments
    except NeurotwinError as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"predict.py: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

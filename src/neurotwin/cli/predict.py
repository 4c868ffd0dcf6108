"""`predict.py` / `neurotwin-predict`: predictions and Sensorium metrics of trained runs.

    python predict.py --output_dir runs/demo [--checkpoint best|last|PATH] [--tiers oracle ...]
                      [--data_dir DIR] [--device cuda] [--batch_size 8] [--num_workers 8]
                      [--score_space raw|normalized] [--compile true|false] [--no_submission]
    python predict.py --output_dir runs/a runs/b runs/c --ensemble_dir runs/ensemble

Writes OUTPUT_DIR/predictions/ (metrics.json, metrics.csv, {session}/{tier}.npz and, for test
tiers, submission/ with the competition's files; see neurotwin.predict) and prints a metrics
table. With several runs and --ensemble_dir, every run is predicted (or its predictions reused
when they are of the same checkpoint, tiers and score space) and their average is written to
ENSEMBLE_DIR/predictions/ in the same layout, each member's metrics beside the ensemble's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from neurotwin.data import native
from neurotwin.errors import NeurotwinError

SCORE_SPACES = ("raw", "normalized")  # neurotwin.prediction.space (not imported: fast --help)


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="predict every trial of a trained run's sessions and score them "
        "(Sensorium 2023 metrics); outputs go to OUTPUT_DIR/predictions/",
    )
    parser.add_argument(
        "--output_dir",
        required=True,
        nargs="+",
        metavar="RUN",
        help="the run folder written by train.py (several with --ensemble_dir)",
    )
    parser.add_argument(
        "--ensemble_dir",
        default=None,
        help="average the runs' predictions into ENSEMBLE_DIR/predictions/ (same sessions and "
        "tiers in every run)",
    )
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
        "run's batch_size, at least 8 on a GPU)",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="processes reading the trials (default: the run's num_workers)",
    )
    parser.add_argument(
        "--score_space",
        default="raw",
        choices=SCORE_SPACES,
        help="raw: responses as stored; normalized: as the competition's loader gave them "
        "(divided by the shipped per-neuron, per-frame std, NeuroNormalizer) (default: raw)",
    )
    parser.add_argument(
        "--compile",
        type=_bool,
        default=None,
        metavar="BOOL",
        help="torch.compile the core (default: as the run was trained)",
    )
    parser.add_argument(
        "--no_submission",
        action="store_true",
        help="do not write the competition's submission files for the test tiers",
    )
    parser.add_argument("--verbose", type=int, default=1, help="0: quiet, 1: table and progress")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    for name in ("batch_size", "num_workers"):
        value, least = getattr(args, name), 1 if name == "batch_size" else 0
        if value is not None and value < least:
            parser.error(f"--{name} must be >= {least}, got {value}")
    options = dict(
        checkpoint=args.checkpoint,
        tiers=args.tiers,
        data_dir=args.data_dir,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        score_space=args.score_space,
        compile=args.compile,
        submission=not args.no_submission,
        verbose=args.verbose,
    )
    try:
        if args.ensemble_dir is not None:
            from neurotwin.ensemble import predict_ensemble

            predict_ensemble(args.output_dir, args.ensemble_dir, **options)
        else:
            from neurotwin.predict import predict_run

            for run in args.output_dir:
                predict_run(run, **options)
    except NeurotwinError as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"predict.py: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

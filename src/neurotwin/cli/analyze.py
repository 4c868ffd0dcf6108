"""`neurotwin-analyze`: in-silico experiments on a trained run (or on the synthetic ground truth).

    neurotwin-analyze arf --output_dir runs/demo
    neurotwin-analyze tuning --output_dir runs/demo --sessions NAME --neurons 0 1 2 --device cuda
    neurotwin-analyze size --output_dir runs/demo --sizes_px 4 8 16 32
    neurotwin-analyze mei --output_dir runs/demo --neurons 3 --steps 300
    neurotwin-analyze arf --output_dir runs/truth --truth --data_dir data/synthetic

Each writes OUTPUT_DIR/analysis/NAME/ ({session}.parquet, {session}.npz, PNG figures,
summary.json). Every analysis's options are flags, made from its options dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

from neurotwin.cli.console import exit_on_error, log_messages


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output_dir",
        required=True,
        help="the run folder (outputs go to OUTPUT_DIR/analysis/NAME/)",
    )
    parser.add_argument(
        "--checkpoint", default="best", help="best | last | path of a checkpoint (default: best)"
    )
    parser.add_argument(
        "--sessions",
        nargs="+",
        default=None,
        metavar="SESSION",
        help="sessions to analyse (default: all of the run's)",
    )
    parser.add_argument(
        "--neurons",
        nargs="+",
        type=int,
        default=None,
        metavar="INDEX",
        help="neuron indices within each session (default: all)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu | cuda | cuda:K | mps (default: the run's, else the best available)",
    )
    parser.add_argument(
        "--batch_size", type=int, default=None, help="stimulus videos per forward pass (default: 8)"
    )
    parser.add_argument(
        "--data_dir", default=None, help="data folder (default: the run's data_dir)"
    )
    parser.add_argument(
        "--truth",
        action="store_true",
        help="probe the synthetic generator's ground-truth module of the sessions in --data_dir instead of a trained model",
    )
    parser.add_argument(
        "--verbose", type=int, default=1, help="0: warnings only, 1: progress and log lines"
    )


def add_option_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per field of the options dataclass `cls` (values converted by
    neurotwin.config.convert when the options are built)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (options of this analysis)")
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name, "type": str}
        if get_origin(tp) is Literal:
            kwargs["choices"] = [str(c) for c in get_args(tp)]
        if tp is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif get_origin(tp) is list:
            kwargs.update(nargs="+", metavar="VALUE")
        else:
            kwargs.setdefault("metavar", f.name.upper())
        group.add_argument(f"--{f.name}", help=help_text, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from neurotwin.analysis import ANALYSES

    parser = argparse.ArgumentParser(
        prog="neurotwin-analyze",
        description="In-silico experiments on a trained model: each writes OUTPUT_DIR/analysis/NAME/.",
    )
    sub = parser.add_subparsers(dest="analysis", required=True, metavar="NAME")
    for name in ANALYSES.names():
        cls = ANALYSES.get(name)
        p = sub.add_parser(name, help=cls.description, description=(cls.__doc__ or "").strip())
        _add_common(p)
        add_option_flags(p, cls.Options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log_messages(bool(args.verbose))
    # the common flags and the analysis's options are run()'s keyword arguments of those names
    given = {k: v for k, v in vars(args).items() if k not in ("analysis", "output_dir", "verbose")}
    from neurotwin import analysis

    with exit_on_error(f"neurotwin-analyze {args.analysis}"):
        analysis.run(
            args.analysis, args.output_dir, progress=None if args.verbose else False, **given
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

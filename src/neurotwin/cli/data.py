"""`neurotwin-data`: tools that write datasets in the native layout (synthetic mice, Allen)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from neurotwin.cli import data_allen, data_spikes, data_synthetic, data_table_video
from neurotwin.errors import NeurotwinError

# Each sub-command lives in its own module with `register(subparsers)`; the parser it adds
# sets `func(args) -> int`.
SUBCOMMANDS = (data_synthetic, data_allen, data_spikes, data_table_video)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurotwin-data", description="write datasets in the native session layout"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NeurotwinError as e:
        print(f"neurotwin-data {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None  # as train.py and predict.py, and argparse's errors


if __name__ == "__main__":
    raise SystemExit(main())

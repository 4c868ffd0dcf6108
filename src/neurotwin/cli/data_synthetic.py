"""`neurotwin-data synthetic`: write synthetic ground-truth mice in the native session layout.

    neurotwin-data synthetic --out data/synthetic --mice 3 --preset small --seed 0
    neurotwin-data synthetic --out data/synthetic_full --preset sensorium --mice 5
    neurotwin-data synthetic --out data/synthetic_hard --variant gaze_shifts slow_drifts
    neurotwin-data synthetic --out data/synthetic_s --param surround_fraction=0.3

Size flags override the preset (e.g. `--neurons 200 --frames 150`); `--variant` adds harder
options that real data has (see `neurotwin.data.synthetic.VARIANTS`), `--param NAME=VALUE` sets
any generator parameter (a field of `ModelParams`; pairs as `NAME=A,B`). Later ones win: preset,
variants in order, params, size flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from neurotwin.cli.console import exit_on_error, log_messages
from neurotwin.errors import ConfigError

logger = logging.getLogger("neurotwin.data")

_SIZE_HELP = {
    "height": "frame height in pixels",
    "width": "frame width in pixels",
    "frames": "frames per trial (T); the Sensorium metrics skip the first 50",
    "neurons": "neurons per session",
    "train_trials": "trials of the train tier (a new clip each)",
    "oracle_clips": "clips of the oracle tier",
    "oracle_repeats": "repeats of each oracle clip",
    "test_clips": "clips of each test tier (live_test_main, final_test_main)",
    "test_repeats": "repeats of each test clip",
    "short_fraction": "fraction of clips shorter than a trial (frames past the end are NaN)",
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from neurotwin.data.synthetic import PRESETS, VARIANTS, SyntheticSizes

    parser.add_argument(
        "--out", type=Path, default=Path("data/synthetic"), help="folder for the session folders"
    )
    parser.add_argument("--mice", type=int, default=3, help="number of sessions (mice)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="small",
        help="sizes: small (CPU, seconds) or sensorium (published sizes: 36x64, 300 frames, "
        "8000 neurons, 700 trials per session; minutes and ~15 GB per session)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace session folders that already exist"
    )
    parser.add_argument(
        "--no_progress",
        action="store_true",
        help="no progress bars (there are none off a terminal)",
    )
    parser.add_argument(
        "--variant",
        nargs="+",
        default=[],
        choices=sorted(VARIANTS),
        metavar="NAME",
        help="harder options that real data has, applied in order: "
        + "; ".join(f"{name}: {v.help}" for name, v in VARIANTS.items()),
    )
    parser.add_argument(
        "--param",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="set generator parameters (fields of ModelParams, e.g. surround_fraction=0.3, "
        "running_gain=0.5,0.2)",
    )
    sizes = parser.add_argument_group("sizes (default: the preset's)")
    for f in dataclasses.fields(SyntheticSizes):
        sizes.add_argument(
            f"--{f.name}",
            type=float if f.type in (float, "float") else int,
            default=None,
            help=_SIZE_HELP.get(f.name, f.name),
        )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `synthetic` sub-command to the `neurotwin-data` dispatcher."""
    parser = subparsers.add_parser(
        "synthetic",
        help="write synthetic ground-truth mice (native layout)",
        description="Write synthetic mice from a known generative model in the native "
        "(Sensorium 2023) session layout, with their noiseless rates.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from neurotwin.data import synthetic

    sizes = _parse_params(args.param)
    sizes.update({f: getattr(args, f) for f in _SIZE_HELP if getattr(args, f, None) is not None})
    start = time.perf_counter()
    folders = synthetic.generate(
        args.out,
        mice=args.mice,
        preset=args.preset,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress and sys.stderr.isatty(),  # bars on terminals only
        variants=args.variant,
        **sizes,
    )
    logger.info(
        "wrote %d synthetic session(s) (preset %s, seed %d) to %s in %.1f s: %s",
        len(folders),
        args.preset,
        args.seed,
        Path(args.out).resolve(),
        time.perf_counter() - start,
        ", ".join(f.name for f in folders),
    )
    return 0


def _parse_params(items: Sequence[str]) -> dict[str, object]:
    """NAME=VALUE pairs -> {name: int | float | tuple}; ConfigError on a malformed one."""
    out: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE")
        try:
            numbers = [float(v) for v in value.split(",")]
        except ValueError:
            raise ConfigError(f"--param {item!r}: expected numbers, got {value!r}") from None
        ints = [int(v) for v in numbers if v.is_integer()]
        one = ints[0] if len(ints) == 1 and "." not in value else numbers[0]
        out[name] = tuple(numbers) if len(numbers) > 1 else one
    return out


def build_parser() -> argparse.ArgumentParser:
    """Stand-alone parser (same options as `neurotwin-data synthetic`)."""
    parser = argparse.ArgumentParser(
        prog="neurotwin-data synthetic", description="write synthetic ground-truth mice"
    )
    _add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    log_messages()
    args = build_parser().parse_args(argv)
    with exit_on_error("neurotwin-data synthetic"):
        return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

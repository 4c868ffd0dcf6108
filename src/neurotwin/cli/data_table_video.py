"""`neurotwin-data table-video`: response + trial tables and movie files -> a native session."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "table-video",
        help="responses as pandas/parquet tables + movies as video files -> native session",
        description="One row per unit and trial (unit_id, trial_id, spike_times or rates) and a "
        "trial table (trial_id, video, tier); movies are resampled to the response bins. "
        "Schema: README, 'Tables and video files'.",
    )
    p.add_argument(
        "--responses", type=Path, required=True, help="response table (.pkl or .parquet)"
    )
    p.add_argument("--trials", type=Path, required=True, help="trial table (.pkl or .parquet)")
    p.add_argument("--videos", type=Path, required=True, help="folder of the movie files")
    p.add_argument("--bin_ms", "--bin-ms", dest="bin_ms", type=float, required=True,
                   help="response bin in milliseconds (the native frame)")  # fmt: skip
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate the movies were shown at (default: each file's own)")  # fmt: skip
    p.add_argument("--frame_size", "--frame-size", dest="frame_size", nargs=2, type=int,
                   default=None, metavar=("H", "W"),
                   help="resize frames by area averaging (default: the files' size)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="folder to write the session into")
    p.add_argument("--name", default=None, help="session folder name (default: responses' stem)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing session folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from neurotwin.data.tablevideo import convert_table_video

    folder = convert_table_video(
        args.responses, args.trials, args.videos, args.out, args.bin_ms, fps=args.fps,
        frame_size=tuple(args.frame_size) if args.frame_size else None, name=args.name,
        overwrite=args.overwrite, progress=sys.stderr.isatty(),
    )  # fmt: skip
    log.info("wrote %s", folder)
    return 0

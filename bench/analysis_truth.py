"""How well in-silico experiments on a trained model recover the synthetic generator's truth.

    python bench/analysis_truth.py --output_dir runs/demo [--device cpu] [--min_fraction 0.5]

Runs `arf` and `tuning` on the run (default options; tables already in RUN/analysis/ are reused),
predicts the oracle tier to get each neuron's single-trial correlation and ceiling, and prints,
per session and pooled, the median aRF-centre error (pixels) and preferred-orientation error
(degrees) over all neurons and over those predicted at >= min_fraction of their ceiling (the
issue's done-when check: <= 3 px and <= 20 degrees). Writes RUN/analysis/truth_check.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--tier", default="oracle", help="tier for the per-neuron fraction of ceiling"
    )
    parser.add_argument("--min_fraction", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import pandas as pd

    from neurotwin import analysis
    from neurotwin.analysis import groundtruth as G
    from neurotwin.analysis.output import write_json

    subject = analysis.open_subject(args.output_dir, args.checkpoint, args.device)
    seconds = {}
    for name in ("arf", "tuning"):
        folder = Path(args.output_dir) / "analysis" / name
        if all((folder / f"{s}.parquet").is_file() for s in subject.sessions):
            continue
        start = time.perf_counter()
        analysis.run(name, args.output_dir, subject=subject)
        seconds[name] = time.perf_counter() - start
    errors, corr, ceiling = [], [], []
    report = {"sessions": {}, "seconds": seconds}
    for session in subject.sessions:
        probe = subject.probe(session)
        truth = G.truth_table(probe.session.path, probe.pupil_center)
        tables = {
            n: pd.read_parquet(Path(args.output_dir) / "analysis" / n / f"{session}.parquet")
            for n in ("arf", "tuning")
        }
        e = G.compare(truth, tables["arf"], tables["tuning"])
        q = G.prediction_quality(subject, session, args.tier)
        report["sessions"][session] = G.summary(e, q, args.min_fraction)
        errors.append(e)
        corr.append(q[0])
        ceiling.append(q[1])
    pooled = pd.concat(errors, ignore_index=True)
    report["pooled"] = G.summary(
        pooled, (np.concatenate(corr), np.concatenate(ceiling)), args.min_fraction
    )
    report["done_when"] = {"center_error_median_px": 3.0, "orientation_error_median_deg": 20.0}
    print(json.dumps(report["pooled"], indent=2))
    write_json(report, Path(args.output_dir) / "analysis" / "truth_check.json")
    return report


if __name__ == "__main__":
    main()

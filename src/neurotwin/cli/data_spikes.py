"""`neurotwin-data allen-spikes` and `neurotwin-data synthetic-spikes`: spike table sessions.

    neurotwin-data allen-spikes --nwb session_715093703.nwb --stimulus drifting_gratings \\
        [--areas VISp VISl] [--population area|probe] --out data/spikes
    neurotwin-data synthetic-spikes --out data/spikes_sim --sessions 2 --trials 300
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    a = subparsers.add_parser(
        "allen-spikes",
        help="Allen Visual Coding Neuropixels session NWB -> spike table session",
        description="units (allensdk's default quality filters) and one stimulus' "
        "presentations as trials with their condition columns.",
    )
    a.add_argument("--nwb", type=Path, required=True, help="session NWB (EcephysProjectCache)")
    a.add_argument("--stimulus", default="drifting_gratings", help="presentations to use")
    a.add_argument("--areas", nargs="+", default=None, help="keep units in these structures")
    a.add_argument(
        "--population",
        choices=("area", "probe"),
        default="area",
        help="what a population is: the unit's structure (VISp, ...) or its probe",
    )
    a.add_argument(
        "--condition-columns",
        "--condition_columns",
        dest="condition_columns",
        nargs="+",
        default=None,
        help="presentation columns that define a condition (default per stimulus)",
    )
    a.add_argument(
        "--margin-s",
        "--margin_s",
        dest="margin_s",
        type=float,
        default=1.0,
        help="keep spikes this long before the first and after the last presentation",
    )
    for flag, default, text in (
        ("amplitude_cutoff_maximum", 0.1, "allensdk default 0.1"),
        ("presence_ratio_minimum", 0.95, "allensdk default 0.95"),
        ("isi_violations_maximum", 0.5, "allensdk default 0.5"),
    ):
        a.add_argument(
            f"--{flag.replace('_', '-')}",
            f"--{flag}",
            dest=flag,
            type=float,
            default=default,
            help=text,
        )
    a.add_argument("--name", default=None, help="session folder name")
    a.add_argument("--out", type=Path, required=True, help="folder to write the session into")
    a.add_argument("--overwrite", action="store_true", help="replace an existing session")
    a.set_defaults(func=run_allen)

    s = subparsers.add_parser(
        "synthetic-spikes",
        help="ground-truth GLM sessions with known coupling and per-trial latents",
        description="Sessions simulated from a point-process GLM (see "
        "neurotwin.data.synthetic_spikes): coupling A -> B only, a per-trial gain.",
    )
    s.add_argument("--out", type=Path, required=True, help="folder for the session folders")
    s.add_argument("--sessions", type=int, default=2)
    s.add_argument("--units", type=int, default=20, help="units per population")
    s.add_argument("--trials", type=int, default=300)
    s.add_argument("--conditions", type=int, default=4)
    s.add_argument("--duration-ms", "--duration_ms", dest="duration_ms", type=float, default=500)
    s.add_argument("--burn-in-ms", "--burn_in_ms", dest="burn_in_ms", type=float, default=200)
    s.add_argument("--rate-hz", "--rate_hz", dest="rate_hz", type=float, default=10.0)
    s.add_argument("--latent-std", "--latent_std", dest="latent_std", type=float, default=0.4)
    s.add_argument(
        "--coupling",
        nargs=4,
        action="append",
        metavar=("SOURCE", "TARGET", "AMPLITUDE", "PEAK_MS"),
        default=None,
        help="a coupling (repeatable; default: A B 0.2 6)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=run_synthetic)


def run_allen(args: argparse.Namespace) -> int:
    from neurotwin.data.allen.spikes import convert_allen_spikes

    folder = convert_allen_spikes(
        args.nwb,
        args.out,
        stimulus=args.stimulus,
        areas=args.areas,
        population=args.population,
        condition_columns=args.condition_columns,
        margin_s=args.margin_s,
        amplitude_cutoff_maximum=args.amplitude_cutoff_maximum,
        presence_ratio_minimum=args.presence_ratio_minimum,
        isi_violations_maximum=args.isi_violations_maximum,
        name=args.name,
        overwrite=args.overwrite,
    )
    print(folder)
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    from neurotwin.data import synthetic_spikes

    couplings = None
    if args.coupling:
        couplings = {(s, t): (float(a), float(p)) for s, t, a, p in args.coupling}
    populations = sorted({p for pair in (couplings or {("A", "B"): 0}) for p in pair} | {"A", "B"})
    folders = synthetic_spikes.generate(
        args.out,
        sessions=args.sessions,
        seed=args.seed,
        overwrite=args.overwrite,
        couplings=couplings,
        populations=populations,
        units=args.units,
        trials=args.trials,
        conditions=args.conditions,
        duration_ms=args.duration_ms,
        burn_in_ms=args.burn_in_ms,
        rate_hz=args.rate_hz,
        latent_std=args.latent_std,
    )
    for folder in folders:
        print(folder)
    return 0

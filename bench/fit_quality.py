"""How close does a trained model get to the ground truth? (issue #15)

Trains a config (with train.py's own code: `neurotwin.cli.train.resolve_config` resolves the
flags, `neurotwin.training.video.train` runs the shared loop) for a wall-clock and/or epoch budget, once per
seed, then scores the best checkpoint with predict.py's code (`neurotwin.predict.predict_run`).
It prints

- the learning curve: per epoch, the seconds since training started (wall clock, and this
  process's CPU seconds: on a shared machine, with `--threads 1`, the CPU seconds are what a quiet
  core would take), the validation single-trial correlation (the trainer's, mean over sessions)
  and its fraction of the ceiling (the ceiling computed on the validation trials with the
  trainer's frame convention);
- the final single-trial correlation, `ceiling_correlation` and `fraction_of_ceiling` of every
  session and tier with ground truth (oracle and test tiers; predict's metrics), and their means.

and writes beside the runs: `fit_quality.json` (everything), `curve.csv` (seed, epoch, seconds,
correlation, fraction) and `final.csv` (seed, session, tier, metrics).

    python bench/fit_quality.py --config CONFIG --data_dir DIR [--minutes M] [--epochs N]
        [--seeds 0 1] [--family NAME] [--threads K] --output_dir OUT [-- TRAIN.PY FLAGS ...]

Flags after `--` go to train.py as they are (e.g. `-- --lr 0.003 --crop_frame 60`).
Budgets: `--minutes M` stops a run after the epoch that would otherwise end past M minutes of
training (measured from the start of the training call: data, model, compilation included;
prediction excluded); `--epochs N` sets train.epochs; `--no_early_stop` sets min_epochs = epochs
so that the plateau schedule never stops a run early (it may still lower the LR). `--resume`
continues the runs of OUTPUT_DIR (train.py --restore) for another M minutes, so that a long
budget can be spent in commands of a few minutes each; times and the curve carry on.
`--family NAME` writes a synthetic dataset of that family into `--data_dir` first if it holds no
session (FAMILIES below; the generator's Python API).

CPU, the demo on its own data (3 synthetic mice, small preset):

    python bench/fit_quality.py --config configs/demo.yaml --family demo \
        --data_dir /tmp/fq/demo --seeds 0 1 --output_dir /tmp/fq/runs/demo

GPU, the ViV1T preset on ten sensorium-size synthetic sessions (bench/gen_sens.sh data/sens 60),
30 minutes of training in commands of at most 10 minutes (the same command, three times):

    python bench/fit_quality.py --config configs/viv1t.yaml --data_dir data/sens \
        --minutes 9 --epochs 1000 --seeds 0 --resume --output_dir runs/fq_viv1t
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

# Synthetic families: generate(out, **kwargs) of neurotwin.data.synthetic. "demo" is the built-in
# dataset the demo trains on; "wide" the issue's other small Sensorium-layout sessions; each
# harder variant of the generator (neurotwin.data.synthetic.VARIANTS: many_neurons,
# strong_behavior, gaze_shifts, slow_drifts, surround, and hard = all of them) is the demo's mice
# (same seed and size) with that variant on, so that a row compares with the demo's row directly.
FAMILIES: dict[str, dict[str, Any]] = {
    "demo": {"mice": 3, "preset": "small", "seed": 0},
    # full 36x64 frames, 300-frame trials, 50 neurons, 60 training trials
    "wide": {
        "mice": 2,
        "preset": "small",
        "seed": 11,
        "height": 36,
        "width": 64,
        "frames": 300,
        "neurons": 50,
        "train_trials": 60,
    },
    # smaller receptive fields with finer gratings
    "fine_rf": {
        "mice": 3,
        "preset": "small",
        "seed": 12,
        "rf_sigma": 2.5,
        "spatial_frequency": 0.11,
    },
    # mostly complex and centre-surround cells (phase-invariant, less linear)
    "complex": {
        "mice": 3,
        "preset": "small",
        "seed": 13,
        "complex_fraction": 0.6,
        "center_surround_fraction": 0.25,
    },
    # weak signal: low contrast movies and low firing rates
    "low_snr": {
        "mice": 3,
        "preset": "small",
        "seed": 14,
        "contrast": (20.0, 35.0),
        "mean_rate": 0.4,
    },
}
for _variant in (
    "many_neurons",
    "strong_behavior",
    "gaze_shifts",
    "slow_drifts",
    "surround",
    "hard",
):
    FAMILIES[_variant] = {"mice": 3, "preset": "small", "seed": 0, "variants": [_variant]}

SEGMENTS_FILE = "fit_quality_segments.json"  # per run: the curve and times so far (--resume)

# flags this script sets itself; flags after `--` may not set them
RESERVED = {"config", "data_dir", "seed", "output_dir", "restore", "clear_output_dir"}


# ------------------------------------------------------------------------------------------------
# Data and configs
# ------------------------------------------------------------------------------------------------


def ensure_family(name: str, data_dir: Path) -> None:
    """Write the synthetic family `name` into `data_dir` unless it already holds a session."""
    from neurotwin.data import synthetic
    from neurotwin.data.native import find_sessions
    from neurotwin.errors import NeurotwinError

    try:
        if find_sessions(data_dir):
            return
    except NeurotwinError:
        pass
    print(f"fit_quality: writing synthetic family {name!r} into {data_dir}", flush=True)
    synthetic.generate(data_dir, progress=False, **FAMILIES[name])


def train_argv(
    args: argparse.Namespace, seed: int, run_dir: Path, resume: bool = False
) -> list[str]:
    """The train.py arguments of one run (of its next segment, with `resume`)."""
    argv = ["--config", str(args.config), "--data_dir", str(args.data_dir)]
    argv += ["--generate_synthetic", "false"]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    argv += list(args.train_flags)
    argv += ["--seed", str(seed), "--output_dir", str(run_dir)]
    argv += ["--restore", str(run_dir)] if resume else ["--clear_output_dir", "true"]
    return argv


def earlier_segments(run_dir: Path) -> dict[str, Any] | None:
    """The curve and times this script saved for a run it can resume, else None."""
    saved = run_dir / SEGMENTS_FILE
    if not (saved.is_file() and (run_dir / "checkpoints" / "last.pt").is_file()):
        return None
    return json.loads(saved.read_text())


def resolve(argv: list[str]):
    """A run's Config exactly as train.py resolves it (SystemExit with the message if bad)."""
    from neurotwin.cli.train import build_parser, resolve_config
    from neurotwin.errors import NeurotwinError

    try:
        return resolve_config(build_parser().parse_args(argv))
    except NeurotwinError as e:
        raise SystemExit(f"fit_quality: bad train.py flags ({shlex.join(argv)}): {e}") from None


def validation_ceiling(config) -> dict[str, float | None]:
    """Per session: the single-trial correlation of the noiseless rates with the responses of the
    validation tier, frames left out as the trainer's validation does (None: no noiseless)."""

    from neurotwin.data import native, synthetic

    out: dict[str, float | None] = {}
    for path in native.find_sessions(config.data.data_dir, config.data.mouse_ids):
        session = native.NativeSession(path, limit_neurons=config.data.limit_neurons)
        tier = config.data.val_tier
        scorable = session.has_noiseless and not session.responses_hidden(tier)
        if not scorable or not len(session.trial_ids(tier)):
            out[session.name] = None
            continue
        # the metrics' first-frames rule over the tier's lengths, as validation does
        ceiling = synthetic.session_ceiling(path, (tier,), limit_neurons=config.data.limit_neurons)
        out[session.name] = float(ceiling.mean())
    return out


# ------------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------------


class Budget:
    """on_epoch_end callback: records the curve; stops before an epoch would end past `seconds`
    (estimated from the last epoch's duration). A resumed run continues an earlier `curve`
    whose times (`before`: wall and CPU seconds) are added to this segment's."""

    def __init__(
        self,
        seconds: float | None,
        ceiling: float | None,
        start: float,
        curve: list[dict[str, Any]] | None = None,
        before: tuple[float, float] = (0.0, 0.0),
        save_to: Path | None = None,
    ):
        self.seconds, self.ceiling, self.start = seconds, ceiling, start
        self.save_to = save_to
        self.cpu_start = time.process_time()
        self.curve: list[dict[str, Any]] = list(curve or [])
        self.before = before
        self.stopped = False
        self._last = start

    def save(self, path: Path) -> None:
        """The curve and times so far, for --resume (written aside, then renamed)."""
        wall, cpu = self.totals()
        segments = {"curve": self.curve, "train_s": wall, "train_cpu_s": cpu}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(strict(segments), indent=1))
        tmp.replace(path)

    def totals(self) -> tuple[float, float]:
        """Wall and CPU seconds of training so far, earlier segments included."""
        return (
            self.before[0] + time.perf_counter() - self.start,
            self.before[1] + time.process_time() - self.cpu_start,
        )

    def __call__(self, epoch: int, trainer: Any) -> None:
        now = time.perf_counter()
        row = trainer.history[-1]
        corr = float(row["val_correlation"])
        wall, cpu = self.totals()
        self.curve.append(
            {
                "epoch": epoch,
                "seconds": wall,
                "cpu_s": cpu,
                "val_correlation": corr,
                "val_fraction": corr / self.ceiling if self.ceiling else None,
                "train_loss": float(row["train_loss"]),
                "lr": float(row["lr"]),
            }
        )
        print(fmt_curve_row(self.curve[-1]), flush=True)
        if self.save_to is not None:  # after every epoch: a killed run can be resumed too
            self.save(self.save_to)
        epoch_s, self._last = now - self._last, now
        if self.seconds is not None and now - self.start + epoch_s > self.seconds:
            self.stopped = True
            trainer.plateau.stopped = True  # the loop ends after this epoch, as early stopping


def run_one(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train and score one seed."""
    from neurotwin.predict import predict_run
    from neurotwin.training.video import train

    run_dir = Path(args.output_dir) / f"seed{seed}"
    previous = earlier_segments(run_dir) if args.resume else None
    argv = train_argv(args, seed, run_dir, resume=previous is not None)
    config = resolve(argv)
    if args.no_early_stop:
        config.train.min_epochs = config.train.epochs
    config.run.verbose = args.verbose
    ceilings = validation_ceiling(config)
    known = [c for c in ceilings.values() if c is not None]
    ceiling = statistics.fmean(known) if known and len(known) == len(ceilings) else None
    print(
        f"\nseed {seed}: train.py {shlex.join(argv)}"
        + (" (min_epochs = epochs)" if args.no_early_stop else "")
        + f"\nvalidation ceiling ({config.data.val_tier}): "
        + (f"{ceiling:.4f}" if ceiling is not None else "unknown (no noiseless rates)"),
        flush=True,
    )
    print(
        f"{'epoch':>5} {'seconds':>8} {'cpu s':>8} {'val corr':>9} {'of ceiling':>10} {'lr':>9}",
        flush=True,
    )
    start = time.perf_counter()
    budget = Budget(
        args.minutes * 60 if args.minutes else None,
        ceiling,
        start,
        previous["curve"] if previous else None,
        (previous["train_s"], previous["train_cpu_s"]) if previous else (0.0, 0.0),
        save_to=run_dir / SEGMENTS_FILE,
    )
    if previous is not None:
        print(
            f"resuming after epoch {previous['curve'][-1]['epoch'] if previous['curve'] else 0} "
            f"({previous['train_s']:.1f}s of training before)",
            flush=True,
        )
    summary = train(config, on_epoch_end=budget)
    train_s, train_cpu_s = budget.totals()
    budget.save(run_dir / SEGMENTS_FILE)
    tic = time.perf_counter()
    metrics = predict_run(
        run_dir, checkpoint="best", tiers=scored_tiers(run_dir, args.tiers), verbose=0
    )
    predict_s = time.perf_counter() - tic
    return {
        "seed": seed,
        "run_dir": str(run_dir),
        "train_argv": argv,
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "best_val_correlation": summary["best_value"],
        "stopped": "budget" if budget.stopped else summary["stopped"],
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "predict_s": predict_s,
        "val_ceiling": ceiling,
        "val_ceiling_per_session": ceilings,
        "curve": budget.curve,
        "metrics": metrics,
    }


def scored_tiers(run_dir: Path, wanted: list[str] | None) -> list[str]:
    """The tiers to predict: `wanted`, else every oracle/test tier with responses."""
    if wanted:
        return wanted
    import numpy as np

    from neurotwin.config import load_yaml
    from neurotwin.data import native

    config = load_yaml(run_dir / "config.yaml")
    scored: set[str] = set()  # tiers with responses (not hidden) in some session
    for path in native.find_sessions(config.data.data_dir, config.data.mouse_ids):
        session = native.NativeSession(path)
        present = {str(t) for t in np.unique(session.tiers)}
        scored |= {t for t in present if not session.responses_hidden(t)}
    return [t for t in (native.ORACLE_TIER, *native.TEST_TIERS) if t in scored]


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


def fmt(x: Any, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec) if isinstance(x, float) else str(x)


def fmt_curve_row(r: dict[str, Any]) -> str:
    return (
        f"{r['epoch']:>5} {r['seconds']:>8.1f} {r['cpu_s']:>8.1f} {fmt(r['val_correlation']):>9} "
        f"{fmt(r['val_fraction'], '.3f'):>10} {r['lr']:>9.2e}"
    )


def final_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (session, tier) with ground truth, then the means."""
    rows = []
    m = run["metrics"]
    entries = [(s, t, v) for s, by_tier in m["sessions"].items() for t, v in by_tier.items()]
    entries += [("mean", t, v) for t, v in m["mean"].items()]
    for session, tier, v in entries:
        if v.get("single_trial_correlation") is None:
            continue  # hidden responses: no ground truth
        rows.append(
            {
                "seed": run["seed"],
                "session": session,
                "tier": tier,
                "single_trial_correlation": v["single_trial_correlation"],
                "ceiling_correlation": v.get("ceiling_correlation"),
                "fraction_of_ceiling": v.get("fraction_of_ceiling"),
                "correlation_to_average": v.get("correlation_to_average"),
                "n_trials": v["n_trials"],
                "n_neurons": v["n_neurons"],
            }
        )
    return rows


def print_final(run: dict[str, Any]) -> None:
    print(
        f"seed {run['seed']}: {run['epochs']} epochs in {run['train_s']:.1f}s "
        f"({run['train_cpu_s']:.1f} CPU s) "
        f"(stopped: {run['stopped']}; best epoch {run['best_epoch']}), predict "
        f"{run['predict_s']:.1f}s"
    )
    print(f"  {'session':<34} {'tier':<16} {'single r':>9} {'ceiling':>8} {'of ceiling':>10}")
    for r in final_rows(run):
        print(
            f"  {r['session'][:34]:<34} {r['tier']:<16} {fmt(r['single_trial_correlation']):>9} "
            f"{fmt(r['ceiling_correlation']):>8} {fmt(r['fraction_of_ceiling'], '.3f'):>10}"
        )


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per tier: mean and sample std over seeds of the mean fraction of the ceiling."""
    by_tier: dict[str, list[float]] = {}
    for run in runs:
        for r in final_rows(run):
            if r["session"] == "mean" and r["fraction_of_ceiling"] is not None:
                by_tier.setdefault(r["tier"], []).append(r["fraction_of_ceiling"])
    return {
        t: {
            "n": len(v),
            "mean": statistics.fmean(v),
            "std": statistics.stdev(v) if len(v) > 1 else None,
            "minutes": statistics.fmean(run["train_s"] for run in runs) / 60,
            "cpu_minutes": statistics.fmean(run["train_cpu_s"] for run in runs) / 60,
        }
        for t, v in by_tier.items()
    }


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".fit_quality.json.tmp"
    tmp.write_text(json.dumps(strict(result), indent=1, allow_nan=False))
    tmp.replace(out / "fit_quality.json")
    curve = [dict(seed=run["seed"], **r) for run in result["runs"] for r in run["curve"]]
    final = [r for run in result["runs"] for r in final_rows(run)]
    for name, rows in (("curve.csv", curve), ("final.csv", final)):
        if not rows:
            continue
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def strict(obj: Any) -> Any:
    """NaN and infinities as None, so that the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def environment() -> dict[str, Any]:
    import torch

    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "commit": commit,
    }


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_flags: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_flags = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="train.py --config preset")
    p.add_argument("--data_dir", required=True, help="session folders in the native layout")
    p.add_argument("--family", choices=sorted(FAMILIES), help="write this synthetic family first")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget per run")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs (default: config's)")
    p.add_argument("--no_early_stop", action="store_true", help="min_epochs = epochs")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue each seed's run in OUTPUT_DIR where an earlier command left it (train.py "
        "--restore) for another --minutes; the curve and times carry on",
    )
    p.add_argument(
        "--tiers", nargs="+", default=None, help="tiers to score (default: oracle and test tiers)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--verbose", type=int, default=0, help="train.py --verbose of each run")
    p.add_argument("--output_dir", required=True, help="one folder per seed, and the tables")
    p.add_argument("--json", default=None, help="also write fit_quality.json's content here")
    args = p.parse_args(argv)
    args.train_flags = train_flags
    clash = {a[2:].split("=", 1)[0] for a in train_flags if a.startswith("--")} & RESERVED
    if clash:
        p.error(f"train.py flags after -- may not set {sorted(clash)}: this script sets them")
    if args.minutes is not None and args.minutes <= 0:
        p.error("--minutes must be > 0")
    if len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds must not repeat")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.family:
        ensure_family(args.family, Path(args.data_dir))
    for seed in args.seeds:  # a typo in the flags fails here, before any training
        resolve(train_argv(args, seed, Path(args.output_dir) / f"seed{seed}"))
    env = environment()
    print(
        f"fit_quality: {args.config} on {args.data_dir}, seeds {args.seeds}, budget "
        + (f"{args.minutes:g} min" if args.minutes else "none")
        + (f", {args.epochs} epochs" if args.epochs else "")
        + f"; torch {env['torch']}, {env['torch_threads']} threads, load {env['load_average']}",
        flush=True,
    )
    runs = []
    for seed in args.seeds:
        runs.append(run_one(args, seed))
        print_final(runs[-1])
    summary = summarize(runs)
    print("\nmean fraction of the ceiling over seeds (mean over sessions):")
    for tier, s in summary.items():
        print(
            f"  {tier:<16} {fmt(s['mean'], '.3f')} ± {fmt(s['std'], '.3f')} (n={s['n']}) "
            f"in {s['minutes']:.1f} min of training ({s['cpu_minutes']:.1f} CPU min)"
        )
    result = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "config": str(args.config),
        "data_dir": str(args.data_dir),
        "family": args.family,
        "family_options": FAMILIES.get(args.family) if args.family else None,
        "minutes": args.minutes,
        "epochs": args.epochs,
        "train_flags": args.train_flags,
        "environment": env,
        "runs": runs,
        "summary": summary,
    }
    write_outputs(Path(args.output_dir), result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(strict(result), indent=1, allow_nan=False))
    print(f"tables: {Path(args.output_dir) / 'fit_quality.json'}, curve.csv, final.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())

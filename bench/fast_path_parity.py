"""Does the fast path train as well? (issue #7)

Trains the same config for the same fixed budget once per (path, seed), each with the real
`train.py` in its own subprocess and output folder, reads the validation correlation from the
run's `metrics.csv`, and compares each path's mean over seeds with the reference path's (the first
one given), using run-to-run noise over seeds as the yardstick:

    |mean(path) - mean(reference)| <= k * pooled std,  pooled std = sqrt((s_ref^2 + s_path^2) / 2)

(sample std over seeds, k = --noise_k, default 2): "within noise", else "outside noise".

A path is a set of train.py flags (PATHS below, and CORE_FLAGS for the cores that own them:
the fp32_eager reference never runs the fused ViViT block). Every run gets, in this order:

    --config C --data_dir D --generate_synthetic false --epochs N --min_epochs N
    [--limit_data M] <--override flags> <path flags> [path core flags] --seed S
    --output_dir OUT/<path>/seed<S>

Budget: train.py has no max-steps option, so the budget is `--epochs N` over at most
`--limit_data M` training trials per session; `--min_epochs N` switches early stopping off so
that every run trains for exactly N epochs (the plateau schedule may still lower the LR, the same
rule for every path). Same seed = same initial weights and data order on every path.

Measured (`--metric`): `final`, the validation correlation after the last epoch (default), or
`best`, the highest over the epochs. Both are in the table and the JSON.

GPU, ViV1T (data in the native Sensorium layout already written, e.g. by bench/gen_sens.sh):

    python bench/fast_path_parity.py --config configs/viv1t.yaml --data_dir data/sens \
        --seeds 0 1 2 --paths fp32_eager bf16_compile --epochs 5 \
        --output_dir runs/parity_viv1t

CPU smoke (tiny model, one seed of the reference path):

    python -m neurotwin.cli.data synthetic --out /tmp/syn --preset small --mice 2
    python bench/fast_path_parity.py --config configs/demo.yaml --data_dir /tmp/syn \
        --seeds 0 --paths fp32_eager --epochs 2 --limit_data 8 --output_dir /tmp/parity

Exit status: 0 when every run finished, 1 when a run failed (its row says why; the others still
run), 2 with --check when a comparison is outside noise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# Each path is a set of train.py flags; the first path given on the command line is the reference.
PATHS: dict[str, list[str]] = {
    "fp32_eager": ["--autocast", "disable", "--compile", "false", "--grad_checkpointing", "0"],
    "bf16_compile": ["--autocast", "enable", "--compile", "true", "--grad_checkpointing", "0"],
    # diagnostic extras: bf16 alone, and the fast path with gradient checkpointing
    "bf16_eager": ["--autocast", "enable", "--compile", "false", "--grad_checkpointing", "0"],
    "bf16_compile_gc": ["--autocast", "enable", "--compile", "true", "--grad_checkpointing", "1"],
}

# A path's flags for the options of some cores only: given where the run's core owns them.
CORE_FLAGS: dict[str, dict[str, str]] = {"fp32_eager": {"core_fused_block": "false"}}

# train.py flags this script sets itself; --override may not set them
RESERVED = {
    "config",
    "data_dir",
    "generate_synthetic",
    "epochs",
    "min_epochs",
    "limit_data",
    "seed",
    "output_dir",
    "restore",
    "clear_output_dir",
    "autocast",
    "compile",
    "grad_checkpointing",
}

METRICS_FILE = "metrics.csv"  # written by neurotwin.training.logging.RunLogger
COLUMN = "val_correlation"  # mean over sessions of the per-neuron single-trial correlation
ROW_FILE = "bench_row.json"
LOG_FILE = "bench_stdout.log"


# ------------------------------------------------------------------------------------------------
# Building and checking the train.py command lines
# ------------------------------------------------------------------------------------------------


def flag_names(argv: list[str]) -> set[str]:
    """Names of the `--flag` / `--flag=value` options in an argument list."""
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--") and len(a) > 2}


def train_argv(args: argparse.Namespace, path: str, seed: int, run_dir: Path) -> list[str]:
    """The train.py arguments of one run (without the interpreter and script)."""
    argv = [
        "--config",
        str(args.config),
        "--data_dir",
        str(args.data_dir),
        "--generate_synthetic",
        "false",
        "--epochs",
        str(args.epochs),
        "--min_epochs",
        str(args.epochs),
    ]
    if args.limit_data is not None:
        argv += ["--limit_data", str(args.limit_data)]
    argv += shlex.split(args.override)
    argv += PATHS[path]
    argv += core_flags(path, argv)
    argv += ["--seed", str(seed), "--output_dir", str(run_dir)]
    return argv


def core_flags(path: str, argv: list[str]) -> list[str]:
    """The path's CORE_FLAGS that the core of `argv` (resolved as train.py resolves it) owns;
    none where `argv` does not resolve (check_argv then reports why)."""
    wanted = CORE_FLAGS.get(path, {})
    if not wanted:
        return []
    if str(SRC) not in sys.path and SRC.is_dir():
        sys.path.insert(0, str(SRC))
    from neurotwin import config as cfg
    from neurotwin.cli.train import build_parser
    from neurotwin.errors import ConfigError
    from neurotwin.registry import CORES

    try:
        core = cfg.resolve(build_parser().parse_args(argv)).model.core.name
    except (ConfigError, SystemExit):
        return []
    return [a for k, v in wanted.items() if core in CORES.owners(k) for a in (f"--{k}", v)]


def check_argv(argv: list[str]) -> None:
    """Parse and resolve a run's flags as train.py does, before any run starts (SystemExit)."""
    if str(SRC) not in sys.path and SRC.is_dir():
        sys.path.insert(0, str(SRC))
    from neurotwin import config as cfg
    from neurotwin.cli.train import build_parser
    from neurotwin.errors import ConfigError

    try:
        config = cfg.resolve(build_parser().parse_args(argv))
    except ConfigError as e:
        raise SystemExit(
            f"fast_path_parity: bad train.py flags ({shlex.join(argv)}): {e}"
        ) from None
    if config.run.restore:
        raise SystemExit("fast_path_parity: runs must start from scratch (run.restore is set)")


# ------------------------------------------------------------------------------------------------
# Reading a run's outputs
# ------------------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """Final and best validation correlation (and timings) from the run's metrics.csv."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not written (the run did not finish an epoch)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or COLUMN not in rows[0]:
        raise ValueError(f"{path}: no rows, or no {COLUMN!r} column")
    curve = [float(r[COLUMN]) for r in rows]
    seconds = [float(r["seconds"]) for r in rows if r.get("seconds")]
    rates = [float(r["trials_per_s"]) for r in rows if r.get("trials_per_s")]
    finite = [c for c in curve if math.isfinite(c)]
    return {
        "epochs_done": int(rows[-1]["epoch"]),
        "final": curve[-1],
        "best": max(finite) if finite else float("nan"),
        "curve": curve,
        "train_loss": float(rows[-1]["train_loss"]),
        "epoch_s": sum(seconds),
        # the first epoch includes compilation; later epochs show the steady rate
        "trials_per_s": statistics.median(rates[1:] if len(rates) > 1 else rates)
        if rates
        else None,
    }


def run_one(
    args: argparse.Namespace, path: str, seed: int, argv: list[str], run_dir: Path
) -> dict[str, Any]:
    """Train one (path, seed) in a subprocess and read its result; never raises for a bad run."""
    cmd = [args.python, str(REPO / "train.py"), *argv]
    row: dict[str, Any] = {"path": path, "seed": seed, "run_dir": str(run_dir)}
    row["command"] = shlex.join(cmd)
    saved = run_dir / ROW_FILE
    if args.resume and saved.is_file():
        old = json.loads(saved.read_text())
        if old.get("command") == row["command"] and old.get("status") == "ok":
            old["reused"] = True
            return old
    if run_dir.exists():  # a folder of this script's own layout, from an earlier invocation
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if SRC.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    tic = time.perf_counter()
    with open(run_dir / LOG_FILE, "w", encoding="utf-8") as log:
        log.write(row["command"] + "\n")
        log.flush()
        try:
            proc = subprocess.run(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    row["wall_s"] = time.perf_counter() - tic
    row["returncode"] = rc
    try:
        row.update(read_metrics(run_dir))
    except (OSError, ValueError, KeyError) as e:
        row["error"] = str(e)
    if rc != 0:
        row["status"] = f"failed (exit {rc})"
    elif "error" in row:
        row["status"] = "failed (no metrics)"
    elif row["epochs_done"] != args.epochs:
        row["status"] = f"short ({row['epochs_done']}/{args.epochs} epochs)"
    elif not math.isfinite(row[args.metric]):
        row["status"] = "non-finite correlation"
    else:
        row["status"] = "ok"
    if row["status"] != "ok":
        row["log_tail"] = tail(run_dir / LOG_FILE, 15)
    saved.write_text(json.dumps(strict(row), indent=1, allow_nan=False))
    return row


def strict(obj: Any) -> Any:
    """`obj` with NaN and infinities as None, so that the JSON is strict (jq, browsers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------


def summarize(values: list[float]) -> dict[str, Any]:
    n = len(values)
    return {
        "n": n,
        "mean": statistics.fmean(values) if n else float("nan"),
        "std": statistics.stdev(values) if n > 1 else float("nan"),
    }


def compare(ref: dict[int, float], other: dict[int, float], k: float) -> dict[str, Any]:
    """Difference of means (other - ref) against k x the pooled std over seeds."""
    a, b = summarize(list(ref.values())), summarize(list(other.values()))
    diff = b["mean"] - a["mean"]
    out: dict[str, Any] = {"diff": diff, "k": k}
    if a["n"] < 2 or b["n"] < 2:
        out.update(pooled_std=float("nan"), verdict="n/a (needs >= 2 seeds per path)")
    else:
        pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
        out["pooled_std"] = pooled
        out["verdict"] = "within noise" if abs(diff) <= k * pooled else "outside noise"
    # same seed = same initial weights and data order: the paired differences, for information
    paired = [other[s] - ref[s] for s in sorted(set(ref) & set(other))]
    out["paired"] = summarize(paired)
    return out


# ------------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------------


def fmt(x: Any, spec: str = ".4f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else format(x, spec)
    return str(x)


def print_row(row: dict[str, Any], width: int) -> None:
    print(
        f"{row['path']:<{width}} {row['seed']:>5} {fmt(row.get('final')):>9} "
        f"{fmt(row.get('best')):>9} {fmt(row.get('wall_s'), '.1f'):>8} "
        f"{fmt(row.get('epoch_s'), '.1f'):>8} {fmt(row.get('trials_per_s'), '.2f'):>9}  "
        f"{row['status']}{' (reused)' if row.get('reused') else ''}",
        flush=True,
    )


def report(row: dict[str, Any], width: int) -> None:
    """Print a finished run's row, with the tail of its log if it failed."""
    print_row(row, width)
    if row["status"] != "ok":
        print(
            f"  {row.get('error', '')}\n  log: {row['run_dir']}/{LOG_FILE}\n"
            + "\n".join("  | " + line for line in row.get("log_tail", "").splitlines()),
            flush=True,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/viv1t.yaml", help="train.py --config preset")
    p.add_argument(
        "--data_dir", required=True, help="session folders in the native layout (not generated)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--paths",
        nargs="+",
        default=["fp32_eager", "bf16_compile"],
        choices=list(PATHS),
        help="paths to train; the first is the reference the others are compared with",
    )
    p.add_argument("--epochs", type=int, default=5, help="fixed budget: epochs of every run")
    p.add_argument(
        "--limit_data",
        type=int,
        default=None,
        help="fixed budget: at most this many training trials per session (default: all)",
    )
    p.add_argument(
        "--override",
        default="",
        help='extra train.py flags for every run, one string, e.g. "--core_emb_dim 64 '
        '--device cuda" (not the flags this script sets: ' + ", ".join(sorted(RESERVED)) + ")",
    )
    p.add_argument("--output_dir", default="runs/fast_path_parity")
    p.add_argument(
        "--json", default=None, help="rows and summary (default: OUTPUT_DIR/parity.json)"
    )
    p.add_argument("--metric", choices=["final", "best"], default="final")
    p.add_argument(
        "--noise_k", type=float, default=2.0, help="within noise: |diff| <= k x pooled std"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at the same time (default 1); small models leave a GPU mostly idle, so several "
        "runs can share it (the wall-clock trials/s column is then not a speed measurement)",
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds per run (default: none)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse runs of OUTPUT_DIR that finished with the same command line",
    )
    p.add_argument("--check", action="store_true", help="exit 2 if a comparison is outside noise")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs train.py")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if len(set(args.paths)) != len(args.paths) or len(set(args.seeds)) != len(args.seeds):
        p.error("--paths and --seeds must not repeat")
    clash = flag_names(shlex.split(args.override)) & RESERVED
    if clash:
        p.error(f"--override may not set {sorted(clash)}: this script sets them")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir)
    plan = [(path, seed) for seed in args.seeds for path in args.paths]
    argvs = {(p, s): train_argv(args, p, s, out / p / f"seed{s}") for p, s in plan}
    for a in argvs.values():  # a typo in --override fails here, not after hours of training
        check_argv(a)
    print(
        f"fast_path_parity: {len(plan)} runs ({', '.join(args.paths)} x seeds "
        f"{' '.join(map(str, args.seeds))}), {args.epochs} epochs"
        + (f", <= {args.limit_data} trials/session" if args.limit_data is not None else "")
        + f", metric {args.metric} {COLUMN}; outputs in {out}",
        flush=True,
    )
    width = max(len("path"), *(len(p) for p in args.paths))
    print(
        f"{'path':<{width}} {'seed':>5} {'final':>9} {'best':>9} {'wall_s':>8} {'epoch_s':>8} "
        f"{'trials/s':>9}  status"
    )
    # seeds outermost: an interrupted sweep has every path for some seeds
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(run_one, args, p, s, argvs[p, s], out / p / f"seed{s}") for p, s in plan
        ]
        for future in as_completed(futures):  # each row as its run ends
            report(future.result(), width)
    rows = [f.result() for f in futures]  # in plan order

    values = {
        p: {r["seed"]: r[args.metric] for r in rows if r["path"] == p and r["status"] == "ok"}
        for p in args.paths
    }
    summary = {p: summarize(list(v.values())) for p, v in values.items()}
    print(f"\n{args.metric} {COLUMN} over seeds (mean ± sample std):")
    for p in args.paths:
        s = summary[p]
        print(f"  {p:<{width}} {fmt(s['mean'])} ± {fmt(s['std'])}  (n={s['n']})")
    ref = args.paths[0]
    comparisons = {}
    for p in args.paths[1:]:
        c = compare(values[ref], values[p], args.noise_k)
        comparisons[p] = c
        print(
            f"  {p} - {ref}: {fmt(c['diff'], '+.4f')}, {fmt(c['k'], 'g')} x pooled std = "
            f"{fmt(c['k'] * c['pooled_std'])} -> {c['verdict']}  "
            f"(paired over {c['paired']['n']} seeds: {fmt(c['paired']['mean'], '+.4f')} ± "
            f"{fmt(c['paired']['std'])})"
        )

    result = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "config": str(args.config),
        "data_dir": str(args.data_dir),
        "epochs": args.epochs,
        "limit_data": args.limit_data,
        "override": args.override,
        "metric": args.metric,
        "column": COLUMN,
        "paths": {p: PATHS[p] for p in args.paths},
        "reference": ref,
        "host": platform.node(),
        "rows": rows,
        "summary": summary,
        "comparisons": comparisons,
    }
    json_path = Path(args.json) if args.json else out / "parity.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(strict(result), indent=1, allow_nan=False))
    print(f"rows and summary: {json_path}")
    if any(r["status"] != "ok" for r in rows):
        return 1
    if args.check and any(c["verdict"] == "outside noise" for c in comparisons.values()):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prediction throughput: trials/s of predict.py end to end against the forward pass alone.

Three numbers on the same trials, the same model object and the same batches:

- read:    the trial stream alone (workers reading every array of every trial, batching, pinned
           memory), no model;
- forward: the model's forward pass alone (bf16 autocast and compile as predict.py uses them) on
           those batches, already on the device, synchronised once at the end;
- e2e:     `RunPredictor.run()`: reading, forward pass, scoring, writing the .npz files and the
           submission, metrics (what `python predict.py` does after loading the run).

Each is timed after a warm-up that compiles the core for every batch shape (and fills the page
cache); e2e runs `--repeats` times and the best is reported. The run is given (`--run`) or made
with random weights from a preset (`--config`, written to `--workdir`). `--synthetic N` first
writes N synthetic sessions into `--data_dir` (one process each; those there are kept), by
default of the Sensorium preset with 10 training trials: 20 trials per session in all tiers, the
data of issue #21's measurement. On a GPU machine:

    python bench/predict_throughput.py --synthetic 10 --data_dir /tmp/sens \\
        --config configs/viv1t.yaml --workdir /tmp/predict_bench --device cuda \\
        --batch_size 8 --num_workers 8 --json /tmp/predict_bench/rows.json

Prints one table row per measurement and, with `--json`, writes them to a file. Issue #21's
targets: e2e >= 80% of the forward pass's trials/s and >= 40 trials/s for the ViV1T preset.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from neurotwin import config as cfg
from neurotwin.data import loaders, native, synthetic
from neurotwin.models.model import build_model
from neurotwin.predict import RunPredictor
from neurotwin.prediction.stream import TrialReader, plan_batches, trial_stream
from neurotwin.run import RunFolder
from neurotwin.training.checkpoint import save_checkpoint


def make_random_run(config_file: str, data_dir: str, workdir: Path, overrides: str) -> Path:
    """A run folder whose checkpoint holds the preset's model with random weights."""
    parser = argparse.ArgumentParser()
    cfg.add_config_flags(parser)
    argv = ["--config", config_file, "--data_dir", data_dir, "--output_dir", str(workdir)]
    config = cfg.resolve(parser.parse_args(argv + shlex.split(overrides)))
    config.data.generate_synthetic = False
    specs = loaders.session_specs(config.data)
    first = native.find_sessions(config.data.data_dir, config.data.mouse_ids)[0]
    torch.manual_seed(config.run.seed)
    model = build_model(config.model, specs, 1, native.NativeSession(first).frame_shape)
    run = RunFolder(workdir)
    cfg.save_yaml(config, run.config_file)
    sessions = {
        s: {"n_neurons": int(v["n_neurons"]), "unit_ids": [int(u) for u in v["unit_ids"]]}
        for s, v in specs.items()
    }
    state = {"model": model.state_dict(), "epoch": 0, "config": cfg.to_dict(config)}
    save_checkpoint(run.checkpoints / "best.pt", {**state, "sessions": sessions})
    return run.path


def _write_session(out: str, seed: int, preset: str, sizes: dict) -> None:
    synthetic.generate(out, mice=1, preset=preset, seed=seed, progress=False, **sizes)


def write_synthetic(data_dir: Path, n: int, preset: str, sizes: dict) -> None:
    """Sessions of seeds 0..n-1 in `data_dir`, one process each; those already there are kept
    (a call that ran out of time goes on where it stopped)."""
    from concurrent.futures import ProcessPoolExecutor

    from neurotwin.data.synthetic.params import resolve

    size_cfg, params = resolve(preset, sizes)
    names = {i: synthetic.session_names(1, i, size_cfg, params)[0] for i in range(n)}
    missing = [i for i, name in names.items() if not (data_dir / name).is_dir()]
    if not missing:
        print(f"{n} sessions already in {data_dir}", flush=True)
        return
    tic = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1)) as pool:
        jobs = [pool.submit(_write_session, str(data_dir), i, preset, sizes) for i in missing]
        for job in jobs:
            job.result()
    seconds = time.perf_counter() - tic
    print(f"{len(missing)} {preset} sessions written to {data_dir} in {seconds:.0f} s", flush=True)


RANDOM_TIERS = ["train"] * 10 + ["oracle"] * 4 + ["live_test_main"] * 3 + ["final_test_main"] * 3


def _write_random_session(folder: str, seed: int, neurons: int, frames: int) -> None:
    """A native session of Sensorium sizes (36x64 frames, `neurons`, 20 trials of `frames`)
    holding random numbers: for timing reading and prediction, in seconds instead of the
    synthetic generator's minutes (whose responses a random-weight model would not fit either)."""
    rng = np.random.default_rng(seed)
    trials = {}
    for trial in range(len(RANDOM_TIERS)):
        trials[trial] = {
            native.VIDEOS: rng.uniform(0, 255, (36, 64, frames)).astype(np.float32),
            native.RESPONSES: rng.gamma(0.5, 1.0, (neurons, frames)).astype(np.float32),
            native.BEHAVIOR: rng.normal(0, 1, (2, frames)).astype(np.float32),
            native.PUPIL_CENTER: rng.normal(0, 1, (2, frames)).astype(np.float32),
        }
    train = [trials[t] for t, tier in enumerate(RANDOM_TIERS) if tier == "train"]
    session = native.SessionArrays(
        tiers=np.asarray(RANDOM_TIERS),
        unit_ids=np.arange(neurons, dtype=np.int64),
        coordinates=rng.uniform(-300, 300, (neurons, 3)).astype(np.float32),
        trials=trials,
        statistics=native.training_statistics(train),
    )
    native.write_session(folder, session)


def write_random(data_dir: Path, n: int, neurons: int, frames: int) -> None:
    """Sessions random-0 .. random-(n-1) in `data_dir` (kept when there), one process each."""
    from concurrent.futures import ProcessPoolExecutor

    missing = [i for i in range(n) if not (data_dir / f"random-{i}").is_dir()]
    tic = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(len(missing), os.cpu_count() or 1))) as pool:
        jobs = [
            pool.submit(_write_random_session, str(data_dir / f"random-{i}"), i, neurons, frames)
            for i in missing
        ]
        for job in jobs:
            job.result()
    seconds = time.perf_counter() - tic
    print(f"{len(missing)} random sessions written to {data_dir} in {seconds:.0f} s", flush=True)


def parse_sizes(text: str) -> dict:
    """'neurons=12 frames=60' -> {'neurons': 12, 'frames': 60} (numbers as numbers)."""
    sizes = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--synthetic_sizes: expected NAME=VALUE, got {item!r}")
        sizes[key] = float(value) if "." in value else int(value)
    return sizes


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_batches(predictor: RunPredictor) -> tuple[list, float]:
    """Every batch of the stream (kept in host memory) and the seconds reading took."""
    keys = plan_batches(predictor.plans, predictor.batch_size)
    reader = TrialReader(predictor.plans, predictor.source.input_transforms)
    pin = predictor.device.type == "cuda"
    tic = time.perf_counter()
    batches = list(trial_stream(reader, keys, predictor.num_workers, pin))
    return batches, time.perf_counter() - tic


def forward_seconds(predictor: RunPredictor, batches: list, repeats: int) -> float:
    """Best time of the forward passes over `batches` (inputs moved to the device first)."""
    source, device = predictor.source, predictor.device
    staged = []
    for b in batches:
        inputs = [x.to(device) for x in (b.video, b.behavior, b.pupil_center)]
        inputs, eager = source.fit(b.length, inputs)  # padded or eager, as ModelRates does
        staged.append((predictor.plans[b.plan].session.name, inputs, eager))
    for session, inputs, eager in staged:  # warm-up: every shape compiled
        source.forward(session, *inputs, eager=eager)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        tic = time.perf_counter()
        for session, inputs, eager in staged:
            source.forward(session, *inputs, eager=eager)
        synchronize(device)
        best = min(best, time.perf_counter() - tic)
    return best


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="a trained run folder (else --config makes one)")
    p.add_argument("--config", default="configs/viv1t.yaml", help="preset of the random run")
    p.add_argument("--data_dir", default=None, help="data folder (default: the run's)")
    p.add_argument("--workdir", default="/tmp/predict_bench", help="folder of the random run")
    p.add_argument("--override", default="", help="more flags for the random run's config")
    p.add_argument("--synthetic", type=int, default=0, help="first write N synthetic sessions")
    p.add_argument("--synthetic_preset", default="sensorium", help="their preset")
    p.add_argument("--synthetic_sizes", default="train_trials=10", help="NAME=VALUE overrides")
    p.add_argument(
        "--random", type=int, default=0,
        help="first write N sessions of random numbers (Sensorium sizes, 20 trials): fast",
    )  # fmt: skip
    p.add_argument("--random_neurons", type=int, default=8000)
    p.add_argument("--random_frames", type=int, default=300)
    p.add_argument("--data_only", action="store_true", help="stop once the sessions are written")
    p.add_argument("--device", default=None)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--num_workers", type=int, default=None)
    p.add_argument("--tiers", nargs="+", default=None)
    p.add_argument("--compile", type=int, choices=(0, 1), default=None, help="default: the run's")
    p.add_argument("--score_space", default="raw", choices=("raw", "normalized"))
    p.add_argument("--no_submission", action="store_true")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats (best reported)")
    p.add_argument("--json", default=None, help="write the rows here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.synthetic:
        if args.data_dir is None:
            raise SystemExit("--synthetic needs --data_dir")
        sizes = parse_sizes(args.synthetic_sizes)
        write_synthetic(Path(args.data_dir), args.synthetic, args.synthetic_preset, sizes)
        if args.data_only:
            return 0
    if args.random:
        if args.data_dir is None:
            raise SystemExit("--random needs --data_dir")
        write_random(Path(args.data_dir), args.random, args.random_neurons, args.random_frames)
        if args.data_only:
            return 0
    if args.run is None:
        if args.data_dir is None:
            raise SystemExit("--data_dir is needed to make a random run from --config")
        run = make_random_run(args.config, args.data_dir, Path(args.workdir), args.override)
    else:
        run = Path(args.run)
    predictor = RunPredictor(
        run,
        tiers=args.tiers,
        data_dir=args.data_dir,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        score_space=args.score_space,
        compile=None if args.compile is None else bool(args.compile),
        submission=not args.no_submission,
    )
    trials = sum(len(p) for p in predictor.plans)
    batches, read_s = read_batches(predictor)
    forward_s = forward_seconds(predictor, batches, args.repeats)
    del batches
    e2e = []
    for _ in range(args.repeats + 1):  # the first run warms up (files, pinned memory pools)
        synchronize(predictor.device)
        tic = time.perf_counter()
        predictor.run(verbose=0)
        e2e.append(time.perf_counter() - tic)
    e2e_s = min(e2e[1:])
    device = predictor.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    common = {
        "device": name, "torch": torch.__version__, "trials": trials,
        "batch_size": predictor.batch_size, "num_workers": predictor.num_workers,
        "compile": predictor.compiled, "bf16": predictor.source.use_autocast,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    rows = [
        {**common, "mode": mode, "seconds": s, "trials/s": trials / s}
        for mode, s in (("read", read_s), ("forward", forward_s), ("e2e", e2e_s))
    ]
    rows[-1]["e2e/forward"] = rows[-1]["trials/s"] / rows[1]["trials/s"]
    print(f"{name}, torch {torch.__version__}, {trials} trials, batch {predictor.batch_size}, "
          f"{predictor.num_workers} workers, compile {predictor.compiled}, "
          f"bf16 {predictor.source.use_autocast}")  # fmt: skip
    print(f"{'mode':8} {'seconds':>9} {'trials/s':>9}")
    for r in rows:
        print(f"{r['mode']:8} {r['seconds']:9.2f} {r['trials/s']:9.2f}")
    print(f"end to end at {100 * rows[-1]['e2e/forward']:.0f}% of the forward pass "
          f"(e2e runs: {', '.join(f'{s:.2f}s' for s in e2e)})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

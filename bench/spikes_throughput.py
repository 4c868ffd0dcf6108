"""Seconds per training epoch of a spike model (default `glm_vae`) on simulated sessions.

The issue's size: 10 sessions of 100 units (4 populations of 25, coupling A -> B) x 1,000
trials of 500 ms at 1 ms bins, 100 ms of history; batches of 64 trials (one session each),
counts binned on the fly and assembled on the device. Sessions are simulated once into
--data_dir (kept for later runs). One row per convolution method.

    python bench/spikes_throughput.py --device cuda --data_dir /tmp/spikes_bench --epochs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from neurotwin.config import from_dict
from neurotwin.data import synthetic_spikes
from neurotwin.data.spikes import is_session
from neurotwin.training.loop import Trainer
from neurotwin.training.spikes import SpikeConfig, SpikeTask


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", type=Path, default=Path("/tmp/spikes_bench"))
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--units", type=int, default=100, help="units per session")
    p.add_argument("--populations", type=int, default=4)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--duration_ms", type=float, default=500.0)
    p.add_argument("--model", default="glm_vae")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    p.add_argument("--conv", nargs="+", default=["auto", "direct", "fft"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="float32")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=8, help="processes simulating sessions")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return p.parse_args(argv)


def ensure_data(args) -> None:
    """Simulate the sessions that are missing, in parallel processes."""
    missing = [i for i in range(args.sessions) if not is_session(args.data_dir / f"session_{i}")]
    if not missing:
        return
    pops = tuple(chr(ord("A") + i) for i in range(args.populations))
    spec = synthetic_spikes.SimulationSpec(
        populations=pops,
        units=args.units // args.populations,
        trials=args.trials,
        duration_ms=args.duration_ms,
        burn_in_ms=150.0,
    )
    tic = time.time()
    jobs = [(args.data_dir / f"session_{i}", spec, i) for i in missing]
    with ProcessPoolExecutor(max_workers=max(1, min(args.workers, len(jobs)))) as pool:
        list(pool.map(_simulate, jobs))
    print(f"simulated {len(jobs)} sessions in {time.time() - tic:.0f}s", file=sys.stderr)


def _simulate(job) -> Path:
    folder, spec, seed = job
    return synthetic_spikes.write_simulated_session(folder, spec, seed=seed, overwrite=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args, conv: str) -> dict:
    """Epochs of the shared loop's training step (`Trainer.train_epoch`), then one validation."""
    out = tempfile.mkdtemp(prefix="spikes_bench_")
    config = from_dict(
        {
            "data": {
                "data_dir": str(args.data_dir),
                "batch_size": args.batch_size,
                "sessions": [f"session_{i}" for i in range(args.sessions)],
                "val_fraction": 0.1,
                "test_fraction": 0.1,
            },
            "model": {"name": args.model, "glm": {"conv": conv}},
            "train": {"precision": args.precision},
            "run": {"device": args.device, "verbose": 0, "output_dir": out},
        },
        cls=SpikeConfig,
    )
    task = SpikeTask(config)
    trainer = Trainer(task, config)
    device = task.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for epoch in range(1, args.epochs + 2):  # the first is warm-up
        task.start_epoch(epoch)
        sync(device)
        tic = time.perf_counter()
        trainer.train_epoch(epoch)
        sync(device)
        times.append(time.perf_counter() - tic)
    sync(device)
    tic = time.perf_counter()
    trainer.validate()
    sync(device)
    val_s = time.perf_counter() - tic
    trainer.logger.close()
    seconds = sum(times[1:]) / max(len(times) - 1, 1)
    n_train = task.data.n_trials("train")
    return {
        "model": args.model,
        "conv": conv,
        "sessions": args.sessions,
        "units": args.units,
        "train trials": n_train,
        "bins": task.shape.n_history + task.shape.n_bins,
        "s/epoch": round(seconds, 3),
        "trials/s": round(n_train / seconds, 1),
        "validation s": round(val_s, 3),
        "peak GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ensure_data(args)
    rows = [run(args, conv) for conv in args.conv]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The training data path alone: per-session loaders + `interleave` (old) vs one `TrainStream`.

Both give the same (session, batch) pairs (tests/test_loaders.py checks it); this times them,
no model. Each repeat builds the loaders afresh and reads `--epochs` epochs with each path, so
epoch 0 includes starting the workers. Per epoch it reports the wall time, the time to the first
batch, the longest wait for one batch, and (with --step_ms, a stand-in for the GPU step: the
consumer sleeps that long per batch, leaving the CPUs to the workers) the total time the
consumer waited for data.

    python -m neurotwin.cli.data synthetic --out /tmp/lc/small --mice 10 --preset small
    python bench/loader_compare.py --data_dir /tmp/lc/small --num_workers 2 --crop_frame 60
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator

import numpy as np

from neurotwin.config import DataConfig
from neurotwin.data import loaders as L


def timed(pairs: Iterable, step_s: float) -> dict[str, float]:
    """Reads `pairs` to the end, sleeping `step_s` after each; times the waits for data."""
    waits, n = [], 0
    start = time.perf_counter()
    it: Iterator = iter(pairs)
    while True:
        t0 = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            break
        waits.append(time.perf_counter() - t0)
        n += 1
        if step_s:
            time.sleep(step_s)
    total = time.perf_counter() - start
    return {
        "epoch_s": total,
        "first_s": waits[0] if waits else float("nan"),
        "max_wait_s": max(waits, default=float("nan")),
        "wait_s": sum(waits),
        "batches": n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--crop_frame", type=int, default=300)
    p.add_argument("--limit_data", type=int, default=None)
    p.add_argument("--transform", type=int, default=1, help="transform_input and _output")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--step_ms", type=float, default=0.0, help="consumer sleep per batch")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = DataConfig(
        data_dir=args.data_dir,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        crop_frame=args.crop_frame,
        limit_data=args.limit_data,
        transform_input=args.transform,
        transform_output=args.transform,
    )
    splits = {"train": data.train_tier}
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    for repeat in range(args.repeats):
        # alternate which path goes first, so that neither always finds a warmer page cache
        for path in ("old", "new") if repeat % 2 == 0 else ("new", "old"):
            train = L.build_loaders(data, splits, seed=args.seed)["train"]
            stream = L.TrainStream(train, args.num_workers, seed=args.seed)
            n_batches = len(stream)
            for epoch in range(args.epochs):
                if path == "old":
                    pairs = L.interleave(train, args.seed, epoch)
                else:
                    pairs = stream.epoch(epoch)
                rows.setdefault((path, epoch), []).append(timed(pairs, args.step_ms / 1e3))
            del stream  # stops its workers
    print(
        f"{len(train)} sessions, {n_batches} batches/epoch (batch {args.batch_size}, "
        f"crop {train[next(iter(train))].dataset.crop_frame}), num_workers {args.num_workers}, "
        f"step {args.step_ms:g} ms, {args.repeats} repeats (median [min, max])"
    )
    print(
        f"{'path':5} {'epoch':>5} {'epoch s':>22} {'first batch s':>22} {'max wait s':>22}", end=""
    )
    print(f" {'data wait s':>22}" if args.step_ms else "")
    for (path, epoch), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0] == "new")):
        cells = []
        keys = ["epoch_s", "first_s", "max_wait_s"] + (["wait_s"] if args.step_ms else [])
        for key in keys:
            v = np.array([r[key] for r in runs])
            cells.append(f"{np.median(v):7.3f} [{v.min():6.3f},{v.max():6.3f}]")
        print(f"{path:5} {epoch:>5} " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()

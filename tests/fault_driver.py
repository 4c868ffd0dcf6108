"""Run train.py or predict.py in this process and kill it with SIGKILL at a chosen point.

    python tests/fault_driver.py train --kill-at-step N -- FLAGS...
    python tests/fault_driver.py train --kill-in-write NAME:K -- FLAGS...
    python tests/fault_driver.py predict --kill-in-write NAME:K -- FLAGS...

`--kill-at-step N`: after the Nth optimiser step of this process. `--kill-in-write NAME:K`:
during the Kth write of a file named NAME (best.pt, last.pt, predictions.npy, ...), once part
of its bytes are on disk. Nothing else is changed: the real entry point runs, the kill is the
real signal, and what is left on disk is what a crash would leave. Used by tests/test_faults.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_step(n: int) -> None:
    from neurotwin.training.loop import Trainer

    real = Trainer.optimizer_step
    count = 0

    def step(self):
        nonlocal count
        out = real(self)
        count += 1
        if count == n:
            die()
        return out

    Trainer.optimizer_step = step


def kill_in_write(name: str, k: int) -> None:
    """Kill in the Kth torch.save / np.save into a temporary of `name` (half of it written)."""
    import numpy as np

    count = 0

    def wrap(real):
        def save(obj, f, *args, **kwargs):
            nonlocal count
            target = getattr(f, "name", f)
            out = real(obj, f, *args, **kwargs)
            if f".{name}." in os.path.basename(str(target)):
                count += 1
                if count == k:
                    if hasattr(f, "flush"):
                        f.flush()
                        f.truncate(max(f.tell() // 2, 1))
                        os.fsync(f.fileno())
                    else:
                        with open(target, "r+b") as g:
                            g.truncate(max(os.path.getsize(target) // 2, 1))
                    die()
            return out

        return save

    torch.save = wrap(torch.save)
    np.lib.format.open_memmap = _memmap_killer(np.lib.format.open_memmap, name, k)


def _memmap_killer(real, name, k):
    """predict.py writes predictions through a memory-mapped .npy: kill once it is created."""
    count = 0

    def open_memmap(filename, *args, **kwargs):
        nonlocal count
        out = real(filename, *args, **kwargs)
        if name in os.path.basename(str(filename)):
            count += 1
            if count == k:
                die()
        return out

    return open_memmap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["train", "predict"])
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--kill-in-write", default=None)
    args, rest = parser.parse_known_args()
    rest = [a for a in rest if a != "--"]
    torch.set_num_threads(1)  # as the test process: bit-identical results
    if args.kill_at_step is not None:
        kill_at_step(args.kill_at_step)
    if args.kill_in_write is not None:
        name, k = args.kill_in_write.rsplit(":", 1)
        kill_in_write(name, int(k))
    if args.command == "train":
        from neurotwin.cli import train

        train.main(rest)
    else:
        from neurotwin.cli import predict

        raise SystemExit(predict.main(rest))


if __name__ == "__main__":
    main()

"""Writing predictions without holding up the GPU: one thread takes every predicted batch.

The prediction loop hands each batch over as `Rows` (the rates being copied to pinned host memory
and the event that says when the copy is done) and each finished session and tier as `TierDone`;
the writer thread puts the rates into the tier's memory-mapped .npy (NaN outside the predicted
frames), keeps the raw responses beside them for the repeat metrics, and on `TierDone` calls the
loop's `finish` (metrics, the .npz, the submission rows). The queue between them is short, so
memory stays bounded; an error in the thread is raised in the loop at its next hand-over.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotwin.prediction.stream import TierPlan


@dataclass
class Rows:
    """One predicted batch: `rates` (B, N, length - first) on the host (filled once `ready`)."""

    plan: int
    positions: list[int]
    first: int
    length: int
    rates: torch.Tensor
    ready: Any  # a torch.cuda.Event, or None when `rates` is complete already
    responses: torch.Tensor | None
    clip_keys: list[str]
    loader_ends: list[int]


@dataclass
class TierDone:
    """The last batch of a plan was handed over; `sums` are its scorer's (host copies)."""

    plan: int
    sums: dict[str, torch.Tensor]
    ready: Any


def to_host(x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """A host copy of `x` started without waiting (CUDA: into pinned memory), and the event that
    marks it done (None where the copy is synchronous)."""
    if x.device.type != "cuda":
        return x.detach().to("cpu"), None
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


class TierFiles:
    """The files of one plan while its batches come in: the predictions (n_trials, N, T_max)
    float32, memory-mapped; the raw responses of its trials (same shape, a scratch file); the
    first predicted frame, clip key and loader frames of each trial."""

    def __init__(self, folder: Path, plan: TierPlan) -> None:
        n, neurons, frames = len(plan), plan.session.n_neurons, int(plan.lengths.max())
        base = folder / plan.session.name
        base.mkdir(parents=True, exist_ok=True)
        self.npy = base / f".{plan.tier}.predictions.npy"
        self.predictions = np.lib.format.open_memmap(
            self.npy, mode="w+", dtype=np.float32, shape=(n, neurons, frames)
        )
        self.scratch = None if plan.hidden else base / f".{plan.tier}.responses.npy"
        self.responses = None
        if self.scratch is not None:
            self.responses = np.lib.format.open_memmap(
                self.scratch, mode="w+", dtype=np.float32, shape=(n, neurons, frames)
            )
        self.first = np.zeros(n, dtype=np.int64)
        self.clip_keys = [""] * n
        self.loader_ends = np.zeros(n, dtype=np.int64)

    def write(self, rows: Rows) -> None:
        if rows.ready is not None:
            rows.ready.synchronize()
        rates = rows.rates.numpy()
        responses = None if rows.responses is None else rows.responses.numpy()
        t, first = rows.length, rows.first
        for j, i in enumerate(rows.positions):
            row = self.predictions[i]
            row[:, :first] = np.nan
            row[:, first:t] = rates[j]
            row[:, t:] = np.nan
            if self.responses is not None and responses is not None:
                self.responses[i, :, :t] = responses[j]
            self.first[i] = first
            self.clip_keys[i] = rows.clip_keys[j]
            self.loader_ends[i] = rows.loader_ends[j]

    def close(self) -> None:
        """Flush the predictions, drop the scratch file."""
        self.predictions.flush()
        self.predictions = None
        self.responses = None
        if self.scratch is not None:
            self.scratch.unlink(missing_ok=True)


Finish = Callable[[int, TierFiles, dict[str, torch.Tensor]], Any]


class PredictionWriter:
    """The writer thread (see the module). `put` hands over a job, `close` waits for all of
    them and returns what `finish` returned for each plan, in order."""

    def __init__(
        self, folder: Path, plans: Sequence[TierPlan], finish: Finish, max_pending: int = 6
    ) -> None:
        self.folder, self.plans, self.finish = folder, list(plans), finish
        self.files: dict[int, TierFiles] = {}
        self.results: list[Any] = []
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="neurotwin-writer", daemon=True)
        self._thread.start()

    def put(self, job: Rows | TierDone) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._queue.put(job, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> list[Any]:
        self._queue.put(None)  # the thread drains the queue even after an error
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.results

    def abort(self) -> None:
        """Stop after an error in the loop: pending jobs are dropped, files closed."""
        if self.error is None:
            self.error = RuntimeError("prediction stopped")
        self._queue.put(None)
        self._thread.join()
        for files in self.files.values():
            files.predictions = files.responses = None

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self.error is not None:
                continue
            try:
                self._handle(job)
            except BaseException as e:  # raised in the loop by put/close
                self.error = e

    def _handle(self, job: Rows | TierDone) -> None:
        if isinstance(job, Rows):
            if job.plan not in self.files:
                self.files[job.plan] = TierFiles(self.folder, self.plans[job.plan])
            self.files[job.plan].write(job)
            return
        if job.ready is not None:
            job.ready.synchronize()
        files = self.files.pop(job.plan)
        self.results.append(self.finish(job.plan, files, job.sums))

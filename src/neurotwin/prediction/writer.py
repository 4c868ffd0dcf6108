"""Writing predictions without holding up the GPU: threads of their own take every batch.

The prediction loop hands each batch over as `Rows` (the rates being copied to pinned host memory
and the event that says when the copy is done) and each finished session and tier as `TierDone`.
A dispatcher thread passes them to a few writer threads: rows go into the tier's .npy file with
one `pwrite` per trial (NaN outside the predicted frames; no page faults of a fresh memory map),
the raw responses into a scratch file beside it for the repeat metrics; `TierDone` runs the loop's
`finish` (metrics, the .npz, the submission rows) once the tier's rows are written, while the next
tier's rows go on. Jobs in flight are bounded, so memory is; an error in any thread is raised in
the loop at its next hand-over.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotwin.prediction.stream import TierPlan

WRITER_THREADS = 4
MAX_PENDING = 8  # batches handed over but not yet written


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


class RowFile:
    """An .npy file of shape (n, N, T) float32 written one (N, T) row at a time with pwrite."""

    def __init__(self, path: Path, shape: tuple[int, int, int]) -> None:
        self.path, self.shape = path, shape
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                  "fortran_order": False, "shape": shape}  # fmt: skip
        with open(path, "wb") as f:
            np.lib.format.write_array_header_2_0(f, header)
            self.offset = f.tell()
            f.truncate(self.offset + int(np.prod(shape)) * 4)
        self.fd = os.open(path, os.O_WRONLY)
        self.row_bytes = shape[1] * shape[2] * 4

    def write(self, i: int, row: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(row, dtype=np.float32)).cast("B")
        at, done = self.offset + i * self.row_bytes, 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], at + done)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self) -> np.ndarray:
        """The array, memory-mapped read-only (after the writes)."""
        return np.load(self.path, mmap_mode="r")


class TierFiles:
    """The files of one plan while its batches come in: the predictions (n_trials, N, T_max)
    float32; the raw responses of its trials (same shape, a scratch file); the first predicted
    frame, clip key and loader frames of each trial. `predictions` / `responses`: the arrays,
    memory-mapped, once `close_writes` was called."""

    def __init__(self, folder: Path, plan: TierPlan) -> None:
        n, neurons, frames = len(plan), plan.session.n_neurons, int(plan.lengths.max())
        base = folder / plan.session.name
        base.mkdir(parents=True, exist_ok=True)
        self.npy = base / f".{plan.tier}.predictions.npy"
        self.rows = RowFile(self.npy, (n, neurons, frames))
        self.scratch = None
        if not plan.hidden:
            self.scratch = RowFile(base / f".{plan.tier}.responses.npy", (n, neurons, frames))
        self.frames = frames
        self.first = np.zeros(n, dtype=np.int64)
        self.clip_keys = [""] * n
        self.loader_ends = np.zeros(n, dtype=np.int64)
        self.predictions: np.ndarray | None = None
        self.responses: np.ndarray | None = None

    def write(self, rows: Rows) -> None:
        if rows.ready is not None:
            rows.ready.synchronize()
        rates = rows.rates.numpy()
        responses = None if rows.responses is None else rows.responses.numpy()
        t, first = rows.length, rows.first
        for j, i in enumerate(rows.positions):
            if first == 0 and t == self.frames:
                row = rates[j]
            else:
                row = np.full((rates.shape[1], self.frames), np.nan, dtype=np.float32)
                row[:, first:t] = rates[j]
            self.rows.write(i, row)
            if self.scratch is not None and responses is not None:
                if t != self.frames:  # only the first t frames are ever read
                    padded = np.empty((responses.shape[1], self.frames), dtype=np.float32)
                    padded[:, :t] = responses[j]
                    self.scratch.write(i, padded)
                else:
                    self.scratch.write(i, responses[j])
            self.first[i] = first
            self.clip_keys[i] = rows.clip_keys[j]
            self.loader_ends[i] = rows.loader_ends[j]

    def close_writes(self) -> None:
        """All rows are in: map the files for reading."""
        self.rows.close()
        self.predictions = self.rows.read()
        if self.scratch is not None:
            self.scratch.close()
            self.responses = self.scratch.read()

    def close(self) -> None:
        """Done with the tier: drop the maps and the scratch file."""
        self.rows.close()
        self.predictions = self.responses = None
        if self.scratch is not None:
            self.scratch.close()
            self.scratch.path.unlink(missing_ok=True)


Finish = Callable[[int, TierFiles, dict[str, torch.Tensor]], Any]


class PredictionWriter:
    """The writer threads (see the module). `put` hands over a job, `close` waits for all of
    them and returns what `finish` returned for each plan, in plan order."""

    def __init__(
        self,
        folder: Path,
        plans: Sequence[TierPlan],
        finish: Finish,
        threads: int = WRITER_THREADS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.folder, self.plans, self.finish = folder, list(plans), finish
        self.files: dict[int, TierFiles] = {}
        self.rows: dict[int, list[Future]] = {}
        self.finished: dict[int, Future] = {}
        self.error: BaseException | None = None
        self._pending = threading.Semaphore(max_pending)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="neurotwin-writer")
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="neurotwin-dispatch", daemon=True)
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
        self._queue.put(None)  # the dispatcher drains the queue even after an error
        self._thread.join()
        wait(list(self.finished.values()))
        self._pool.shutdown(wait=True)
        if self.error is not None:
            raise self.error
        return [self.finished[p].result() for p in sorted(self.finished)]

    def abort(self) -> None:
        """Stop after an error in the loop: pending jobs are dropped, files closed."""
        if self.error is None:
            self.error = RuntimeError("prediction stopped")
        self._queue.put(None)
        self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for files in self.files.values():
            files.close()

    def _failed(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is not None and self.error is None:
            self.error = future.exception()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self.error is not None:
                continue
            try:
                self._dispatch(job)
            except BaseException as e:  # raised in the loop by put/close
                self.error = e

    def _dispatch(self, job: Rows | TierDone) -> None:
        if isinstance(job, Rows):
            if job.plan not in self.files:
                self.files[job.plan] = TierFiles(self.folder, self.plans[job.plan])
                self.rows[job.plan] = []
            self._pending.acquire()
            future = self._pool.submit(self.files[job.plan].write, job)
            future.add_done_callback(lambda f: (self._pending.release(), self._failed(f)))
            self.rows[job.plan].append(future)
            return
        files, rows = self.files.pop(job.plan), self.rows.pop(job.plan)
        future = self._pool.submit(self._finish, job, files, rows)
        future.add_done_callback(self._failed)
        self.finished[job.plan] = future

    def _finish(self, job: TierDone, files: TierFiles, rows: list[Future]) -> Any:
        wait(rows)  # submitted before this job: started already, so this never waits on itself
        for f in rows:
            if f.exception() is not None:
                raise f.exception()
        if job.ready is not None:
            job.ready.synchronize()
        files.close_writes()
        return self.finish(job.plan, files, job.sums)

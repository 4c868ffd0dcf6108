"""The Sensorium 2023 submission files, as the competition took them.

Facts (ecker-lab/sensorium_2023: README "Submission comments" and
`sensorium/utility/submission.py`; the top teams' submission code, DwiseNeuro and ViV1T):

- One parquet table per test tier, brotli-compressed (`df.to_parquet(path, compression="brotli",
  engine="pyarrow", index=False)`), one row per trial with the columns `mouse` (the session
  folder name, str), `trial_indices` (the trial's file index, int64), `prediction` (neurons x
  frames, list of lists of float64: the kit lists float32 values, which become doubles) and
  `neuron_ids` (the unit ids in the order of the prediction rows, list of uint32). (The README's
  toy example writes `trial_indices` as '1.npy' strings; the kit's code and the winning entry's
  submitted integers, which is what is written here.)
- Frames: the kit runs the model on the trial as its loader cuts it (at the first frame where any
  array holds a NaN, `space.loader_frames`) and submits all but the first 50 of those frames. The
  top teams hard-coded T - 51 frames for trials of T valid video frames (DwiseNeuro: "Skip last
  frame for submission", frames 50..T-2; ViV1T's notebook: SKIP = 51, the last T - 51 frames):
  what the kit's rule gives where one of a trial's other arrays ends a frame before its video.
  Here: frames [50, loader frames) of the predictions, i.e. the kit's frames.
- Units: the competition's loader normalised the responses (`space.response_precision`); the
  predictions are submitted multiplied by the same precision (DwiseNeuro's "Normalize responses
  for submission", 0.249 -> 0.272).
- Names: main track `predictions_live_main.parquet.brotli` and `predictions_final_main.parquet.brotli`,
  both directly in one zip; bonus track `predictions_live_test_bonus_ood.parquet.brotli` and
  `predictions_final_test_bonus_ood.parquet.brotli`, each in its own zip (uploaded separately to
  the live and final stages, to stay under 5 GB).

- Mice: the competition scored the five mice released with it (ViV1T's F..J); rows of the first
  five published mice (A..E) are left out.

Everything goes to `predictions/submission/`. Each tier's table is filled session by session by
a thread of its own (brotli level 1: readable like any brotli parquet, several times faster to
write than pyarrow's default level).
"""

from __future__ import annotations

import logging
import queue
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neurotwin import metrics as M
from neurotwin.data.native import SENSORIUM_2023_MICE
from neurotwin.errors import NeurotwinError
from neurotwin.prediction.outputs import TierResult, open_predictions
from neurotwin.prediction.space import Precision

log = logging.getLogger(__name__)

SUBMISSION_DIR = "submission"
TIER_FILES = {
    "live_test_main": "predictions_live_main.parquet.brotli",
    "final_test_main": "predictions_final_main.parquet.brotli",
    "live_test_bonus": "predictions_live_test_bonus_ood.parquet.brotli",
    "final_test_bonus": "predictions_final_test_bonus_ood.parquet.brotli",
}
ZIP_FILES = {
    "submission_main.zip": ("live_test_main", "final_test_main"),
    "submission_live_bonus.zip": ("live_test_bonus",),
    "submission_final_bonus.zip": ("final_test_bonus",),
}
COLUMNS = ("mouse", "trial_indices", "prediction", "neuron_ids")
SCHEMA = pa.schema(
    [
        ("mouse", pa.string()),
        ("trial_indices", pa.int64()),
        ("prediction", pa.list_(pa.list_(pa.float64()))),
        ("neuron_ids", pa.list_(pa.uint32())),
    ]
)
# The competition scored the five mice released with it (F..J); the test responses of the first
# five (A..E, an earlier release) were published, and their rows are left out of the files.
NOT_SCORED = frozenset(SENSORIUM_2023_MICE[letter] for letter in "ABCDE")
BROTLI_LEVEL = 1
TRIALS_PER_ROW_GROUP = 8


def submission_frames(loader_end: int, skip: int = M.SKIP_FRAMES) -> slice:
    """The frames of a trial the submission holds: the loader's frames after the first `skip`."""
    return slice(skip, max(int(loader_end), skip))


def trial_rows(
    result: TierResult, predictions: np.ndarray, precision: Precision
) -> list[tuple[int, np.ndarray]]:
    """(trial index, (N, frames) float64 prediction in the normalized units) of each trial."""
    rows = []
    for i, trial in enumerate(result.trial_ids.tolist()):
        frames = submission_frames(result.loader_frames[i])
        values = np.asarray(predictions[i, :, frames], dtype=np.float64)
        if not np.isfinite(values).all():
            raise NeurotwinError(
                f"{result.session} {result.tier} trial {trial}: the model predicts frames "
                f"{result.first_frames[i]}.. only; the submission needs frames "
                f"{frames.start}..{frames.stop - 1}"
            )
        rows.append((int(trial), precision.apply(values, frames.start, frames.stop)))
    return rows


def table(session: str, rows: Sequence[tuple[int, np.ndarray]], unit_ids: np.ndarray) -> pa.Table:
    """The submission rows of some trials of one session as an arrow table (`SCHEMA`)."""
    n = len(unit_ids)
    lengths = np.repeat([p.shape[1] for _, p in rows], n)
    inner = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
        pa.array(np.concatenate([p.ravel() for _, p in rows]), pa.float64()),
    )
    outer_offsets = pa.array((np.arange(len(rows) + 1) * n).astype(np.int32))
    ids = pa.array(np.tile(np.asarray(unit_ids).astype(np.uint32), len(rows)), pa.uint32())
    return pa.Table.from_arrays(
        [
            pa.array([session] * len(rows), pa.string()),
            pa.array([t for t, _ in rows], pa.int64()),
            pa.ListArray.from_arrays(outer_offsets, inner),
            pa.ListArray.from_arrays(outer_offsets, ids),
        ],
        schema=SCHEMA,
    )


class _TierTable:
    """One tier's parquet file, written by its own thread from the sessions' results."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: BaseException | None = None
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(
            target=self._run, name=f"submission-{path.name}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if self.error is None:
                try:
                    self._write(*job)
                except BaseException as e:
                    self.error = e

    def _write(self, result: TierResult, precision: Precision) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(
                self.path,
                SCHEMA,
                compression="brotli",
                compression_level=BROTLI_LEVEL,
                use_dictionary=["mouse"],
            )
        predictions = open_predictions(result.npz)
        rows = trial_rows(result, predictions, precision)
        short = [t for (t, p) in rows if p.shape[1] == 0]
        if short:
            log.warning(
                "%s %s: trials %s have no frames after the first %d; their rows are empty",
                result.session, result.tier, short[:5], M.SKIP_FRAMES,
            )  # fmt: skip
        for k in range(0, len(rows), TRIALS_PER_ROW_GROUP):
            part = rows[k : k + TRIALS_PER_ROW_GROUP]
            self.writer.write_table(table(result.session, part, result.unit_ids))
        self.rows += len(rows)
        del predictions

    def finish(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.writer is not None:
            self.writer.close()
        if self.error is not None:
            raise self.error


class SubmissionWriter:
    """The submission files of the test tiers (see the module): `add` each session's finished
    test tier (any thread), `close` once all are in (writes the zips)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / SUBMISSION_DIR
        self.tables: dict[str, _TierTable] = {}
        self._lock = threading.Lock()

    def check(self, plans: Sequence[Any]) -> None:
        """Before predicting: every test tier has a file name."""
        unknown = sorted({p.tier for p in plans} - set(TIER_FILES))
        if unknown:  # pragma: no cover - TEST_TIERS and TIER_FILES name the same tiers
            raise NeurotwinError(f"no submission file name for tiers {unknown}")

    def add(self, result: TierResult, precision: Precision) -> None:
        if result.session in NOT_SCORED:
            log.info(
                "%s: not scored by the competition; left out of the submission", result.session
            )
            return
        with self._lock:
            if result.tier not in self.tables:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.tables[result.tier] = _TierTable(self.folder / TIER_FILES[result.tier])
        self.tables[result.tier].queue.put((result, precision))

    def abort(self) -> None:
        for t in self.tables.values():
            t.error = t.error or RuntimeError("stopped")
            try:
                t.finish()
            except BaseException:
                pass

    def close(self) -> list[Path]:
        """Finish the tables and write the zips; returns the zip files."""
        for t in self.tables.values():
            t.finish()
        zips = []
        for name, tiers in ZIP_FILES.items():
            present = [tier for tier in tiers if tier in self.tables]
            if not present:
                continue
            if len(present) < len(tiers):
                log.warning(
                    "%s holds %s only; the main track takes live and final together",
                    name, TIER_FILES[present[0]],
                )  # fmt: skip
            with zipfile.ZipFile(self.folder / name, "w", compression=zipfile.ZIP_STORED) as zf:
                for tier in present:
                    zf.write(self.tables[tier].path, arcname=TIER_FILES[tier])
            zips.append(self.folder / name)
        return zips

"""The two tables of a table + video recording, read and checked (schema: the package docstring).

- `read_table`: a pickled pandas DataFrame (.pkl, .pickle) or a parquet file -> DataFrame.
- `read_trials`: the trial table -> `TrialSpec`s (id, video file, tier, optional behaviour).
- `ResponseTable`: the response table, one row per unit and trial, as spike times or rates;
  `binned(trial, n_bins, bin_s)` gives a trial's (N, T) responses in the session's unit order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurotwin.data.native import layout
from neurotwin.errors import DataFormatError

UNIT, TRIAL, SPIKES, RATES, VIDEO, TIER = (
    "unit_id", "trial_id", "spike_times", "rates", "video", "tier",
)  # fmt: skip
# optional per-bin columns of the trial table -> (native array, row)
BEHAVIOR_COLUMNS = {
    "pupil_dilation": (layout.BEHAVIOR, 0),
    "running_speed": (layout.BEHAVIOR, 1),
    "pupil_x": (layout.PUPIL_CENTER, 0),
    "pupil_y": (layout.PUPIL_CENTER, 1),
}


def read_table(path: str | Path):
    """A pandas DataFrame from a pickle (.pkl, .pickle) or parquet (.parquet, .pq) file."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "table file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".pkl", ".pickle"):
            table = pd.read_pickle(path)
        elif suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            raise DataFormatError(
                path, f"expected a .pkl/.pickle or .parquet table, got {suffix!r}"
            )
    except DataFormatError:
        raise
    except Exception as e:  # pickle and parquet readers raise many kinds
        raise DataFormatError(path, f"not a readable table: {type(e).__name__}: {e}") from None
    if not isinstance(table, pd.DataFrame):
        raise DataFormatError(path, f"expected a pandas DataFrame, got {type(table).__name__}")
    return table


def _require(table, path: Path, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataFormatError(
            path, f"missing column(s) {missing}; the table has {list(table.columns)}", missing[0]
        )


def _integers(table, path: Path, column: str) -> np.ndarray:
    values = table[column].to_numpy()
    if values.dtype.kind not in "iu":
        if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values % 1 == 0):
            return values.astype(np.int64)
        raise DataFormatError(path, f"expected integer ids, got dtype {values.dtype}", column)
    return values.astype(np.int64)


def _array(value, path: Path, column: str, where: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataFormatError(path, f"{where}: expected a sequence of numbers", column) from None
    return a


@dataclass
class TrialSpec:
    """One row of the trial table."""

    trial_id: int
    video: Path
    tier: str
    behavior: dict[str, np.ndarray] = field(default_factory=dict)  # optional per-bin columns


def read_trials(path: str | Path, videos: str | Path) -> list[TrialSpec]:
    """The trial table at `path`: trial_id (unique int), video (a file name under `videos`, or
    an absolute path), tier (a native tier name), optional per-bin behaviour columns."""
    path, videos = Path(path), Path(videos)
    table = read_table(path)
    _require(table, path, (TRIAL, VIDEO, TIER))
    if len(table) == 0:
        raise DataFormatError(path, "the trial table has no rows", TRIAL)
    ids = _integers(table, path, TRIAL)
    values, counts = np.unique(ids, return_counts=True)
    duplicated = [int(i) for i in values[counts > 1]]
    if duplicated:
        raise DataFormatError(path, f"trial ids listed more than once: {duplicated[:10]}", TRIAL)
    trials = []
    extra = [c for c in BEHAVIOR_COLUMNS if c in table.columns]
    for i, (_, row) in zip(ids, table.iterrows(), strict=True):
        tier = str(row[TIER])
        if tier not in layout.TIERS:
            raise DataFormatError(
                path, f"trial {i}: tier {tier!r} is not one of {layout.TIERS}", TIER
            )
        video = Path(str(row[VIDEO]))
        behavior = {c: _array(row[c], path, c, f"trial {i}") for c in extra}
        trials.append(
            TrialSpec(int(i), video if video.is_absolute() else videos / video, tier, behavior)
        )
    return trials


class ResponseTable:
    """The response table: one row per (unit_id, trial_id), with `spike_times` (seconds from the
    trial's first movie frame) or `rates` (one value per response bin from that frame)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        table = read_table(self.path)
        _require(table, self.path, (UNIT, TRIAL))
        kinds = [c for c in (SPIKES, RATES) if c in table.columns]
        if len(kinds) != 1:
            raise DataFormatError(
                self.path,
                f"expected exactly one of the columns {SPIKES!r} (spike times, s) or {RATES!r} "
                f"(one value per bin); the table has {list(table.columns)}",
                SPIKES,
            )
        self.kind = kinds[0]
        units = _integers(table, self.path, UNIT)
        trials = _integers(table, self.path, TRIAL)
        self.unit_ids = np.unique(units)
        self._rows: dict[int, dict[int, object]] = {}
        for u, t, value in zip(units, trials, table[self.kind].to_numpy(), strict=True):
            by_unit = self._rows.setdefault(int(t), {})
            if int(u) in by_unit:
                raise DataFormatError(
                    self.path, f"unit {u} has more than one row for trial {t}", UNIT
                )
            by_unit[int(u)] = value

    @property
    def trial_ids(self) -> set[int]:
        return set(self._rows)

    def _values(self, trial: int) -> list[np.ndarray]:
        """The trial's arrays in unit order (DataFormatError if a unit is missing)."""
        by_unit = self._rows[trial]
        missing = [int(u) for u in self.unit_ids if int(u) not in by_unit]
        if missing:
            raise DataFormatError(
                self.path,
                f"trial {trial} has no row for unit(s) {missing[:10]}; every unit needs a row in "
                "every trial",
                UNIT,
            )
        return [_array(by_unit[int(u)], self.path, self.kind, f"trial {trial} unit {u}") for u in self.unit_ids]  # fmt: skip

    def rate_bins(self, trial: int) -> int | None:
        """The trial's number of bins given by its rate arrays (None for spike times)."""
        if self.kind != RATES:
            return None
        lengths = {len(a) for a in self._values(trial)}
        if len(lengths) != 1:
            raise DataFormatError(
                self.path, f"trial {trial}: the units' rate arrays differ in length {sorted(lengths)}", RATES
            )  # fmt: skip
        return lengths.pop()

    def binned(self, trial: int, n_bins: int, bin_s: float) -> np.ndarray:
        """(N, n_bins) float32: spike counts per bin, or the rates (their first n_bins)."""
        values = self._values(trial)
        if self.kind == RATES:
            out = np.stack([a[:n_bins] for a in values])
            bad = ~np.isfinite(out) | (out < 0)
            if bad.any():
                unit = self.unit_ids[np.flatnonzero(bad.any(axis=1))[0]]
                raise DataFormatError(
                    self.path, f"trial {trial} unit {unit}: rates must be finite and >= 0", RATES
                )
            return out.astype(np.float32)
        edges = np.arange(n_bins + 1, dtype=np.float64) * bin_s
        counts = np.empty((len(values), n_bins), dtype=np.float32)
        for i, spikes in enumerate(values):
            if not np.all(np.isfinite(spikes)):
                raise DataFormatError(
                    self.path, f"trial {trial} unit {self.unit_ids[i]}: NaN spike times", SPIKES
                )
            # spikes in [start, end) of each bin: times before the movie or past the last bin
            # are left out
            counts[i] = np.diff(np.searchsorted(np.sort(spikes), edges, side="left"))
        return counts

"""The spike table layout: one folder per session holding three parquet tables.

    units.parquet   unit_id int64, population str (an area or a probe); other columns kept
    spikes.parquet  unit_id int64, time float64 (seconds), rows sorted by time
    trials.parquet  trial_id int64, start float64, stop float64 (seconds), condition str;
                    other columns kept as condition variables

This is the plain format a user can write from any recording (Allen Neuropixels files are
converted into it by `neurotwin.data.allen.spikes`). `read_session` checks every rule and raises
`DataFormatError(file, problem, column)`; `write_session` writes a folder atomically (a temporary
folder, then a rename). Binning spike times into trains is `neurotwin.data.spikes.loader`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurotwin.errors import DataFormatError

log = logging.getLogger(__name__)

UNITS_FILE = "units.parquet"
SPIKES_FILE = "spikes.parquet"
TRIALS_FILE = "trials.parquet"
META_FILE = "meta.json"
LAYOUT_FILES = (UNITS_FILE, SPIKES_FILE, TRIALS_FILE)

# column -> kind: "int" (int64), "float" (float64), "str"
UNIT_COLUMNS = {"unit_id": "int", "population": "str"}
SPIKE_COLUMNS = {"unit_id": "int", "time": "float"}
TRIAL_COLUMNS = {"trial_id": "int", "start": "float", "stop": "float", "condition": "str"}
# trials may touch (stop == next start, as back-to-back static gratings); this much overlap, in
# seconds, is taken for float rounding of the recorded times rather than an overlap
OVERLAP_TOLERANCE_S = 1e-6

_EXPECTED = {"int": "int64", "float": "float64", "str": "strings"}


@dataclass
class SpikeSession:
    """One session read from the layout, checked, with units grouped by population.

    `units` is ordered by population (sorted names), then as in the file; `unit_index[k]` is the
    row in `units` of spike k; `times` are sorted. `trials` is sorted by start time.
    """

    name: str
    path: Path
    units: pd.DataFrame
    times: np.ndarray
    unit_index: np.ndarray
    trials: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return len(self.units)

    @property
    def unit_ids(self) -> np.ndarray:
        return self.units["unit_id"].to_numpy(np.int64)

    @property
    def populations(self) -> list[str]:
        """Population names in unit order (each once)."""
        return list(dict.fromkeys(self.units["population"].tolist()))

    @property
    def population_sizes(self) -> list[int]:
        counts = self.units["population"].value_counts()
        return [int(counts[p]) for p in self.populations]


# ------------------------------------------------------------------------------------------------
# Reading and checking
# ------------------------------------------------------------------------------------------------


def is_session(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and all((path / f).is_file() for f in LAYOUT_FILES)


def find_sessions(data_dir: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Session folders under `data_dir` (or `data_dir` itself if it is one), by name."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataFormatError(data_dir, "data folder not found")
    if is_session(data_dir):
        found = {data_dir.name: data_dir}
    else:
        found = {p.name: p for p in sorted(data_dir.iterdir()) if is_session(p)}
    if not found:
        raise DataFormatError(
            data_dir, f"no session folder here (a session holds {', '.join(LAYOUT_FILES)})"
        )
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise DataFormatError(data_dir, f"no session(s) {missing}; found {sorted(found)}")
        return [found[n] for n in names]
    return list(found.values())


def _read_table(path: Path, columns: Mapping[str, str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    try:
        table = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise DataFormatError(
            path, f"not a readable parquet table ({type(e).__name__}: {e})"
        ) from None
    for name, kind in columns.items():
        if name not in table.columns:
            raise DataFormatError(
                path,
                f"missing column (expected {_EXPECTED[kind]}; columns found: "
                f"{list(map(str, table.columns))})",
                name,
            )
        table[name] = _checked_column(path, name, table[name], kind)
    return table


def _checked_column(path: Path, name: str, column: pd.Series, kind: str) -> pd.Series:
    dtype = column.dtype
    if kind == "int":
        if not pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            raise DataFormatError(path, f"expected int64 values, got {dtype}", name)
        if column.isna().any():
            raise DataFormatError(path, "missing values (expected int64 everywhere)", name)
        return column.astype(np.int64)
    if kind == "float":
        if not pd.api.types.is_float_dtype(dtype):
            raise DataFormatError(path, f"expected float64 seconds, got {dtype}", name)
        if dtype != np.float64:
            raise DataFormatError(
                path,
                f"expected float64 seconds, got {dtype} (too coarse for session times: at "
                "10^4 s float32 resolves only ~1 ms)",
                name,
            )
        values = column.to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataFormatError(path, f"NaN or infinite time at row {row}", name)
        return column
    # strings: object / pandas string dtypes holding str values only
    if not (pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)):
        raise DataFormatError(path, f"expected strings, got {dtype}", name)
    values = column.to_numpy(object)
    bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v]
    if bad:
        raise DataFormatError(
            path, f"expected non-empty strings, got {values[bad[0]]!r} at row {bad[0]}", name
        )
    return column.astype(object)


def _check_ids(path: Path, table: pd.DataFrame, column: str, what: str) -> None:
    """A table with rows, and no id twice in `column`."""
    if table.empty:
        raise DataFormatError(path, f"no {what}s", column)
    duplicated = table[column].duplicated()
    if duplicated.any():
        ids = table[column][duplicated].unique()[:5].tolist()
        raise DataFormatError(path, f"duplicate {what} ids {ids}", column)


def _check_spikes(path: Path, spikes: pd.DataFrame, unit_ids: np.ndarray) -> np.ndarray:
    """Row -> index into `unit_ids`; unknown ids and unsorted times are errors."""
    times = spikes["time"].to_numpy(np.float64)
    _first_bad_row(
        path,
        np.diff(times) < 0,
        "time",
        lambda k: (
            f"times must be sorted (non-decreasing): row {k + 1} ({times[k + 1]!r}) comes "
            f"after row {k} ({times[k]!r})"
        ),
    )
    ids = spikes["unit_id"].to_numpy(np.int64)
    order = np.argsort(unit_ids, kind="stable")
    sorted_ids = unit_ids[order]
    pos = np.searchsorted(sorted_ids, ids).clip(max=max(sorted_ids.size - 1, 0))
    unknown = sorted_ids[pos] != ids if sorted_ids.size else np.ones(ids.size, bool)
    if unknown.any():
        bad = np.unique(ids[unknown])[:5].tolist()
        raise DataFormatError(
            path, f"unit ids {bad} are not in {UNITS_FILE} ({int(unknown.sum())} spikes)", "unit_id"
        )
    return order[pos]


def _check_trials(path: Path, trials: pd.DataFrame) -> pd.DataFrame:
    _check_ids(path, trials, "trial_id", "trial")
    start, stop = trials["start"].to_numpy(), trials["stop"].to_numpy()
    _first_bad_row(
        path,
        stop <= start,
        "stop",
        lambda k: (
            f"empty trial {int(trials['trial_id'].iloc[k])}: stop {stop[k]!r} is not after "
            f"start {start[k]!r}"
        ),
    )
    trials = trials.sort_values("start", kind="stable").reset_index(drop=True)
    start, stop = trials["start"].to_numpy(), trials["stop"].to_numpy()
    ids = trials["trial_id"].to_numpy()
    _first_bad_row(
        path,
        start[1:] < stop[:-1] - OVERLAP_TOLERANCE_S,
        "start",
        lambda k: (
            f"trial {int(ids[k + 1])} (start {start[k + 1]!r}) overlaps trial {int(ids[k])} "
            f"(stop {stop[k]!r})"
        ),
    )
    return trials


def _first_bad_row(path: Path, bad: np.ndarray, field: str, problem: Callable[[int], str]) -> None:
    """DataFormatError(path, problem(k), field) for the first row k where `bad` holds."""
    rows = np.flatnonzero(bad)
    if rows.size:
        raise DataFormatError(path, problem(int(rows[0])), field)


def read_session(path: str | Path) -> SpikeSession:
    """Read and check one session folder of the spike table layout."""
    path = Path(path)
    if not path.is_dir():
        raise DataFormatError(path, "session folder not found")
    units = _read_table(path / UNITS_FILE, UNIT_COLUMNS)
    _check_ids(path / UNITS_FILE, units, "unit_id", "unit")
    populations = sorted(units["population"].unique())
    rank = {p: i for i, p in enumerate(populations)}
    order = np.argsort(units["population"].map(rank).to_numpy(), kind="stable")
    units = units.iloc[order].reset_index(drop=True)
    spikes = _read_table(path / SPIKES_FILE, SPIKE_COLUMNS)
    unit_index = _check_spikes(path / SPIKES_FILE, spikes, units["unit_id"].to_numpy(np.int64))
    trials = _check_trials(path / TRIALS_FILE, _read_table(path / TRIALS_FILE, TRIAL_COLUMNS))
    meta = {}
    if (path / META_FILE).is_file():
        try:
            meta = json.loads((path / META_FILE).read_text())
        except json.JSONDecodeError as e:
            raise DataFormatError(path / META_FILE, f"not valid JSON ({e})") from None
    return SpikeSession(
        name=path.name,
        path=path,
        units=units,
        times=spikes["time"].to_numpy(np.float64),
        unit_index=unit_index.astype(np.int64),
        trials=trials,
        meta=meta,
    )


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def write_session(
    folder: str | Path,
    units: pd.DataFrame,
    spikes: pd.DataFrame,
    trials: pd.DataFrame,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    extra_tables: Mapping[str, pd.DataFrame] | None = None,
) -> Path:
    """Write one session folder atomically: into a temporary folder beside it, checked by
    `read_session`, then renamed into place. Spikes are sorted by time first; `extra_tables`
    (file name -> table) are written beside the layout's three."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise DataFormatError(folder, "already exists (pass overwrite=True to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        spikes = spikes.sort_values("time", kind="stable").reset_index(drop=True)
        tables = {UNITS_FILE: units, SPIKES_FILE: spikes, TRIALS_FILE: trials}
        for name, table in {**tables, **(extra_tables or {})}.items():
            table.to_parquet(tmp / name, index=False)
        if meta is not None:
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        read_session(tmp)  # what was written follows the layout
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

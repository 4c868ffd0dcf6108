"""Small h5py helpers for reading Allen NWB files (v1 for 2-photon ophys, v2 for Neuropixels).

Every reader here raises `DataFormatError(file, problem, field=<HDF5 path>)` for a missing group or
dataset, a wrong shape or a wrong type, so that a user sees which file and which path is wrong.
pynwb is not needed: the converters read the HDF5 layout directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from neurotwin.data.allen.resample import fill_nan
from neurotwin.errors import DataFormatError

log = logging.getLogger(__name__)


def open_nwb(path: str | Path) -> h5py.File:
    """Open an NWB (HDF5) file read-only, or raise DataFormatError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataFormatError(path, f"not a readable NWB/HDF5 file ({e})") from None


def file_path(f: h5py.File) -> Path:
    return Path(f.filename)


def has(f: h5py.File | h5py.Group, path: str) -> bool:
    try:
        return path in f
    except (KeyError, ValueError):
        return False


def _node(f: h5py.File, path: str, kind: type, what: str) -> h5py.Group | h5py.Dataset:
    """The object at `path` if it is a `kind` (h5py.Group or h5py.Dataset), else DataFormatError."""
    name, other = ("group", "dataset") if kind is h5py.Group else ("dataset", "group")
    if not has(f, path):
        raise DataFormatError(file_path(f), f"missing {name}{_what(what)}", field=path)
    obj = f[path]
    if not isinstance(obj, kind):
        raise DataFormatError(
            file_path(f), f"expected a {name}{_what(what)}, found a {other}", path
        )
    return obj


def group(f: h5py.File, path: str, what: str = "") -> h5py.Group:
    """The group at `path`; DataFormatError if it is missing or not a group."""
    return _node(f, path, h5py.Group, what)


def dataset(f: h5py.File, path: str, what: str = "") -> h5py.Dataset:
    """The dataset at `path`; DataFormatError if it is missing or not a dataset."""
    return _node(f, path, h5py.Dataset, what)


def read(
    f: h5py.File,
    path: str,
    ndim: int | Sequence[int] | None = None,
    numeric: bool = True,
    what: str = "",
) -> np.ndarray:
    """Read a whole dataset, checking its number of dimensions and that it is numeric."""
    ds = dataset(f, path, what)
    value = ds[()]
    array = np.asarray(value)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if array.ndim not in allowed:
            raise DataFormatError(
                file_path(f),
                f"expected {' or '.join(f'{n}-d' for n in allowed)} data{_what(what)}, "
                f"got shape {array.shape}",
                path,
            )
    if numeric and not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataFormatError(
            file_path(f), f"expected numbers{_what(what)}, got dtype {array.dtype}", path
        )
    return array


def read_series(f: h5py.File, path: str, what: str, default_t: np.ndarray | None = None):
    """(timestamps, values 1-d) of the TimeSeries at `path`, NaNs interpolated; (None, None)
    when it is missing (logged: its samples are then zeros) or all NaN. `default_t`: the times
    of a series stored without timestamps (ophys shares the 2-photon frame times)."""
    if not has(f, path):
        log.warning("%s: no %s (%s): zeros", f.filename, path, what)
        return None, None
    values = read(f, f"{path}/data", ndim=(1, 2), what=what)
    if values.ndim == 2:  # ophys pipeline v0.9 stored (n, 1)
        values = values[:, 0]
    if default_t is None or has(f, f"{path}/timestamps"):
        t = read(f, f"{path}/timestamps", ndim=(1, 2), what=f"{what} times").reshape(-1)
    else:
        t = default_t[: values.size]
    if t.size != values.size:
        raise DataFormatError(
            file_path(f), f"{values.size} samples, {t.size} timestamps", f"{path}/timestamps"
        )
    values, ok = fill_nan(t, values)
    return (t, values) if ok else (None, None)


def movie_frames(f: h5py.File, movie: str) -> h5py.Dataset:
    """stimulus/templates/<movie>_image_stack/data, the movie's frames (F, h, w) as stored (read
    lazily); DataFormatError when it is not numeric and 3-d."""
    path = f"stimulus/templates/{movie}_image_stack/data"
    template = dataset(f, path, "movie frames (F, h, w)")
    if template.ndim != 3 or not np.issubdtype(template.dtype, np.number):
        raise DataFormatError(
            file_path(f),
            f"expected numeric frames (F, h, w), got {template.dtype} {template.shape}",
            path,
        )
    return template


def read_str(f: h5py.File, path: str, default: str | None = None) -> str | None:
    """A scalar (or 1-element) string dataset as str; `default` when it is missing."""
    if not has(f, path) or not isinstance(f[path], h5py.Dataset):
        return default
    return decode(f[path][()])


def decode(value) -> str:
    """bytes / numpy bytes / 0-d or 1-element arrays -> str."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return ", ".join(decode(v) for v in value.reshape(-1))
        value = value.reshape(-1)[0]
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", errors="replace")
    return str(value)


def read_strings(f: h5py.File, path: str) -> np.ndarray:
    """A 1-d string dataset (or a column of a DynamicTable) as an array of str."""
    raw = dataset(f, path)[()]
    return np.asarray([decode(v) for v in np.asarray(raw).reshape(-1)], dtype=object)


def table_column(f: h5py.File, table: str, column: str, n: int, numeric: bool = True) -> np.ndarray:
    """Column `column` of the DynamicTable `table` (numbers, or strings), which must have the
    table's `n` rows (the length of its id column)."""
    path = f"{table}/{column}"
    if numeric:
        value = read(f, path, ndim=1, what=f"column {column!r}")
    else:
        value = read_strings(f, path)
    if value.shape[0] != n:
        raise DataFormatError(
            file_path(f),
            f"column has {value.shape[0]} rows, table has {n} (length of {table}/id)",
            path,
        )
    return value


class RaggedColumn:
    """A ragged DynamicTable column read lazily: `col[i]` reads only row i's slice (the Neuropixels
    units table holds ~10^8 spike times; only the kept units are read)."""

    def __init__(self, f: h5py.File, data_path: str, index_path: str):
        self.data = dataset(f, data_path)
        if self.data.ndim != 1:
            raise DataFormatError(
                file_path(f), f"expected 1-d data, got shape {self.data.shape}", data_path
            )
        self.index = read(f, index_path, ndim=1).astype(np.int64)
        n = self.data.shape[0]
        if self.index.size and (
            np.any(np.diff(self.index) < 0) or self.index[-1] > n or self.index[0] < 0
        ):
            raise DataFormatError(
                file_path(f),
                f"VectorIndex must hold non-decreasing end offsets <= {n} (len of {data_path})",
                index_path,
            )
        self.starts = np.concatenate([[0], self.index[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.index.size)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.data[self.starts[i] : self.index[i]], dtype=np.float64)


def _what(what: str) -> str:
    return f" ({what})" if what else ""

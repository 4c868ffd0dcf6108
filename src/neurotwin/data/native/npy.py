"""The header of a .npy file, read without its data: shape, dtype, and whether the file is
as long as the header says. The start-up check reads every trial file this way, and the
reader uses it to say why a file does not load (never numpy's advice to unpickle it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurotwin.errors import DataFormatError


@dataclass(frozen=True)
class Header:
    """What a .npy file's header says: shape, dtype, where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_header(path: Path, field: str | None = None) -> Header:
    """The header of a .npy file (DataFormatError if it is missing or not a .npy file)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except FileNotFoundError:
        raise DataFormatError(path, "file not found", field) from None
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataFormatError(
            path, f"not a .npy file (its header does not read: {problem})", field
        ) from None
    return Header(tuple(int(n) for n in shape), np.dtype(dtype), offset)


def check_length(path: Path, header: Header, field: str | None = None) -> None:
    """DataFormatError if the file holds fewer bytes than its header promises."""
    size = path.stat().st_size
    if size < header.offset + header.data_bytes:
        raise DataFormatError(
            path,
            f"truncated: its header says {header.shape} {header.dtype} ({header.data_bytes} "
            f"bytes of data) but the file holds {max(size - header.offset, 0)} bytes after it",
            field,
        )


def why_unreadable(path: Path, field: str | None, error: Exception) -> DataFormatError:
    """The error for a .npy file that np.load refused: a damaged header, Python objects, a
    truncated file, or (else) numpy's own reason."""
    header = read_header(path, field)  # raises for a damaged header
    if header.dtype.hasobject:
        return DataFormatError(
            path, f"holds Python objects (dtype {header.dtype}), not numbers; not loaded", field
        )
    try:
        check_length(path, header, field)
    except DataFormatError as e:
        return e
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return DataFormatError(path, f"cannot be read as .npy ({first})", field)

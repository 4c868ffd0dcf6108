"""Writing files and folders so that nothing half-written is ever left under the final name.

Everything neurotwin writes goes to a hidden temporary name beside its target first
(`.{name}.{pid}-{random}.tmp`) and is renamed into place when complete: a reader sees the old
version or the new one, never a part. A process killed midway leaves only a temporary, which
`remove_stale_temporaries` deletes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


def temporary_name(path: str | Path) -> Path:
    """A hidden, unique sibling of `path` for writing it (`.{name}.{pid}-{random}.tmp`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def fsync_folder(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (where the file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass


@contextlib.contextmanager
def atomic_file(
    path: str | Path, mode: str = "w", fsync: bool = False, **kwargs: Any
) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces `path` (flushed, and with
    `fsync` synced to disk first); on any error it is deleted and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_folder(path.parent)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    with atomic_file(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def staged_folder(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; when the block ends without error it
    takes `final`'s place in one rename (an older `final` is moved aside first and deleted
    after). On error it is deleted and `final` stays as it was. If another process puts a
    `final` in place meanwhile, theirs is kept and ours discarded."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    tmp.mkdir()  # mkdir, not mkdtemp (which is private): the folder gets the usual permissions
    try:
        yield tmp
        old = None
        if final.exists():
            old = temporary_name(final)
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                if old is not None:
                    os.replace(old, final)
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # someone else's is in place: keep it
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the temporaries (files and folders) that killed writers left in `folder`."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(f".*{TMP_SUFFIX}"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

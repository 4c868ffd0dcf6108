"""Writing files and folders so that nothing half-written is ever left under the final name.

Everything neurotwin writes goes to a hidden temporary name beside its target first
(`.{name}.{pid}-{host}-{random}.tmp`: the writing process, a tag of its machine, a random part)
and is renamed into place when complete: a reader sees the old version or the new one, never a
part. A process killed midway leaves only a temporary. The next write of the same target
deletes it (`atomic_file` and `staged_folder` clear their own leftovers), and
`remove_stale_temporaries` clears a whole folder; both delete only temporaries whose writer is
gone (see `is_stale`), never one that a live process is still writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
# A temporary whose writer ran on another machine (a shared file system) or cannot be told
# (names of earlier releases) counts as stale once nothing in it changed for this long.
FOREIGN_STALE_SECONDS = 24 * 3600

# .{name}.{pid}-{host}-{random}.tmp (this release), .{name}.{pid}-{random}.tmp (0.2 before the
# host tag) and .{name}.tmp-{pid}-{random} (0.1)
_NAMES = (
    re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{6})-[0-9a-f]{8}\.tmp$"),
    re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$"),
    re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$"),
)


def host_tag() -> str:
    """Six hex digits naming this machine in temporary names."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def temporary_name(path: str | Path) -> Path:
    """A hidden, unique sibling of `path` for writing it (`.{name}.{pid}-{host}-{random}.tmp`)."""
    path = Path(path)
    unique = f"{os.getpid()}-{host_tag()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.{unique}{TMP_SUFFIX}")


@dataclass(frozen=True)
class Temporary:
    """A temporary found on disk: the target it was writing and the process that wrote it."""

    path: Path
    target: str  # the final name it was to be renamed to
    pid: int
    host: str | None  # None: not recorded (names of earlier releases)


def parse_temporary(path: str | Path) -> Temporary | None:
    """The temporary that `path` names, None if it is not one of neurotwin's."""
    path = Path(path)
    for pattern in _NAMES:
        m = pattern.match(path.name)
        if m:
            host = m.groupdict().get("host")
            return Temporary(path, m.group("name"), int(m.group("pid")), host)
    return None


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def last_change(path: Path) -> float:
    """The newest modification time of `path` and, for a folder, of anything inside it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def is_stale(temporary: Temporary, now: float | None = None) -> bool:
    """Whether a temporary's writer is gone: on this machine, its process no longer runs; of
    another machine (or unrecorded), nothing in it changed for FOREIGN_STALE_SECONDS."""
    if temporary.host == host_tag():
        return not process_alive(temporary.pid)
    if temporary.host is None and process_alive(temporary.pid):
        return False
    now = time.time() if now is None else now
    try:
        return now - last_change(temporary.path) > FOREIGN_STALE_SECONDS
    except OSError:
        return False


@dataclass
class Cleanup:
    """What `remove_stale_temporaries` did: the temporaries removed, and those it left."""

    removed: list[Temporary] = field(default_factory=list)
    kept: list[Temporary] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per temporary, for the run's log."""
        out = [
            f"removed {t.path}, left by process {t.pid} (a killed or crashed run) while it "
            f"wrote {t.target}"
            for t in self.removed
        ]
        out += [
            f"left {t.path} in place: process {t.pid} may still be writing it (delete it "
            f"once no process writes {t.target})"
            for t in self.kept
        ]
        return out


def remove_stale_temporaries(folder: str | Path, target: str | None = None) -> Cleanup:
    """Delete the temporaries in `folder` (those of `target` only, if given) that killed
    writers left; temporaries of live writers are kept (both are listed in the result)."""
    folder = Path(folder)
    result = Cleanup()
    if not folder.is_dir():
        return result
    pattern = f".{_glob_escape(target)}.*" if target else ".*"
    now = time.time()
    for path in sorted(folder.glob(pattern)):
        temporary = parse_temporary(path)
        if temporary is None or (target is not None and temporary.target != target):
            continue
        if temporary.pid == os.getpid() and temporary.host == host_tag():
            continue  # ours, being written now
        if not is_stale(temporary, now):
            result.kept.append(temporary)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            result.removed.append(temporary)
    return result


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _clear_leftovers(path: Path) -> None:
    """Delete the stale temporaries of `path` (a killed earlier write), saying so."""
    for line in remove_stale_temporaries(path.parent, path.name).lines():
        log.warning("%s", line)


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
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside `path` for writers that take a name, not a file object;
    when the block ends without error the file takes `path`'s place, on any error it is
    deleted and `path` is left as it was. The name ends in `.tmp`: give the writer the format
    (e.g. `savefig(..., format="png")`) rather than letting it guess from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(
    path: str | Path, mode: str = "w", fsync: bool = False, **kwargs: Any
) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces `path` (flushed, and with
    `fsync` synced to disk first); on any error it is deleted and `path` is left as it was."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    if fsync:
        fsync_folder(path.parent)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    with atomic_file(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_parquet(table: Any, path: str | Path) -> Path:
    """Write a pandas DataFrame to `path` as parquet (no index column) atomically."""
    with atomic_file(path, "wb") as f:
        table.to_parquet(f, index=False)
    return Path(path)


def write_png(figure: Any, path: str | Path, dpi: int = 110, **savefig: Any) -> Path:
    """Write a matplotlib figure to `path` as PNG atomically (`savefig` options passed on)."""
    with atomic_file(path, "wb") as f:
        figure.savefig(f, format="png", dpi=dpi, **savefig)
    return Path(path)


@contextlib.contextmanager
def staged_folder(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; when the block ends without error it
    takes `final`'s place in one rename (an older `final` is moved aside first and deleted
    after). On error it is deleted and `final` stays as it was. If another process puts a
    `final` in place meanwhile, theirs is kept and ours discarded."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(final)
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

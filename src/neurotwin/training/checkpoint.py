"""Checkpoints: written atomically, loadable with `torch.load(..., weights_only=True)`.

A checkpoint is a dict of tensors, dicts, lists, tuples, str, int, float, bool and None only (no
numpy objects), with the keys `model`, `optimizer`, `scheduler`, `epoch`, `rng`, `config`,
the task's entries (`sessions`: each session's units or neurons), `best_value` and `version`. It is written to a temporary file in
the same folder, synced to disk, then renamed over the old one (`neurotwin.files`): a write that
is interrupted midway leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotwin.errors import CheckpointError
from neurotwin.files import atomic_file, remove_stale_temporaries
from neurotwin.run import find_checkpoint as resolve_checkpoint

__all__ = [
    "VERSION",
    "get_rng_state",
    "load_checkpoint",
    "plain",
    "remove_stale_temporaries",
    "resolve_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

VERSION = 1


def plain(obj: Any) -> Any:
    """`obj` with numpy arrays and scalars turned into tensors and Python numbers."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically (temporary file + fsync + rename)."""
    with atomic_file(path, "wb", fsync=True) as f:
        torch.save(plain(state), f)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights only); CheckpointError, one line
    saying what is wrong with the file, if it is missing, damaged or not a checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    problem = damage(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}; {REMEDY}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: {_foreign_objects(e)}") from None
    except Exception as e:  # the archive is whole but its records are not
        raise CheckpointError(
            f"{path}: damaged: the archive's records do not read back "
            f"({type(e).__name__}: {_first_line(e)}); {REMEDY}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: holds a {type(state).__name__}, not a neurotwin checkpoint (a dict with "
            "the keys model, epoch, config)"
        )
    missing = [k for k in ("model", "epoch", "config") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a neurotwin checkpoint (missing keys {missing})")
    return state


REMEDY = "resume from the run's other checkpoint (best.pt or last.pt) or train again"
_ZIP_MAGIC = b"PK\x03\x04"


def damage(path: Path) -> str | None:
    """What makes `path` unreadable as a checkpoint before torch reads it (None: nothing seen):
    empty, not a zip archive (torch.save's format), truncated, or a damaged archive."""
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes; a copy or a disk that filled up cut it)"
    with open(path, "rb") as f:
        head = f.read(4)
    if head != _ZIP_MAGIC:
        return (
            f"not a PyTorch checkpoint (torch.save writes a zip archive; this file starts {head!r})"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return f"truncated: the zip archive ends early ({size} bytes, without its directory)"
    except zipfile.LargeZipFile:  # pragma: no cover - zip64 archives are read by torch
        return None
    if broken is not None:
        return f"damaged: the archive's record {broken} fails its checksum"
    if not any(n.endswith("data.pkl") for n in names):
        return "a zip archive, but not a PyTorch checkpoint (no data.pkl inside)"
    return None


def _foreign_objects(error: Exception) -> str:
    """The message for a file that holds Python objects a weights-only load refuses."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f" ({found.group(1)})" if found else ""
    return (
        f"holds Python objects{what} besides tensors and plain values: not a checkpoint "
        "written by neurotwin (whose checkpoints hold none), so it is not loaded"
    )


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:160] if lines else ""


# ------------------------------------------------------------------------------------------------
# Random number generator states (torch, CUDA, numpy, Python) as plain values
# ------------------------------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        s = state["numpy"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state((s["name"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(s["state"]), s["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda_states])

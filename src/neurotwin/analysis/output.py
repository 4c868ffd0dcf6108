"""Writing analysis outputs: tables (parquet), arrays (npz), figures (PNG), videos (GIF/MP4) and
summary.json, each to a temporary name beside its place, then renamed (never half-written:
`neurotwin.files`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from neurotwin import files
from neurotwin.files import atomic_file, atomic_path, write_parquet, write_text

# write_parquet: neurotwin.files', used here as by every other writer of tables
__all__ = [
    "figure",
    "grid_shape",
    "write_json",
    "write_npz",
    "write_parquet",
    "write_png",
    "write_video",
]


def write_npz(arrays: Mapping[str, np.ndarray], path: Path) -> Path:
    with atomic_file(path, "wb") as f:  # a file object: numpy appends no ".npz" to the name
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def write_png(figure: Any, path: Path, dpi: int = 110) -> Path:
    return files.write_png(figure, path, dpi=dpi, bbox_inches="tight")


def write_video(frames: np.ndarray, path: Path, fps: float, scale: int = 4) -> Path:
    """frames (T, H, W) uint8 as a GIF (or MP4 when the name ends so and imageio-ffmpeg is
    installed), each pixel shown as scale x scale pixels."""
    import imageio.v3 as iio

    big = np.repeat(np.repeat(np.asarray(frames, dtype=np.uint8), scale, 1), scale, 2)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".gif":
            iio.imwrite(tmp, big, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(tmp, big, extension=path.suffix, fps=fps)
    return path


def _plain(value: Any) -> Any:
    """JSON-ready values: numpy scalars and arrays to Python, NaN and inf to null."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(obj: Mapping[str, Any], path: Path) -> Path:
    return write_text(path, json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n")


def figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (3.0, 2.4), **kw):
    """A matplotlib Figure (drawn by Agg; no pyplot, so no display and no global state) with a
    (rows, cols) array of axes; `kw` goes to `Figure.subplots` (e.g. subplot_kw)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def grid_shape(n: int, cols: int = 6) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return max(1, math.ceil(n / cols)), cols

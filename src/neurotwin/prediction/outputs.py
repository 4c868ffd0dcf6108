"""What prediction writes: per-tier .npz files, metrics.json / metrics.csv, the printed table.

    predictions/
      metrics.json      {"score_space", "checkpoint", "data_dir", "tiers", "sessions": {S: {TIER:
                         {...}}}, "mean": {TIER: {...}}} (+ "members" for an ensemble)
      metrics.csv       one row per (session, tier, group), then the means (session=mean)
      {session}/{tier}.npz   every trial's predictions (`NPZ_DOC`)

A metrics entry holds METRIC_KEYS and COUNT_KEYS, plus "by_area" / "by_stimulus" ({label: entry})
where the session's meta says which area each neuron is in or which stimulus each trial showed
(`neurotwin.prediction.breakdown`).
"""

from __future__ import annotations

import csv
import json
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METRIC_KEYS = (
    "single_trial_correlation",
    "correlation_to_average",
    "feve",
    "normalized_correlation",
    "ceiling_correlation",
    "fraction_of_ceiling",
)
COUNT_KEYS = ("n_trials", "n_neurons")
BREAKDOWNS = ("by_area", "by_stimulus")
GROUP_NAMES = {"by_area": "area", "by_stimulus": "stimulus"}
COPY_CHUNK = 16 << 20  # bytes per piece when an .npy goes into its .npz

NPZ_DOC = """predictions (n_trials, N, T_max) float32 in original response units, NaN past each
trial's frame count (and before the model's first output frame, if it predicts fewer frames than
it sees); trial_ids (n_trials,) int64; unit_ids (N,); frame_counts (n_trials,) int64; clip_ids
(n_trials,) int64 (trials with equal clip_ids showed the same movie); loader_frames (n_trials,)
int64 (frames the official Sensorium loader keeps); session, tier (str). Stored uncompressed, so
that `open_predictions` memory-maps the predictions."""


@dataclass
class TierResult:
    """What predicting one session and tier gave: ids, frame counts, metrics, and the file."""

    session: str
    tier: str
    unit_ids: np.ndarray
    trial_ids: np.ndarray
    frame_counts: np.ndarray  # valid frames of each trial
    first_frames: np.ndarray  # first frame the model predicted in each trial (T - T')
    clip_keys: list[str]  # hash of each trial's valid video frames (equal: same clip)
    loader_frames: np.ndarray  # frames of each trial the official loader keeps
    hidden: bool  # responses withheld: no metrics
    metrics: dict[str, Any]
    npz: Path

    @property
    def clip_ids(self) -> np.ndarray:
        keys = {k: i for i, k in enumerate(dict.fromkeys(self.clip_keys))}
        return np.asarray([keys[k] for k in self.clip_keys], dtype=np.int64)


def write_npz(path: Path, predictions: Path, result: TierResult) -> None:
    """An .npz of `predictions` (an .npy file, moved into the archive uncompressed) and the ids."""
    arrays = {
        "trial_ids": np.asarray(result.trial_ids, dtype=np.int64),
        "unit_ids": np.asarray(result.unit_ids),
        "frame_counts": np.asarray(result.frame_counts, dtype=np.int64),
        "clip_ids": result.clip_ids,
        "loader_frames": np.asarray(result.loader_frames, dtype=np.int64),
        "session": np.asarray(result.session),
        "tier": np.asarray(result.tier),
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        size = predictions.stat().st_size
        with (
            open(predictions, "rb") as src,
            zf.open("predictions.npy", "w", force_zip64=size > 2**31) as dst,
        ):
            while chunk := src.read(COPY_CHUNK):  # large pieces: the CRC and I/O without the GIL
                dst.write(chunk)
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, value, allow_pickle=False)
    predictions.unlink()


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header (30 bytes)


def open_predictions(path: Path) -> np.ndarray:
    """The `predictions` array of a tier's .npz, memory-mapped when stored uncompressed (as
    `write_npz` stores it), else read into memory (older, deflated files)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("predictions.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            with zf.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        f.seek(info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1])
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(
        path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset
    )


# ------------------------------------------------------------------------------------------------
# Metrics files and table
# ------------------------------------------------------------------------------------------------


def metric_rows(result: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(session, tier, group, entry) for every entry: sessions first, then the means; group is
    "all" or "area=VISp" / "stimulus=natural_scenes" for the breakdowns."""
    rows = []
    blocks = [(s, by_tier) for s, by_tier in result["sessions"].items()]
    blocks.append(("mean", result["mean"]))
    for session, by_tier in blocks:
        for tier, m in by_tier.items():
            rows.append((session, tier, "all", m))
            for key in BREAKDOWNS:
                for label, entry in (m.get(key) or {}).items():
                    rows.append((session, tier, f"{GROUP_NAMES[key]}={label}", entry))
    return rows


def write_metrics(folder: Path, result: dict[str, Any]) -> None:
    with open(folder / "metrics.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["session", "tier", "group", *METRIC_KEYS, *COUNT_KEYS])
        for session, tier, group, m in metric_rows(result):
            values = ["" if m.get(k) is None else f"{m[k]:.6f}" for k in METRIC_KEYS]
            writer.writerow([session, tier, group, *values, *(m[k] for k in COUNT_KEYS)])


def format_table(result: dict[str, Any], hidden: set[tuple[str, str]] | None = None) -> str:
    """The metrics as a printed table; tiers without responses say "no ground truth"; the
    breakdowns by area and stimulus follow their tier, indented."""
    hidden = hidden or set()
    heads = ["session", "tier", "trials", "neurons", "single r", "r to avg", "FEVE", "CC_norm"]
    keys = ["single_trial_correlation", "correlation_to_average", "feve", "normalized_correlation"]
    rows = metric_rows(result)
    if any(m.get("ceiling_correlation") is not None for *_, m in rows):
        heads += ["ceiling", "of ceiling"]
        keys += ["ceiling_correlation", "fraction_of_ceiling"]
    lines = []
    for session, tier, group, m in rows:
        name = _short(session) if group == "all" else ""
        label = tier if group == "all" else f"  {group}"
        cells = [name, label, str(m["n_trials"]), str(m["n_neurons"])]
        no_truth = (session, tier) in hidden or all(m.get(k) is None for k in keys)
        if no_truth:
            cells += ["no ground truth"] + [""] * (len(keys) - 1)
        else:
            cells += ["-" if m.get(k) is None else f"{m[k]:.4f}" for k in keys]
        lines.append(cells)
    widths = [max(len(r[i]) for r in [heads, *lines]) for i in range(len(heads))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    rule = "-" * len(fmt(heads))
    space = result.get("score_space", "raw")
    title = f"scores in the {space} space" + (
        " (responses as the Sensorium loader normalises them)" if space == "normalized" else ""
    )
    return "\n".join([title, fmt(heads), rule, *map(fmt, lines)])


def _short(name: str, width: int = 32) -> str:
    """A session name for the table: published names by their alias (29156-11-10)."""
    if len(name) <= width:
        return name
    m = re.match(r"^dynamic(\d+-\d+-\d+)-", name)
    return m.group(1) if m else name[: width - 3] + "..."

"""Reading a synthetic session's truth back: its receptive-field table and its population (rebuilt
exactly from the generator parameters that neurotwin.json records)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from neurotwin.data import native
from neurotwin.data.synthetic.mouse import build_population
from neurotwin.data.synthetic.params import (
    GENERATOR_VERSION,
    ModelParams,
    SyntheticSizes,
    params_from_meta,
)
from neurotwin.data.synthetic.population import Population
from neurotwin.data.synthetic.receptive_fields import RF_TRUTH_COLUMNS
from neurotwin.errors import DataFormatError

RF_TRUTH_DIR = "neurons/rf_truth"  # under meta/: one {column}.npy per RF_TRUTH_COLUMNS entry


def synthetic_meta(session_dir: str | Path) -> dict[str, Any]:
    """neurotwin.json of a synthetic session; DataFormatError if the folder is not one that this
    generator version wrote."""
    path = Path(session_dir) / native.SESSION_META_FILE
    if not path.is_file():
        raise DataFormatError(path, "missing: not a synthetic session folder")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"not valid JSON ({e})") from None
    if meta.get("source") != "synthetic":
        raise DataFormatError(path, f"source is {meta.get('source')!r}, not 'synthetic'", "source")
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise DataFormatError(
            path,
            f"written by generator version {meta.get('generator_version')!r}; this code "
            f"rebuilds version {GENERATOR_VERSION}",
            "generator_version",
        )
    for key in ("seed", "mouse_index", "sizes", "params"):
        if key not in meta:
            raise DataFormatError(path, "entry missing", key)
    return meta


def session_population(
    session_dir: str | Path,
) -> tuple[Population, SyntheticSizes, ModelParams, dict[str, Any]]:
    """The population that generated a synthetic session (calibrated), with its sizes,
    parameters and neurotwin.json."""
    meta = synthetic_meta(session_dir)
    names = {f.name for f in dataclasses.fields(SyntheticSizes)}
    sizes = SyntheticSizes(**{k: v for k, v in meta["sizes"].items() if k in names})
    params = params_from_meta(meta["params"])
    pop, _ = build_population(int(meta["seed"]), int(meta["mouse_index"]), sizes, params)
    return pop, sizes, params, meta


def read_rf_truth(session_dir: str | Path) -> dict[str, np.ndarray]:
    """{column: (N,) array} of meta/neurons/rf_truth (columns: RF_TRUTH_COLUMNS)."""
    folder = Path(session_dir) / "meta" / RF_TRUTH_DIR
    if not folder.is_dir():
        raise DataFormatError(
            folder, "missing: no receptive-field truth (not a synthetic session?)"
        )
    out = {}
    for column in RF_TRUTH_COLUMNS:
        path = folder / f"{column}.npy"
        if not path.is_file():
            raise DataFormatError(path, "missing", column)
        out[column] = np.load(path)
    n = {len(v) for v in out.values()}
    if len(n) != 1:
        raise DataFormatError(folder, f"columns differ in length: {sorted(n)}")
    return out

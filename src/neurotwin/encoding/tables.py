"""The tables of an encoding run (pandas, written as parquet under a temporary name, then renamed).

- scores.parquet, long: one row per (session, unit_id, area, model, layer, tier, repeat,
  metric) with its `value`; `repeat` is null for the map fitted to the repeat average, else
  the repeat fitted on its own. Also `layer_index` (the layer's position in the model's list),
  `regressor` and `split`.
- predictivity.parquet: per (model, layer, tier, area), over the neurons of the fits to the
  repeat average: n_neurons, median_r, median_noise_corrected_r (over neurons with a positive
  reliability), median_r2, median_noise_ceiling, mean_r. Area "all" pools every area.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

SCORE_COLUMNS = [
    "session",
    "unit_id",
    "area",
    "model",
    "layer",
    "tier",
    "repeat",
    "metric",
    "value",
]
PREDICTIVITY_COLUMNS = [
    "model",
    "layer",
    "layer_index",
    "tier",
    "area",
    "n_neurons",
    "median_r",
    "median_noise_corrected_r",
    "median_r2",
    "median_noise_ceiling",
    "mean_r",
]


def score_rows(
    session: str,
    unit_ids: np.ndarray,
    areas: np.ndarray,
    model: str,
    layer: str,
    layer_index: int,
    tier: str,
    results: dict,
    regressor: str,
    split: str,
) -> pd.DataFrame:
    """Long rows of `results` ({repeat or None: {metric: (N,)}})."""
    frames = []
    n = len(unit_ids)
    for repeat, values in results.items():
        for metric, v in values.items():
            frames.append(
                pd.DataFrame(
                    {
                        "unit_id": np.asarray(unit_ids, np.int64),
                        "area": np.asarray(areas, dtype=object),
                        "metric": metric,
                        "value": np.asarray(v, np.float64),
                        "repeat": pd.array([repeat] * n, dtype="Int64"),
                    }
                )
            )
    df = pd.concat(frames, ignore_index=True)
    df["session"], df["model"], df["layer"], df["tier"] = session, model, layer, tier
    df["layer_index"], df["regressor"], df["split"] = layer_index, regressor, split
    return df[[*SCORE_COLUMNS, "layer_index", "regressor", "split"]]


def merge_scores(path: Path, new: pd.DataFrame) -> pd.DataFrame:
    """`new` on top of an earlier scores.parquet: rows of the same (model, session, tier) are
    replaced, others (another model's run into the same folder) kept."""
    if not path.is_file():
        return new
    old = pd.read_parquet(path)
    replaced = new[["model", "session", "tier"]].drop_duplicates()
    keep = old.merge(replaced, on=["model", "session", "tier"], how="left", indicator=True)
    old = old[(keep["_merge"] == "left_only").to_numpy()]
    return pd.concat([old, new], ignore_index=True)


def _summary(group: pd.DataFrame) -> pd.Series:
    wide = group.pivot_table(
        index=["session", "unit_id"], columns="metric", values="value", aggfunc="first"
    )

    def median(name: str) -> float:
        if name not in wide:
            return float("nan")
        v = wide[name].to_numpy(np.float64)
        v = v[np.isfinite(v)]
        return float(np.median(v)) if v.size else float("nan")

    r = wide["r"].to_numpy(np.float64) if "r" in wide else np.array([np.nan])
    return pd.Series(
        {
            "n_neurons": int(len(wide)),
            "median_r": median("r"),
            "median_noise_corrected_r": median("noise_corrected_r"),
            "median_r2": median("r2"),
            "median_noise_ceiling": median("noise_ceiling"),
            "mean_r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
        }
    )


def predictivity(scores: pd.DataFrame) -> pd.DataFrame:
    """Medians per (model, layer, tier, area) of the fits to the repeat average."""
    fits = scores[scores["repeat"].isna()]
    keys = ["model", "layer", "layer_index", "tier"]
    parts = [fits.groupby([*keys, "area"], sort=False).apply(_summary, include_groups=False)]
    if fits["area"].nunique() > 1 or (fits["area"] != "all").any():
        pooled = fits.groupby(keys, sort=False).apply(_summary, include_groups=False)
        pooled["area"] = "all"
        parts.append(pooled.set_index("area", append=True))
    out = pd.concat(parts).reset_index()
    out = out.drop_duplicates(subset=["model", "layer", "tier", "area"], keep="last")
    out["n_neurons"] = out["n_neurons"].astype(np.int64)
    return out[PREDICTIVITY_COLUMNS].sort_values(
        ["model", "tier", "layer_index", "area"], ignore_index=True
    )


def best_layers(table: pd.DataFrame, tier: str, area: str = "all") -> dict[str, str]:
    """{model: its layer with the highest median noise-corrected r (else median r)}."""
    rows = table[(table["tier"] == tier) & (table["area"] == area)]
    if rows.empty:
        rows = table[table["tier"] == tier]
    out = {}
    for model, group in rows.groupby("model", sort=False):
        key = (
            "median_noise_corrected_r"
            if group["median_noise_corrected_r"].notna().any()
            else "median_r"
        )
        out[model] = str(group.loc[group[key].fillna(-np.inf).idxmax(), "layer"])
    return out


def layer_order(table: pd.DataFrame, model: str) -> Sequence[str]:
    rows = table[table["model"] == model].sort_values("layer_index")
    return list(dict.fromkeys(rows["layer"]))

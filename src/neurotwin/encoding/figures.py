"""Figures of an encoding run (matplotlib, Agg, PNG), one set per tier:

- heatmap_<tier>.png: median noise-corrected r per layer x area, one panel per model;
- by_layer_<tier>.png: median noise-corrected r along each model's layers, one line per area;
- scatter_<tier>.png: per-neuron noise-corrected r of two models (each at its best layer).

Where no neuron has a positive reliability (no repeats), median r is drawn instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neurotwin.encoding.tables import best_layers, layer_order
from neurotwin.files import write_png

AREA_ORDER = ["VISp", "VISl", "VISrl", "VISal", "VISpm", "VISam"]  # mouse-vision's hierarchy


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _value(table: pd.DataFrame) -> tuple[str, str]:
    if table["median_noise_corrected_r"].notna().any():
        return "median_noise_corrected_r", "median noise-corrected r"
    return "median_r", "median r"


def _areas(table: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(table["area"]))
    ordered = [a for a in AREA_ORDER if a in present]
    rest = sorted(a for a in present if a not in ordered and a != "all")
    return ordered + rest + (["all"] if "all" in present else [])


def heatmap(table: pd.DataFrame, tier: str, path: Path) -> Path:
    plt = _plt()
    rows = table[table["tier"] == tier]
    key, label = _value(rows)
    models = list(dict.fromkeys(rows["model"]))
    areas = _areas(rows)
    width = sum(1.6 + 0.9 * len(areas) for _ in models) + 1.5
    fig, axes = plt.subplots(
        1, len(models), figsize=(width, 4), squeeze=False, layout="constrained"
    )
    values = rows[key].to_numpy(np.float64)
    vmax = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    for ax, model in zip(axes[0], models):
        layers = layer_order(rows, model)
        grid = np.full((len(layers), len(areas)), np.nan)
        sub = rows[rows["model"] == model]
        for _, r in sub.iterrows():
            grid[layers.index(r["layer"]), areas.index(r["area"])] = r[key]
        im = ax.imshow(grid, cmap="magma", vmin=min(0.0, -vmax), vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(areas)), areas, rotation=45, ha="right")
        ax.set_yticks(range(len(layers)), layers)
        ax.set_title(model, fontsize=9)
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if v < vmax / 2 else "k",
                )
    fig.colorbar(im, ax=axes[0].tolist(), label=label)
    fig.suptitle(f"{label}, tier {tier}")
    return _save(fig, path)


def by_layer(table: pd.DataFrame, tier: str, path: Path) -> Path:
    plt = _plt()
    rows = table[table["tier"] == tier]
    key, label = _value(rows)
    models = list(dict.fromkeys(rows["model"]))
    fig, axes = plt.subplots(
        1, len(models), figsize=(4.5 * len(models), 3.5), squeeze=False, layout="constrained"
    )
    for ax, model in zip(axes[0], models):
        sub = rows[rows["model"] == model]
        layers = layer_order(sub, model)
        for area in _areas(sub):
            a = sub[sub["area"] == area].set_index("layer").reindex(layers)
            ax.plot(
                range(len(layers)),
                a[key].to_numpy(),
                marker="o",
                label=area,
                lw=2.5 if area == "all" else 1.2,
            )
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(model, fontsize=9)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.legend(fontsize=7)
    return _save(fig, path)


def scatter(scores: pd.DataFrame, table: pd.DataFrame, tier: str, path: Path) -> Path | None:
    """Per-neuron scores of the first two models at their best layers; None with < 2 models."""
    best = best_layers(table, tier)
    models = list(best)[:2]
    if len(models) < 2:
        return None
    fits = scores[(scores["tier"] == tier) & scores["repeat"].isna()]
    metric = (
        "noise_corrected_r"
        if _value(table[table["tier"] == tier])[0].endswith("corrected_r")
        else "r"
    )
    cols = []
    for model in models:
        sub = fits[
            (fits["model"] == model) & (fits["layer"] == best[model]) & (fits["metric"] == metric)
        ]
        cols.append(sub.set_index(["session", "unit_id"])["value"].rename(model))
    both = pd.concat(cols, axis=1).dropna()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.2), layout="constrained")
    ax.scatter(both[models[0]], both[models[1]], s=8, alpha=0.6)
    lo = float(np.nanmin(both.to_numpy())) if len(both) else 0.0
    hi = float(np.nanmax(both.to_numpy())) if len(both) else 1.0
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8)
    ax.set_xlabel(f"{models[0]} ({best[models[0]]})", fontsize=8)
    ax.set_ylabel(f"{models[1]} ({best[models[1]]})", fontsize=8)
    ax.set_title(f"{metric} per neuron, tier {tier} (n={len(both)})", fontsize=9)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    write_png(fig, path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def all_figures(scores: pd.DataFrame, table: pd.DataFrame, folder: Path) -> list[Path]:
    out = []
    for tier in dict.fromkeys(table["tier"]):
        out.append(heatmap(table, tier, folder / f"heatmap_{tier}.png"))
        out.append(by_layer(table, tier, folder / f"by_layer_{tier}.png"))
        s = scatter(scores, table, tier, folder / f"scatter_{tier}.png")
        if s is not None:
            out.append(s)
    return out

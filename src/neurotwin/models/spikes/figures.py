"""Figures of a trained spike model (matplotlib figures, Agg backend, imported when drawing):
each function draws the tables and arrays `neurotwin.predict_spikes` gathers and returns the
figure, which predict_spikes writes (PNG, atomically).

- `coupling_figure`: the coupling filter of every ordered population pair (rows: source,
  columns: target) with its 95% band;
- `psth_figure`: per condition (rows, at most `MAX_CONDITIONS`) and population (columns) the
  mean rate of the data and of the model over the condition's trials, smoothed over 5 ms;
- `latent_figure`: each posterior-mean latent against the trial's index in its session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from neurotwin.models.spikes.base import SessionSpec

MAX_CONDITIONS = 8
SMOOTH_MS = 5.0
SPLIT_COLOURS = {"train": "tab:blue", "validation": "tab:orange", "test": "tab:green"}


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def coupling_figure(couplings: pd.DataFrame, populations: Sequence[str], title: str) -> Any:
    """The coupling filter of every ordered pair of `populations` with its 95% band."""
    plt = pyplot()
    n = len(populations)
    fig, axes = plt.subplots(n, n, figsize=(2.6 * n + 0.6, 2.1 * n + 0.6), squeeze=False)
    for i, source in enumerate(populations):
        for j, target in enumerate(populations):
            ax = axes[i, j]
            rows = couplings[(couplings["source"] == source) & (couplings["target"] == target)]
            if rows.empty:
                ax.axis("off")
                continue
            ax.fill_between(rows["lag_ms"], rows["lower"], rows["upper"], alpha=0.3, lw=0)
            ax.plot(rows["lag_ms"], rows["value"], lw=1.5)
            ax.axhline(0.0, color="k", lw=0.6)
            ax.set_title(f"{source} -> {target}", fontsize=9)
            if i == n - 1:
                ax.set_xlabel("lag (ms)")
            if j == 0:
                ax.set_ylabel("log-rate change / spike")
    fig.suptitle(f"{title}: coupling filters (95% bands)", fontsize=10)
    fig.tight_layout()
    return fig


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return x
    kernel = np.ones(width)
    # a running mean that averages over the bins inside the window only (no zero padding)
    return np.convolve(x, kernel, mode="same") / np.convolve(np.ones_like(x), kernel, mode="same")


def psth_figure(
    psth: Mapping[str, np.ndarray], spec: SessionSpec, bin_ms: float, title: str
) -> Any:
    """`psth`: data and model (conditions, units, bins) sums over trials, trials (conditions,)."""
    plt = pyplot()
    conditions = list(spec.conditions)[:MAX_CONDITIONS]
    pops = spec.slices()
    fig, axes = plt.subplots(
        len(conditions),
        len(pops),
        figsize=(3.0 * len(pops) + 0.5, 1.6 * len(conditions) + 0.8),
        squeeze=False,
        sharex=True,
    )
    width = max(1, int(round(SMOOTH_MS / bin_ms)))
    t = (np.arange(psth["data"].shape[-1]) + 0.5) * bin_ms
    to_hz = 1000.0 / bin_ms
    for c, condition in enumerate(conditions):
        n = max(psth["trials"][c], 1)
        for j, (population, rows) in enumerate(pops.items()):
            ax = axes[c, j]
            data = psth["data"][c, rows].mean(0) / n * to_hz
            model = psth["model"][c, rows].mean(0) / n * to_hz
            ax.plot(t, _smooth(data, width), color="0.5", lw=1, label="data")
            ax.plot(t, _smooth(model, width), color="tab:red", lw=1.2, label="model")
            if c == 0:
                ax.set_title(population, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{condition}\n(Hz)", fontsize=8)
    axes[-1, 0].set_xlabel("time in window (ms)")
    axes[0, -1].legend(fontsize=7, frameon=False)
    shown = "" if len(spec.conditions) <= MAX_CONDITIONS else f" (first {MAX_CONDITIONS})"
    fig.suptitle(f"{title}: PSTH per condition{shown}, mean over units", fontsize=10)
    fig.tight_layout()
    return fig


def latent_figure(latents: pd.DataFrame, title: str) -> Any:
    plt = pyplot()
    columns = [c for c in latents.columns if c.startswith("z") and c[1:].isdigit()]
    fig, axes = plt.subplots(len(columns), 1, figsize=(7, 1.5 * len(columns) + 0.8), squeeze=False)
    for ax, column in zip(axes[:, 0], columns):
        for split, rows in latents.groupby("split"):
            ax.scatter(
                rows["trial_index"], rows[column], s=4, color=SPLIT_COLOURS.get(split), label=split
            )
        ax.set_ylabel(column)
    axes[-1, 0].set_xlabel("trial index (order in the session)")
    axes[0, 0].legend(fontsize=7, frameon=False, markerscale=2)
    fig.suptitle(f"{title}: posterior-mean latents", fontsize=10)
    fig.tight_layout()
    return fig

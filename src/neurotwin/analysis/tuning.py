"""tuning: direction, orientation and spatial-frequency tuning from drifting full-field gratings.

Gratings (stimuli.CONVENTIONS) of every direction x spatial frequency x starting phase are shown
in blocks (`block_frames`, then `blank_frames` of grey), in a fixed shuffled order. A block's
response is its mean over the frames after `transient_frames` (the onset transient), cut to a
whole number of drift cycles. Per neuron: the preferred spatial frequency is the one whose best
direction drives it most (refined by a parabola in log frequency); at that frequency, OSI and DSI
are vector sums over directions (as ViV1T), preferred orientation is half the angle of the
orientation vector, preferred direction the one of its two directions that drives the neuron
more; p-values come from permuting the block responses over directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neurotwin.analysis import fitting, output
from neurotwin.analysis.context import Context, SessionResult
from neurotwin.analysis.gratings import GratingTiming, factorial, present_gratings
from neurotwin.analysis.registry import ANALYSES, Analysis
from neurotwin.analysis.stimuli import grating
from neurotwin.config import option
from neurotwin.errors import ConfigError

DEFAULT_SF = [float(v) for v in np.round(2.0 ** np.linspace(-5, -2, 7), 5)]  # 1/32 .. 1/4


@dataclass
class TuningOptions(GratingTiming):
    """Drifting full-field gratings over directions and spatial frequencies."""

    directions: int = option(12, "directions, evenly spaced from 0 degrees")
    spatial_frequencies: list[float] = option(DEFAULT_SF, "cycles per pixel")
    permutations: int = option(1000, "relabellings for the OSI/DSI p-values")
    figure_neurons: int = option(12, "neurons in the polar-plot figure")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.directions < 4:
            raise ConfigError(f"--directions must be >= 4, got {self.directions}")
        if not self.spatial_frequencies or min(self.spatial_frequencies) <= 0:
            raise ConfigError("--spatial_frequencies: expected positive cycles per pixel")


@ANALYSES.register("tuning")
class TuningAnalysis(Analysis):
    """Orientation, direction and spatial-frequency tuning from drifting gratings."""

    Options = TuningOptions
    description = "drifting full-field gratings: direction/orientation/spatial-frequency tuning, OSI/DSI with permutation p-values"

    def run_session(self, ctx: Context, session: str) -> SessionResult:
        import pandas as pd

        o, probe = self.options, ctx.subject.probe(session)
        directions = np.arange(o.directions) * 360.0 / o.directions
        sfs = np.asarray(o.spatial_frequencies, dtype=np.float64)
        phases = np.arange(o.phases) * 360.0 / o.phases
        conditions = factorial(sf=sfs, direction=directions, phase=phases)
        dev = ctx.subject.device

        def make_block(c: dict, frames: int) -> torch.Tensor:
            g = grating(
                probe.frame_shape,
                frames,
                c["direction"],
                c["sf"],
                o.temporal_frequency,
                o.contrast,
                np.radians(c["phase"]),
                probe.frame_rate,
                dev,
            )
            return probe.grey + probe.amplitude * g

        responses, baseline = present_gratings(
            ctx, session, o, conditions, make_block, f"tuning {session[:24]}"
        )
        samples = responses.reshape(-1, len(sfs), len(directions), len(phases))  # (N, S, D, P)
        curves = samples.mean(-1)
        per_sf = curves.max(-1)  # (N, S)
        best_sf = per_sf.argmax(1)
        n = len(curves)
        at_best = curves[np.arange(n), best_sf]  # (N, D)
        v = fitting.vector_sums(at_best, directions)
        rng = np.random.default_rng(0)
        osi_p, dsi_p = fitting.permutation_p(
            samples[np.arange(n), best_sf], directions, o.permutations, rng
        )
        ori = v["orientation_deg"]
        both = np.stack([ori, ori + 180.0], 1)
        response_at = np.stack(
            [_interp_circular(at_best, directions, both[:, j]) for j in range(2)], 1
        )
        preferred_direction = both[np.arange(n), response_at.argmax(1)] % 360.0
        table = pd.DataFrame(
            {
                "preferred_direction_deg": preferred_direction,
                "preferred_orientation_deg": ori,
                "preferred_sf": fitting.peak_log_interpolated(per_sf, sfs),
                "osi": v["osi"],
                "dsi": v["dsi"],
                "osi_p": osi_p,
                "dsi_p": dsi_p,
                "vector_direction_deg": v["direction_deg"],
                "peak_response": at_best.max(1),
                "baseline_response": baseline,
                "preferred_sf_grid": sfs[best_sf],
            }
        )
        arrays = {
            "responses": samples.astype(np.float32),
            "directions_deg": directions,
            "spatial_frequencies": sfs,
            "phases_deg": phases,
            "baseline": baseline,
        }
        summary = _summary(table)
        figures = {
            "polar": _polar_figure(at_best, directions, table, o.figure_neurons),
            "orientations": _orientation_histogram(table),
        }
        return SessionResult(table, arrays, figures, summary)

    def summarise(self, results) -> dict:
        import pandas as pd

        return _summary(pd.concat([r.table for r in results.values()]))


def _interp_circular(curves: np.ndarray, directions: np.ndarray, at_deg: np.ndarray) -> np.ndarray:
    """Linear interpolation of curves (N, D) over circular directions at one angle per neuron."""
    step = 360.0 / len(directions)
    pos = (np.asarray(at_deg) % 360.0) / step
    lo = np.floor(pos).astype(int) % len(directions)
    hi = (lo + 1) % len(directions)
    f = pos - np.floor(pos)
    rows = np.arange(len(curves))
    return (1 - f) * curves[rows, lo] + f * curves[rows, hi]


def _summary(table) -> dict:
    selective = table["osi_p"] < 0.05
    return {
        "neurons": int(len(table)),
        "orientation_selective (osi_p < 0.05)": int(selective.sum()),
        "direction_selective (dsi_p < 0.05)": int((table["dsi_p"] < 0.05).sum()),
        "osi_median": float(table["osi"].median()),
        "dsi_median": float(table["dsi"].median()),
        "preferred_sf_median": float(table["preferred_sf"].median()),
    }


def _polar_figure(curves: np.ndarray, directions: np.ndarray, table, count: int):
    order = np.argsort(-table["peak_response"].to_numpy())[:count]
    rows, cols = output.grid_shape(len(order))
    fig, axes = output.figure(rows, cols, size=(1.9, 1.9), subplot_kw={"projection": "polar"})
    for ax in axes.ravel():
        ax.axis("off")
    theta = np.radians(np.r_[directions, directions[:1]])
    for ax, i in zip(axes.ravel(), order):
        ax.axis("on")
        r = np.r_[curves[i], curves[i][:1]]
        ax.plot(theta, r, "C0-", lw=1)
        ax.fill(theta, r, "C0", alpha=0.2)
        ax.set_theta_direction(-1)  # y grows downwards on the screen: clockwise as displayed
        ax.set_xticks(np.radians([0, 90, 180, 270]))
        ax.set_xticklabels(["0", "90", "180", "270"], fontsize=5)
        ax.set_ylim(0, None)  # radius from zero response
        ax.set_yticklabels([])
        ax.set_title(
            f"#{table.index[i]} OSI {table['osi'].iloc[i]:.2f} DSI {table['dsi'].iloc[i]:.2f}",
            fontsize=6,
        )
    fig.suptitle("direction tuning at the preferred spatial frequency", fontsize=8)
    return fig


def _orientation_histogram(table):
    fig, axes = output.figure(1, 1, size=(4.0, 2.6))
    ax = axes[0, 0]
    sel = table["osi_p"] < 0.05
    ax.hist(
        table.loc[sel, "preferred_orientation_deg"],
        bins=np.arange(0, 181, 15),
        color="C0",
        edgecolor="w",
    )
    ax.set_xlabel("preferred orientation (degrees)")
    ax.set_ylabel("neurons (osi_p < 0.05)")
    ax.set_xlim(0, 180)
    return fig

"""size: size tuning from circular gratings centred on each neuron's aRF (Keller et al. 2020, as
in ViV1T's tuning_feedbackRF).

Each neuron sees drifting gratings at its preferred direction (the tuning table) in a disc of
each diameter around its aRF centre (the arf table), grey outside ("classical"), and the same
grating outside the disc, grey inside ("inverse"). The spatial frequency is the one that a small
patch over the classical field (`patch_sigmas` x the aRF's sigma across) prefers, since a
full-field preference is biased where the surround suppresses (`sf_source tuning` uses the
tuning table's). Responses are relative to the grey baseline. The preferred size is the diameter that drives the neuron most
(refined by a parabola in log diameter); suppression index = (R_pref - R_largest) / R_pref, the
responses taken at the sizes shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from neurotwin.analysis import fitting, output
from neurotwin.analysis.context import Context, SessionResult
from neurotwin.analysis.gratings import GratingTiming, factorial, present_gratings
from neurotwin.analysis.registry import ANALYSES, Analysis
from neurotwin.analysis.stimuli import disc, grating
from neurotwin.analysis.tuning import DEFAULT_SF
from neurotwin.config import option


def default_sizes(width: int) -> list[float]:
    """Diameters from width / 16 to 2 x width in steps of sqrt(2), pixels."""
    return [float(v) for v in np.round(width / 16 * np.sqrt(2) ** np.arange(11), 2)]


@dataclass
class SizeOptions(GratingTiming):
    """Classical and inverse circular gratings at each neuron's aRF centre."""

    sizes_px: list[float] = option(
        [], "disc diameters in pixels (empty: W/16 to 2W, steps of sqrt 2)"
    )
    sf_source: Literal["patch", "tuning"] = option(
        "patch", "spatial frequency: preferred by a patch over the aRF, or the full-field one"
    )
    patch_sigmas: float = option(3.0, "patch diameter in aRF sigmas (sf_source patch)")
    patch_frequencies: list[float] = option(DEFAULT_SF, "frequencies tried on the patch, cycles/px")
    block_frames: int = option(30, "frames of each grating block (1 s at 30 Hz)")
    phases: int = option(1, "starting phases per condition (spread over a cycle)")
    figure_neurons: int = option(12, "neurons in the size-tuning figure")


@dataclass
class Targets:
    """Where and what to show each analysed neuron: centre (N, 2) px, direction (N,) degrees,
    spatial frequency (N,) cycles per pixel."""

    center: np.ndarray
    direction: np.ndarray
    sf: np.ndarray


def targets_from_tables(ctx: Context, session: str) -> Targets:
    """Each neuron's aRF centre and preferred direction and frequency (arf and tuning tables,
    computed first when missing); NaNs (failed fits) fall back to the frame centre and the
    median preference."""
    arf, tuning = ctx.table("arf", session), ctx.table("tuning", session)
    h, w = ctx.subject.probe(session).frame_shape
    center = arf[["center_x", "center_y"]].to_numpy(dtype=np.float64)
    center = np.where(np.isfinite(center), center, [(w - 1) / 2, (h - 1) / 2])
    center = np.clip(center, [0, 0], [w - 1, h - 1])
    direction = tuning["preferred_direction_deg"].to_numpy(dtype=np.float64)
    sf = tuning["preferred_sf"].to_numpy(dtype=np.float64)
    direction = np.where(np.isfinite(direction), direction, 0.0)
    sf = np.where(np.isfinite(sf), sf, np.nanmedian(sf) if np.isfinite(sf).any() else 0.1)
    return Targets(center, direction, sf)


@ANALYSES.register("size")
class SizeAnalysis(Analysis):
    """Classical and inverse size tuning at each neuron's aRF centre."""

    Options = SizeOptions
    needs = ("arf", "tuning")
    description = "size tuning: classical (disc) and inverse (annulus) drifting gratings at each neuron's aRF centre"

    def sizes(self, width: int) -> np.ndarray:
        return np.asarray(self.options.sizes_px or default_sizes(width), dtype=np.float64)

    def measure(self, ctx: Context, session: str, targets: Targets):
        """Responses (N, sizes, 2 [classical, inverse], phases) and the grey baseline (N,)."""
        o, probe = self.options, ctx.subject.probe(session)
        sizes = self.sizes(probe.frame_shape[1])
        phases = np.arange(o.phases) * 2 * np.pi / o.phases
        n = len(targets.sf)
        conditions = factorial(neuron=np.arange(n), size=sizes, inverse=np.arange(2), phase=phases)
        neuron = conditions["neuron"]
        dev = ctx.subject.device

        def make_block(c: dict, frames: int) -> torch.Tensor:
            i = c["neuron"]
            g = grating(
                probe.frame_shape,
                frames,
                targets.direction[i],
                targets.sf[i],
                o.temporal_frequency,
                o.contrast,
                c["phase"],
                probe.frame_rate,
                dev,
            )
            mask = disc(probe.frame_shape, targets.center[i], c["size"], dev)
            inverse = torch.as_tensor(c["inverse"], device=dev, dtype=torch.float32)[:, None, None]
            mask = mask + inverse * (1 - 2 * mask)  # inverse: 1 - disc
            return probe.grey + probe.amplitude * g * mask[:, None]

        r, baseline = present_gratings(
            ctx, session, o, conditions, make_block, f"size {session[:24]}", targets=neuron
        )
        return r.reshape(n, len(sizes), 2, len(phases)), baseline

    def patch_sf(self, ctx: Context, session: str, targets: Targets, diameter: np.ndarray):
        """The spatial frequency (N,) a patch of `diameter` (N,) at each aRF centre prefers, at
        the neuron's preferred direction or the opposite one (whichever responds more)."""
        o, probe = self.options, ctx.subject.probe(session)
        sfs = np.asarray(o.patch_frequencies, dtype=np.float64)
        n = len(targets.sf)
        conditions = factorial(neuron=np.arange(n), sf=sfs, turn=np.array([0.0, 180.0]))
        neuron = conditions["neuron"]
        dev = ctx.subject.device

        def make_block(c: dict, frames: int) -> torch.Tensor:
            i = c["neuron"]
            args = (o.temporal_frequency, o.contrast, 0.0, probe.frame_rate, dev)
            g = grating(probe.frame_shape, frames, targets.direction[i] + c["turn"], c["sf"], *args)
            mask = disc(probe.frame_shape, targets.center[i], diameter[i], dev)
            return probe.grey + probe.amplitude * g * mask[:, None]

        r, _ = present_gratings(
            ctx, session, o, conditions, make_block, f"size sf {session[:20]}", targets=neuron
        )
        per_sf = r.reshape(n, len(sfs), 2).max(-1)
        return fitting.peak_log_interpolated(per_sf, sfs)

    def run_session(self, ctx: Context, session: str) -> SessionResult:
        import pandas as pd

        targets = targets_from_tables(ctx, session)
        if self.options.sf_source == "patch":
            arf = ctx.table("arf", session)
            sigma = np.sqrt(
                arf["sigma_x"].to_numpy(dtype=np.float64)
                * arf["sigma_y"].to_numpy(dtype=np.float64)
            )
            sigma = np.where(
                np.isfinite(sigma), sigma, np.nanmedian(sigma) if np.isfinite(sigma).any() else 2.0
            )
            targets.sf = self.patch_sf(ctx, session, targets, self.options.patch_sigmas * sigma)
        responses, baseline = self.measure(ctx, session, targets)
        sizes = self.sizes(ctx.subject.probe(session).frame_shape[1])
        curves = responses.mean(-1) - baseline[:, None, None]  # (N, S, 2), relative to grey
        table = pd.DataFrame(tuning_metrics(curves, sizes))
        table["center_x"], table["center_y"] = targets.center[:, 0], targets.center[:, 1]
        table["direction_deg"], table["sf"] = targets.direction, targets.sf
        arrays = {
            "responses": responses.astype(np.float32),
            "baseline": baseline,
            "sizes_px": sizes,
            "curves": curves.astype(np.float32),
        }
        summary = _summary(table)
        figures = {"curves": _figure(curves, sizes, table, self.options.figure_neurons)}
        return SessionResult(table, arrays, figures, summary)

    def summarise(self, results) -> dict:
        import pandas as pd

        return _summary(pd.concat([r.table for r in results.values()]))


def tuning_metrics(curves: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
    """From baseline-relative curves (N, S, 2 [classical, inverse]): preferred classical and
    inverse sizes and the suppression index (NaN where the neuron never rises above grey)."""
    classical, inverse = curves[..., 0], curves[..., 1]
    peak = classical.max(1)
    largest = classical[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        si = np.where(peak > 0, (peak - largest) / peak, np.nan)
    return {
        "preferred_size_px": np.where(
            peak > 0, fitting.peak_log_interpolated(classical, sizes), np.nan
        ),
        "suppression_index": si,
        "preferred_inverse_size_px": fitting.peak_log_interpolated(inverse, sizes),
        "peak_response": peak,
        "largest_response": largest,
        "inverse_peak_response": inverse.max(1),
    }


def _summary(table) -> dict:
    si = table["suppression_index"]
    return {
        "neurons": int(len(table)),
        "preferred_size_median_px": float(table["preferred_size_px"].median()),
        "suppression_index_median": float(si.median()),
        "suppressed (si > 0.1)": int((si > 0.1).sum()),
    }


def _figure(curves: np.ndarray, sizes: np.ndarray, table, count: int):
    from matplotlib.ticker import NullFormatter

    order = np.argsort(-table["peak_response"].to_numpy())[:count]
    rows, cols = output.grid_shape(len(order), 4)
    fig, axes = output.figure(rows, cols, size=(2.2, 1.7))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order):
        ax.axis("on")
        ax.semilogx(sizes, curves[i, :, 0], "C0o-", ms=2, lw=1, label="classical")
        ax.semilogx(sizes, curves[i, :, 1], "C1s-", ms=2, lw=1, label="inverse")
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(table["preferred_size_px"].iloc[i], color="C0", lw=0.5, ls="--")
        ax.set_title(f"#{table.index[i]} SI {table['suppression_index'].iloc[i]:.2f}", fontsize=7)
        ticks = [v for v in 2.0 ** np.arange(0, 9) if sizes[0] <= v <= sizes[-1]]
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=6)
    axes.ravel()[0].legend(fontsize=6)
    fig.suptitle("size tuning (response - grey) vs disc diameter (px)", fontsize=8)
    return fig

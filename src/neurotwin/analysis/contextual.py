"""contextual: centre-surround contextual modulation (Keller et al. 2020; ViV1T Figures 2 and 4).

A drifting grating at each neuron's preferred direction and spatial frequency (those the size
analysis used) fills a disc at its aRF centre (diameter: its preferred size from the size table,
or `center_size_px`, then with the tuning table's frequency); outside the
disc the screen is grey ("center"), or shows the same grating ("iso") or the grating turned by
90 degrees ("cross"), each at every contrast in `contrasts` (centre and surround alike).
Per neuron and contrast: modulation indices (iso - center) / (iso + center), (cross - center) /
(cross + center) and (cross - iso) / (cross + iso) (ViV1T's); population Wilcoxon signed-rank tests
of iso vs center, cross vs center and cross vs iso go to summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neurotwin.analysis import output
from neurotwin.analysis.context import Context, SessionResult
from neurotwin.analysis.gratings import GratingTiming, factorial, present_gratings
from neurotwin.analysis.registry import ANALYSES, Analysis
from neurotwin.analysis.size import Targets, targets_from_tables
from neurotwin.analysis.stimuli import disc, grating
from neurotwin.config import option
from neurotwin.errors import ConfigError

CONDITIONS = ("center", "iso", "cross")


@dataclass
class ContextualOptions(GratingTiming):
    """Centre gratings with no, iso- and cross-oriented surround, at several contrasts."""

    contrasts: list[float] = option(
        [0.05, 1.0], "contrasts of centre and surround (ViV1T: 5%, 100%)"
    )
    center_size_px: float = option(
        0.0, "centre diameter in pixels (0: each neuron's preferred size)"
    )
    block_frames: int = option(30, "frames of each grating block (1 s at 30 Hz)")
    phases: int = option(1, "starting phases per condition (spread over a cycle)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.contrasts or not all(0 < c <= 1 for c in self.contrasts):
            raise ConfigError(f"--contrasts must lie in (0, 1], got {self.contrasts}")
        if self.center_size_px < 0:
            raise ConfigError(f"--center_size_px must be >= 0, got {self.center_size_px}")


def _label(contrast: float) -> str:
    return f"c{round(100 * contrast):d}"


@ANALYSES.register("contextual")
class ContextualAnalysis(Analysis):
    """Iso- and cross-oriented surround modulation of a centre grating at the aRF."""

    Options = ContextualOptions
    needs = ("arf", "tuning", "size")
    description = "centre-surround modulation: centre grating at the aRF with no, iso- or cross-oriented surround, at two contrasts"

    def measure(self, ctx: Context, session: str, targets: Targets, diameter: np.ndarray):
        """Responses (N, contrasts, 3 [center, iso, cross], phases) and the grey baseline (N,)."""
        o, probe = self.options, ctx.subject.probe(session)
        contrasts = np.asarray(o.contrasts, dtype=np.float64)
        phases = np.arange(o.phases) * 2 * np.pi / o.phases
        n = len(targets.sf)
        conditions = factorial(
            neuron=np.arange(n), contrast=contrasts, kind=np.arange(3), phase=phases
        )
        neuron = conditions["neuron"]
        dev = ctx.subject.device

        def make_block(c: dict, frames: int) -> torch.Tensor:
            i, shape = c["neuron"], probe.frame_shape
            args = (o.temporal_frequency, c["contrast"], c["phase"], probe.frame_rate, dev)
            center = grating(shape, frames, targets.direction[i], targets.sf[i], *args)
            turn = np.where(c["kind"] == 2, 90.0, 0.0)
            surround = grating(shape, frames, targets.direction[i] + turn, targets.sf[i], *args)
            surround = (
                surround
                * torch.as_tensor(c["kind"] > 0, device=dev, dtype=torch.float32)[
                    :, None, None, None
                ]
            )
            mask = disc(shape, targets.center[i], diameter[i], dev)[:, None]
            return probe.grey + probe.amplitude * (mask * center + (1 - mask) * surround)

        r, baseline = present_gratings(
            ctx, session, o, conditions, make_block, f"contextual {session[:20]}", targets=neuron
        )
        return r.reshape(n, len(contrasts), 3, len(phases)), baseline

    def run_session(self, ctx: Context, session: str) -> SessionResult:
        import pandas as pd

        o = self.options
        targets = targets_from_tables(ctx, session)
        if o.center_size_px > 0:
            diameter = np.full(len(targets.sf), o.center_size_px)
        else:  # the size table's centre, direction and (patch) frequency, and preferred size
            table = ctx.table("size", session)
            sf = table["sf"].to_numpy(dtype=np.float64)
            targets.sf = np.where(np.isfinite(sf), sf, targets.sf)
            targets.direction = table["direction_deg"].to_numpy(dtype=np.float64)
            size = table["preferred_size_px"].to_numpy(dtype=np.float64)
            fallback = (
                np.nanmedian(size)
                if np.isfinite(size).any()
                else ctx.subject.probe(session).frame_shape[1] / 4
            )
            diameter = np.where(np.isfinite(size), size, fallback)
        responses, baseline = self.measure(ctx, session, targets, diameter)
        r = responses.mean(-1)  # (N, contrasts, 3)
        columns = {"center_size_px": diameter}
        for j, contrast in enumerate(o.contrasts):
            c, iso, cross = r[:, j, 0], r[:, j, 1], r[:, j, 2]
            label = _label(contrast)
            with np.errstate(invalid="ignore", divide="ignore"):
                columns[f"center_{label}"] = c
                columns[f"iso_{label}"] = iso
                columns[f"cross_{label}"] = cross
                columns[f"mi_iso_{label}"] = (iso - c) / (iso + c)
                columns[f"mi_cross_{label}"] = (cross - c) / (cross + c)
                columns[f"mi_cross_iso_{label}"] = (cross - iso) / (cross + iso)
        table = pd.DataFrame(columns)
        arrays = {
            "responses": responses.astype(np.float32),
            "baseline": baseline,
            "contrasts": np.asarray(o.contrasts),
            "conditions": np.asarray(CONDITIONS),
        }
        summary = population_tests(table, o.contrasts)
        figures = {"modulation": _figure(table, o.contrasts)}
        return SessionResult(table, arrays, figures, summary)

    def summarise(self, results) -> dict:
        import pandas as pd

        return population_tests(
            pd.concat([r.table for r in results.values()]), self.options.contrasts
        )


def population_tests(table, contrasts) -> dict:
    """Per contrast: Wilcoxon signed-rank tests over neurons (iso vs center, cross vs center,
    cross vs iso) with median indices."""
    from scipy.stats import wilcoxon

    out = {"neurons": int(len(table))}
    for contrast in contrasts:
        label = _label(contrast)
        tests = {}
        for a, b in (("iso", "center"), ("cross", "center"), ("cross", "iso")):
            x, y = table[f"{a}_{label}"].to_numpy(), table[f"{b}_{label}"].to_numpy()
            ok = np.isfinite(x) & np.isfinite(y) & (x != y)
            entry = {
                "n": int(ok.sum()),
                "median_difference": float(np.median(x[ok] - y[ok])) if ok.any() else None,
            }
            if ok.sum() >= 2:
                res = wilcoxon(x[ok], y[ok])
                entry.update(statistic=float(res.statistic), p=float(res.pvalue))
            tests[f"{a}_vs_{b}"] = entry
        indices = {
            k: float(table[f"{k}_{label}"].median()) for k in ("mi_iso", "mi_cross", "mi_cross_iso")
        }
        out[label] = {"contrast": float(contrast), "wilcoxon": tests, "median_indices": indices}
    return out


def _figure(table, contrasts):
    fig, axes = output.figure(1, len(contrasts), size=(3.0, 2.6))
    for ax, contrast in zip(axes[0], contrasts):
        label = _label(contrast)
        values = [table[f"{k}_{label}"].to_numpy() for k in CONDITIONS]
        norm = values[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = [v / norm for v in values]
        for row in np.stack(rel, 1)[:200]:
            ax.plot(range(3), row, color="0.7", lw=0.4)
        ax.plot(range(3), [np.nanmedian(v) for v in rel], "C3o-", lw=2)
        ax.set_xticks(range(3))
        ax.set_xticklabels(CONDITIONS)
        ax.set_ylabel("response / centre alone")
        ax.set_title(f"contrast {contrast:g}", fontsize=8)
    fig.suptitle("contextual modulation (grey: neurons, red: median)", fontsize=8)
    return fig

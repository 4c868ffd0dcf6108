"""readout: where each neuron's readout looks on the screen, how wide, with which features, and
how the shifter moves the positions with gaze.

Gaussian readouts hold positions in grid_sample coordinates of the core's feature map ([-1, 1],
align_corners=True); they are mapped to frame pixels through the core's geometry (feature map
pixel j of a same-padded convolutional core is frame pixel j; of a ViViT core, the centre of
patch j: j * stride + (patch - 1) / 2 - padding). The spread (Sigma Sigma^T of a full readout,
sigma^2 of the others) maps the same way; ellipses show 1 sigma. Positions are those at the held
gaze (readout position + the shifter's shift there), as the other analyses probe them.

For the ground-truth module the "readout" is the truth itself: receptive-field centres and
envelope sigmas, and the generator's gaze gain as the shifter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neurotwin.analysis import output
from neurotwin.analysis.context import Context, SessionResult
from neurotwin.analysis.registry import ANALYSES, Analysis
from neurotwin.config import option
from neurotwin.data import native

log = logging.getLogger(__name__)


@dataclass
class ReadoutOptions:
    """Readout maps and the shifter's gaze grid."""

    gaze_range: float = option(
        2.0, "shifter grid: pupil centre within +- this many s.d. of the mean"
    )
    gaze_steps: int = option(9, "shifter grid: points per axis")
    heatmap_neurons: int = option(200, "neurons in the feature-weight heatmap (ordered by x)")


def grid_to_pixels(core: Any, frame_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) per axis (x, y) with pixel = a * g + b for grid coordinate g in [-1, 1]."""
    h, w = frame_shape
    core = getattr(core, "_orig_mod", core)
    if all(hasattr(core, k) for k in ("ss", "ps", "spatial_padding", "grid")):  # patch cores
        gh, gw = core.grid
        left, _, top, _ = core.spatial_padding
        a = np.array([(gw - 1) / 2 * core.ss, (gh - 1) / 2 * core.ss])
        b = a + (core.ps - 1) / 2 - np.array([left, top])
        return a, b
    fh, fw = core.out_shape(frame_shape)
    if (fh, fw) != (h, w):
        log.warning(
            "core maps %s frames to %s features: assuming they span the frame",
            frame_shape,
            (fh, fw),
        )
    a = np.array([(w - 1) / 2, (h - 1) / 2])
    return a, a.copy()


def _ellipses(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sigma_x >= sigma_y and angle (degrees, major axis from +x towards +y) of (N, 2, 2)."""
    vals, vecs = np.linalg.eigh(cov)
    major = vecs[:, :, 1]
    angle = np.degrees(np.arctan2(major[:, 1], major[:, 0]))
    angle = (angle + 90.0) % 180.0 - 90.0
    s = np.sqrt(np.clip(vals, 0, None))
    return s[:, 1], s[:, 0], angle


def _truth_geometry(subject, session: str) -> dict[str, Any]:
    from neurotwin.data.synthetic import read_rf_truth

    probe = subject.probe(session)
    truth = read_rf_truth(probe.session.path)
    module = subject.model.truths[session]
    eye = module.eye_center.cpu().numpy().astype(np.float64)
    gain = module.gaze_gain_px

    def shift(pupil: np.ndarray) -> np.ndarray:
        return gain * (np.asarray(pupil, dtype=np.float64) - eye)

    center = np.stack([truth["center_x"], truth["center_y"]], 1).astype(np.float64)
    theta = np.radians(np.nan_to_num(truth["orientation_deg"].astype(np.float64)))
    su, sv = truth["sigma_px"].astype(np.float64), truth["sigma_orth_px"].astype(np.float64)
    rot = np.stack(
        [
            np.stack([np.cos(theta), -np.sin(theta)], -1),
            np.stack([np.sin(theta), np.cos(theta)], -1),
        ],
        1,
    )
    cov = rot @ (np.stack([su**2, sv**2], 1)[:, :, None] * np.eye(2)) @ np.transpose(rot, (0, 2, 1))
    return _geometry(center, cov, None, shift, probe.pupil_center, "ground truth")


def _geometry(at_rest, cov, features, shift, pupil_center, kind: str) -> dict[str, Any]:
    """readout_geometry's answer: positions at rest moved by the shift at the held gaze."""
    return {
        "positions": at_rest + shift(pupil_center),
        "positions_at_rest": at_rest,
        "cov": cov,
        "features": features,
        "shift": shift,
        "kind": kind,
    }


def readout_geometry(subject, session: str) -> dict[str, Any] | None:
    """Positions (N, 2) and spreads (N, 2, 2) in pixels at the held gaze, feature weights
    (C, N) and the shifter as pupil (M, 2) -> shift (M, 2) pixels; None without a Gaussian
    readout."""
    if subject.kind == "truth":
        return _truth_geometry(subject, session)
    model = subject.model
    readout = model.readouts[session]
    if not hasattr(readout, "mu"):
        return None
    probe = subject.probe(session)
    a, b = grid_to_pixels(model.core, probe.frame_shape)
    with torch.no_grad():
        mu = readout.mu.detach().float().cpu().numpy().astype(np.float64)
        sigma = readout.sigma.detach().float().cpu().numpy().astype(np.float64)
        features = readout.features.detach().float().cpu().numpy()
    n = len(mu)
    if sigma.ndim == 3:  # full: offset = Sigma n, covariance Sigma Sigma^T
        cov = sigma @ np.transpose(sigma, (0, 2, 1))
    else:
        s2 = np.broadcast_to(sigma**2, (n, 2))
        cov = s2[:, :, None] * np.eye(2)
    scale = np.diag(a)
    cov = scale @ cov @ scale
    shifter = None
    if model.shifters is not None and session in model.shifters:
        shifter = model.shifters[session]

    def shift(pupil: np.ndarray) -> np.ndarray:
        pupil = np.asarray(pupil, dtype=np.float32).reshape(-1, 2)
        if shifter is None:
            return np.zeros((len(pupil), 2))
        it = probe.input_transform
        dev = subject.device
        p = torch.as_tensor(pupil.T[None], device=dev)  # (1, 2, M)
        beh = torch.as_tensor(np.repeat(probe.behavior[:, None], len(pupil), 1)[None], device=dev)
        with torch.no_grad():
            s = shifter(it(native.BEHAVIOR, beh.float()), it(native.PUPIL_CENTER, p))[0]
        return s.float().cpu().numpy() * a

    kind = "gaussian readout" + (" with shifter" if shifter is not None else "")
    return _geometry(mu * a + b, cov, features, shift, probe.pupil_center, kind)


@ANALYSES.register("readout")
class ReadoutAnalysis(Analysis):
    """Readout positions with sigma ellipses, feature weights, and the shifter's movement."""

    Options = ReadoutOptions
    description = "readout positions on the screen, spreads, feature weights, shifter movement"

    def run_session(self, ctx: Context, session: str) -> SessionResult:
        import pandas as pd

        o, probe = self.options, ctx.subject.probe(session)
        geometry = readout_geometry(ctx.subject, session)
        idx = ctx.neurons(session)
        if geometry is None:
            from neurotwin.errors import ConfigError

            raise ConfigError(f"{session}: the readout has no positions (not a Gaussian readout)")
        pos, cov = geometry["positions"][idx], geometry["cov"][idx]
        sx, sy, angle = _ellipses(cov)
        offsets = np.linspace(-o.gaze_range, o.gaze_range, o.gaze_steps)
        gx, gy = np.meshgrid(
            probe.pupil_center[0] + offsets * probe.pupil_std[0],
            probe.pupil_center[1] + offsets * probe.pupil_std[1],
        )
        pupils = np.stack([gx.ravel(), gy.ravel()], 1)
        shifts = geometry["shift"](pupils) - geometry["shift"](probe.pupil_center[None])[0]
        slope = np.linalg.lstsq(
            np.c_[pupils - probe.pupil_center, np.ones(len(pupils))], shifts, rcond=None
        )[0][:2]
        table = pd.DataFrame(
            {
                "readout_x": pos[:, 0],
                "readout_y": pos[:, 1],
                "readout_sigma_x": sx,
                "readout_sigma_y": sy,
                "readout_angle_deg": angle,
            }
        )
        arf = ctx.folder("arf") / f"{session}.parquet"
        if arf.is_file():
            centers = ctx.table("arf", session)
            table["arf_center_x"] = centers["center_x"].to_numpy()
            table["arf_center_y"] = centers["center_y"].to_numpy()
            table["arf_distance_px"] = np.hypot(
                table["readout_x"] - table["arf_center_x"],
                table["readout_y"] - table["arf_center_y"],
            )
        arrays = {
            "positions": pos,
            "positions_at_rest": geometry["positions_at_rest"][idx],
            "cov": cov,
            "gaze_grid": pupils,
            "shifts_px": shifts,
        }
        if geometry["features"] is not None:
            arrays["features"] = geometry["features"][:, idx]
        summary = {
            "kind": geometry["kind"],
            "sigma_median_px": float(np.median(np.sqrt(sx * sy))),
            "shift_px_per_pupil_unit": slope.T.tolist(),  # rows: dx, dy; columns: per x, per y
            "largest_shift_px": float(np.abs(shifts).max()),
        }
        if "arf_distance_px" in table:
            summary["arf_distance_median_px"] = float(table["arf_distance_px"].median())
        figures = {"positions": _positions_figure(table, probe.frame_shape)}
        if geometry["features"] is not None:
            figures["features"] = _feature_figure(arrays["features"], pos, o.heatmap_neurons)
        figures["shifter"] = _shifter_figure(pupils, shifts, probe)
        return SessionResult(table, arrays, figures, summary)


def _positions_figure(table, frame_shape):
    from matplotlib.patches import Ellipse

    fig, axes = output.figure(1, 1, size=(5.0, 3.2))
    ax = axes[0, 0]
    h, w = frame_shape
    for _, r in table.iterrows():
        ax.add_patch(
            Ellipse(
                (r["readout_x"], r["readout_y"]),
                2 * r["readout_sigma_x"],
                2 * r["readout_sigma_y"],
                angle=r["readout_angle_deg"],
                fill=False,
                lw=0.4,
                color="C0",
            )
        )
    ax.scatter(table["readout_x"], table["readout_y"], s=5, c="C0", label="readout")
    if "arf_center_x" in table:
        ax.scatter(table["arf_center_x"], table["arf_center_y"], s=5, c="C3", label="aRF centre")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("readout positions at the held gaze, 1-sigma ellipses", fontsize=8)
    ax.set_xlabel("x (pixel column)")
    ax.set_ylabel("y (pixel row)")
    return fig


def _feature_figure(features: np.ndarray, pos: np.ndarray, count: int):
    order = np.argsort(pos[:, 0])[:count]
    fig, axes = output.figure(1, 1, size=(6.0, 2.6))
    ax = axes[0, 0]
    f = features[:, order]
    lim = float(np.abs(f).max()) or 1.0
    im = ax.imshow(f, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xlabel("neuron (ordered by readout x)")
    ax.set_ylabel("core channel")
    ax.set_title("readout feature weights", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _shifter_figure(pupils: np.ndarray, shifts: np.ndarray, probe):
    fig, axes = output.figure(1, 1, size=(4.2, 3.2))
    ax = axes[0, 0]
    ax.quiver(
        pupils[:, 0],
        pupils[:, 1],
        shifts[:, 0],
        shifts[:, 1],
        angles="xy",
        scale_units="xy",
        scale=1 / 10,
        width=0.004,
    )
    ax.plot(*probe.pupil_center, "r+", ms=10)
    ax.set_xlabel("pupil centre x (data units)")
    ax.set_ylabel("pupil centre y")
    ax.set_title(
        f"shift of every position with gaze (pixels x 10; max {np.abs(shifts).max():.2f} px)",
        fontsize=8,
    )
    return fig

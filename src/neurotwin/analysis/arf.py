"""arf: artificial receptive fields from white noise (ViV1T's aRFs, Figure 7 and Methods 4.5.1).

Static white-noise frames are shown in blocks (`block_frames` each, `blank_frames` of grey
between, several blocks per video after `lead_frames` of grey); each block's response is the mean
over `block_frames` frames from `response_delay` frames after its onset. Per neuron:

- linear map: the response-weighted average of the noise minus the plain average (the
  spike-triggered average, in grey levels);
- energy map: the same for the squared deviation of the noise from its mean (phase-invariant
  cells such as complex cells have no linear map but an energy map);
- the map used (`map`: auto picks the one whose halves, from even and odd noise frames, agree
  best) is reduced to its envelope (local energy of the linear map, the square root of the energy
  map), and a 2D Gaussian is fitted to it: centre, sigmas, angle, R^2. The sign of the linear map
  at the centre says ON (+1) or OFF (-1).

With a Gaussian readout the table also holds the readout's mean positions in pixels and their
distance from the aRF centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from neurotwin import metrics
from neurotwin.analysis import fitting, output
from neurotwin.analysis.context import Context, SessionResult
from neurotwin.analysis.registry import ANALYSES, Analysis
from neurotwin.analysis.stimuli import BlockDesign, noise_moments, white_noise
from neurotwin.config import option
from neurotwin.errors import ConfigError


@dataclass
class ArfOptions:
    """White-noise stimulation and the receptive-field fit."""

    noise_images: int = option(
        4000, "distinct white-noise frames (ViV1T: 100,000, each shown for 30 frames)"
    )
    block_frames: int = option(10, "frames each noise image is shown for (ViV1T: 30)")
    blank_frames: int = option(10, "grey frames after each image (ViV1T: one image per trial)")
    lead_frames: int = option(20, "grey frames before the first image of each video")
    images_per_video: int = option(16, "noise images shown in one video")
    response_delay: int = option(2, "frames from an image's onset to its response window")
    noise: Literal["uniform", "binary", "gaussian"] = option(
        "uniform", "pixel distribution: uniform over the luminance range (ViV1T), binary, gaussian"
    )
    map: Literal["auto", "linear", "energy"] = option(
        "auto", "map to fit: linear (STA), energy (phase-invariant), auto (the more reliable)"
    )
    energy_smoothing: float = option(1.0, "s.d. (pixels) of the Gaussian smoothing of energy maps")
    seed: int = option(0, "seed of the noise")
    figure_neurons: int = option(24, "neurons in the map grid figure")

    def __post_init__(self) -> None:
        for name in ("noise_images", "block_frames", "images_per_video"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("blank_frames", "lead_frames", "response_delay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.response_delay > self.blank_frames:
            raise ConfigError("--response_delay must not exceed --blank_frames")

    def design(self) -> BlockDesign:
        return BlockDesign(
            lead=self.lead_frames,
            pattern=self.block_frames,
            blank=self.blank_frames,
            per_video=self.images_per_video,
            delay=self.response_delay,
        )


class _Moments:
    """Sums over noise images, for the two halves (even, odd images): responses, responses x
    noise, responses x squared noise deviation, and the noise's own sums."""

    def __init__(self, n: int, pixels: int, device) -> None:
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        self.r, self.rn, self.re = z(2, n), z(2, n, pixels), z(2, n, pixels)
        self.n, self.e, self.m = z(2, pixels), z(2, pixels), z(2)

    def add(self, r: torch.Tensor, noise: torch.Tensor, mean: float, first: int) -> None:
        """r (M, N) block responses of noise (M, P) images numbered first, first + 1, ..."""
        dev = (noise - mean) ** 2
        for half in (0, 1):
            sel = slice((half - first) % 2, None, 2)
            rh, nh, eh = r[sel], noise[sel], dev[sel]
            self.r[half] += rh.sum(0).double()
            self.rn[half] += (rh.T @ nh).double()
            self.re[half] += (rh.T @ eh).double()
            self.n[half] += nh.sum(0).double()
            self.e[half] += eh.sum(0).double()
            self.m[half] += len(rh)

    def maps(self, halves: bool) -> tuple[np.ndarray, np.ndarray]:
        """Linear and energy maps (N, P), or (2, N, P) per half: weighted minus plain average."""
        if halves:
            r, rn, re, n, e, m = self.r, self.rn, self.re, self.n, self.e, self.m
        else:
            r, rn, re, n, e, m = (
                a.sum(0, keepdim=True) for a in (self.r, self.rn, self.re, self.n, self.e, self.m)
            )
        r_ = r[..., None].clamp_min(1e-30)
        lin = rn / r_ - (n / m[:, None])[:, None]
        en = re / r_ - (e / m[:, None])[:, None]
        lin, en = lin.cpu().numpy(), en.cpu().numpy()
        return (lin, en) if halves else (lin[0], en[0])


def _smooth(maps: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian smoothing (s.d. `sigma` pixels, edges reflected) of flat maps (..., H*W)."""
    if sigma <= 0:
        return maps
    from scipy.ndimage import gaussian_filter

    images = maps.reshape(*maps.shape[:-1], *shape)
    axes = (images.ndim - 2, images.ndim - 1)
    sig = [sigma if a in axes else 0 for a in range(images.ndim)]
    return gaussian_filter(images, sig, mode="reflect").reshape(maps.shape)


def _half_agreement(halves: np.ndarray) -> np.ndarray:
    """Per neuron, the correlation of its two half maps (2, N, P); 0 for a flat map."""
    return np.asarray(metrics.correlation(halves[0], halves[1], axis=1))


def _bilinear(image: np.ndarray, x: float, y: float) -> float:
    h, w = image.shape
    if not (np.isfinite(x) and np.isfinite(y)):
        return np.nan
    x, y = float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))
    x0, y0 = int(min(np.floor(x), w - 2)), int(min(np.floor(y), h - 2))
    fx, fy = x - x0, y - y0
    patch = image[y0 : y0 + 2, x0 : x0 + 2]
    return float(
        patch[0, 0] * (1 - fx) * (1 - fy)
        + patch[0, 1] * fx * (1 - fy)
        + patch[1, 0] * (1 - fx) * fy
        + patch[1, 1] * fx * fy
    )


@ANALYSES.register("arf")
class ArfAnalysis(Analysis):
    """Artificial receptive fields from white noise, with 2D Gaussian fits."""

    Options = ArfOptions
    description = (
        "white-noise artificial receptive fields: response-weighted noise averages (linear and "
        "energy maps), 2D Gaussian fit of the envelope; Gaussian readout positions beside them"
    )

    def run_session(self, ctx: Context, session: str) -> SessionResult:
        o, probe, dev = self.options, ctx.subject.probe(session), ctx.subject.device
        design = o.design()
        design.check()
        h, w = probe.frame_shape
        k = design.per_video
        n_videos = -(-o.noise_images // k)
        gen = torch.Generator(device=dev).manual_seed(o.seed)
        mean, _ = noise_moments(probe.luminance, o.noise)
        moments = _Moments(len(ctx.neurons(session)), h * w, dev)
        shown: dict[str, torch.Tensor] = {}

        def make(start: int, stop: int) -> torch.Tensor:
            noise = white_noise(gen, (stop - start) * k, (h, w), probe.luminance, o.noise, dev)
            shown["noise"] = noise
            patterns = noise.reshape(stop - start, k, 1, h, w)
            return design.assemble(patterns, probe.grey)

        def reduce(responses: torch.Tensor, start: int, stop: int) -> None:
            r = design.block_means(responses).reshape(-1, responses.shape[1])  # (b*k, N)
            keep = min(len(r), o.noise_images - start * k)
            noise = shown["noise"].reshape(len(r), -1)
            moments.add(r[:keep].float(), noise[:keep].float(), mean, start * k)

        ctx.present(session, n_videos, make, reduce, desc=f"arf {session[:24]}")
        shape = (h, w)
        linear, energy = moments.maps(halves=False)
        lin_h, en_h = moments.maps(halves=True)
        energy = _smooth(energy, shape, o.energy_smoothing)
        en_h = _smooth(en_h, shape, o.energy_smoothing)
        agree = {"linear": _half_agreement(lin_h), "energy": _half_agreement(en_h)}
        return self._fit(ctx, session, linear, energy, agree)

    def _fit(self, ctx, session, linear, energy, agree) -> SessionResult:
        import pandas as pd

        o, probe = self.options, ctx.subject.probe(session)
        h, w = probe.frame_shape
        n = linear.shape[0]
        linear, energy = linear.reshape(n, h, w), energy.reshape(n, h, w)
        if o.map == "auto":
            use_linear = agree["linear"] >= agree["energy"]
        else:
            use_linear = np.full(n, o.map == "linear")
        envelope = np.where(
            use_linear[:, None, None],
            fitting.local_energy(linear),
            np.sqrt(np.clip(energy, 0, None)),
        )
        params, r2s = fitting.fit_many(envelope)
        rows = []
        for i in range(n):
            row = dict(zip(fitting.GAUSSIAN_FIELDS, params[i]))
            polarity = np.sign(_bilinear(linear[i], row["center_x"], row["center_y"]))
            polarity = polarity if use_linear[i] else 0.0
            row["amplitude"] = row["amplitude"] * (polarity if polarity else 1.0)
            row.update(
                fit_r2=r2s[i],
                map="linear" if use_linear[i] else "energy",
                polarity=polarity,
                reliability=float(agree["linear" if use_linear[i] else "energy"][i]),
            )
            rows.append(row)
        table = pd.DataFrame(rows)
        table = table[
            ["center_x", "center_y", "sigma_x", "sigma_y", "angle_deg", "amplitude", "fit_r2"]
            + ["offset", "map", "polarity", "reliability"]
        ]
        readout = _readout_columns(ctx, session, table)
        if readout is not None:
            table = pd.concat([table, readout], axis=1)
        arrays = {
            "linear": linear.astype(np.float32),
            "energy": energy.astype(np.float32),
            "envelope": envelope.astype(np.float32),
            "agreement_linear": agree["linear"].astype(np.float32),
            "agreement_energy": agree["energy"].astype(np.float32),
        }
        summary = _summary(table)
        figures = {"maps": _map_grid(linear, energy, table, o.figure_neurons)}
        figures["centers"] = _center_figure(table, probe.frame_shape)
        return SessionResult(table, arrays, figures, summary)

    def summarise(self, results) -> dict:
        import pandas as pd

        return _summary(pd.concat([r.table for r in results.values()]))


def _readout_columns(ctx: Context, session: str, table):
    """readout_x/y (pixels) and their distance from the aRF centre, for Gaussian readouts."""
    import pandas as pd

    from neurotwin.analysis.readout import readout_geometry

    geometry = readout_geometry(ctx.subject, session)
    if geometry is None or geometry.get("positions") is None:
        return None
    pos = geometry["positions"][ctx.neurons(session)]
    dist = np.hypot(
        pos[:, 0] - table["center_x"].to_numpy(), pos[:, 1] - table["center_y"].to_numpy()
    )
    return pd.DataFrame(
        {"readout_x": pos[:, 0], "readout_y": pos[:, 1], "readout_distance_px": dist}
    )


def _summary(table) -> dict:
    good = table["fit_r2"] > 0.5
    out = {
        "neurons": int(len(table)),
        "fit_r2_median": float(table["fit_r2"].median()),
        "well_fitted (r2 > 0.5)": int(good.sum()),
        "sigma_x_median_px": float(table.loc[good, "sigma_x"].median()) if good.any() else None,
        "sigma_y_median_px": float(table.loc[good, "sigma_y"].median()) if good.any() else None,
        "linear_maps": int((table["map"] == "linear").sum()),
        "on": int((table["polarity"] > 0).sum()),
        "off": int((table["polarity"] < 0).sum()),
    }
    if "readout_distance_px" in table:
        out["readout_distance_median_px"] = float(table["readout_distance_px"].median())
    return out


def _ellipse(ax, row, color: str = "k") -> None:
    from matplotlib.patches import Ellipse

    if not np.isfinite([row["center_x"], row["sigma_x"]]).all():
        return
    for k in (1, 2):
        ax.add_patch(
            Ellipse(
                (row["center_x"], row["center_y"]),
                2 * k * row["sigma_x"],
                2 * k * row["sigma_y"],
                angle=row["angle_deg"],
                fill=False,
                color=color,
                lw=0.8 if k == 1 else 0.5,
                ls="-" if k == 1 else "--",
            )
        )


def _map_grid(linear: np.ndarray, energy: np.ndarray, table, count: int):
    n = min(count, len(table))
    rows, cols = output.grid_shape(n)
    fig, axes = output.figure(rows, cols, size=(2.0, 1.4))
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        row = table.iloc[i]
        image = linear[i] if row["map"] == "linear" else energy[i]
        lim = float(np.abs(image).max()) or 1.0
        cmap = "RdBu_r" if row["map"] == "linear" else "magma"
        ax.imshow(image, cmap=cmap, vmin=-lim if row["map"] == "linear" else 0, vmax=lim)
        _ellipse(ax, row, "k" if row["map"] == "linear" else "w")
        ax.set_title(f"#{i} {row['map'][:3]} r2 {row['fit_r2']:.2f}", fontsize=7)
    fig.suptitle("aRF maps (linear: red ON / blue OFF; energy) with 1 and 2 sigma of the fit")
    return fig


def _center_figure(table, frame_shape):
    fig, axes = output.figure(1, 1, size=(5.0, 3.2))
    ax = axes[0, 0]
    h, w = frame_shape
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.scatter(table["center_x"], table["center_y"], s=8, c="C0", label="aRF centre")
    if "readout_x" in table:
        ax.scatter(table["readout_x"], table["readout_y"], s=8, c="C3", label="readout position")
        for _, row in table.iterrows():
            ax.plot(
                [row["center_x"], row["readout_x"]],
                [row["center_y"], row["readout_y"]],
                "k-",
                lw=0.3,
            )
        d = table["readout_distance_px"].median()
        ax.set_title(f"aRF centres and readout positions (median distance {d:.2f} px)", fontsize=8)
    else:
        ax.set_title("aRF centres", fontsize=8)
    ax.set_xlabel("x (pixel column)")
    ax.set_ylabel("y (pixel row)")
    ax.legend(fontsize=7, loc="upper right")
    return fig

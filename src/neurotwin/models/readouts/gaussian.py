"""gaussian: each neuron reads the core features at one position with its own feature weights.

Per neuron: position mu in [-1, 1]^2 (grid_sample coordinates, see readouts/base.py) and a
spread sigma. Training samples a position mu + Sigma n, n ~ N(0, I) for every (trial, frame),
clipped to [-1, 1]; evaluation uses mu (deterministic). The features at the position are read
with bilinear interpolation (`F.grid_sample(align_corners=True)` semantics), weighted per neuron
and summed, plus a bias; `point_sampling.point_readout` does this as one op.
Shifts from the shifter are added to the positions after clipping.

readout_grid_mode: 0 free mu (uniform in +-init_mu_range); 1 mu = MLP(x, y cortical
coordinates) with tanh output; 2 the same from (x, y, z); 3 free mu initialised from the (x, y)
coordinates scaled to [-1, 1] per axis. Modes 1-3 need coordinates that vary; otherwise they
fall back to mode 0 with a warning.
readout_gauss_type: full (2x2 matrix per neuron), uncorrelated (2 values), isotropic (1 value).
Regulariser: reg_weight * sum |feature weights| (L1).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from einops import rearrange
from torch import nn

from neurotwin.config import option, require
from neurotwin.models.frames import unfold_neurons
from neurotwin.models.readouts.base import Readout, ReadoutOptions, make_bias
from neurotwin.models.readouts.point_sampling import point_readout
from neurotwin.registry import READOUTS


@dataclass
class GaussianOptions(ReadoutOptions):
    """gaussian (defaults: ViV1T's Gaussian readout)."""

    readout_grid_mode: Literal[0, 1, 2, 3] = option(
        1,
        "positions: 0 free (uniform init), 1 predicted from the (x, y) cortical coordinates by "
        "a small MLP, 2 predicted from (x, y, z), 3 free, initialised from the (x, y) "
        "coordinates scaled to [-1, 1]",
    )
    readout_gauss_type: Literal["full", "uncorrelated", "isotropic"] = option(
        "full", "covariance of each neuron's position"
    )
    readout_init_mu_range: float = option(0.2, "free positions start uniform in [-range, range]")
    readout_init_sigma: float = option(
        1.0, "initial spread (full: matrix entries uniform in [-s, s]; else all equal s)"
    )
    readout_init_positions: bool = option(
        False,
        "before training, start each position at its neuron's receptive field, estimated from "
        "the response-weighted stimulus average of the training trials and a retinotopic fit "
        "over cortical coordinates (neurotwin.training.readout_init)",
    )

    def check(self) -> None:
        r, s = self.readout_init_mu_range, self.readout_init_sigma
        require(0 < r <= 1, "readout_init_mu_range", f"must be in (0, 1], got {r}")
        require(s > 0, "readout_init_sigma", f"must be > 0, got {s}")


def normalise_coordinates(coords: np.ndarray, dims: int, mode: str) -> np.ndarray | None:
    """First `dims` cortical coordinates, centred and scaled (None when they do not vary)."""
    if coords is None:
        return None
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < dims or not np.all(np.isfinite(c[:, :dims])):
        return None
    c = c[:, :dims]
    if mode == "minmax":  # each axis to [-1, 1]
        lo, hi = c.min(0), c.max(0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        out = 2 * (c - lo) / span - 1
        if np.all(hi - lo <= 0):
            return None
        return out.astype(np.float32)
    c = c - c.mean(0, keepdims=True)  # "predictor": centred, divided by the largest |value|
    m = np.abs(c).max()
    return None if m <= 0 else (c / m).astype(np.float32)


@READOUTS.register("gaussian", options=GaussianOptions)
class GaussianReadout(Readout):
    def __init__(
        self,
        in_shape: tuple[int, int, int],
        n_neurons: int,
        options: GaussianOptions | None = None,
        coordinates: np.ndarray | None = None,
        bias_init: torch.Tensor | None = None,
    ) -> None:
        o = options or GaussianOptions()
        super().__init__(in_shape, n_neurons, o)
        grid_mode, gauss_type = o.readout_grid_mode, o.readout_gauss_type
        init_mu_range, init_sigma = o.readout_init_mu_range, o.readout_init_sigma
        c = in_shape[0]
        n = self.n_neurons
        self.gauss_type = gauss_type
        self.mu_transform: nn.Module | None = None
        source = None
        if grid_mode in (1, 2):
            source = normalise_coordinates(coordinates, grid_mode + 1, "predictor")
        elif grid_mode == 3:
            source = normalise_coordinates(coordinates, 2, "minmax")
        if grid_mode != 0 and source is None:
            warnings.warn(
                f"readout_grid_mode {grid_mode}: cortical coordinates missing or constant; "
                "using free positions (mode 0)",
                stacklevel=2,
            )
            grid_mode = 0
        self.grid_mode = grid_mode
        if grid_mode in (1, 2):
            self.register_buffer("source_grid", torch.from_numpy(source))
            self.mu_transform = nn.Sequential(
                nn.Linear(source.shape[1], 30), nn.ELU(), nn.Linear(30, 2), nn.Tanh()
            )
            self._mu = None
        elif grid_mode == 3:
            self._mu = nn.Parameter(torch.from_numpy(source).clamp(-1, 1).clone())
        else:
            self._mu = nn.Parameter(torch.empty(n, 2).uniform_(-init_mu_range, init_mu_range))
        if gauss_type == "full":
            self.sigma = nn.Parameter(torch.empty(n, 2, 2).uniform_(-init_sigma, init_sigma))
        elif gauss_type == "uncorrelated":
            self.sigma = nn.Parameter(torch.full((n, 2), float(init_sigma)))
        else:  # isotropic
            self.sigma = nn.Parameter(torch.full((n, 1), float(init_sigma)))
        self.features = nn.Parameter(torch.full((c, n), 1.0 / c))
        self.bias = make_bias(n, o.readout_bias_mode, bias_init)

    @property
    def mu(self) -> torch.Tensor:
        """(N, 2) mean positions (x, y) in [-1, 1]."""
        if self.mu_transform is not None:
            return self.mu_transform(self.source_grid)
        return self._mu

    def set_positions(self, grid: np.ndarray, steps: int = 300) -> str:
        """Put positions `grid` (N, 2, in [-1, 1]) in: free ones directly, ones predicted from
        coordinates by fitting the MLP to them (Adam, `steps` steps). Returns what was done."""
        target = torch.as_tensor(np.asarray(grid), dtype=torch.float32)
        if target.shape != (self.n_neurons, 2):
            raise ValueError(
                f"positions: expected ({self.n_neurons}, 2), got {tuple(target.shape)}"
            )
        if self._mu is not None:
            with torch.no_grad():
                self._mu.copy_(target.clamp(-1, 1).to(self._mu))
            return "free positions set"
        source = self.source_grid
        target = target.to(source).clamp(-0.95, 0.95)  # the MLP ends in tanh
        optimizer = torch.optim.Adam(self.mu_transform.parameters(), lr=0.01)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.mse_loss(self.mu_transform(source), target)
                loss.backward()
                optimizer.step()
        return f"position MLP fitted (rms {float(loss.detach()) ** 0.5:.3f} grid units)"

    def sample_grid(self, batch: int, sample: bool | None = None) -> torch.Tensor:
        """(batch, N, 2) positions: mu + Sigma n in training (or when sample=True), else mu."""
        if self._mu is not None:
            with torch.no_grad():
                self._mu.clamp_(-1.0, 1.0)
        mu = self.mu
        sample = self.training if sample is None else sample
        if not sample:
            return mu.unsqueeze(0).expand(batch, -1, -1)
        noise = mu.new_empty(batch, self.n_neurons, 2).normal_()
        if self.gauss_type == "full":
            offset = torch.einsum("ncd,bnd->bnc", self.sigma, noise)
        else:
            offset = noise * self.sigma
        return (mu + offset).clamp(-1.0, 1.0)

    def regularizer(self) -> torch.Tensor:
        return self.reg_weight * self.features.abs().sum()

    def forward(self, features, shift=None, sample: bool | None = None):
        b, c, t, h, w = features.shape
        x = rearrange(features, "b c t h w -> (b t) (h w) c")  # channels last
        grid = self.sample_grid(b * t, sample)  # (B*T, N, 2)
        if shift is not None:
            grid = grid + shift.reshape(b * t, 1, 2).to(grid.dtype)
        y = point_readout(x, grid, self.features, h, w).to(features.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return unfold_neurons(y, b)

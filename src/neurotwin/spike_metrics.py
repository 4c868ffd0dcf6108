"""Poisson log-likelihood of spike trains in bits per spike, relative to a homogeneous rate.

For unit n with counts y_t and predicted expected counts lambda_t per bin, against the unit's
constant training-set rate lambda0_n (a homogeneous Poisson process):

    bits/spike = [ sum_t (y_t log lambda_t - lambda_t) - sum_t (y_t log lambda0_n - lambda0_n) ]
                 / (ln 2 * sum_t y_t)

(the log y_t! terms cancel). Groups of units (a population, a session, everything) pool their
likelihood differences and spikes. 0 means no better than a constant rate; higher is better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

RATE_FLOOR = 1e-8  # expected count per bin below which a homogeneous rate is taken as this


class PoissonScores:
    """Accumulates, per unit of one session, spikes and the two log-likelihoods."""

    def __init__(self, homogeneous: np.ndarray):
        self.log_rate0 = torch.as_tensor(np.log(np.maximum(homogeneous, RATE_FLOOR)))
        self.rate0 = self.log_rate0.exp()
        n = self.rate0.numel()
        self.spikes = torch.zeros(n, dtype=torch.float64)
        self.model = torch.zeros(n, dtype=torch.float64)
        self.baseline = torch.zeros(n, dtype=torch.float64)
        self.bins = 0

    @torch.no_grad()
    def add(self, counts: torch.Tensor, log_rate: torch.Tensor) -> None:
        """counts, log_rate: (B, N, T) window bins (any device)."""
        y = counts.detach().double()
        eta = log_rate.detach().double()
        log_rate0 = self.log_rate0.to(y.device)
        self.spikes += y.sum((0, 2)).cpu()
        self.model += (y * eta - eta.exp()).sum((0, 2)).cpu()
        n_bins = y.shape[0] * y.shape[2]
        self.baseline += (
            (y * log_rate0[None, :, None]).sum((0, 2)) - self.rate0.to(y.device) * n_bins
        ).cpu()
        self.bins += n_bins

    def bits(self, units: slice | Sequence[int] | None = None) -> float:
        """Bits per spike of these units together (NaN without spikes)."""
        index = slice(None) if units is None else units
        spikes = float(self.spikes[index].sum())
        if spikes == 0:
            return math.nan
        gain = float((self.model[index] - self.baseline[index]).sum())
        return gain / (math.log(2.0) * spikes)

    def total(self) -> tuple[float, float]:
        """(likelihood gain over the homogeneous rate in nats, spikes) of all units."""
        return float((self.model - self.baseline).sum()), float(self.spikes.sum())


def pooled_bits(scores: Mapping[str, PoissonScores]) -> float:
    """Bits per spike over every unit of every session."""
    gain = sum(s.total()[0] for s in scores.values())
    spikes = sum(s.total()[1] for s in scores.values())
    return gain / (math.log(2.0) * spikes) if spikes else math.nan

"""What every spike model is built from and returns: sessions, the shared time axis, outputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SessionSpec:
    """One session's units (contiguous per population, in this order) and conditions."""

    name: str
    populations: tuple[str, ...]
    sizes: tuple[int, ...]
    conditions: tuple[str, ...]

    @property
    def n_units(self) -> int:
        return int(sum(self.sizes))

    def slices(self) -> dict[str, slice]:
        """population -> its rows among the session's units."""
        out, start = {}, 0
        for name, size in zip(self.populations, self.sizes):
            out[name] = slice(start, start + size)
            start += size
        return out

    def population_of_units(self) -> list[int]:
        """For each unit, the index of its population."""
        return [i for i, size in enumerate(self.sizes) for _ in range(size)]

    @classmethod
    def from_mapping(cls, name: str, values: Mapping) -> SessionSpec:
        return cls(
            name=name,
            populations=tuple(values["populations"]),
            sizes=tuple(int(s) for s in values["sizes"]),
            conditions=tuple(values["conditions"]),
        )


@dataclass(frozen=True)
class TrialShape:
    """The time axis every batch has: `n_history` bins of history, then `n_bins` of window."""

    n_bins: int
    n_history: int
    bin_ms: float


@dataclass
class SpikeOutput:
    """log_rate (B, N, n_bins): log expected count per bin; mu/logvar (B, latent) of the VAE's
    posterior (None without a VAE)."""

    log_rate: torch.Tensor
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None

    def kl(self) -> torch.Tensor:
        """KL(q(z | trial) || N(0, I)) per trial (zeros without a VAE)."""
        if self.mu is None or self.logvar is None:
            return self.log_rate.new_zeros(self.log_rate.shape[0])
        return 0.5 * (self.mu.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=1)

"""The point-process GLM's terms: stimulus/time, self-history and population coupling.

log rate of unit n in bin t of a trial of condition c (bins of `bin_ms`, counts Poisson):

    eta = sum_k a[n, c, k] B_k(t)                                   stimulus / time (B-splines)
        + sum_tau h_n(tau) y_n(t - tau)                             self-history (raised cosines)
        + sum_{pairs q->p with n in p} sum_s r[n, s] (f_qps * sum_{i in q} s[i, s] y_i)(t)

The coupling is low rank (as in GLM-Transformer, Qi-Xin/GLM-Transformer GLMTransformer.py): the
spikes of the source population q are projected on `coupling_rank` sending weights s, each
projection is filtered causally by f_qps (raised cosines x coefficients), and read out into every
target unit by receiving weights r. One spike of source unit i changes the log rate of target unit
n at lag tau by sum_s r[n, s] s[i, s] f_qps(tau). Parameters are per session (units differ).
Penalties: L2 on history and coupling parameters, squared second differences (P-splines, Eilers &
Marx 1996) of the time-term coefficients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from neurotwin.config import option, require
from neurotwin.models.spikes.base import SessionSpec, TrialShape
from neurotwin.models.spikes.bases import bspline_basis, raised_cosine_basis
from neurotwin.models.spikes.convolution import causal_conv
from neurotwin.registry import Options


@dataclass
class GLMOptions(Options):
    """Bases, terms and penalties of the point-process GLM."""

    stimulus_basis: int = option(
        20, "B-spline functions over the trial window (per unit and condition)"
    )
    history: bool = option(True, "self-history filters (refractoriness, bursting)")
    history_basis: int = option(4, "raised-cosine functions of the self-history filters")
    history_peaks_ms: list[float] = option([1.0, 8.0], "first and last history peak (ms)")
    history_stretch_ms: float = option(1.0, "history basis: log(lag + stretch) spacing (ms)")
    coupling: bool = option(True, "coupling filters between populations")
    coupling_basis: int = option(6, "raised-cosine functions of the coupling filters")
    coupling_peaks_ms: list[float] = option([1.0, 25.0], "first and last coupling peak (ms)")
    coupling_stretch_ms: float = option(2.0, "coupling basis: log(lag + stretch) spacing (ms)")
    coupling_rank: int = option(1, "sending/receiving dimensions of each population pair")
    within_population: bool = option(
        False, "also couple each population to itself (beside the units' own history)"
    )
    l2: float = option(1e-3, "L2 penalty on history and coupling parameters")
    smoothness: float = option(100.0, "penalty on second differences of the time-term coefficients")
    conv: Literal["auto", "direct", "fft"] = option(
        "auto", "causal convolution: direct (conv1d), fft, or auto (fft for long filters)"
    )

    def check(self) -> None:
        for name in ("stimulus_basis", "history_basis", "coupling_basis", "coupling_rank"):
            value = getattr(self, name)
            require(value >= 1, name, f"must be >= 1, got {value}")
        for name in ("history_peaks_ms", "coupling_peaks_ms"):
            peaks = getattr(self, name)
            ok = len(peaks) == 2 and 0 <= peaks[0] <= peaks[1]
            require(ok, name, f"expected FIRST LAST with 0 <= FIRST <= LAST, got {peaks}")
        for name in ("history_stretch_ms", "coupling_stretch_ms"):
            value = getattr(self, name)
            require(value > 0, name, f"must be > 0, got {value}")
        for name in ("l2", "smoothness"):
            value = getattr(self, name)
            require(value >= 0, name, f"must be >= 0, got {value}")

    def history_basis_matrix(self, bin_ms: float) -> np.ndarray:
        return raised_cosine_basis(
            self.history_basis, tuple(self.history_peaks_ms), self.history_stretch_ms, bin_ms
        )

    def coupling_basis_matrix(self, bin_ms: float) -> np.ndarray:
        return raised_cosine_basis(
            self.coupling_basis, tuple(self.coupling_peaks_ms), self.coupling_stretch_ms, bin_ms
        )


def _buffer(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array), dtype=torch.get_default_dtype())


class TimeTerm(nn.Module):
    """Per unit and condition, a time course over the window on a B-spline basis."""

    def __init__(self, specs: Mapping[str, SessionSpec], keys: Mapping[str, str], shape, n_basis):
        super().__init__()
        self.register_buffer("basis", _buffer(bspline_basis(shape.n_bins, n_basis)))
        self.coef = nn.ParameterDict(
            {
                keys[name]: nn.Parameter(torch.zeros(s.n_units, len(s.conditions), n_basis))
                for name, s in specs.items()
            }
        )

    def forward(self, key: str, condition: torch.Tensor) -> torch.Tensor:
        coef = self.coef[key][:, condition]  # (N, B, K)
        return torch.einsum("nbk,tk->bnt", coef, self.basis)

    def penalty(self, key: str, smoothness: float) -> torch.Tensor:
        coef = self.coef[key]
        if smoothness == 0 or coef.shape[-1] < 3:
            return coef.new_zeros(())
        second = coef[..., 2:] - 2 * coef[..., 1:-1] + coef[..., :-2]
        return smoothness * second.pow(2).sum()

    def initialise(
        self, key: str, psth: np.ndarray, trials: np.ndarray, smoothness: float, iterations=100
    ) -> None:
        """Start at the time term fitted alone: the penalised maximum of the Poisson likelihood
        of a model with only this term, whose sufficient statistics are the PSTHs ((N, C, T)
        mean counts per bin) and trials per condition (C,); L-BFGS from each unit's mean rate.
        The history and coupling filters then start from data the time term already explains
        (as GLM-Transformer trains the trial-invariant term first)."""
        coef = self.coef[key]
        mean = np.asarray(psth, dtype=np.float64).mean(axis=-1)
        with torch.no_grad():
            start = torch.as_tensor(np.log(np.maximum(mean, 1e-4)), dtype=coef.dtype)
            coef.copy_(start[..., None].expand_as(coef))
        if iterations <= 0 or not np.asarray(trials).sum():
            return
        y = torch.as_tensor(np.asarray(psth), dtype=coef.dtype, device=coef.device)
        n = torch.as_tensor(np.asarray(trials), dtype=coef.dtype, device=coef.device)
        optimizer = torch.optim.LBFGS(
            [coef], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe", history_size=20
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            eta = torch.einsum("nck,tk->nct", coef, self.basis)
            nll = (n[None, :, None] * (eta.exp() - y * eta)).sum()
            loss = nll + self.penalty(key, smoothness)
            loss.backward()
            return loss

        optimizer.step(closure)
        coef.grad = None


class HistoryTerm(nn.Module):
    """Each unit's own spikes filtered causally: h_n = basis @ coef_n."""

    def __init__(self, specs, keys, shape: TrialShape, basis: np.ndarray, method: str):
        super().__init__()
        self.n_history, self.method = shape.n_history, method
        self.register_buffer("basis", _buffer(basis))  # (L, K)
        self.coef = nn.ParameterDict(
            {
                keys[n]: nn.Parameter(torch.zeros(s.n_units, basis.shape[1]))
                for n, s in specs.items()
            }
        )

    def filters(self, key: str) -> torch.Tensor:
        """(N, L): filter of each unit over lags 1..L."""
        return self.coef[key] @ self.basis.T

    def forward(self, key: str, counts: torch.Tensor) -> torch.Tensor:
        return causal_conv(counts, self.filters(key), self.n_history, self.method)

    def penalty(self, key: str, l2: float) -> torch.Tensor:
        return l2 * self.coef[key].pow(2).sum()


def population_pairs(spec: SessionSpec, within: bool) -> list[tuple[int, int]]:
    """Ordered (source, target) population indices of a session."""
    n = len(spec.populations)
    return [(q, p) for q in range(n) for p in range(n) if within or q != p]


class CouplingTerm(nn.Module):
    """Low-rank coupling between populations (sending weights, filters, receiving weights)."""

    def __init__(
        self, specs, keys, shape: TrialShape, basis: np.ndarray, rank: int, within, method
    ):
        super().__init__()
        self.n_history, self.method, self.rank = shape.n_history, method, rank
        self.register_buffer("basis", _buffer(basis))  # (L, K)
        self.pairs = {keys[n]: population_pairs(s, within) for n, s in specs.items()}
        self.send = nn.ParameterDict()
        self.receive = nn.ParameterDict()
        self.beta = nn.ParameterDict()
        for name, spec in specs.items():
            key, pairs = keys[name], self.pairs[keys[name]]
            pop = torch.as_tensor(spec.population_of_units())
            source = torch.as_tensor([q for q, _ in pairs], dtype=torch.long)
            target = torch.as_tensor([p for _, p in pairs], dtype=torch.long)
            dtype = torch.get_default_dtype()
            self.register_buffer(f"send_mask_{key}", (pop[:, None] == source[None]).to(dtype))
            self.register_buffer(f"receive_mask_{key}", (pop[:, None] == target[None]).to(dtype))
            shape_w = (spec.n_units, len(pairs), rank)
            noise = 0.1 if rank > 1 else 0.0  # break the symmetry between rank components
            self.send[key] = nn.Parameter(1.0 + noise * torch.randn(shape_w))
            self.receive[key] = nn.Parameter(1.0 + noise * torch.randn(shape_w))
            self.beta[key] = nn.Parameter(torch.zeros(len(pairs), rank, basis.shape[1]))

    def weights(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, pairs, rank) sending and receiving weights, zero outside each pair's units."""
        send = self.send[key] * getattr(self, f"send_mask_{key}")[..., None]
        receive = self.receive[key] * getattr(self, f"receive_mask_{key}")[..., None]
        return send, receive

    def filters(self, key: str) -> torch.Tensor:
        """(pairs, rank, L) filters f over lags 1..L."""
        return torch.einsum("psk,lk->psl", self.beta[key], self.basis)

    def projections(self, key: str, counts: torch.Tensor) -> torch.Tensor:
        """(B, pairs * rank, T) source spikes on the sending weights."""
        send, _ = self.weights(key)
        return torch.einsum("bnt,nc->bct", counts, send.flatten(1))

    def forward(self, key: str, counts: torch.Tensor) -> torch.Tensor:
        if not self.pairs[key]:
            n_out = counts.shape[-1] - self.n_history
            return counts.new_zeros(counts.shape[0], counts.shape[1], n_out)
        _, receive = self.weights(key)
        filters = self.filters(key).flatten(0, 1)
        drive = causal_conv(self.projections(key, counts), filters, self.n_history, self.method)
        return torch.einsum("bct,nc->bnt", drive, receive.flatten(1))

    def penalty(self, key: str, l2: float) -> torch.Tensor:
        if not self.pairs[key]:
            return self.beta[key].new_zeros(())
        send, receive = self.weights(key)
        return l2 * (send.pow(2).sum() + receive.pow(2).sum() + self.beta[key].pow(2).sum())

    @torch.no_grad()
    def mean_filters(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(pairs, L) effect of one source spike on a target unit's log rate, averaged over
        source and target units, and (pairs, rank) the weights c of each rank's filter in it."""
        send, receive = self.weights(key)
        send_mean = send.sum(0) / getattr(self, f"send_mask_{key}").sum(0)[:, None]
        receive_mean = receive.sum(0) / getattr(self, f"receive_mask_{key}").sum(0)[:, None]
        weight = send_mean * receive_mean  # (pairs, rank)
        return torch.einsum("ps,psl->pl", weight, self.filters(key)), weight

    @torch.no_grad()
    def unit_filters(self, key: str) -> torch.Tensor:
        """(N, pairs, L): effect of one source spike (mean over source units) on each unit;
        zero for pairs whose target is another population."""
        send, receive = self.weights(key)
        send_mean = send.sum(0) / getattr(self, f"send_mask_{key}").sum(0)[:, None]
        return torch.einsum("nps,ps,psl->npl", receive, send_mean, self.filters(key))

    @torch.no_grad()
    def basis_features(self, key: str, counts: torch.Tensor) -> torch.Tensor:
        """(B, pairs, rank, K, T): each projection filtered by each basis function, i.e.
        d drive / d beta (the receiving weights not applied)."""
        pairs, n_basis = len(self.pairs[key]), self.basis.shape[1]
        repeated = self.projections(key, counts).repeat_interleave(n_basis, dim=1)
        filters = self.basis.T.repeat(pairs * self.rank, 1)  # (P*S*K, L)
        g = causal_conv(repeated, filters, self.n_history, self.method)
        return g.view(g.shape[0], pairs, self.rank, n_basis, g.shape[-1])

    @torch.no_grad()
    def beta_information(self, key: str, counts: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """(pairs, rank * K, rank * K) Fisher information of the Poisson likelihood of a batch
        about each pair's filter coefficients beta, everything else held fixed: sum over
        trials, bins and target units of rate * g g^T, g = d log rate / d beta."""
        g = self.basis_features(key, counts)
        pairs, n_basis = g.shape[1], g.shape[3]
        _, receive = self.weights(key)
        weight = torch.einsum("bnt,nps,npr->bpsrt", rate, receive, receive)
        info = torch.einsum("bpsxt,bpsrt,bpryt->psxry", g, weight, g)
        return info.reshape(pairs, self.rank * n_basis, self.rank * n_basis)

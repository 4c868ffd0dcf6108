"""Standard errors of the coupling filters from the Poisson likelihood's Fisher information.

For one session and each population pair k, the filter coefficients beta_k (rank x basis) enter
the log rate of each target unit n linearly: d eta_n(t) / d beta_k[s, b] = r[n, k, s] g_ksb(t),
g = (basis_b * projected source spikes)(t). Their Fisher information is
sum_{trials, t, n} rate g g^T. Stimulus-locked activity of the source population is collinear
with the target units' time terms, so the time-term coefficients of the target units are
profiled out (the Schur complement I_bb - I_bt I_tt^-1 I_tb, per unit and condition, with the
time term's smoothness penalty in I_tt); the sending/receiving weights and history terms are
held at their fitted values. The L2 penalty adds 2 * l2 to the information about beta. The
standard error of the mean filter c_k(tau) = sum_s w_ks sum_b beta_k[s, b] basis_b(tau) follows
by the delta method.
"""

from __future__ import annotations

import torch

from neurotwin.models.spikes.glm import CouplingTerm, TimeTerm


def second_difference_gram(n: int, dtype=torch.float64) -> torch.Tensor:
    """D^T D for the second-difference matrix D ((n - 2) x n)."""
    if n < 3:
        return torch.zeros(n, n, dtype=dtype)
    d = torch.zeros(n - 2, n, dtype=dtype)
    for i in range(n - 2):
        d[i, i : i + 3] = torch.tensor([1.0, -2.0, 1.0], dtype=dtype)
    return d.T @ d


class CouplingInformation:
    """Accumulates, over batches of one session, what the coupling standard errors need."""

    def __init__(
        self,
        coupling: CouplingTerm,
        time: TimeTerm,
        key: str,
        n_conditions: int,
        targets: list[slice],
    ):
        self.coupling, self.time, self.key = coupling, time, key
        self.targets = targets  # per pair: the target population's rows
        rank, n_basis = coupling.rank, coupling.basis.shape[1]
        m = time.basis.shape[1]
        self.size = rank * n_basis
        pairs = len(coupling.pairs[key])
        n_units = time.coef[key].shape[0]
        f64 = torch.float64
        self.beta_beta = torch.zeros(pairs, self.size, self.size, dtype=f64)
        self.beta_time = [
            torch.zeros(t.stop - t.start, n_conditions, self.size, m, dtype=f64) for t in targets
        ]
        self.time_time = torch.zeros(n_units, n_conditions, m, m, dtype=f64)

    @torch.no_grad()
    def add(self, counts: torch.Tensor, rate: torch.Tensor, condition: torch.Tensor) -> None:
        """counts (B, N, history + T), rate (B, N, T) expected counts, condition (B,)."""
        c = self.coupling
        self.beta_beta += c.beta_information(self.key, counts, rate).double().cpu()
        g = c.basis_features(self.key, counts)  # (B, pairs, rank, K, T)
        _, receive = c.weights(self.key)
        basis = self.time.basis.to(rate.dtype)  # (T, M)
        onehot = torch.nn.functional.one_hot(condition, self.time_time.shape[1]).to(rate.dtype)
        for k, rows in enumerate(self.targets):
            lam = rate[:, rows]  # (B, n, T)
            w = torch.einsum("bnt,bskt,tm->bnskm", lam, g[:, k], basis)
            cross = torch.einsum("bnskm,ns,bc->ncskm", w, receive[rows, k], onehot)
            self.beta_time[k] += cross.flatten(2, 3).double().cpu()
        tt = torch.einsum("bnt,tm,tl,bc->ncml", rate, basis, basis, onehot)
        self.time_time += tt.double().cpu()

    def covariance(self, l2: float, smoothness: float) -> torch.Tensor:
        """(pairs, size, size) covariance of each pair's beta, the time terms profiled out."""
        m = self.time_time.shape[-1]
        penalty = 2.0 * smoothness * second_difference_gram(m)
        time_inv = torch.linalg.pinv(self.time_time + penalty)  # (N, C, M, M)
        out = torch.zeros_like(self.beta_beta)
        eye = torch.eye(self.size, dtype=torch.float64)
        for k, rows in enumerate(self.targets):
            cross = self.beta_time[k]  # (n, C, size, M)
            explained = torch.einsum("ncim,ncml,ncjl->ij", cross, time_inv[rows], cross)
            out[k] = torch.linalg.pinv(self.beta_beta[k] - explained + 2.0 * l2 * eye)
        return out

    def standard_errors(self, l2: float, smoothness: float) -> torch.Tensor:
        """(pairs, L) standard error of each pair's mean filter at every lag."""
        cov = self.covariance(l2, smoothness)
        _, weight = self.coupling.mean_filters(self.key)  # (pairs, rank)
        basis = self.coupling.basis.double().cpu()  # (L, K)
        grad = torch.einsum("ps,lk->plsk", weight.double().cpu(), basis).flatten(2)
        return torch.einsum("pli,pij,plj->pl", grad, cov, grad).clamp_min(0).sqrt()

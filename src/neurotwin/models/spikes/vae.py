"""The GLM-Transformer's VAE: a Transformer encoder of a trial's binned counts -> a per-trial
latent -> per-population time-varying gains added to the GLM's log rate.

Following Qi-Xin/GLM-Transformer (GLMTransformer.py, model_trainer.py):
- tokens: the window's counts summed over `token_ms` (its `downsample_factor`), one token per
  time window; each session's population p has its own input projection (counts of p's units ->
  d_model);
- sinusoidal positional encoding; a Transformer encoder (GELU, batch first); CLS or mean pooling
  (its `use_cls`, default mean) -> a linear map to the latent mean and log-variance;
- per population (its `use_area_specific_encoder/decoder`, default on): each population's
  tokens are encoded on their own (one latent block per population, `latent_dim` each) and
  decoded by that population's decoder; off: one sequence of summed projections, one latent
  that every population's decoder reads;
- decoder: an MLP (one hidden layer, `decoder_hidden` x latent size, ReLU; the last layer's
  weights scaled by 1e-3 so training starts at zero gain) -> `gain_factors` x `gain_basis`
  B-spline coefficients -> factor time courses -> each unit's loading on them (per session).
Loss = Poisson NLL + beta * KL(q(z|trial) || N(0, I)), beta warmed up over `kl_warmup_epochs`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neurotwin.config import option, require
from neurotwin.models.spikes.base import SessionSpec, TrialShape
from neurotwin.models.spikes.bases import bspline_basis
from neurotwin.registry import Options


@dataclass
class VAEOptions(Options):
    """The Transformer encoder, the latent, the gain decoder and the KL term."""

    token_ms: float = option(20.0, "width of one encoder token: counts summed over it (ms)")
    d_model: int = option(128, "Transformer width")
    layers: int = option(2, "Transformer encoder layers")
    heads: int = option(1, "attention heads")
    ff_dim: int = option(512, "feed-forward size of each layer")
    dropout: float = option(0.0, "dropout in the encoder")
    pooling: Literal["mean", "cls"] = option("mean", "token pooling: mean, or a CLS token")
    latent_dim: int = option(2, "latent dimensions (per population when per_population)")
    per_population: bool = option(
        True, "encode and decode each population on its own (one latent block each)"
    )
    gain_basis: int = option(8, "B-spline functions of each decoded gain time course")
    gain_factors: int = option(1, "gain time courses per population (units load on them)")
    decoder_hidden: int = option(2, "decoder hidden size, as a multiple of the latent size")
    beta: float = option(1.0, "weight of the KL term")
    kl_warmup_epochs: int = option(10, "epochs over which beta rises linearly from 0")
    sample_latent: bool = option(True, "sample z in training (else use the posterior mean)")

    def check(self) -> None:
        for name in ("d_model", "layers", "heads", "ff_dim", "latent_dim", "gain_basis", "gain_factors"):  # fmt: skip
            value = getattr(self, name)
            require(value >= 1, name, f"must be >= 1, got {value}")
        require(self.d_model % self.heads == 0, "d_model", f"must be a multiple of heads ({self.heads}), got {self.d_model}")  # fmt: skip
        require(self.token_ms > 0, "token_ms", f"must be > 0, got {self.token_ms}")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        for name in ("beta", "kl_warmup_epochs", "decoder_hidden"):
            value = getattr(self, name)
            require(value >= 0, name, f"must be >= 0, got {value}")

    def beta_at(self, epoch: int) -> float:
        """beta of `epoch` (1-based): beta * min(1, epoch / kl_warmup_epochs)."""
        if self.kl_warmup_epochs == 0:
            return self.beta
        return self.beta * min(1.0, epoch / self.kl_warmup_epochs)


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    """(n, d) sine/cosine positional encoding (Vaswani et al. 2017)."""
    position = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : d // 2]
    return table.to(torch.get_default_dtype())


def _input_key(key: str, population: int) -> str:
    return f"{key}_p{population}"


class SpikeEncoder(nn.Module):
    """(B, N, T) window counts of one session -> posterior mean and log-variance (B, G, D)."""

    def __init__(
        self,
        specs: Mapping[str, SessionSpec],
        keys: Mapping[str, str],
        shape: TrialShape,
        options: VAEOptions,
        populations: Sequence[str],
    ):
        super().__init__()
        self.options = options
        self.downsample = max(1, int(round(options.token_ms / shape.bin_ms)))
        self.n_tokens = max(1, shape.n_bins // self.downsample)
        self.population_index = {p: i for i, p in enumerate(populations)}
        d = options.d_model
        self.inputs = nn.ModuleDict(
            {
                _input_key(keys[name], i): nn.Linear(size, d)
                for name, s in specs.items()
                for i, size in enumerate(s.sizes)
            }
        )
        self.population_embedding = nn.Embedding(len(populations), d)
        nn.init.normal_(self.population_embedding.weight, std=0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if options.pooling == "cls" else None
        self.register_buffer("positions", sinusoidal_positions(self.n_tokens + 1, d))
        layer = nn.TransformerEncoderLayer(
            d,
            options.heads,
            options.ff_dim,
            options.dropout,
            activation="gelu",
            batch_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, options.layers, enable_nested_tensor=False)
        self.to_latent = nn.Linear(d, 2 * options.latent_dim)

    def tokens(self, counts: torch.Tensor) -> torch.Tensor:
        """(B, N, T) -> (B, n_tokens, N) counts summed over each token's bins."""
        b, n, _ = counts.shape
        used = counts[:, :, : self.n_tokens * self.downsample]
        return used.reshape(b, n, self.n_tokens, self.downsample).sum(-1).transpose(1, 2)

    def forward(
        self, key: str, spec: SessionSpec, counts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tokens(counts)
        per_pop = [
            self.inputs[_input_key(key, i)](x[:, :, rows])
            for i, rows in enumerate(spec.slices().values())
        ]
        if self.options.per_population:
            emb = self.population_embedding.weight[
                [self.population_index[p] for p in spec.populations]
            ]
            h = torch.stack(per_pop, dim=1) + emb[None, :, None, :]  # (B, P, tokens, d)
            groups = h.shape[1]
            h = h.flatten(0, 1)
        else:
            h, groups = torch.stack(per_pop, dim=0).sum(0), 1
        h = h + self.positions[1 : h.shape[1] + 1]
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1) + self.positions[:1], h], dim=1)
        encoded = self.transformer(h)
        pooled = encoded[:, 0] if self.cls is not None else encoded.mean(dim=1)
        params = self.to_latent(pooled).view(counts.shape[0], groups, -1)
        mu, logvar = params.chunk(2, dim=-1)
        return mu, logvar


class GainDecoder(nn.Module):
    """Latent (B, G, D) -> per-unit gain (B, N, T): per population an MLP to B-spline
    coefficients of `gain_factors` time courses, and each unit's loadings on them."""

    def __init__(self, specs, keys, shape: TrialShape, options: VAEOptions, populations):
        super().__init__()
        self.options = options
        self.population_index = {p: i for i, p in enumerate(populations)}
        self.register_buffer(
            "basis",
            torch.as_tensor(
                bspline_basis(shape.n_bins, options.gain_basis), dtype=torch.get_default_dtype()
            ),
        )
        d, out = options.latent_dim, options.gain_factors * options.gain_basis
        self.mlps = nn.ModuleList([self._mlp(d, out) for _ in populations])
        self.loadings = nn.ParameterDict(
            {
                _input_key(keys[name], i): nn.Parameter(torch.ones(size, options.gain_factors))
                for name, s in specs.items()
                for i, size in enumerate(s.sizes)
            }
        )

    def _mlp(self, d: int, out: int) -> nn.Module:
        hidden = self.options.decoder_hidden * d
        if hidden == 0:
            last = nn.Linear(d, out)
            mlp: nn.Module = last
        else:
            last = nn.Linear(hidden, out)
            mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), last)
        with torch.no_grad():
            last.weight.mul_(1e-3)
            last.bias.zero_()
        return mlp

    def forward(self, key: str, spec: SessionSpec, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        factors, basis = self.options.gain_factors, self.basis
        gains = []
        for i, population in enumerate(spec.populations):
            latent = z[:, i] if z.shape[1] > 1 else z[:, 0]
            coef = self.mlps[self.population_index[population]](latent).view(b, factors, -1)
            curves = coef @ basis.T  # (B, F, T)
            loading = self.loadings[_input_key(key, i)]
            gains.append(torch.einsum("bft,nf->bnt", curves, loading))
        return torch.cat(gains, dim=1)


class LatentGain(nn.Module):
    """Encoder + reparameterised sample + decoder: (B, N, T) counts -> gain, mu, logvar."""

    def __init__(self, specs, keys, shape: TrialShape, options: VAEOptions, populations):
        super().__init__()
        self.options = options
        self.encoder = SpikeEncoder(specs, keys, shape, options, populations)
        self.decoder = GainDecoder(specs, keys, shape, options, populations)

    def forward(self, key: str, spec: SessionSpec, counts: torch.Tensor):
        mu, logvar = self.encoder(key, spec, counts)
        z = mu
        if self.training and self.options.sample_latent:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        gain = self.decoder(key, spec, z)
        return gain, mu.flatten(1), logvar.flatten(1)

"""Spike models by name: `glm` (point-process GLM), `glm_vae` (GLM-Transformer: GLM + VAE
gains) and `vae` (VAE only: the time term and the VAE's gains, no history or coupling).

    model = build_spike_model(SpikeModelOptions(name="glm_vae"), specs, shape)
    out = model(session, counts, condition)   # counts (B, N, history + window bins)
    out.log_rate                              # (B, N, window bins)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from neurotwin.config import option, require
from neurotwin.errors import ConfigError
from neurotwin.models.spikes.base import SessionSpec, SpikeOutput, TrialShape
from neurotwin.models.spikes.glm import CouplingTerm, GLMOptions, HistoryTerm, TimeTerm
from neurotwin.models.spikes.vae import LatentGain, VAEOptions
from neurotwin.registry import SPIKE_MODELS, Options


@dataclass
class SpikeModelOptions(Options):
    """Which spike model (`--model`), and the options of its parts."""

    name: str = option("glm", "spike model: glm | glm_vae | vae (VAE only)")
    glm: GLMOptions = field(default_factory=GLMOptions)
    vae: VAEOptions = field(default_factory=VAEOptions)

    def check(self) -> None:
        known = SPIKE_MODELS.names()
        require(self.name in known, "model", f"unknown spike model {self.name!r}; known: {known}")


class SpikeModel(nn.Module):
    """The time term, plus history and coupling (`uses_glm`), plus VAE gains (`uses_vae`)."""

    uses_glm = True
    uses_vae = False

    def __init__(
        self,
        options: SpikeModelOptions,
        specs: Mapping[str, SessionSpec],
        shape: TrialShape,
    ):
        super().__init__()
        self.options, self.shape = options, shape
        self.specs = dict(specs)
        self.keys = {name: f"s{i}" for i, name in enumerate(self.specs)}
        self.populations = sorted({p for s in self.specs.values() for p in s.populations})
        g = options.glm
        self.time = TimeTerm(self.specs, self.keys, shape, g.stimulus_basis)
        self.history = self.coupling = self.latent = None
        if self.uses_glm and g.history:
            basis = g.history_basis_matrix(shape.bin_ms)
            self._check_lags("history", basis, shape)
            self.history = HistoryTerm(self.specs, self.keys, shape, basis, g.conv)
        if self.uses_glm and g.coupling:
            basis = g.coupling_basis_matrix(shape.bin_ms)
            self._check_lags("coupling", basis, shape)
            self.coupling = CouplingTerm(
                self.specs, self.keys, shape, basis, g.coupling_rank, g.within_population, g.conv
            )
        if self.uses_vae:
            self.latent = LatentGain(self.specs, self.keys, shape, options.vae, self.populations)

    @staticmethod
    def _check_lags(what: str, basis: np.ndarray, shape: TrialShape) -> None:
        if basis.shape[0] > shape.n_history:
            raise ConfigError(
                f"--history_ms: the {what} filters reach back {basis.shape[0] * shape.bin_ms:g}"
                f" ms but only {shape.n_history * shape.bin_ms:g} ms of history are binned; "
                f"raise --history_ms or shorten --{what}_peaks_ms"
            )

    def key(self, session: str) -> str:
        try:
            return self.keys[session]
        except KeyError:
            raise ConfigError(f"the model has no session {session!r}") from None

    def forward(self, session: str, counts: torch.Tensor, condition: torch.Tensor) -> SpikeOutput:
        key, h = self.key(session), self.shape.n_history
        log_rate = self.time(key, condition)
        if self.history is not None:
            log_rate = log_rate + self.history(key, counts)
        if self.coupling is not None:
            log_rate = log_rate + self.coupling(key, counts)
        if self.latent is None:
            return SpikeOutput(log_rate)
        gain, mu, logvar = self.latent(key, self.specs[session], counts[:, :, h:])
        return SpikeOutput(log_rate + gain, mu, logvar)

    def penalty(self, session: str) -> torch.Tensor:
        """The penalties on this session's parameters."""
        key, g = self.key(session), self.options.glm
        total = self.time.penalty(key, g.smoothness)
        if self.history is not None:
            total = total + self.history.penalty(key, g.l2)
        if self.coupling is not None:
            total = total + self.coupling.penalty(key, g.l2)
        return total

    def initialise(self, psth: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Start each session's time term at its fit alone to the training PSTHs:
        {session: ((N, C, T) mean counts per bin, (C,) trials)}."""
        for session, (mean_counts, trials) in psth.items():
            self.time.initialise(
                self.key(session), mean_counts, trials, self.options.glm.smoothness
            )

    def glm_parameters(self) -> list[nn.Parameter]:
        latent = {id(p) for p in self.latent.parameters()} if self.latent is not None else set()
        return [p for p in self.parameters() if id(p) not in latent]

    def vae_parameters(self) -> list[nn.Parameter]:
        return list(self.latent.parameters()) if self.latent is not None else []


@SPIKE_MODELS.register("glm")
class PointProcessGLM(SpikeModel):
    """Time term + self-history + low-rank population coupling."""


@SPIKE_MODELS.register("glm_vae")
class GLMTransformer(SpikeModel):
    """The GLM plus the Transformer VAE's per-trial, per-population gains."""

    uses_vae = True


@SPIKE_MODELS.register("vae")
class TransformerVAE(SpikeModel):
    """Time term plus the VAE's gains (no history, no coupling)."""

    uses_glm = False
    uses_vae = True


def build_spike_model(
    options: SpikeModelOptions,
    specs: Mapping[str, SessionSpec] | Mapping[str, Mapping],
    shape: TrialShape,
) -> SpikeModel:
    """The registered model `options.name` for these sessions."""
    cls = SPIKE_MODELS.get(options.name)
    sessions = {
        name: s if isinstance(s, SessionSpec) else SessionSpec.from_mapping(name, s)
        for name, s in specs.items()
    }
    return cls(options, sessions, shape)


def model_names() -> Sequence[str]:
    return SPIKE_MODELS.names()

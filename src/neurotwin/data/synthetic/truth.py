"""The generating model of synthetic sessions as a torch module, probed like a trained model.

`GroundTruthModel(video, session, behavior, pupil_center) -> rates (B, N, T)`: the call signature
of `neurotwin.models.model.NeuralPredictor`. Its inputs are in the data's own units, as stored on
disk: video (B, 1, T, H, W) in grey levels (0..255), behaviour (B, 2, T) pupil dilation and
running speed, pupil centre (B, 2, T) gaze in eye-camera pixels. Its output is the noiseless
rate in response units, what `data/noiseless_responses/` holds (without the slow drift of the
`slow_drifts` variant, which no input carries). Its "input transform" is therefore the identity,
where a trained model standardises its inputs with the training statistics first; see
`neurotwin.analysis.subject` for how the analyses feed both.

It computes what `Population.rates` computes (float32, to float tolerance): frames shifted by gaze,
spatial filters, causal temporal filters, energy for complex cells, softplus above a threshold,
the divisive surround, and the behavioural gain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neurotwin.data.synthetic import population as P
from neurotwin.data.synthetic.load import session_population
from neurotwin.data.synthetic.params import ModelParams, SyntheticSizes


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite gradient at 0 (energies of grey frames are exactly 0)."""
    return torch.sqrt(x.clamp_min(1e-20))


def _buffer(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)


class SessionTruth(nn.Module):
    """One session's population as tensors (buffers: they follow `.to(device)`)."""

    def __init__(
        self, pop: P.Population, sizes: SyntheticSizes, params: ModelParams, gaze_gain_px: float
    ) -> None:
        super().__init__()
        self.frame_shape = (sizes.height, sizes.width)
        self.n_neurons = pop.n_neurons
        self.sharpness = float(pop.sharpness)
        self.pupil_baseline = float(pop.behavior.pupil_baseline)
        self.gaze_gain_px = float(gaze_gain_px)  # pixels of shift per eye-camera pixel
        self.register_buffer("eye_center", _buffer(np.asarray(pop.behavior.eye_center)))
        self.register_buffer("rf", _buffer(pop.rf))
        self.register_buffer("rf_quadrature", _buffer(pop.rf_quadrature))
        self.register_buffer(
            "complex_index", _buffer(np.flatnonzero(pop.cell_type == 1), torch.long)
        )
        # conv1d weights: flipped so that cross-correlation gives the causal convolution
        self.register_buffer("temporal", _buffer(pop.temporal[:, ::-1].copy())[:, None, :])
        b = pop.sharpness
        self.register_buffer("nl_scale", _buffer(b / pop.drive_std))
        self.register_buffer(
            "nl_offset", _buffer(-b * (pop.drive_mean / pop.drive_std + pop.threshold))
        )
        stimulus = pop.mean_count * (1 - params.spontaneous) / pop.response_mean
        self.register_buffer("stimulus_gain", _buffer(stimulus))
        self.register_buffer("spontaneous", _buffer(pop.mean_count * params.spontaneous))
        self.register_buffer("scale", _buffer(pop.scale))
        self.register_buffer("running_gain", _buffer(pop.running_gain))
        self.register_buffer("pupil_gain", _buffer(pop.pupil_gain))
        s = pop.surround
        self.has_surround = s is not None
        if s is not None:
            self.register_buffer("surround_index", _buffer(s.index, torch.long))
            self.register_buffer("surround_rf", _buffer(np.stack([s.rf, s.rf_quadrature])))
            self.register_buffer("surround_pool", _buffer(np.asarray(s.pool)))
            self.register_buffer("surround_weight", _buffer(s.weight / s.energy_mean))

    def _filter(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Causal per-neuron temporal filter of x (B, n, T) with weight (n, 1, L)."""
        return F.conv1d(F.pad(x, (weight.shape[-1] - 1, 0)), weight, groups=x.shape[1])

    def _shifted(self, frames: torch.Tensor, pupil_center: torch.Tensor | None) -> torch.Tensor:
        """frames (B, T, H, W) sampled at (x + shift_x, y + shift_y), zero off the screen."""
        if pupil_center is None:
            return frames
        shift = self.gaze_gain_px * (pupil_center.float() - self.eye_center[None, :, None])
        if not torch.any(shift != 0):
            return frames
        b, t, h, w = frames.shape
        ys = torch.arange(h, device=frames.device, dtype=torch.float32)
        xs = torch.arange(w, device=frames.device, dtype=torch.float32)
        sx = shift[:, 0].reshape(b * t, 1, 1)
        sy = shift[:, 1].reshape(b * t, 1, 1)
        gx = 2 * (xs[None, None, :] + sx) / max(w - 1, 1) - 1
        gy = 2 * (ys[None, :, None] + sy) / max(h - 1, 1) - 1
        grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)  # (B*T, H, W, 2)
        out = F.grid_sample(
            frames.reshape(b * t, 1, h, w), grid, align_corners=True, padding_mode="zeros"
        )
        return out.reshape(b, t, h, w)

    def forward(
        self,
        video: torch.Tensor,
        behavior: torch.Tensor | None = None,
        pupil_center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if video.ndim != 5 or video.shape[1] != 1 or tuple(video.shape[-2:]) != self.frame_shape:
            raise ValueError(
                f"expected video (B, 1, T, {self.frame_shape[0]}, {self.frame_shape[1]}), got "
                f"{tuple(video.shape)}"
            )
        frames = (video[:, 0].float() - P.GREY) / P.CONTRAST_UNIT
        frames = self._shifted(frames, pupil_center)
        b, t = frames.shape[:2]
        flat = frames.reshape(b, t, -1)
        lin = self._filter(torch.einsum("btp,np->bnt", flat, self.rf), self.temporal)
        if len(self.complex_index):
            quad = torch.einsum("btp,np->bnt", flat, self.rf_quadrature)
            quad = self._filter(quad, self.temporal[self.complex_index])
            energy = _sqrt(lin[:, self.complex_index] ** 2 + quad**2)
            lin = lin.index_copy(1, self.complex_index, energy)
        x = lin * self.nl_scale[:, None] + self.nl_offset[:, None]
        r = torch.logaddexp(torch.zeros_like(x), x) / self.sharpness
        if self.has_surround:
            weight = self.temporal[self.surround_index]
            pools = torch.einsum("btp,enap->eabnt", flat, self.surround_rf)  # e: even/odd
            energy = 0
            for a, w in enumerate(self.surround_pool):
                even, odd = (self._filter(p, weight) for p in pools[:, a])
                energy = energy + w * _sqrt(even**2 + odd**2)
            divisor = 1 + self.surround_weight[:, None] * energy
            r = r.index_copy(1, self.surround_index, r[:, self.surround_index] / divisor)
        r = r * self.stimulus_gain[:, None] + self.spontaneous[:, None]
        if behavior is not None:
            behavior = behavior.float()
            pupil_z = (behavior[:, 0] / self.pupil_baseline - P.PUPIL_REF) / P.PUPIL_SCALE
            running_z = (behavior[:, 1] - P.RUNNING_REF) / P.RUNNING_SCALE
            log_gain = (
                self.running_gain[None, :, None] * running_z[:, None]
                + self.pupil_gain[None, :, None] * pupil_z[:, None]
            )
            r = r * torch.exp(log_gain.clamp(-P.LOG_GAIN_CLIP, P.LOG_GAIN_CLIP))
        return r * self.scale[:, None]


class GroundTruthModel(nn.Module):
    """Noiseless rates of synthetic sessions from (video, session, behaviour, pupil centre), in
    the data's units (module docstring). Build it with `from_sessions(folders)`."""

    def __init__(self, sessions: Mapping[str, SessionTruth]) -> None:
        super().__init__()
        self.truths = nn.ModuleDict(dict(sessions))

    @classmethod
    def from_sessions(cls, folders: Sequence[str | Path]) -> GroundTruthModel:
        """Rebuild the populations of synthetic session folders from their neurotwin.json."""
        truths = {}
        for folder in folders:
            pop, sizes, params, meta = session_population(folder)
            gain = float(meta.get("mouse", {}).get("gaze_shift_px_per_eye_px", 0.0))
            truths[Path(folder).name] = SessionTruth(pop, sizes, params, gain)
        return cls(truths)

    @property
    def sessions(self) -> list[str]:
        return list(self.truths.keys())

    def forward(
        self,
        video: torch.Tensor,
        session: str,
        behavior: torch.Tensor | None = None,
        pupil_center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if session not in self.truths:
            raise KeyError(f"unknown session {session!r}; the truth has {self.sessions}")
        return self.truths[session](video, behavior, pupil_center)

"""How a most exciting stimulus is parameterised and held to natural statistics: pixels or
Fourier coefficients, a low-pass cut-off, the luminance range through a sigmoid, an RMS-contrast
budget, an optional circular mask, and a penalty towards the data's power spectrum."""

from __future__ import annotations

import numpy as np
import torch


def lowpass_mask(shape: tuple[int, int], cutoff: float, device=None) -> torch.Tensor:
    """(H, W // 2 + 1) rfft2 mask keeping spatial frequencies up to `cutoff` x Nyquist."""
    h, w = shape
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    radius = torch.hypot(fx, fy) / 0.5  # 1 at the Nyquist frequency
    return (radius <= cutoff + 1e-9).float()


def _inverse_frequency(shape: tuple[int, int], device=None) -> torch.Tensor:
    """1 / |f| (lowest frequency 1 / max(H, W)), normalised to mean 1: a Fourier parameter of
    unit variance gives an image of roughly natural (1/f) amplitude spectrum."""
    h, w = shape
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    scale = 1.0 / torch.hypot(fx, fy).clamp_min(1.0 / max(h, w))
    return scale / scale.mean()


class StimulusParameter(torch.nn.Module):
    """n stimuli of `frames` frames (1: an image) as free parameters, mapped to grey levels.

    pixel: one value per pixel; fourier: rfft2 coefficients scaled by 1/f. Either way the result
    is low-passed (`lowpass` x Nyquist; 1: off), squashed into the luminance range by a sigmoid,
    scaled towards grey to at most `contrast` RMS (grey levels) and masked (grey outside)."""

    def __init__(
        self,
        n: int,
        frames: int,
        shape: tuple[int, int],
        luminance: tuple[float, float],
        contrast: float,
        kind: str = "fourier",
        lowpass: float = 1.0,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        init_std: float = 0.1,
        device=None,
    ) -> None:
        super().__init__()
        if kind not in ("pixel", "fourier"):
            raise ValueError(f"parameterisation {kind!r} not in pixel | fourier")
        self.kind, self.shape, self.frames = kind, tuple(shape), frames
        self.lo, self.hi = luminance
        self.contrast = float(contrast)
        h, w = shape
        size = (n, frames, h, w) if kind == "pixel" else (n, frames, h, w // 2 + 1, 2)
        init = torch.randn(
            size, generator=generator, device=generator.device if generator else None
        )
        self.param = torch.nn.Parameter((init_std * init).to(device))
        filt = lowpass_mask(shape, lowpass, device) if lowpass < 1 else None
        if kind == "fourier":
            scale = _inverse_frequency(shape, device)
            filt = scale if filt is None else scale * filt
        self.register_buffer("filter", filt if filt is not None else torch.ones(0, device=device))
        self.register_buffer("mask", mask if mask is not None else torch.ones(0, device=device))

    @property
    def grey(self) -> float:
        return 0.5 * (self.lo + self.hi)

    def forward(self) -> torch.Tensor:
        """(n, frames, H, W) grey levels."""
        if self.kind == "fourier":
            coef = torch.view_as_complex(self.param) * self.filter
            z = torch.fft.irfft2(coef, s=self.shape, norm="ortho")
        elif self.filter.numel():
            z = torch.fft.irfft2(torch.fft.rfft2(self.param) * self.filter, s=self.shape)
        else:
            z = self.param
        x = self.lo + (self.hi - self.lo) * torch.sigmoid(z)
        d = x - self.grey
        if self.mask.numel():
            d = d * self.mask[:, None]
        if self.contrast > 0:
            rms = d.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-12).sqrt()
            d = d * torch.clamp(self.contrast / rms, max=1.0)
        return self.grey + d


def log_power(frames: torch.Tensor) -> torch.Tensor:
    """Normalised log power spectrum (H, W // 2 + 1) of frames (..., H, W), averaged over the
    leading axes, DC left out (set to 0)."""
    x = frames - frames.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.rfft2(x, norm="ortho").abs().pow(2)
    power = power.reshape(-1, *power.shape[-2:]).mean(0)
    power = power / power.sum().clamp_min(1e-20)
    out = torch.log(power + 1e-10)
    out[0, 0] = 0.0
    return out


def spectrum_penalty(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per stimulus (frames (n, F, H, W)): mean squared difference of its normalised log power
    spectrum from the reference's (the data's), DC left out."""
    per = torch.stack([log_power(f) for f in frames])
    diff = (per - reference[None]).pow(2)
    diff[:, 0, 0] = 0.0
    return diff.flatten(1).sum(1) / (diff[0].numel() - 1)


def natural_reference(trial_frames: np.ndarray, device=None) -> torch.Tensor:
    """The data's log power spectrum from frames (n, H, W) of real trials."""
    return log_power(torch.as_tensor(np.asarray(trial_frames, dtype=np.float32), device=device))


def disc_mask(shape, centers, diameter: float, device=None) -> torch.Tensor:
    """(n, H, W) anti-aliased discs of `diameter` around centers (n, 2)."""
    from neurotwin.analysis.stimuli import disc

    return disc(shape, centers, np.full(len(centers), diameter), device)


def sliding_max(responses: np.ndarray, start: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Over windows of `window` frames starting at >= `start` of responses (b, N, T): the largest
    window mean per (trial, neuron) and where it starts."""
    r = np.nan_to_num(np.asarray(responses, dtype=np.float64)[..., start:], nan=0.0)
    t = r.shape[-1]
    if t < window:
        return r.mean(-1), np.full(r.shape[:2], start)
    c = np.concatenate([np.zeros((*r.shape[:2], 1)), np.cumsum(r, -1)], -1)
    means = (c[..., window:] - c[..., :-window]) / window  # (b, N, t - window + 1)
    return means.max(-1), start + means.argmax(-1)


def to_uint8(frames: np.ndarray, luminance: tuple[float, float]) -> np.ndarray:
    lo, hi = luminance
    return np.clip(np.round((np.asarray(frames) - lo) / max(hi - lo, 1e-9) * 255), 0, 255).astype(
        np.uint8
    )

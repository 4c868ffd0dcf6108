"""Causal convolution of spike counts with per-channel filters over lags 1..L, direct or by FFT.

y[c, t] = sum_{tau=1..L} f[c, tau - 1] x[c, t - tau] for the output bins t = start .. T-1 (the
first `start` bins are history only). Direct: a grouped `conv1d` (cost ~ T L per channel); FFT:
`rfft` products (cost ~ T log T), faster for long filters. `auto` picks FFT from `FFT_MIN_LAGS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FFT_MIN_LAGS = 8
METHODS = ("auto", "direct", "fft")


def _fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (sizes the FFT handles fast)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def causal_conv(
    x: torch.Tensor, filters: torch.Tensor, start: int, method: str = "auto"
) -> torch.Tensor:
    """x (B, C, T), filters (C, L) with column 0 = lag 1 -> (B, C, T - start); needs start >= L."""
    n_lags = filters.shape[-1]
    if start < n_lags:
        raise ValueError(f"{start} history bins cannot hold filters of {n_lags} lags")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    segment = x[:, :, start - n_lags : x.shape[-1] - 1]  # bins t - L .. t - 1 of every output
    n_out = x.shape[-1] - start
    if method == "direct" or (method == "auto" and n_lags < FFT_MIN_LAGS):
        weight = filters.flip(-1).unsqueeze(1).to(x.dtype)
        return F.conv1d(segment, weight, groups=filters.shape[0])
    size = _fft_size(segment.shape[-1] + n_lags - 1)
    spectrum = torch.fft.rfft(segment, n=size) * torch.fft.rfft(filters.to(x.dtype), n=size)
    full = torch.fft.irfft(spectrum, n=size)
    return full[..., n_lags - 1 : n_lags - 1 + n_out]

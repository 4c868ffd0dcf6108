"""Triton kernels of `point_sampling` for CUDA tensors (imported only where Triton exists).

Shapes: features (F, P, C) contiguous (any float dtype, read and accumulated in float32),
index (F, N, 4) int64 flat pixel indices of the 4 bilinear corners, weights_t (N, C) (the
per-neuron channel weights, transposed), values (F, N, 4) float32.
- corner_dots:       D[f, n, k] = features[f, index[f, n, k]] . weights_t[n]
- scatter_features:  dF[f, p] = sum_{n, k: index[f, n, k] = p} values[f, n, k] * weights_t[n]
  without atomics: each program owns a (pixels x channels) tile of one frame and builds the
  (pixels x neurons) scatter matrix of a block of neurons in registers, then one tl.dot.
- gather_weights:    dW_t[n] = sum_{f, k} values[f, n, k] * features[f, index[f, n, k]]
  (partial sums over chunks of frames, added up by the caller).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _corner_dots_kernel(
    feat_ptr, index_ptr, wt_ptr, out_ptr, N, P, C,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    f = tl.program_id(1)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.arange(0, BLOCK_C)
    n_ok = n < N
    mask = n_ok[:, None] & (c < C)[None, :]
    w = tl.load(wt_ptr + n[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
    base = f.to(tl.int64) * P * C
    for k in tl.static_range(4):
        p = tl.load(index_ptr + (f.to(tl.int64) * N + n) * 4 + k, mask=n_ok, other=0)
        v = tl.load(feat_ptr + base + p[:, None] * C + c[None, :], mask=mask, other=0.0)
        d = tl.sum(v.to(tl.float32) * w, axis=1)
        tl.store(out_ptr + (f.to(tl.int64) * N + n) * 4 + k, d, mask=n_ok)


@triton.jit
def _scatter_features_kernel(
    index_ptr, values_ptr, wt_ptr, out_ptr, N, P, C,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    f = tl.program_id(0)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    row = f.to(tl.int64) * N
    for n0 in tl.range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < N
        a = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for k in tl.static_range(4):
            pk = tl.load(index_ptr + (row + n) * 4 + k, mask=n_ok, other=-1)
            vk = tl.load(values_ptr + (row + n) * 4 + k, mask=n_ok, other=0.0)
            a += tl.where(p[:, None] == pk[None, :], vk[None, :], 0.0)
        w = tl.load(
            wt_ptr + n[:, None] * C + c[None, :], mask=n_ok[:, None] & c_ok[None, :], other=0.0
        )
        if PRECISION == "bf16":
            acc += tl.dot(a.to(tl.bfloat16), w.to(tl.bfloat16))
        else:
            acc += tl.dot(a, w.to(tl.float32), input_precision=PRECISION)
    out = out_ptr + f.to(tl.int64) * P * C + p[:, None] * C + c[None, :]
    tl.store(out, acc, mask=(p < P)[:, None] & c_ok[None, :])


@triton.jit
def _gather_weights_kernel(
    feat_ptr, index_ptr, values_ptr, out_ptr, F, N, P, C, FRAMES_PER_CHUNK,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    chunk = tl.program_id(1)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.arange(0, BLOCK_C)
    n_ok = n < N
    mask = n_ok[:, None] & (c < C)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    f0 = chunk * FRAMES_PER_CHUNK
    for f in tl.range(f0, tl.minimum(f0 + FRAMES_PER_CHUNK, F)):
        f64 = f + tl.zeros((), dtype=tl.int64)  # 64-bit offsets
        row = f64 * N + n
        base = f64 * P * C
        for k in tl.static_range(4):
            p = tl.load(index_ptr + row * 4 + k, mask=n_ok, other=0)
            s = tl.load(values_ptr + row * 4 + k, mask=n_ok, other=0.0)
            v = tl.load(feat_ptr + base + p[:, None] * C + c[None, :], mask=mask, other=0.0)
            acc += v.to(tl.float32) * s[:, None]
    out = out_ptr + (chunk.to(tl.int64) * N + n[:, None]) * C + c[None, :]
    tl.store(out, acc, mask=mask)


def _block_c(c: int) -> int:
    return max(16, triton.next_power_of_2(c))


def corner_dots(features: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """D (F, N, 4) float32; weights (C, N)."""
    f, p, c = features.shape
    n = index.shape[1]
    out = torch.empty(f, n, 4, device=features.device, dtype=torch.float32)
    wt = weights.t().contiguous()
    block_n = 32
    grid = (triton.cdiv(n, block_n), f)
    _corner_dots_kernel[grid](
        features.contiguous(), index.contiguous(), wt, out, n, p, c,
        BLOCK_N=block_n, BLOCK_C=_block_c(c),
    )  # fmt: skip
    return out


def scatter_features(
    index: torch.Tensor,
    values: torch.Tensor,
    weights: torch.Tensor,
    n_pixels: int,
    precision: str = "ieee",
) -> torch.Tensor:
    """dF (F, P, C) float32 from values (F, N, 4) and weights (C, N); the matrix products in
    `precision`: "ieee" (float32), "tf32" or "bf16" (operands rounded, float32 sums)."""
    f, n, _ = index.shape
    c = weights.shape[0]
    out = torch.empty(f, n_pixels, c, device=index.device, dtype=torch.float32)
    wt = weights.t().float().contiguous()
    block_p, block_n = 64, 64
    block_c = min(64, _block_c(c))
    grid = (f, triton.cdiv(n_pixels, block_p), triton.cdiv(c, block_c))
    _scatter_features_kernel[grid](
        index.contiguous(), values.float().contiguous(), wt, out, n, n_pixels, c,
        BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_C=block_c, PRECISION=precision,
    )  # fmt: skip
    return out


def gather_weights(
    features: torch.Tensor, index: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """dW (C, N) float32 from features (F, P, C) and values (F, N, 4)."""
    f, p, c = features.shape
    n = index.shape[1]
    block_n = 32
    chunks = max(1, min(f, 8))
    per_chunk = triton.cdiv(f, chunks)
    chunks = triton.cdiv(f, per_chunk)
    partial = torch.empty(chunks, n, c, device=features.device, dtype=torch.float32)
    grid = (triton.cdiv(n, block_n), chunks)
    _gather_weights_kernel[grid](
        features.contiguous(), index.contiguous(), values.float().contiguous(), partial,
        f, n, p, c, per_chunk, BLOCK_N=block_n, BLOCK_C=_block_c(c),
    )  # fmt: skip
    return partial.sum(0).t()

"""Bilinear point readout as one op: y[f, n] = sum_c w[c, n] * bilinear(features[f], grid[f, n])[c].

The same function as `F.grid_sample(align_corners=True, padding_mode="zeros")` at one point per
neuron followed by the per-neuron channel weighting, but it never materialises the sampled
features (frames x channels x neurons: 1 GiB in float32 for one 300-frame Sensorium trial of
8000 neurons), which made the readout a fifth of a ViV1T training step.

- Forward: for each (frame, neuron) the dot products of its 4 corner pixels with its weights,
  D (F, N, 4), then y = sum_k corner_weight_k * D_k.
- Backward, without atomics: the bilinear weights times the incoming gradient form a sparse
  (pixels x neurons) matrix A per frame; d_features[f] = A[f] @ weights^T and
  d_weights^T = sum_f A[f]^T @ features[f]. The position gradient comes from D.
- On CUDA with Triton, three kernels (_point_sampling_kernels.py) do this and never build A in
  memory; elsewhere (CPU) plain PyTorch gathers a few frames at a time and builds A densely
  in blocks of frames.
"""

from __future__ import annotations

import functools

import torch

# bytes of the dense (frames x pixels x neurons) block that the backward builds at a time
BACKWARD_BLOCK_BYTES = 1 << 28


def bilinear_corners(
    grid: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """grid (F, N, 2) in [-1, 1] (x, y; align_corners=True) -> flat pixel index of the 4
    corners (F, N, 4) (clamped into the map), their validity (F, N, 4) and the fractional
    offsets fx, fy (F, N)."""
    ix = (grid[..., 0] + 1) * ((width - 1) / 2)
    iy = (grid[..., 1] + 1) * ((height - 1) / 2)
    x0, y0 = ix.floor(), iy.floor()
    fx, fy = ix - x0, iy - y0
    xs = torch.stack((x0, x0 + 1, x0, x0 + 1), dim=-1)
    ys = torch.stack((y0, y0, y0 + 1, y0 + 1), dim=-1)
    valid = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
    index = ys.clamp(0, height - 1).long() * width + xs.clamp(0, width - 1).long()
    return index, valid, fx, fy


def corner_weights(valid: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """Bilinear weights (F, N, 4) of the corners (x0,y0), (x1,y0), (x0,y1), (x1,y1); zero for
    corners outside the map (zero padding)."""
    gx, gy = 1 - fx, 1 - fy
    w = torch.stack((gx * gy, fx * gy, gx * fy, fx * fy), dim=-1)
    return w * valid


def corner_dots_reference(
    features: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, block: int = 8
) -> torch.Tensor:
    """D[f, n, k] = features[f, index[f, n, k], :] . weights[:, n] in float32 (float64 for
    float64 features), a few frames at a time (the gathered block is frames x N x 4 x C)."""
    n_frames = features.shape[0]
    acc = _accumulation_dtype(features)
    w = weights.to(acc).t()  # (N, C)
    out = []
    for s in range(0, n_frames, block):
        f = features[s : s + block].to(acc)
        idx = index[s : s + block]
        rows = torch.arange(f.shape[0], device=f.device)[:, None, None]
        out.append(torch.einsum("fnkc,nc->fnk", f[rows, idx], w))
    return torch.cat(out)


def _accumulation_dtype(features: torch.Tensor) -> torch.dtype:
    return torch.float64 if features.dtype == torch.float64 else torch.float32


@functools.cache
def _kernels():
    """The Triton kernels, or None where Triton is not installed."""
    try:
        from neurotwin.models.readouts import _point_sampling_kernels
    except ImportError:
        return None
    return _point_sampling_kernels


def _use_kernels(features: torch.Tensor) -> bool:
    return features.is_cuda and _kernels() is not None


def corner_dots(features: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """D (F, N, 4) of `corner_dots_reference`; one Triton kernel on CUDA."""
    if _use_kernels(features):
        return _kernels().corner_dots(features, index, weights)
    return corner_dots_reference(features, index, weights)


class _PointReadout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, grid, weights, height, width, low_precision):
        coords = grid.detach().to(_accumulation_dtype(grid))
        index, valid, fx, fy = bilinear_corners(coords, height, width)
        dots = corner_dots(features, index, weights)
        out = (corner_weights(valid, fx, fy).to(dots.dtype) * dots).sum(-1)
        ctx.save_for_backward(features, weights, index, valid, fx, fy, dots)
        ctx.shape = (height, width)
        ctx.low_precision = low_precision
        ctx.grid_dtype = grid.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        features, weights, index, valid, fx, fy, dots = ctx.saved_tensors
        height, width = ctx.shape
        grad = grad.to(dots.dtype)
        cw = corner_weights(valid, fx, fy).to(dots.dtype)
        d_features = d_weights = d_grid = None
        need_f, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        scaled = cw * grad[..., None]
        if _use_kernels(features):
            k = _kernels()
            if need_f:
                d_features = k.scatter_features(
                    index, scaled, weights, features.shape[1], _precision(ctx.low_precision)
                )
                d_features = d_features.to(features.dtype)
            if need_w:
                d_weights = k.gather_weights(features, index, scaled).to(weights.dtype)
        elif need_f or need_w:
            d_features, d_weights = _scatter_matmuls(
                features, weights, index, scaled, ctx.low_precision, need_f, need_w
            )
        if ctx.needs_input_grad[1]:
            d_grid = _grid_grad(dots * grad[..., None], valid, fx, fy, height, width)
            d_grid = d_grid.to(ctx.grid_dtype)
        return d_features, d_grid, d_weights, None, None, None


def _precision(low_precision: bool) -> str:
    """Matrix-product precision of the CUDA backward: bf16 under autocast (as the einsum of the
    grid_sample readout was), tf32 where PyTorch allows it for float32 matrix products."""
    if low_precision:
        return "bf16"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _scatter_matmuls(features, weights, index, scaled, low_precision, need_f, need_w):
    """Feature and weight gradients through dense (frames x pixels x neurons) blocks
    A[f, p, n] = sum_k scaled[f, n, k] [index[f, n, k] == p]:
    d_features[f] = A[f] @ weights^T and d_weights^T = sum_f A[f]^T @ features[f]."""
    n_frames, n_pixels, _ = features.shape
    n = weights.shape[1]
    dtype = (
        torch.bfloat16 if (low_precision and features.is_cuda) else _accumulation_dtype(features)
    )
    block = max(1, BACKWARD_BLOCK_BYTES // (n_pixels * n * torch.finfo(dtype).bits // 8))
    w_t = weights.t().to(dtype)  # (N, C)
    d_features = torch.empty_like(features) if need_f else None
    acc = _accumulation_dtype(features)
    d_weights_t = weights.new_zeros(weights.shape[::-1], dtype=acc) if need_w else None
    for s in range(0, n_frames, block):
        e = min(s + block, n_frames)
        a = torch.zeros(e - s, n_pixels, n, device=features.device, dtype=dtype)
        a.scatter_add_(1, index[s:e].transpose(1, 2), scaled[s:e].transpose(1, 2).to(dtype))
        if need_f:
            d_features[s:e] = torch.matmul(a, w_t).to(features.dtype)
        if need_w:
            f = features[s:e].to(dtype).reshape(-1, features.shape[-1])
            d_weights_t += (a.reshape(-1, n).t() @ f).to(acc)
    d_weights = d_weights_t.t().to(weights.dtype) if need_w else None
    return d_features, d_weights


def _grid_grad(gd, valid, fx, fy, height, width):
    """d out / d grid from gd = grad * D (F, N, 4), through the bilinear weights."""
    gd = gd * valid
    gx, gy = 1 - fx, 1 - fy
    d_fx = gy * (gd[..., 1] - gd[..., 0]) + fy * (gd[..., 3] - gd[..., 2])
    d_fy = gx * (gd[..., 2] - gd[..., 0]) + fx * (gd[..., 3] - gd[..., 1])
    return torch.stack((d_fx * ((width - 1) / 2), d_fy * ((height - 1) / 2)), dim=-1)


def point_readout(
    features: torch.Tensor, grid: torch.Tensor, weights: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """features (F, height*width, C) channels-last, grid (F, N, 2), weights (C, N) ->
    (F, N) float32 (float64 for float64 features): sum_c weights[c, n] * grid_sample(features[f], grid[f, n])[c]."""
    if features.dim() != 3 or features.shape[1] != height * width:
        raise ValueError(
            f"point_readout: features must be (frames, {height}*{width}, channels), "
            f"got {tuple(features.shape)}"
        )
    low = torch.is_autocast_enabled(features.device.type)
    with torch.autocast(features.device.type, enabled=False):
        return _PointReadout.apply(features, grid, weights, height, width, low)

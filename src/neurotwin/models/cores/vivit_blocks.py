"""vivit_blocks: the transformer of the vivit core: attention, the parallel and sequential
blocks, RoPE, drop path (the unfused reference; vivit_fused.py fuses the parallel block).

- Attention uses `F.scaled_dot_product_attention` on (B, heads, L, d) views of one fused
  projection (q, k, v and, with parallel blocks, the MLP input), with `is_causal=True` for
  causal temporal attention, so flash / memory-efficient kernels are used on GPU.
- RoPE: 2D (half of each head for patch rows, half for columns) in the spatial transformer,
  1D over frames in the temporal transformer; register tokens (a prefix) are not rotated.
- Per-block gradient checkpointing (`Transformer.grad_checkpointing`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

FF_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU, "tanh": nn.Tanh}


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the branch of whole sequences (rows of the batch) with prob p."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def rope_frequencies(n: int, dim: int, device=None) -> torch.Tensor:
    """Angles (n, dim/2) of 1D rotary embedding for positions 0..n-1 over `dim` channels."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    pos = torch.arange(n, device=device, dtype=torch.float32)
    return pos[:, None] * inv_freq[None, :]


def rope_tables(angles: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed-sin tables (prefix + n, d) for rotating channel pairs (i, i + d/2) by the
    angles (n, d/2); the prefix rows (register tokens) are the identity."""
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1)
    sin = torch.cat((-angles.sin(), angles.sin()), dim=-1)
    if prefix:
        cos = torch.cat((cos.new_ones(prefix, cos.shape[1]), cos), dim=0)
        sin = torch.cat((sin.new_zeros(prefix, sin.shape[1]), sin), dim=0)
    return cos, sin


def rope_2d_tables(ay: torch.Tensor, ax: torch.Tensor, prefix: int):
    """2D RoPE as one table: the first half of each head is rotated by the row angles `ay`, the
    second half by the column angles `ax` (each (n, d/4))."""
    cy, sy = rope_tables(ay, prefix)
    cx, sx = rope_tables(ax, prefix)
    return torch.cat((cy, cx), dim=-1), torch.cat((sy, sx), dim=-1)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor, int]) -> torch.Tensor:
    """x (..., L, d) rotated: x * cos + partner(x) * signed_sin (tables (L, d)). The partner of
    channel i is i + d/2 (1D, groups=1) or the same within each half of the head (2D, groups=2):
    a flip of a view, so neither direction needs gather/scatter."""
    cos, sin, groups = rope
    d = x.shape[-1]
    partner = x.unflatten(-1, (groups, 2, d // (2 * groups))).flip(-2).flatten(-3)
    return (x * cos + partner * sin).to(x.dtype)


class Attention(nn.Module):
    """Shared parts of the transformer blocks: fused projection, QK-norm, RoPE, SDPA."""

    def __init__(self, emb_dim, num_heads, head_dim, extra_out, mha_dropout, norm_qk, causal):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.inner = num_heads * head_dim
        self.extra_out = extra_out
        self.causal = causal
        self.mha_dropout = mha_dropout
        self.norm = nn.LayerNorm(emb_dim)
        self.fused = nn.Linear(emb_dim, 3 * self.inner + extra_out, bias=False)
        self.attn_out = nn.Linear(self.inner, emb_dim, bias=False)
        self.norm_q = nn.LayerNorm(head_dim) if norm_qk else None
        self.norm_k = nn.LayerNorm(head_dim) if norm_qk else None

    def attend(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (N, L, E) -> attention branch output (N, L, E) and the extra (MLP) slice."""
        n, length, _ = x.shape
        h = self.norm(x)
        proj = self.fused(h)
        # split/unbind (not slicing) so that the backward pass concatenates instead of
        # scattering into zero-filled buffers
        qkv, extra = proj.split((3 * self.inner, self.extra_out), dim=-1)
        qkv = qkv.view(n, length, 3, self.num_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (N, heads, L, d) views
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        a = a.transpose(1, 2).reshape(n, length, self.inner)
        a = F.dropout(a, self.mha_dropout, self.training)
        return self.attn_out(a), (extra if self.extra_out else None)


class ParallelBlock(nn.Module):
    """x + DropPath(Attention(LN x)) + DropPath(MLP(LN x)), one fused input projection."""

    def __init__(self, emb_dim, num_heads, head_dim, ff_dim, ff_activation, mha_dropout, ff_dropout,
                 drop_path, norm_qk, causal):  # fmt: skip
        super().__init__()
        self.attn = Attention(emb_dim, num_heads, head_dim, ff_dim, mha_dropout, norm_qk, causal)
        self.ff_out = nn.Sequential(
            FF_ACTIVATIONS[ff_activation](),
            nn.Dropout(ff_dropout),
            nn.Linear(ff_dim, emb_dim, bias=False),
        )
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        a, ff = self.attn.attend(x, rope)
        return (
            x
            + drop_path(a, self.drop_path, self.training)
            + drop_path(self.ff_out(ff), self.drop_path, self.training)
        )


class SequentialBlock(nn.Module):
    """Pre-norm block: x + DropPath(Attention(LN x)), then + DropPath(MLP(LN x))."""

    def __init__(self, emb_dim, num_heads, head_dim, ff_dim, ff_activation, mha_dropout, ff_dropout,
                 drop_path, norm_qk, causal):  # fmt: skip
        super().__init__()
        self.attn = Attention(emb_dim, num_heads, head_dim, 0, mha_dropout, norm_qk, causal)
        self.ff = nn.Sequential(
            nn.LayerNorm(emb_dim),
            nn.Linear(emb_dim, ff_dim, bias=False),
            FF_ACTIVATIONS[ff_activation](),
            nn.Dropout(ff_dropout),
            nn.Linear(ff_dim, emb_dim, bias=False),
        )
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        a, _ = self.attn.attend(x, rope)
        x = x + drop_path(a, self.drop_path, self.training)
        return x + drop_path(self.ff(x), self.drop_path, self.training)


class Transformer(nn.Module):
    def __init__(self, depth: int, parallel: bool, **kwargs: Any) -> None:
        super().__init__()
        block = ParallelBlock if parallel else SequentialBlock
        self.blocks = nn.ModuleList([block(**kwargs) for _ in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            if use_ckpt:
                x = checkpoint(blk, x, rope, use_reentrant=False)
            else:
                x = blk(x, rope)
        return x


def init_weights(m: nn.Module) -> None:
    """Truncated-normal linear weights (std 0.02), zero biases, unit layer norms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

"""vivit: factorized spatiotemporal transformer core (the design of ViV1T, Li et al.).

    video (B, C, T, H, W) [+ behaviour/pupil channels]
      -> tube embedding: patches of pt frames x ps x ps pixels (strides st, ss), each patch
         layer-normalised and projected to emb_dim, layer norm, patch dropout, positions
      -> spatial transformer over the patches of each frame (tokens: registers, optional
         behaviour token, patches)
      -> temporal transformer over the frames of each patch (optionally causal)
      -> features (B, emb_dim, T', h, w)

Implementation notes (GPU efficiency):
- The tube embedding "unfold -> LayerNorm(patch) -> Linear" folds the LayerNorm into the
  projection: with W' = W * gamma,
      y = (patches @ W'^T - mean_p * sum(W')) / std_p + (W beta + b),
  where mean_p and std_p are the patch statistics from average pooling: exactly the same
  function and parameters (LayerNorm(patch_dim) + Linear). The patches are gathered (im2col,
  300 x 576 x 3185 values for a Sensorium trial) and projected by one matrix product, which
  on an H100 beat cuDNN's conv3d for 5 input channels and a 13x7x7 kernel (bench/RESULTS.md).
- The transformer's blocks, attention and RoPE are in vivit_blocks.py.
- Register tokens are a prefix of each sequence, so that under the causal mask every frame can
  attend to them (they are input independent, so causality is kept).
- With `core_pad_frame`, frames are zero-padded spatially so the patches cover the frame, and
  pt - 1 frames are padded in the past, so there is one output frame per input frame and
  output frame t depends on input frames <= t only (with causal attention).
- Per-block gradient checkpointing via `set_grad_checkpointing(True)`.
- `core_fused_block` (default false) switches the parallel blocks to vivit_fused's Triton
  kernels for CUDA tensors; the unfused blocks (vivit_blocks.py) stay the reference and the CPU
  path. Off by default because measured slower: on an H200 one fused block's forward+backward
  takes 7.7 ms against 2.8 ms for the compiled unfused block (bench/RESULTS.md), for ~30% less
  memory per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from neurotwin.config import option, require
from neurotwin.errors import ConfigError
from neurotwin.models.cores import vivit_fused
from neurotwin.models.cores.base import Core, CoreOptions, behavior_channels, concat_behavior
from neurotwin.models.cores.vivit_blocks import (
    Transformer,
    init_weights,
    rope_2d_tables,
    rope_frequencies,
    rope_tables,
)
from neurotwin.registry import CORES


@dataclass
class ViViTOptions(CoreOptions):
    """vivit; the defaults are ViV1T's published core (bryanlimy/ViV1T-closed-loop, train.py and
    the README's training command: causal temporal attention, parallel attention+MLP blocks)."""

    core_behavior_tokens: bool = option(
        False, "add one token per frame made from behaviour and pupil centre"
    )
    core_spatial_patch_size: int = option(7, "spatial patch size of the tube embedding")
    core_spatial_patch_stride: int = option(2, "spatial patch stride")
    core_temporal_patch_size: int = option(13, "temporal patch size (frames per tube)")
    core_temporal_patch_stride: int = option(1, "temporal patch stride")
    core_pad_frame: bool = option(
        True,
        "zero-pad frames so patches cover the whole frame, and pad the past so that there is "
        "one output frame per input frame",
    )
    core_emb_dim: int = option(112, "token embedding size")
    core_spatial_depth: int = option(14, "spatial transformer blocks")
    core_temporal_depth: int = option(14, "temporal transformer blocks")
    core_num_heads: int = option(2, "attention heads")
    core_head_dim: int = option(80, "size of each attention head")
    core_ff_dim: int = option(224, "hidden size of the feed-forward (MLP) blocks")
    core_ff_activation: Literal["relu", "gelu", "silu", "elu", "tanh"] = option(
        "relu", "feed-forward activation"
    )
    core_p_dropout: float = option(0.17, "patch dropout (whole tokens) after embedding")
    core_mha_dropout: float = option(0.04, "dropout on the attention output")
    core_ff_dropout: float = option(0.21, "dropout in the feed-forward blocks")
    core_drop_path: float = option(0.43, "stochastic depth rate of every block")
    core_use_causal_attention: bool = option(
        True, "causal temporal attention (no output depends on later frames)"
    )
    core_parallel_attention: bool = option(
        True, "attention and MLP in parallel in each block (else one after the other)"
    )
    core_norm_qk: bool = option(False, "layer-normalise queries and keys (per head)")
    core_pos_encoding: Literal["rope", "learned", "none"] = option(
        "rope",
        "rope (rotary: 2D over patches, 1D over frames) or learned (added spatial and temporal "
        "embeddings)",
    )
    core_reg_tokens: int = option(24, "learned register tokens per transformer")
    core_max_frame: int = option(300, "most frames a clip may have (learned positions)")
    core_fused_block: Literal[False, True, "auto"] = option(
        False,
        "fused Triton kernels for the parallel blocks (vivit_fused; ~30 percent less memory per "
        "block, but 2.7x slower than the compiled unfused block on an H200): auto (for CUDA tensors "
        "where Triton is installed and the block can be fused), true (every block must be "
        "fusable, else an error saying why; CPU tensors still run unfused), false (never)",
    )

    def check(self) -> None:
        require(
            self.core_pos_encoding != "rope" or self.core_head_dim % 4 == 0,
            "core_head_dim",
            f"must be a multiple of 4 for 2D RoPE, got {self.core_head_dim}",
        )


class TubeEmbedding(nn.Module):
    """Unfold 3D patches -> LayerNorm(patch_dim) -> Linear(patch_dim, emb_dim), as one conv3d."""

    def __init__(
        self, in_channels: int, emb_dim: int, kernel: tuple[int, int, int], stride
    ) -> None:
        super().__init__()
        self.in_channels, self.kernel, self.stride = in_channels, tuple(kernel), tuple(stride)
        patch_dim = in_channels * math.prod(kernel)
        self.patch_norm = nn.LayerNorm(patch_dim)
        # patch order (c, pt, ph, pw), as unfold + flatten would give
        self.proj = nn.Linear(patch_dim, emb_dim)
        self.eps = self.patch_norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, T, H, W) -> tokens (B, T', h, w, E)."""
        e = self.proj.out_features
        w = (self.proj.weight * self.patch_norm.weight).view(e, self.in_channels, *self.kernel)
        b_eff = self.proj.bias + self.proj.weight @ self.patch_norm.bias
        y = self._project(x, w)  # (B, E, T', h, w); bf16 under autocast
        # patch statistics in float32 (float64 for float64 inputs)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(acc)
        mean = F.avg_pool3d(xf.mean(1, keepdim=True), self.kernel, self.stride)
        sq = F.avg_pool3d(xf.square().mean(1, keepdim=True), self.kernel, self.stride)
        rstd = torch.rsqrt((sq - mean.square()).clamp_min(0.0) + self.eps)
        w_sum = w.sum(dim=(1, 2, 3, 4)).to(acc).view(1, e, 1, 1, 1)
        y = (y.to(acc) - mean * w_sum) * rstd + b_eff.to(acc).view(1, e, 1, 1, 1)
        return y.permute(0, 2, 3, 4, 1)  # (B, T', h, w, E); contiguous

    def _project(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """conv3d(x, w, stride) as im2col and one matrix product -> (B, E, T', h, w)."""
        (pt, ph, pw), (st, sh, sw) = self.kernel, self.stride
        if torch.is_autocast_enabled(x.device.type):  # gather the patches in bf16 already
            x = x.to(torch.get_autocast_dtype(x.device.type))
        patches = x.unfold(2, pt, st).unfold(3, ph, sh).unfold(4, pw, sw)
        b, c, nt, gh, gw = patches.shape[:5]  # (B, C, T', h, w, pt, ph, pw)
        patches = patches.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(b * nt * gh * gw, -1)
        y = F.linear(patches, w.reshape(w.shape[0], -1).to(patches.dtype))  # bf16 under autocast
        return y.view(b, nt, gh, gw, -1).permute(0, 4, 1, 2, 3)


@CORES.register("vivit", options=ViViTOptions)
class ViViTCore(Core):
    """Factorized spatiotemporal transformer; see the module docstring."""

    def __init__(
        self, in_channels: int, frame_shape: tuple[int, int], options: ViViTOptions | None = None
    ) -> None:
        o = options or ViViTOptions()
        super().__init__(o)
        self.behavior_mode = o.core_behavior_mode
        self.pt, self.st = o.core_temporal_patch_size, o.core_temporal_patch_stride
        self.ps, self.ss = o.core_spatial_patch_size, o.core_spatial_patch_stride
        self.pad_frame = o.core_pad_frame
        emb_dim, head_dim, reg_tokens = o.core_emb_dim, o.core_head_dim, o.core_reg_tokens
        self.emb_dim, self.head_dim, self.reg_tokens = emb_dim, head_dim, reg_tokens
        self.pos_encoding = o.core_pos_encoding
        self.max_frame = o.core_max_frame
        self.p_dropout = o.core_p_dropout
        c = in_channels + behavior_channels(o.core_behavior_mode)

        h, w = frame_shape
        if self.pad_frame:
            ph, pw = self._pad(h, self.ps, self.ss), self._pad(w, self.ps, self.ss)
            self.spatial_padding = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
            h, w = h + ph, w + pw
        else:
            self.spatial_padding = (0, 0, 0, 0)
        if h < self.ps or w < self.ps:
            raise ConfigError(
                f"frames {frame_shape} are smaller than core_spatial_patch_size {self.ps}"
            )
        self.grid = ((h - self.ps) // self.ss + 1, (w - self.ps) // self.ss + 1)
        self.frame_shape = tuple(frame_shape)

        self.embed = TubeEmbedding(
            c, emb_dim, (self.pt, self.ps, self.ps), (self.st, self.ss, self.ss)
        )
        self.embed_norm = nn.LayerNorm(emb_dim)
        n_patches = self.grid[0] * self.grid[1]
        if self.pos_encoding == "learned":
            self.spatial_pos = nn.Parameter(torch.randn(1, 1, n_patches, emb_dim))
            self.temporal_pos = nn.Parameter(torch.randn(1, self.max_frame, 1, emb_dim))
        self.spatial_reg = nn.Parameter(torch.randn(reg_tokens, emb_dim)) if reg_tokens else None
        self.temporal_reg = nn.Parameter(torch.randn(reg_tokens, emb_dim)) if reg_tokens else None
        self.behavior_token = nn.Linear(4, emb_dim) if o.core_behavior_tokens else None

        kw = dict(
            emb_dim=emb_dim, num_heads=o.core_num_heads, head_dim=head_dim, ff_dim=o.core_ff_dim,
            ff_activation=o.core_ff_activation, mha_dropout=o.core_mha_dropout,
            ff_dropout=o.core_ff_dropout, drop_path=o.core_drop_path, norm_qk=o.core_norm_qk,
        )  # fmt: skip
        parallel = o.core_parallel_attention
        self.spatial = Transformer(o.core_spatial_depth, parallel, causal=False, **kw)
        self.temporal = Transformer(
            o.core_temporal_depth, parallel, causal=o.core_use_causal_attention, **kw
        )
        self.spatial.apply(init_weights)
        self.temporal.apply(init_weights)
        self.out_channels = emb_dim
        self._fuse_blocks(o.core_fused_block)

    def _fuse_blocks(self, mode: bool | str) -> None:
        """Switch the blocks to the fused class as `core_fused_block` says (parameters and
        state dict unchanged)."""
        if mode is False:
            return
        if mode is True:
            for name, transformer in (("spatial", self.spatial), ("temporal", self.temporal)):
                for i, block in enumerate(transformer.blocks):
                    reason = vivit_fused.fused_block_reason(block)
                    if reason is not None:
                        raise ConfigError(
                            f"--core_fused_block true: {name} block {i} cannot be fused: {reason}"
                        )
        vivit_fused.use_fused_blocks(self)

    @staticmethod
    def _pad(dim: int, patch: int, stride: int) -> int:
        """Zero padding so that patches of `patch` with `stride` cover all of `dim`."""
        return max((math.ceil(dim / stride) - 1) * stride + patch - dim, 0)

    def out_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        if tuple(frame_shape) != self.frame_shape:
            raise ValueError(
                f"vivit core was built for frames {self.frame_shape}, not {frame_shape}"
            )
        return self.grid

    def set_grad_checkpointing(self, enabled: bool) -> None:
        super().set_grad_checkpointing(enabled)
        self.spatial.grad_checkpointing = bool(enabled)
        self.temporal.grad_checkpointing = bool(enabled)

    def _frame_index(self, t_in: int, n_tokens: int, device) -> tuple[torch.Tensor, int]:
        """For each output frame, the token (tube) whose last frame is the latest <= that frame.

        Returns (index over tokens, first input frame with an output)."""
        if self.pad_frame:  # tube k ends at input frame k * st
            first = 0
            idx = torch.arange(t_in, device=device) // self.st
        else:  # tube k ends at input frame k * st + pt - 1
            first = self.pt - 1
            idx = (torch.arange(first, t_in, device=device) - first) // self.st
        return idx.clamp_max(n_tokens - 1), first

    def forward(self, video, behavior=None, pupil_center=None):
        b, _, t_in, _, _ = video.shape
        if (video.shape[-2], video.shape[-1]) != self.frame_shape:
            raise ValueError(
                f"vivit core was built for frames {self.frame_shape}, got {tuple(video.shape[-2:])}"
            )
        if not self.pad_frame and t_in < self.pt:
            raise ValueError(
                f"clip of {t_in} frames is shorter than core_temporal_patch_size {self.pt}"
            )
        x = concat_behavior(video, behavior, pupil_center, self.behavior_mode)
        tp = self.pt - 1 if self.pad_frame else 0
        if self.pad_frame:
            x = F.pad(x, (*self.spatial_padding, tp, 0))

        tokens = self.embed(x)  # (B, T', h, w, E)
        _, nt, gh, gw, e = tokens.shape
        p = gh * gw
        tokens = self.embed_norm(tokens.reshape(b, nt, p, e))
        if self.training and self.p_dropout > 0:  # drop whole tokens
            keep = 1.0 - self.p_dropout
            mask = tokens.new_empty(b, nt, p, 1).bernoulli_(keep).div_(keep)
            tokens = tokens * mask
        if self.pos_encoding == "learned":
            if nt > self.max_frame:
                raise ValueError(
                    f"clip has {nt} frames after embedding, more than core_max_frame {self.max_frame}"
                )
            tokens = tokens + self.spatial_pos + self.temporal_pos[:, :nt]

        # --- spatial transformer over the patches of each frame ---
        x = tokens.reshape(b * nt, p, e)
        prefix = []
        if self.spatial_reg is not None:
            prefix.append(self.spatial_reg.to(x.dtype).expand(b * nt, -1, -1))
        if self.behavior_token is not None:
            prefix.append(self._behavior_tokens(behavior, pupil_center, t_in, nt, x.dtype))
        n_prefix = sum(t.shape[1] for t in prefix)
        if prefix:
            x = torch.cat((*prefix, x), dim=1)
        rope = self._spatial_rope(n_prefix, x.device) if self.pos_encoding == "rope" else None
        x = self.spatial(x, rope)
        x = x.split((n_prefix, p), dim=1)[1]  # drop the prefix tokens

        # --- temporal transformer over the frames of each patch ---
        x = x.view(b, nt, p, e).transpose(1, 2)  # (B, P, T', E) view
        r = self.reg_tokens
        if self.temporal_reg is not None:
            x = torch.cat((self.temporal_reg.to(x.dtype).expand(b, p, -1, -1), x), dim=2)
        x = x.reshape(b * p, r + nt, e)
        rope = self._temporal_rope(nt, r, x.device) if self.pos_encoding == "rope" else None
        x = self.temporal(x, rope)
        x = x.split((r, nt), dim=1)[1]

        # (B*P, T', E) -> (B, E, T', h, w) (a view)
        out = x.view(b, gh, gw, nt, e).permute(0, 4, 3, 1, 2)
        if self.st > 1:  # one output per input frame: the latest tube ending at or before it
            out = out.index_select(2, self._frame_index(t_in, nt, out.device)[0])
        return out

    def _behavior_tokens(self, behavior, pupil_center, t_in, nt, dtype):
        if behavior is None or pupil_center is None:
            raise ValueError("core_behavior_tokens needs behaviour and pupil centre inputs")
        # the last input frame of each tube
        if self.pad_frame:
            frames = torch.arange(nt, device=behavior.device) * self.st
        else:
            frames = torch.arange(nt, device=behavior.device) * self.st + self.pt - 1
        state = torch.cat((behavior, pupil_center), dim=1)[..., frames]  # (B, 4, T')
        tok = self.behavior_token(state.transpose(1, 2).to(self.behavior_token.weight.dtype))
        return tok.to(dtype).reshape(-1, 1, self.emb_dim)

    def _spatial_rope(self, prefix: int, device):
        gh, gw = self.grid
        q = self.head_dim // 2
        ay = rope_frequencies(gh, q, device)  # (gh, q/2)
        ax = rope_frequencies(gw, q, device)
        ay = ay[:, None, :].expand(gh, gw, -1).reshape(gh * gw, -1)
        ax = ax[None, :, :].expand(gh, gw, -1).reshape(gh * gw, -1)
        return (*rope_2d_tables(ay, ax, prefix), 2)

    def _temporal_rope(self, n: int, prefix: int, device):
        cos, sin = rope_tables(rope_frequencies(n, self.head_dim, device), prefix)
        return cos, sin, 1

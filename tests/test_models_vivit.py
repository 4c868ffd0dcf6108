"""The vivit core: ViV1T's parameter count, the fused tube embedding, full-size clips, RoPE and
the attention path against plain maths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from neurotwin.models.cores.vivit import TubeEmbedding, ViViTCore, ViViTOptions
from neurotwin.models.cores.vivit_blocks import (
    Attention,
    apply_rope,
    rope_frequencies,
    rope_tables,
)

# ViV1T's vivit core with its published defaults (bryanlimy/ViV1T-closed-loop, train.py
# `--core vivit` arguments and the README command: --core_behavior_mode=2
# --core_use_causal_attention --core_parallel_attention), counted by instantiating ViV1T's own
# ViViTCore (viv1t/model/core/vivit.py, viv1t/model/modules.py) for (1, 300, 36, 64) inputs and
# summing p.numel() over core.parameters(): tokenizer 363,426 + transformers 3,423,616.
VIV1T_CORE_PARAMETERS = 3_787_042


# small models on a shared CPU: one intra-op thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def vivit(frame_shape, **options) -> ViViTCore:
    """A vivit core with options given without their `core_` prefix."""
    return ViViTCore(1, frame_shape, ViViTOptions(**{f"core_{k}": v for k, v in options.items()}))


def test_default_vivit_parameter_count_matches_viv1t():
    core = ViViTCore(1, (36, 64), ViViTOptions())
    n = sum(p.numel() for p in core.parameters())
    assert abs(n - VIV1T_CORE_PARAMETERS) <= 0.10 * VIV1T_CORE_PARAMETERS
    assert n == VIV1T_CORE_PARAMETERS  # same layers, so the same count
    assert core.grid == (18, 32)
    assert core.out_channels == 112


def test_default_config_is_viv1t_published_config():
    c = ViViTOptions()
    assert (c.core_spatial_patch_size, c.core_spatial_patch_stride) == (7, 2)
    assert (c.core_temporal_patch_size, c.core_temporal_patch_stride) == (13, 1)
    assert (c.core_emb_dim, c.core_num_heads, c.core_head_dim, c.core_ff_dim) == (112, 2, 80, 224)
    assert (c.core_spatial_depth, c.core_temporal_depth) == (14, 14)
    assert (c.core_p_dropout, c.core_mha_dropout, c.core_ff_dropout, c.core_drop_path) == (
        0.17,
        0.04,
        0.21,
        0.43,
    )
    assert c.core_use_causal_attention and c.core_parallel_attention and c.core_behavior_mode == 2
    assert c.core_reg_tokens == 24 and c.core_ff_activation == "relu"


@pytest.mark.parametrize("stride", [(1, 2, 2), (2, 3, 1)])
def test_tube_embedding_equals_unfold_layernorm_linear(stride):
    torch.manual_seed(0)
    c, kernel = 3, (3, 4, 5)
    emb = TubeEmbedding(c, 8, kernel, stride).double()
    with torch.no_grad():
        emb.patch_norm.weight.uniform_(0.5, 1.5)
        emb.patch_norm.bias.normal_()
    x = torch.randn(2, c, 7, 11, 13, dtype=torch.double)
    x[:, 1] += 3.0  # channels with different means
    y = emb(x)
    patches = (
        x.unfold(2, kernel[0], stride[0])
        .unfold(3, kernel[1], stride[1])
        .unfold(4, kernel[2], stride[2])
    )  # (B, C, nt, nh, nw, pt, ph, pw)
    patches = patches.permute(0, 2, 3, 4, 1, 5, 6, 7).flatten(4)  # (B, nt, nh, nw, C*pt*ph*pw)
    expected = emb.proj(emb.patch_norm(patches))
    assert y.shape == expected.shape
    assert torch.allclose(y.double(), expected, atol=1e-8)


def test_frame_shape_and_length_checks():
    core = vivit((12, 16), emb_dim=16, spatial_depth=1, temporal_depth=1, head_dim=8,
                     ff_dim=16, spatial_patch_size=3, pos_encoding="learned", max_frame=8)  # fmt: skip
    b = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="built for frames"):
        core(torch.zeros(1, 1, 4, 10, 16), b, b)
    t = torch.zeros(1, 2, 9)
    with pytest.raises(ValueError, match="core_max_frame"):
        core(torch.zeros(1, 1, 9, 12, 16), t, t)


def _default_vivit(**overrides):
    return ViViTCore(1, (36, 64), ViViTOptions(**overrides))


@pytest.mark.slow
def test_default_vivit_forward_backward_reduced_clip():
    """ViV1T-size core (default config), full 36x64 frames, T reduced to 2 frames: a 300-frame
    forward+backward of this core takes minutes on a 2-core CPU. The 300-frame path itself is
    checked below with a narrow core."""
    torch.manual_seed(0)
    core = _default_vivit().eval()  # eval: no dropout masks (CPU time); gradients still flow
    t = 2
    video = torch.randn(1, 1, t, 36, 64)
    behavior, pupil = torch.randn(1, 2, t), torch.randn(1, 2, t)
    out = core(video, behavior, pupil)
    assert out.shape == (1, 112, t, 18, 32)
    out.square().mean().backward()
    assert all(p.grad is not None for p in core.parameters())


@pytest.mark.slow
def test_full_length_clip_forward_backward_narrow_core():
    """A (1, 1, 300, 36, 64) trial with ViV1T's patches and tokens but a narrow, shallow core."""
    torch.manual_seed(0)
    core = _default_vivit(
        core_emb_dim=8, core_spatial_depth=1, core_temporal_depth=1, core_num_heads=1,
        core_head_dim=8, core_ff_dim=8, core_reg_tokens=4,
    ).eval()  # fmt: skip
    video = torch.randn(1, 1, 300, 36, 64)
    behavior, pupil = torch.randn(1, 2, 300), torch.randn(1, 2, 300)
    out = core(video, behavior, pupil)
    assert out.shape == (1, 8, 300, 18, 32)
    out.mean().backward()
    assert core.embed.proj.weight.grad is not None


def test_sdpa_is_used_with_causal_flag(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((tuple(q.shape), kwargs.get("is_causal", False)))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    core = vivit((12, 16), emb_dim=16, spatial_depth=1, temporal_depth=1, num_heads=2,
                     head_dim=8, ff_dim=16, spatial_patch_size=3, reg_tokens=2)  # fmt: skip
    b = torch.zeros(1, 2, 5)
    core(torch.zeros(1, 1, 5, 12, 16), b, b)
    (spatial_shape, spatial_causal), (temporal_shape, temporal_causal) = calls
    p = core.grid[0] * core.grid[1]
    assert spatial_shape == (5, 2, 2 + p, 8) and not spatial_causal  # (B*T, heads, L, d)
    assert temporal_shape == (p, 2, 2 + 5, 8) and temporal_causal


@pytest.mark.parametrize("norm_qk", [False, True])
def test_bf16_autocast_forward_backward(norm_qk):
    """The dtype paths the GPU takes under bf16 autocast (bf16 matmuls/SDPA, float32 stats)."""
    torch.manual_seed(0)
    core = vivit((12, 16), emb_dim=16, spatial_depth=1, temporal_depth=1, head_dim=8,
                     ff_dim=16, spatial_patch_size=3, norm_qk=norm_qk, behavior_tokens=True).eval()  # fmt: skip
    video, b = torch.randn(1, 1, 5, 12, 16), torch.randn(1, 2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = core(video, b, b)
    assert out.shape == (1, 16, 5, 6, 8) and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in core.parameters())
    ref = core(video, b, b)
    assert (out.float() - ref).abs().mean() < 0.1 * ref.abs().mean()


# ----------------------------------------------------------------------------------------------
# RoPE and attention against plain maths
# ----------------------------------------------------------------------------------------------


def rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Reference RoPE on x (..., L, d): channel pairs (i, i + d/2) as complex numbers, each
    multiplied by exp(i * angle[position, i])."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half], x[..., half:])
    z = z * torch.polar(torch.ones_like(angles), angles)
    return torch.cat((z.real, z.imag), dim=-1)


def test_rope_1d_matches_complex_rotation_and_skips_the_prefix():
    torch.manual_seed(0)
    n, prefix, d = 7, 3, 8
    angles = rope_frequencies(n, d)
    x = torch.randn(2, 3, prefix + n, d, dtype=torch.float64)  # (N, heads, L, d)
    cos, sin = rope_tables(angles, prefix)
    got = apply_rope(x, (cos.double(), sin.double(), 1))
    torch.testing.assert_close(got[..., :prefix, :], x[..., :prefix, :])
    want = rotate_pairs(x[..., prefix:, :], angles.double())
    torch.testing.assert_close(got[..., prefix:, :], want)


def test_rope_2d_rotates_each_half_of_the_head_by_its_own_axis():
    torch.manual_seed(0)
    core = vivit((12, 16), behavior_mode=0, emb_dim=16, spatial_depth=1,
                     temporal_depth=1, num_heads=2, head_dim=8, ff_dim=16, reg_tokens=2,
                     spatial_patch_size=3, temporal_patch_size=3)  # fmt: skip
    gh, gw = core.grid
    cos, sin, groups = core._spatial_rope(2, None)
    x = torch.randn(1, 2, 2 + gh * gw, 8, dtype=torch.float64)  # (N, heads, L, d)
    got = apply_rope(x, (cos.double(), sin.double(), groups))
    rows = torch.arange(gh).repeat_interleave(gw)
    cols = torch.arange(gw).repeat(gh)
    ay = rope_frequencies(gh, 4)[rows].double()  # (P, 2)
    ax = rope_frequencies(gw, 4)[cols].double()
    body = x[..., 2:, :]
    want = torch.cat((rotate_pairs(body[..., :4], ay), rotate_pairs(body[..., 4:], ax)), dim=-1)
    torch.testing.assert_close(got[..., :2, :], x[..., :2, :])
    torch.testing.assert_close(got[..., 2:, :], want)


def test_rope_scores_depend_on_relative_position_only():
    """The same query and key at every position: rotated scores form a Toeplitz matrix."""
    torch.manual_seed(0)
    n, d = 9, 8
    cos, sin = rope_tables(rope_frequencies(n, d), 0)
    q = torch.randn(d).expand(n, d).double()
    k = torch.randn(d).expand(n, d).double()
    rq = apply_rope(q, (cos.double(), sin.double(), 1))
    rk = apply_rope(k, (cos.double(), sin.double(), 1))
    scores = rq @ rk.T
    for offset in range(-n + 1, n):
        diag = torch.diagonal(scores, offset)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag))
    assert not torch.allclose(torch.diagonal(scores, 0)[0], torch.diagonal(scores, 1)[0])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("extra", [0, 6])
def test_attention_matches_softmax_attention_by_hand(causal, extra):
    torch.manual_seed(0)
    n, length, e, heads, d, prefix = 3, 10, 12, 2, 8, 2
    att = Attention(e, heads, d, extra, mha_dropout=0.0, norm_qk=False, causal=causal).double()
    att.eval()
    cos, sin = rope_tables(rope_frequencies(length - prefix, d), prefix)
    x = torch.randn(n, length, e, dtype=torch.float64)
    out, ff = att.attend(x, (cos.double(), sin.double(), 1))

    proj = att.fused(att.norm(x))
    q, k, v = proj[..., : 3 * heads * d].view(n, length, 3, heads, d).unbind(2)
    angles = torch.cat((torch.zeros(prefix, d // 2), rope_frequencies(length - prefix, d)))
    angles = angles.double()[:, None, :]  # (L, 1, d/2): the same for every head
    q, k = rotate_pairs(q, angles), rotate_pairs(k, angles)
    scores = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(d)
    if causal:
        future = torch.ones(length, length, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    a = torch.einsum("nhqk,nkhd->nqhd", scores.softmax(-1), v).reshape(n, length, heads * d)
    torch.testing.assert_close(out, att.attn_out(a))
    if extra:
        torch.testing.assert_close(ff, proj[..., 3 * heads * d :])
    else:
        assert ff is None

"""vivit_fused: the ViViT parallel block as three fused steps on CUDA with Triton.

    x -> [qkv: LN -> q, k, v projection -> RoPE, written in attention layout]
      -> scaled_dot_product_attention (cuDNN / flash: keeps the scores on chip)
      -> [post: LN -> MLP (FF-wide activation, dropout) and output projection (dropout), each
          branch times its drop-path factor, + x]
The unfused block (vivit_blocks.ParallelBlock) writes the 704-wide fused projection, the rotated q/k,
the ReLU/dropout activations and masks and their gradients to memory; here only q, k, v and the
attention output o (and their gradients) are, each once, in bf16. The backward recomputes the
layer norm, the MLP activation and the dropout masks (Philox, keyed by a seed and the element's
index) from x instead of storing them; weight gradients are reduced in registers over groups of
token tiles. The attention itself stays PyTorch's SDPA (the fastest kernel at head dim 80 in
bench/RESULTS.md), so its backward is the library's. Traffic counts: bench/fused_block.py.

`FusedParallelBlock` has the parameters (and state dict) of `ParallelBlock` and the same math in
training and eval mode. The vivit core's option `core_fused_block` (auto, true, false) decides at
its construction: `use_fused_blocks(core)` switches (in place) the blocks that
`fused_block_reason` accepts (parallel, no QK-norm, a fused activation, Triton installed). A
switched block takes the fused path for CUDA tensors and its unfused forward elsewhere; tests
and CPU smoke runs also send CPU tensors through Triton's interpreter (`CPU_INTERPRETER`, with
TRITON_INTERPRET=1 set before the kernels, _vivit_fused_kernels.py, are first imported).
Dropout masks differ from PyTorch's (another generator), with the same distribution.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurotwin.models.cores.vivit_blocks import ParallelBlock

ACTIVATION_CODES = {nn.ReLU: 0, nn.GELU: 1, nn.SiLU: 2, nn.ELU: 3, nn.Tanh: 4}
MAX_EMB_DIM = 256  # one token row of the residual stream is held in registers


@dataclass
class KernelConfig:
    """Tile sizes of the kernels: tokens per tile (of the weight-gradient kernels apart),
    columns per chunk of the q/k/v and inner widths and of the FF width, warps per program of
    the forward, input-gradient and weight-gradient kernels, pipeline stages, and programs per
    SM of the weight-gradient kernels. Defaults: the fewest register spills in ptxas's report
    for sm_90 at the ViV1T widths (compiled without a GPU; not yet timed)."""

    block_m: int = 32
    block_m_dw: int = 32
    block_c: int = 32
    block_f: int = 32
    num_warps: int = 8
    num_warps_dx: int = 8
    num_warps_dw: int = 8
    num_stages: int = 1  # software pipelining buys little here and costs registers (spills)
    programs_per_sm: int = 4


CONFIG = KernelConfig()


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (TRITON_INTERPRET=1), as the tests do."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


HAS_TRITON = importlib.util.find_spec("triton") is not None
# CPU tensors take the fused path (Triton's interpreter) only where this is set: by the tests
# and bench/fused_block.py --device cpu, which set TRITON_INTERPRET=1 too. Everything else on
# the CPU (training, prediction, the other tests) runs the unfused blocks.
CPU_INTERPRETER = False


@functools.cache
def _kernels():
    from neurotwin.models.cores import _vivit_fused_kernels

    return _vivit_fused_kernels


def fused_block_reason(block: nn.Module, x: Tensor | None = None) -> str | None:
    """Why `block` cannot take the fused path (for input x, if given), or None if it can."""
    if not isinstance(block, ParallelBlock):
        return "only parallel attention + MLP blocks are fused"
    if block.attn.norm_q is not None:
        return "QK-norm is not fused"
    act = block.ff_out[0]
    if type(act) not in ACTIVATION_CODES:
        return f"activation {type(act).__name__} is not fused"
    if isinstance(act, nn.GELU) and act.approximate != "none":
        return "only the exact GELU is fused"
    if isinstance(act, nn.ELU) and act.alpha != 1.0:
        return "only ELU with alpha 1 is fused"
    if block.attn.norm.normalized_shape[0] > MAX_EMB_DIM:
        return f"emb_dim {block.attn.norm.normalized_shape[0]} > {MAX_EMB_DIM}"
    if not HAS_TRITON:
        return "Triton is not installed"
    if x is not None and not _runs_fused(x):
        return "the fused kernels run on CUDA devices (on the CPU only under Triton's interpreter)"
    return None


def _runs_fused(x: Tensor) -> bool:
    """CUDA inputs, or CPU inputs where CPU_INTERPRETER is set (never without Triton). Cheap and
    free of os/importlib calls, so that torch.compile traces it without a graph break."""
    return HAS_TRITON and (x.is_cuda or (CPU_INTERPRETER and x.device.type == "cpu"))


class FusedParallelBlock(ParallelBlock):
    """`ParallelBlock` (same parameters and math) running the fused kernels on CUDA inputs and
    its own unfused forward elsewhere. Make one with `use_fused_blocks`, which switches only
    blocks that `fused_block_reason` accepts."""

    def forward(self, x: Tensor, rope=None) -> Tensor:
        if _runs_fused(x):
            return fused_parallel_block(self, x, rope)
        return super().forward(x, rope)


def use_fused_blocks(module: nn.Module) -> int:
    """Make every fusable `ParallelBlock` inside `module` a `FusedParallelBlock` (in place;
    parameters and state dict unchanged). Returns how many blocks were switched (0 without
    Triton, so that an `auto` option leaves the model as it was)."""
    n = 0
    for m in module.modules():
        if type(m) is ParallelBlock and fused_block_reason(m) is None:
            m.__class__ = FusedParallelBlock
            n += 1
    return n


def fused_parallel_block(block: ParallelBlock, x: Tensor, rope=None) -> Tensor:
    """The forward of `block` (x (N, L, E), rope (cos, sin, groups) or None) on the fused path."""
    attn = block.attn
    n, length, _ = x.shape
    x = x.contiguous()
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    w_qkv, w_ff = attn.fused.weight.to(dtype).split((3 * attn.inner, attn.extra_out))
    ln_w, ln_b, eps = attn.norm.weight, attn.norm.bias, attn.norm.eps
    if rope is None:
        cos = sin = x.new_ones(1, dtype=torch.float32)
        groups = 0
    else:
        cos, sin, groups = rope[0].float().contiguous(), rope[1].float().contiguous(), rope[2]
    q, k, v = torch.ops.neurotwin.vivit_fused_qkv(
        x, ln_w, ln_b, w_qkv, cos, sin, length, attn.num_heads, attn.head_dim, groups, eps
    )
    o = F.scaled_dot_product_attention(q, k, v, is_causal=attn.causal)
    training = block.training
    p_mha = attn.mha_dropout if training else 0.0
    p_ff = block.ff_out[1].p if training else 0.0
    dpa, dpf = (_drop_path_scale(n, block.drop_path, training, x.device) for _ in range(2))
    if p_mha > 0 or p_ff > 0:
        seeds = torch.randint(0, 2**31 - 1, (2,), device=x.device)
    else:
        seeds = torch.zeros(2, dtype=torch.int64, device=x.device)
    return torch.ops.neurotwin.vivit_fused_post(
        x, o, ln_w, ln_b, w_ff, block.ff_out[2].weight.to(dtype), attn.attn_out.weight.to(dtype),
        dpa, dpf, seeds, length, p_ff, p_mha, ACTIVATION_CODES[type(block.ff_out[0])], eps,
    )  # fmt: skip


def _drop_path_scale(n: int, p: float, training: bool, device) -> Tensor:
    """Per-sequence factor of a branch: 0 with probability p, else 1/(1-p) (1 in eval)."""
    scale = torch.ones(n, dtype=torch.float32, device=device)
    if training and p > 0:
        scale.bernoulli_(1.0 - p).div_(1.0 - p)
    return scale


# --- launch helpers ---------------------------------------------------------------------------


def _dot_dtype(dtype: torch.dtype):
    """Triton dtype of the matrix-product operands and the input precision for float32."""
    import triton.language as tl

    if interpreting() or dtype == torch.float32:  # the interpreter's bf16 tl.dot is wrong
        return tl.float32, "ieee"
    return (tl.bfloat16 if dtype == torch.bfloat16 else tl.float16), "tf32"  # tf32: unused


def _launch(role: str) -> dict:
    """Warps and stages of a kernel of one role: fwd, dx (input gradients), dw (weights)."""
    warps = {"fwd": CONFIG.num_warps, "dx": CONFIG.num_warps_dx, "dw": CONFIG.num_warps_dw}
    return {"num_warps": warps[role], "num_stages": CONFIG.num_stages}


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, 1 << (max(n, 1) - 1).bit_length())


def _blocks(e: int, inner: int, ff: int) -> dict:
    c = CONFIG
    return {
        "BLOCK_M": c.block_m,
        "BLOCK_E": _pow2(e),
        "BLOCK_C": min(c.block_c, _pow2(inner)),
        "BLOCK_F": min(c.block_f, _pow2(ff)),
    }


def _groups(n_tiles: int, n_chunks: int, device) -> tuple[int, int]:
    """(groups, tiles per group) of the weight-gradient kernels: about programs_per_sm
    programs per SM in all, each reducing over a run of token tiles."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 2
    target = max(1, -(-CONFIG.programs_per_sm * sms // n_chunks))
    per_group = -(-n_tiles // min(n_tiles, target))
    return -(-n_tiles // per_group), per_group


@functools.lru_cache(maxsize=32)
def _partner_rows(heads: int, head_dim: int, groups: int, device: torch.device) -> Tensor:
    """Rows of the q and k weights holding each row's RoPE partner (apply_rope's flip)."""
    chunk = head_dim // (2 * groups)
    within = torch.arange(head_dim, device=device).view(groups, 2, chunk).flip(1).reshape(-1)
    one = (torch.arange(heads, device=device)[:, None] * head_dim + within).reshape(-1)
    return torch.cat((one, one + heads * head_dim))


def _ln_grads(partials: Tensor, ln_w: Tensor) -> tuple[Tensor, Tensor]:
    """LN weight and bias gradients from the per-tile partial sums (tiles, 2, E): two separate
    tensors (a custom op's outputs may not alias each other)."""
    return partials[:, 0].sum(0).to(ln_w.dtype), partials[:, 1].sum(0).to(ln_w.dtype)


def _strides(t: Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


# --- qkv: LN -> projection -> RoPE --------------------------------------------------------------


@torch.library.custom_op("neurotwin::vivit_fused_qkv", mutates_args=())
def _qkv(
    x: Tensor, ln_w: Tensor, ln_b: Tensor, w: Tensor, cos: Tensor, sin: Tensor,
    seq_len: int, heads: int, head_dim: int, groups: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """q, k, v (N, heads, L, head_dim) in w's dtype from x (N, L, E), RoPE where groups > 0."""
    k_ = _kernels()
    e = x.shape[-1]
    m, inner = x.numel() // e, heads * head_dim
    shape = (m // seq_len, heads, seq_len, head_dim)
    q, k, v = (torch.empty(shape, dtype=w.dtype, device=x.device) for _ in range(3))
    wp = w[: 2 * inner].index_select(0, _partner_rows(heads, head_dim, groups, x.device)) if (
        groups
    ) else w  # fmt: skip
    b = _blocks(e, inner, 1)
    dot, prec = _dot_dtype(w.dtype)
    k_.qkv_fwd[(-(-m // b["BLOCK_M"]),)](
        x, ln_w, ln_b, w, wp, cos, sin, q, k, v, m, seq_len, e, inner, head_dim, *_strides(q),
        eps, BLOCK_M=b["BLOCK_M"], BLOCK_E=b["BLOCK_E"], BLOCK_C=b["BLOCK_C"], ROPE=groups > 0,
        DOT_DTYPE=dot, PREC=prec, **_launch("fwd"),
    )  # fmt: skip
    return q, k, v


@_qkv.register_fake
def _qkv_fake(x, ln_w, ln_b, w, cos, sin, seq_len, heads, head_dim, groups, eps):
    shape = (x.numel() // x.shape[-1] // seq_len, heads, seq_len, head_dim)
    return tuple(x.new_empty(shape, dtype=w.dtype) for _ in range(3))


@torch.library.custom_op("neurotwin::vivit_fused_qkv_backward", mutates_args=())
def _qkv_backward(
    dq: Tensor, dk: Tensor, dv: Tensor, x: Tensor, ln_w: Tensor, ln_b: Tensor, w: Tensor,
    cos: Tensor, sin: Tensor, seq_len: int, heads: int, head_dim: int, groups: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """dx, d ln_w, d ln_b, dw of `_qkv`."""
    k_ = _kernels()
    if not (dq.stride() == dk.stride() == dv.stride()):  # the dW kernel takes one stride set
        dq, dk, dv = dq.contiguous(), dk.contiguous(), dv.contiguous()
    e = x.shape[-1]
    m, inner = x.numel() // e, heads * head_dim
    rows = _partner_rows(heads, head_dim, groups, x.device) if groups else None
    wp = w[: 2 * inner].index_select(0, rows) if groups else w
    b = _blocks(e, inner, 1)
    dot, prec = _dot_dtype(w.dtype)
    n_tiles = -(-m // b["BLOCK_M"])
    rope = groups > 0
    dx = torch.empty_like(x)
    dln = torch.empty(n_tiles, 2, e, dtype=torch.float32, device=x.device)
    k_.qkv_bwd_dx[(n_tiles,)](
        x, ln_w, ln_b, w, wp, cos, sin, dq, dk, dv, dx, dln, m, seq_len, e, inner, head_dim,
        *_strides(dq), *_strides(dk), *_strides(dv), eps, BLOCK_M=b["BLOCK_M"],
        BLOCK_E=b["BLOCK_E"], BLOCK_C=b["BLOCK_C"], ROPE=rope, DOT_DTYPE=dot, PREC=prec,
        **_launch("dx"),
    )  # fmt: skip
    n_chunks = -(-inner // b["BLOCK_C"])
    n_groups, per_group = _groups(-(-m // CONFIG.block_m_dw), 3 * n_chunks, x.device)
    dw_parts = torch.empty(3, n_groups, inner, e, dtype=torch.float32, device=x.device)
    dwp_parts = torch.empty(2, n_groups, inner, e, dtype=torch.float32, device=x.device)
    k_.qkv_bwd_dw[(3 * n_chunks, n_groups)](
        x, ln_w, ln_b, cos, sin, dq, dk, dv, dw_parts, dwp_parts, m, seq_len, e, inner,
        head_dim, *_strides(dq), n_chunks, n_groups, per_group, eps, BLOCK_M=CONFIG.block_m_dw,
        BLOCK_E=b["BLOCK_E"], BLOCK_C=b["BLOCK_C"], ROPE=rope, DOT_DTYPE=dot, PREC=prec,
        **_launch("dw"),
    )  # fmt: skip
    dw = dw_parts.sum(1).reshape(3 * inner, e)
    if rope:
        dw[: 2 * inner].index_add_(0, rows, dwp_parts.sum(1).reshape(2 * inner, e))
    return dx, *_ln_grads(dln, ln_w), dw.to(w.dtype)


@_qkv_backward.register_fake
def _qkv_backward_fake(dq, dk, dv, x, ln_w, ln_b, w, cos, sin, seq_len, heads, head_dim, groups,
                       eps):  # fmt: skip
    return torch.empty_like(x), torch.empty_like(ln_w), torch.empty_like(ln_b), torch.empty_like(w)


def _qkv_setup(ctx, inputs, output) -> None:
    x, ln_w, ln_b, w, cos, sin, *meta = inputs
    ctx.save_for_backward(x, ln_w, ln_b, w, cos, sin)
    ctx.meta = meta


def _qkv_grad(ctx, dq, dk, dv):
    x, ln_w, ln_b, w, cos, sin = ctx.saved_tensors
    seq_len, heads, head_dim = ctx.meta[:3]
    shape = (x.numel() // x.shape[-1] // seq_len, heads, seq_len, head_dim)
    grads = [g if g is not None else w.new_zeros(shape) for g in (dq, dk, dv)]
    dx, dlnw, dlnb, dw = _qkv_backward(*grads, x, ln_w, ln_b, w, cos, sin, *ctx.meta)
    return dx, dlnw, dlnb, dw, None, None, None, None, None, None, None


_qkv.register_autograd(_qkv_grad, setup_context=_qkv_setup)


# --- post: LN -> MLP, output projection, drop-path, residual ------------------------------------


@torch.library.custom_op("neurotwin::vivit_fused_post", mutates_args=())
def _post(
    x: Tensor, o: Tensor, ln_w: Tensor, ln_b: Tensor, w_ff: Tensor, w_out: Tensor, w_o: Tensor,
    dpa: Tensor, dpf: Tensor, seeds: Tensor, seq_len: int, p_ff: float, p_mha: float,
    activation: int, eps: float,
) -> Tensor:  # fmt: skip
    """y = x + dpf * W_out dropout(act(LN(x) W_ff^T)) + dpa * W_o dropout(o), o (N, H, L, D)."""
    k_ = _kernels()
    e, ff = x.shape[-1], w_ff.shape[0]
    m, inner, head_dim = x.numel() // e, w_o.shape[1], o.shape[-1]
    b = _blocks(e, inner, ff)
    dot, prec = _dot_dtype(w_ff.dtype)
    y = torch.empty_like(x)
    k_.post_fwd[(-(-m // b["BLOCK_M"]),)](
        x, ln_w, ln_b, w_ff, w_out, w_o, o, dpa, dpf, seeds, y, m, seq_len, e, ff, inner,
        head_dim, *_strides(o), p_ff, p_mha, eps, **b, ACT=activation, DROP_FF=p_ff > 0,
        DROP_MHA=p_mha > 0, DOT_DTYPE=dot, PREC=prec, **_launch("fwd"),
    )  # fmt: skip
    return y


@_post.register_fake
def _post_fake(x, o, ln_w, ln_b, w_ff, w_out, w_o, dpa, dpf, seeds, seq_len, p_ff, p_mha,
               activation, eps):  # fmt: skip
    return torch.empty_like(x)


@torch.library.custom_op("neurotwin::vivit_fused_post_backward", mutates_args=())
def _post_backward(
    dy: Tensor, x: Tensor, o: Tensor, ln_w: Tensor, ln_b: Tensor, w_ff: Tensor, w_out: Tensor,
    w_o: Tensor, dpa: Tensor, dpf: Tensor, seeds: Tensor, seq_len: int, p_ff: float,
    p_mha: float, activation: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """dx, do, d ln_w, d ln_b, dw_ff, dw_out, dw_o of `_post`."""
    k_ = _kernels()
    dy = dy.contiguous()
    e, ff = x.shape[-1], w_ff.shape[0]
    m, inner, head_dim = x.numel() // e, w_o.shape[1], o.shape[-1]
    b = _blocks(e, inner, ff)
    dot, prec = _dot_dtype(w_ff.dtype)
    n_tiles = -(-m // b["BLOCK_M"])
    flags = dict(DROP_MHA=p_mha > 0, DOT_DTYPE=dot, PREC=prec)
    dx = torch.empty_like(x)
    do = torch.empty_strided(o.shape, o.stride(), dtype=o.dtype, device=o.device)
    dln = torch.empty(n_tiles, 2, e, dtype=torch.float32, device=x.device)
    k_.post_bwd_dx[(n_tiles,)](
        x, ln_w, ln_b, w_ff, w_out, w_o, dy, dpa, dpf, seeds, do, dx, dln, m, seq_len, e, ff,
        inner, head_dim, *_strides(o), p_ff, p_mha, eps, **b, ACT=activation, DROP_FF=p_ff > 0,
        **flags, **_launch("dx"),
    )  # fmt: skip
    f_chunks = -(-ff // b["BLOCK_F"])
    n_tiles_dw = -(-m // CONFIG.block_m_dw)
    n_groups, per_group = _groups(n_tiles_dw, f_chunks, x.device)
    dwff = torch.empty(n_groups, ff, e, dtype=torch.float32, device=x.device)
    dwout = torch.empty(n_groups, ff, e, dtype=torch.float32, device=x.device)
    k_.mlp_bwd_dw[(f_chunks, n_groups)](
        x, ln_w, ln_b, w_ff, w_out, dy, dpa, dpf, seeds, dwff, dwout, m, seq_len, e, ff,
        per_group, p_ff, eps, BLOCK_M=CONFIG.block_m_dw, BLOCK_E=b["BLOCK_E"],
        BLOCK_F=b["BLOCK_F"], ACT=activation, DROP_FF=p_ff > 0, DOT_DTYPE=dot, PREC=prec,
        **_launch("dw"),
    )  # fmt: skip
    c_chunks = -(-inner // b["BLOCK_C"])
    o_groups, o_per_group = _groups(n_tiles_dw, c_chunks, x.device)
    dwo = torch.empty(o_groups, inner, e, dtype=torch.float32, device=x.device)
    k_.attn_out_bwd_dw[(c_chunks, o_groups)](
        o, dy, dpa, dpf, seeds, dwo, m, seq_len, e, inner, head_dim, *_strides(o), o_per_group,
        p_mha, BLOCK_M=CONFIG.block_m_dw, BLOCK_E=b["BLOCK_E"], BLOCK_C=b["BLOCK_C"], **flags,
        **_launch("dw"),
    )  # fmt: skip
    return (
        dx, do, *_ln_grads(dln, ln_w), dwff.sum(0).to(w_ff.dtype),
        # contiguous, as the fake implementation says (compiled graphs rely on its strides)
        dwout.sum(0).t().contiguous().to(w_out.dtype), dwo.sum(0).t().contiguous().to(w_o.dtype),
    )  # fmt: skip


@_post_backward.register_fake
def _post_backward_fake(dy, x, o, ln_w, ln_b, w_ff, w_out, w_o, dpa, dpf, seeds, seq_len, p_ff,
                        p_mha, activation, eps):  # fmt: skip
    return tuple(torch.empty_like(t) for t in (x, o, ln_w, ln_b, w_ff, w_out, w_o))


def _post_setup(ctx, inputs, output) -> None:
    *tensors, seq_len, p_ff, p_mha, activation, eps = inputs
    ctx.save_for_backward(*tensors)
    ctx.meta = (seq_len, p_ff, p_mha, activation, eps)


def _post_grad(ctx, dy):
    grads = _post_backward(dy, *ctx.saved_tensors, *ctx.meta)
    return (*grads, None, None, None, None, None, None, None, None)


_post.register_autograd(_post_grad, setup_context=_post_setup)

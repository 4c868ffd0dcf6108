"""Triton kernels of the fused ViViT parallel block (imported only where Triton exists).

Tokens are the rows of x (M = N sequences x L tokens, E channels, contiguous). q, k, v, the
attention output o and their gradients are (N, H, L, D) tensors addressed through their strides
(row part n*s_n + l*s_l, column part h*s_h + d*s_d for column c = h*D + d of the inner width).

- qkv_fwd:       LN(x) -> q, k, v = h W^T per column chunk, RoPE applied in registers as
                 (h W^T) * cos + (h Wp^T) * sin, where Wp holds the partner rows of W (so the
                 rotation needs no shuffle of registers), written straight into (N, H, L, D).
- qkv_bwd_dx:    dq, dk, dv -> un-rotated -> d_h = sum over chunks -> LN backward -> dx, plus the
                 per-tile partial sums of the LN weight and bias gradients.
- qkv_bwd_dw:    dW (and dWp) of one tensor (q, k or v): programs own (column chunk, group of
                 token tiles), recompute h and accumulate in registers; partials per group.
- post_fwd:      LN(x) -> MLP (h Wff^T -> activation -> dropout -> Wout) and attention output
                 projection (dropout(o) Wo^T), each branch scaled by its per-sequence drop-path
                 factor, + x; the FF-wide activation never leaves the chip.
- post_bwd_dx:   dy -> d_o (for the attention backward) and dx through the MLP and LN.
- mlp_bwd_dw, attn_out_bwd_dw: the weight gradients of the MLP and of the output projection.
(Unused results get distinct names, unusedN: Triton treats `_` as one variable, whose type may
not change inside a loop.) Dropout masks come from Philox (tl.rand) keyed by a seed tensor and the element's flat index,
so the backward regenerates them instead of storing them. DOT_DTYPE is the dtype of the
matrix-product operands (bf16 on the GPU; float32 under the interpreter, whose bf16 tl.dot is
wrong in Triton 3.6); accumulation is float32 throughout.
"""

from __future__ import annotations

import triton
import triton.language as tl

ACTIVATIONS = {"relu": 0, "gelu": 1, "silu": 2, "elu": 3, "tanh": 4}


@triton.jit
def _act(x, ACT: tl.constexpr):
    """The MLP's activation (codes of ACTIVATIONS; GELU is the exact erf form, ELU alpha 1)."""
    if ACT == 0:
        y = tl.maximum(x, 0.0)
    elif ACT == 1:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == 2:
        y = x * tl.sigmoid(x)
    elif ACT == 3:
        y = tl.where(x > 0, x, tl.exp(tl.minimum(x, 0.0)) - 1.0)
    else:
        y = 2.0 * tl.sigmoid(2.0 * x) - 1.0
    return y


@triton.jit
def _act_grad(x, ACT: tl.constexpr):
    """Derivative of `_act` at x."""
    if ACT == 0:
        g = tl.where(x > 0, 1.0, 0.0)
    elif ACT == 1:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        g = cdf + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)
    elif ACT == 2:
        s = tl.sigmoid(x)
        g = s * (1.0 + x * (1.0 - s))
    elif ACT == 3:
        g = tl.where(x > 0, 1.0, tl.exp(tl.minimum(x, 0.0)))
    else:
        t = 2.0 * tl.sigmoid(2.0 * x) - 1.0
        g = 1.0 - t * t
    return g


@triton.jit
def _layer_norm(X, LNW, LNB, rows, M, E, eps, BLOCK_E: tl.constexpr):
    """x (rows x BLOCK_E, float32, zero outside), its normalised x_hat, 1/std and h = LN(x)."""
    cols = tl.arange(0, BLOCK_E)
    emask = cols < E
    mask = (rows[:, None] < M) & emask[None, :]
    x = tl.load(X + rows[:, None].to(tl.int64) * E + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / E
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / E + eps)
    xhat = xc * rstd[:, None]
    w = tl.load(LNW + cols, mask=emask, other=0.0).to(tl.float32)
    b = tl.load(LNB + cols, mask=emask, other=0.0).to(tl.float32)
    return xhat, rstd, xhat * w[None, :] + b[None, :]


@triton.jit
def _layer_norm_grad(d_h, xhat, rstd, LNW, E, BLOCK_E: tl.constexpr):
    """dx of LayerNorm from the gradient d_h of its output (rows x BLOCK_E, float32)."""
    cols = tl.arange(0, BLOCK_E)
    w = tl.load(LNW + cols, mask=cols < E, other=0.0).to(tl.float32)
    gw = d_h * w[None, :]
    m1 = tl.sum(gw, axis=1) / E
    m2 = tl.sum(gw * xhat, axis=1) / E
    return rstd[:, None] * (gw - m1[:, None] - xhat * m2[:, None])


@triton.jit
def _store_ln_partials(DLN, pid, d_h, xhat, E, BLOCK_E: tl.constexpr):
    """Per-tile sums over tokens of d_h * x_hat (LN weight) and d_h (LN bias): DLN (tiles, 2, E)."""
    cols = tl.arange(0, BLOCK_E)
    base = DLN + pid.to(tl.int64) * 2 * E
    tl.store(base + cols, tl.sum(d_h * xhat, axis=0), mask=cols < E)
    tl.store(base + E + cols, tl.sum(d_h, axis=0), mask=cols < E)


@triton.jit
def _head_offsets(rows, cols, L, D, s_n, s_h, s_l, s_d):
    """Row and column parts of the (N, H, L, D) offsets of tokens `rows`, inner columns `cols`."""
    r = rows.to(tl.int64)
    row_off = (r // L) * s_n + (r % L) * s_l
    col_off = (cols // D).to(tl.int64) * s_h + (cols % D).to(tl.int64) * s_d
    return row_off, col_off


@triton.jit
def _rope_tables(COS, SIN, rows, cols, mask, L, D):
    """cos and signed sin (rows x cols) of token positions l = row % L and channels d = col % D."""
    off = (rows % L)[:, None] * D + (cols % D)[None, :]
    cs = tl.load(COS + off, mask=mask, other=1.0)
    sn = tl.load(SIN + off, mask=mask, other=0.0)
    return cs, sn


@triton.jit
def _project_store(h, W, WP, COS, SIN, OUT, rows, M, L, E, INNER, D, s_n, s_h, s_l, s_d,
                   BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, ROPE: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """OUT[rows] = rotate(h @ W^T) over the INNER columns of one of q, k, v."""
    ecols = tl.arange(0, BLOCK_E)
    rmask = rows < M
    for c0 in range(0, INNER, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < INNER
        wmask = cmask[:, None] & (ecols[None, :] < E)
        w_off = cols[:, None] * E + ecols[None, :]
        w = tl.load(W + w_off, mask=wmask, other=0.0).to(DOT_DTYPE)
        acc = tl.dot(h, tl.trans(w), input_precision=PREC)
        mask = rmask[:, None] & cmask[None, :]
        if ROPE:
            wp = tl.load(WP + w_off, mask=wmask, other=0.0).to(DOT_DTYPE)
            accp = tl.dot(h, tl.trans(wp), input_precision=PREC)
            cs, sn = _rope_tables(COS, SIN, rows, cols, mask, L, D)
            acc = acc * cs + accp * sn
        row_off, col_off = _head_offsets(rows, cols, L, D, s_n, s_h, s_l, s_d)
        ptr = OUT + row_off[:, None] + col_off[None, :]
        tl.store(ptr, acc.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def qkv_fwd(X, LNW, LNB, W, WP, COS, SIN, Q, K, V, M, L, E, INNER, D, s_n, s_h, s_l, s_d, eps,
            BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
            ROPE: tl.constexpr, DOT_DTYPE: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """q, k, v (N, H, L, D) of a tile of tokens: W (3*INNER, E), WP (2*INNER, E) partner rows."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    unused1, unused2, h = _layer_norm(X, LNW, LNB, rows, M, E, eps, BLOCK_E)
    h = h.to(DOT_DTYPE)
    wk, wv, wpk = W + INNER * E, W + 2 * INNER * E, WP + INNER * E
    _project_store(h, W, WP, COS, SIN, Q, rows, M, L, E, INNER, D, s_n, s_h, s_l, s_d,
                   BLOCK_E, BLOCK_C, ROPE, DOT_DTYPE, PREC)  # fmt: skip
    _project_store(h, wk, wpk, COS, SIN, K, rows, M, L, E, INNER, D, s_n, s_h, s_l, s_d,
                   BLOCK_E, BLOCK_C, ROPE, DOT_DTYPE, PREC)  # fmt: skip
    _project_store(h, wv, wv, COS, SIN, V, rows, M, L, E, INNER, D, s_n, s_h, s_l, s_d,
                   BLOCK_E, BLOCK_C, False, DOT_DTYPE, PREC)  # fmt: skip


@triton.jit
def _unrotated_grad(G, COS, SIN, rows, cols, M, L, INNER, D, g_n, g_h, g_l, g_d,
                    ROPE: tl.constexpr, DOT_DTYPE: tl.constexpr):  # fmt: skip
    """A gradient chunk g (rows x cols) of one of q, k, v, as (g * cos, g * sin) (g, g without
    RoPE), in DOT_DTYPE."""
    mask = (rows < M)[:, None] & (cols < INNER)[None, :]
    row_off, col_off = _head_offsets(rows, cols, L, D, g_n, g_h, g_l, g_d)
    g = tl.load(G + row_off[:, None] + col_off[None, :], mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        cs, sn = _rope_tables(COS, SIN, rows, cols, mask, L, D)
        return (g * cs).to(DOT_DTYPE), (g * sn).to(DOT_DTYPE)
    return g.to(DOT_DTYPE), g.to(DOT_DTYPE)


@triton.jit
def _weight_rows(W, cols, E, INNER, BLOCK_E: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Rows `cols` of a (INNER, E) weight, zero outside, in DOT_DTYPE."""
    ecols = tl.arange(0, BLOCK_E)
    mask = (cols < INNER)[:, None] & (ecols < E)[None, :]
    w = tl.load(W + cols[:, None] * E + ecols[None, :], mask=mask, other=0.0)
    return w.to(DOT_DTYPE)


@triton.jit
def _input_grad(d_h, G, W, WP, COS, SIN, rows, M, L, E, INNER, D, g_n, g_h, g_l, g_d,
                BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, ROPE: tl.constexpr,
                DOT_DTYPE: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """d_h += (dG un-rotated) @ W over the INNER columns of one of q, k, v."""
    for c0 in range(0, INNER, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        gc, gs = _unrotated_grad(G, COS, SIN, rows, cols, M, L, INNER, D, g_n, g_h, g_l, g_d,
                                 ROPE, DOT_DTYPE)  # fmt: skip
        w = _weight_rows(W, cols, E, INNER, BLOCK_E, DOT_DTYPE)
        d_h += tl.dot(gc, w, input_precision=PREC)
        if ROPE:
            wp = _weight_rows(WP, cols, E, INNER, BLOCK_E, DOT_DTYPE)
            d_h += tl.dot(gs, wp, input_precision=PREC)
    return d_h


@triton.jit
def qkv_bwd_dx(X, LNW, LNB, W, WP, COS, SIN, DQ, DK, DV, DX, DLN, M, L, E, INNER, D,
               q_n, q_h, q_l, q_d, k_n, k_h, k_l, k_d, v_n, v_h, v_l, v_d, eps,
               BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
               ROPE: tl.constexpr, DOT_DTYPE: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """dx of a tile of tokens through the q, k, v projection and the LN (and LN partials)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    xhat, rstd, unused3 = _layer_norm(X, LNW, LNB, rows, M, E, eps, BLOCK_E)
    d_h = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)
    wk, wv, wpk = W + INNER * E, W + 2 * INNER * E, WP + INNER * E
    d_h = _input_grad(d_h, DQ, W, WP, COS, SIN, rows, M, L, E, INNER, D, q_n, q_h, q_l, q_d,
                      BLOCK_E, BLOCK_C, ROPE, DOT_DTYPE, PREC)  # fmt: skip
    d_h = _input_grad(d_h, DK, wk, wpk, COS, SIN, rows, M, L, E, INNER, D, k_n, k_h, k_l, k_d,
                      BLOCK_E, BLOCK_C, ROPE, DOT_DTYPE, PREC)  # fmt: skip
    d_h = _input_grad(d_h, DV, wv, wv, COS, SIN, rows, M, L, E, INNER, D, v_n, v_h, v_l, v_d,
                      BLOCK_E, BLOCK_C, False, DOT_DTYPE, PREC)  # fmt: skip
    dx = _layer_norm_grad(d_h, xhat, rstd, LNW, E, BLOCK_E)
    cols = tl.arange(0, BLOCK_E)
    mask = (rows < M)[:, None] & (cols < E)[None, :]
    tl.store(DX + rows[:, None].to(tl.int64) * E + cols[None, :], dx, mask=mask)
    _store_ln_partials(DLN, pid, d_h, xhat, E, BLOCK_E)


@triton.jit
def qkv_bwd_dw(X, LNW, LNB, COS, SIN, DQ, DK, DV, DW, DWP, M, L, E, INNER, D, g_n, g_h, g_l, g_d,
               n_chunks, n_groups, tiles_per_group, eps, BLOCK_M: tl.constexpr,
               BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, ROPE: tl.constexpr,
               DOT_DTYPE: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Partial dW (3, groups, INNER, E) and dWp (2, groups, INNER, E) float32 of q, k, v (which
    share their strides): program (chunk of one tensor's columns, group of token tiles). The
    programs of one group are neighbours in the grid, so x and the gradients come from L2."""
    which = tl.program_id(0) // n_chunks
    cols = (tl.program_id(0) % n_chunks) * BLOCK_C + tl.arange(0, BLOCK_C)
    group = tl.program_id(1)
    if which == 0:
        G = DQ
    elif which == 1:
        G = DK
    else:
        G = DV
    rotate = which < 2
    acc = tl.zeros((BLOCK_C, BLOCK_E), dtype=tl.float32)
    accp = tl.zeros((BLOCK_C, BLOCK_E), dtype=tl.float32)
    t0 = group * tiles_per_group
    t1 = tl.minimum(t0 + tiles_per_group, tl.cdiv(M, BLOCK_M))
    for t in range(t0, t1):
        rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
        unused4, unused5, h = _layer_norm(X, LNW, LNB, rows, M, E, eps, BLOCK_E)
        h = h.to(DOT_DTYPE)
        mask = (rows < M)[:, None] & (cols < INNER)[None, :]
        row_off, col_off = _head_offsets(rows, cols, L, D, g_n, g_h, g_l, g_d)
        g = tl.load(G + row_off[:, None] + col_off[None, :], mask=mask, other=0.0)
        g = g.to(tl.float32)
        if ROPE:
            cs, sn = _rope_tables(COS, SIN, rows, cols, mask, L, D)
            cs = tl.where(rotate, cs, 1.0)
            sn = tl.where(rotate, sn, 0.0)
            acc += tl.dot(tl.trans((g * cs).to(DOT_DTYPE)), h, input_precision=PREC)
            accp += tl.dot(tl.trans((g * sn).to(DOT_DTYPE)), h, input_precision=PREC)
        else:
            acc += tl.dot(tl.trans(g.to(DOT_DTYPE)), h, input_precision=PREC)
    ecols = tl.arange(0, BLOCK_E)
    mask = (cols < INNER)[:, None] & (ecols < E)[None, :]
    part = (which * n_groups + group).to(tl.int64) * INNER * E
    off = cols[:, None] * E + ecols[None, :]
    tl.store(DW + part + off, acc, mask=mask)
    if ROPE:
        tl.store(DWP + part + off, accp, mask=mask & rotate)


@triton.jit
def _dropout(v, SEED, offsets, p, ENABLED: tl.constexpr):
    """v with elements zeroed where Philox(seed, offset) < p and the rest scaled by 1/(1-p)."""
    if ENABLED:
        u = tl.rand(tl.load(SEED), offsets)
        v = tl.where(u >= p, v / (1.0 - p), 0.0)
    return v


@triton.jit
def _mlp_chunk(h, WFF, WOUT, SEEDS, rows, fcols, M, E, FF, p_ff, BLOCK_E: tl.constexpr,
               ACT: tl.constexpr, DROP_FF: tl.constexpr, DOT_DTYPE: tl.constexpr,
               PREC: tl.constexpr):  # fmt: skip
    """For FF columns `fcols`: the pre-activation, dropout(act(pre)), Wff rows and Wout^T rows."""
    ecols = tl.arange(0, BLOCK_E)
    fmask = fcols < FF
    wmask = fmask[:, None] & (ecols[None, :] < E)
    wff = tl.load(WFF + fcols[:, None] * E + ecols[None, :], mask=wmask, other=0.0)
    wff = wff.to(DOT_DTYPE)
    wout_t = tl.load(WOUT + ecols[None, :] * FF + fcols[:, None], mask=wmask, other=0.0)
    wout_t = wout_t.to(DOT_DTYPE)
    pre = tl.dot(h, tl.trans(wff), input_precision=PREC)
    offsets = rows[:, None] * FF + fcols[None, :]
    act = _dropout(_act(pre, ACT), SEEDS, offsets, p_ff, DROP_FF)
    return pre, act, wff, wout_t


@triton.jit
def _dropped_o(OUT_A, SEEDS, rows, cols, M, L, INNER, D, o_n, o_h, o_l, o_d, p_mha,
               DROP_MHA: tl.constexpr):  # fmt: skip
    """dropout(o) (rows x cols, float32) of the attention output at inner columns `cols`."""
    mask = (rows < M)[:, None] & (cols < INNER)[None, :]
    row_off, col_off = _head_offsets(rows, cols, L, D, o_n, o_h, o_l, o_d)
    o = tl.load(OUT_A + row_off[:, None] + col_off[None, :], mask=mask, other=0.0).to(tl.float32)
    return _dropout(o, SEEDS + 1, rows[:, None] * INNER + cols[None, :], p_mha, DROP_MHA)


@triton.jit
def _wo_t(WO, cols, E, INNER, BLOCK_E: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Columns `cols` of Wo (E, INNER) as rows (cols x BLOCK_E), zero outside, in DOT_DTYPE."""
    ecols = tl.arange(0, BLOCK_E)
    mask = (cols < INNER)[:, None] & (ecols < E)[None, :]
    w = tl.load(WO + ecols[None, :] * INNER + cols[:, None], mask=mask, other=0.0)
    return w.to(DOT_DTYPE)


@triton.jit
def post_fwd(X, LNW, LNB, WFF, WOUT, WO, OUT_A, DPA, DPF, SEEDS, Y, M, L, E, FF, INNER, D,
             o_n, o_h, o_l, o_d, p_ff, p_mha, eps, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr,
             BLOCK_F: tl.constexpr, BLOCK_C: tl.constexpr, ACT: tl.constexpr,
             DROP_FF: tl.constexpr, DROP_MHA: tl.constexpr, DOT_DTYPE: tl.constexpr,
             PREC: tl.constexpr):  # fmt: skip
    """y = x + dpf * MLP(LN x) + dpa * Wo dropout(o) for a tile of tokens."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    unused6, unused7, h = _layer_norm(X, LNW, LNB, rows, M, E, eps, BLOCK_E)
    h = h.to(DOT_DTYPE)
    dpa = tl.load(DPA + rows // L, mask=rmask, other=0.0)
    dpf = tl.load(DPF + rows // L, mask=rmask, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)
    for f0 in range(0, FF, BLOCK_F):
        fcols = f0 + tl.arange(0, BLOCK_F)
        unused8, act, unused9, wout_t = _mlp_chunk(h, WFF, WOUT, SEEDS, rows, fcols, M, E, FF, p_ff, BLOCK_E,
                                       ACT, DROP_FF, DOT_DTYPE, PREC)  # fmt: skip
        act = (act * dpf[:, None]).to(DOT_DTYPE)
        acc += tl.dot(act, wout_t, input_precision=PREC)
    for c0 in range(0, INNER, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        o = _dropped_o(
            OUT_A, SEEDS, rows, cols, M, L, INNER, D, o_n, o_h, o_l, o_d, p_mha, DROP_MHA
        )
        o = (o * dpa[:, None]).to(DOT_DTYPE)
        acc += tl.dot(o, _wo_t(WO, cols, E, INNER, BLOCK_E, DOT_DTYPE), input_precision=PREC)
    ecols = tl.arange(0, BLOCK_E)
    mask = rmask[:, None] & (ecols < E)[None, :]
    off = rows[:, None].to(tl.int64) * E + ecols[None, :]
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + off, (x + acc).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _branch_grads(DY, DPA, DPF, rows, M, L, E, BLOCK_E: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """dy (float32) and the gradients dpa * dy, dpf * dy of the two branches' outputs."""
    ecols = tl.arange(0, BLOCK_E)
    rmask = rows < M
    mask = rmask[:, None] & (ecols < E)[None, :]
    dy = tl.load(DY + rows[:, None].to(tl.int64) * E + ecols[None, :], mask=mask, other=0.0)
    dy = dy.to(tl.float32)
    dpa = tl.load(DPA + rows // L, mask=rmask, other=0.0)
    dpf = tl.load(DPF + rows // L, mask=rmask, other=0.0)
    return dy, (dy * dpa[:, None]).to(DOT_DTYPE), (dy * dpf[:, None]).to(DOT_DTYPE)


@triton.jit
def _mlp_pre_grad(h, gf, WFF, WOUT, SEEDS, rows, fcols, M, E, FF, p_ff, BLOCK_E: tl.constexpr,
                  ACT: tl.constexpr, DROP_FF: tl.constexpr, DOT_DTYPE: tl.constexpr,
                  PREC: tl.constexpr):  # fmt: skip
    """For FF columns `fcols`: dropout(act) (forward value), the pre-activation's gradient and
    the Wff rows."""
    pre, act, wff, wout_t = _mlp_chunk(h, WFF, WOUT, SEEDS, rows, fcols, M, E, FF, p_ff, BLOCK_E,
                                       ACT, DROP_FF, DOT_DTYPE, PREC)  # fmt: skip
    d_act = tl.dot(gf, tl.trans(wout_t), input_precision=PREC)
    d_act = _dropout(d_act, SEEDS, rows[:, None] * FF + fcols[None, :], p_ff, DROP_FF)
    return act, d_act * _act_grad(pre, ACT), wff


@triton.jit
def post_bwd_dx(X, LNW, LNB, WFF, WOUT, WO, DY, DPA, DPF, SEEDS, DO, DX, DLN, M, L, E, FF,
                INNER, D, o_n, o_h, o_l, o_d, p_ff, p_mha, eps, BLOCK_M: tl.constexpr,
                BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_C: tl.constexpr,
                ACT: tl.constexpr, DROP_FF: tl.constexpr, DROP_MHA: tl.constexpr,
                DOT_DTYPE: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """d_o (strides of o) and dx = dy + LN backward of the MLP's input gradient, for a tile."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    ecols = tl.arange(0, BLOCK_E)
    unused10, ga, unused11 = _branch_grads(DY, DPA, DPF, rows, M, L, E, BLOCK_E, DOT_DTYPE)
    for c0 in range(0, INNER, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < INNER
        wo_t = _wo_t(WO, cols, E, INNER, BLOCK_E, DOT_DTYPE)
        d_o = tl.dot(ga, tl.trans(wo_t), input_precision=PREC)
        d_o = _dropout(d_o, SEEDS + 1, rows[:, None] * INNER + cols[None, :], p_mha, DROP_MHA)
        row_off, col_off = _head_offsets(rows, cols, L, D, o_n, o_h, o_l, o_d)
        ptr = DO + row_off[:, None] + col_off[None, :]
        tl.store(ptr, d_o.to(DO.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])
    # the branch gradients are read again (from L1/L2) where needed: fewer live registers
    unused12, unused13, gf = _branch_grads(DY, DPA, DPF, rows, M, L, E, BLOCK_E, DOT_DTYPE)
    xhat, rstd, h = _layer_norm(X, LNW, LNB, rows, M, E, eps, BLOCK_E)
    h = h.to(DOT_DTYPE)
    d_h = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)
    for f0 in range(0, FF, BLOCK_F):
        fcols = f0 + tl.arange(0, BLOCK_F)
        unused14, d_pre, wff = _mlp_pre_grad(h, gf, WFF, WOUT, SEEDS, rows, fcols, M, E, FF, p_ff,
                                      BLOCK_E, ACT, DROP_FF, DOT_DTYPE, PREC)  # fmt: skip
        d_h += tl.dot(d_pre.to(DOT_DTYPE), wff, input_precision=PREC)
    dx = _layer_norm_grad(d_h, xhat, rstd, LNW, E, BLOCK_E)
    dy, unused15, unused16 = _branch_grads(DY, DPA, DPF, rows, M, L, E, BLOCK_E, DOT_DTYPE)
    dx += dy
    mask = rmask[:, None] & (ecols < E)[None, :]
    tl.store(DX + rows[:, None].to(tl.int64) * E + ecols[None, :], dx, mask=mask)
    _store_ln_partials(DLN, pid, d_h, xhat, E, BLOCK_E)


@triton.jit
def mlp_bwd_dw(X, LNW, LNB, WFF, WOUT, DY, DPA, DPF, SEEDS, DWFF, DWOUT, M, L, E, FF,
               tiles_per_group, p_ff, eps, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr,
               BLOCK_F: tl.constexpr, ACT: tl.constexpr, DROP_FF: tl.constexpr,
               DOT_DTYPE: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Partial dWff (groups, FF, E) and dWout^T (groups, FF, E) of the FF columns of a program."""
    fcols = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
    group = tl.program_id(1)
    acc_ff = tl.zeros((BLOCK_F, BLOCK_E), dtype=tl.float32)
    acc_out = tl.zeros((BLOCK_F, BLOCK_E), dtype=tl.float32)
    t0 = group * tiles_per_group
    t1 = tl.minimum(t0 + tiles_per_group, tl.cdiv(M, BLOCK_M))
    for t in range(t0, t1):
        rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
        unused17, unused18, gf = _branch_grads(DY, DPA, DPF, rows, M, L, E, BLOCK_E, DOT_DTYPE)
        unused19, unused20, h = _layer_norm(X, LNW, LNB, rows, M, E, eps, BLOCK_E)
        h = h.to(DOT_DTYPE)
        act, d_pre, unused21 = _mlp_pre_grad(h, gf, WFF, WOUT, SEEDS, rows, fcols, M, E, FF, p_ff,
                                      BLOCK_E, ACT, DROP_FF, DOT_DTYPE, PREC)  # fmt: skip
        acc_ff += tl.dot(tl.trans(d_pre.to(DOT_DTYPE)), h, input_precision=PREC)
        acc_out += tl.dot(tl.trans(act.to(DOT_DTYPE)), gf, input_precision=PREC)
    ecols = tl.arange(0, BLOCK_E)
    mask = (fcols < FF)[:, None] & (ecols < E)[None, :]
    off = group.to(tl.int64) * FF * E + fcols[:, None] * E + ecols[None, :]
    tl.store(DWFF + off, acc_ff, mask=mask)
    tl.store(DWOUT + off, acc_out, mask=mask)


@triton.jit
def attn_out_bwd_dw(OUT_A, DY, DPA, DPF, SEEDS, DWO, M, L, E, INNER, D, o_n, o_h, o_l, o_d,
                    tiles_per_group, p_mha, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr,
                    BLOCK_C: tl.constexpr, DROP_MHA: tl.constexpr, DOT_DTYPE: tl.constexpr,
                    PREC: tl.constexpr):  # fmt: skip
    """Partial dWo^T (groups, INNER, E) of the inner columns of a program."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    group = tl.program_id(1)
    acc = tl.zeros((BLOCK_C, BLOCK_E), dtype=tl.float32)
    t0 = group * tiles_per_group
    t1 = tl.minimum(t0 + tiles_per_group, tl.cdiv(M, BLOCK_M))
    for t in range(t0, t1):
        rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
        unused22, ga, unused23 = _branch_grads(DY, DPA, DPF, rows, M, L, E, BLOCK_E, DOT_DTYPE)
        o = _dropped_o(
            OUT_A, SEEDS, rows, cols, M, L, INNER, D, o_n, o_h, o_l, o_d, p_mha, DROP_MHA
        )
        acc += tl.dot(tl.trans(o.to(DOT_DTYPE)), ga, input_precision=PREC)
    ecols = tl.arange(0, BLOCK_E)
    mask = (cols < INNER)[:, None] & (ecols < E)[None, :]
    off = group.to(tl.int64) * INNER * E + cols[:, None] * E + ecols[None, :]
    tl.store(DWO + off, acc, mask=mask)

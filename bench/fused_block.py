"""The fused ViViT block (vivit_fused) against the unfused one, at the shapes of a ViV1T step.

    python bench/fused_block.py                  # all three parts, < 10 min on one H200
    python bench/fused_block.py --skip_model     # (a) and (b) only

(a) errors: the spatial block (300 sequences x 600 tokens: 24 registers + 18x32 patches, 2D RoPE)
    and the causal temporal block (576 x 324: 24 registers + 300 frames, 1D RoPE), dropout off,
    forward + backward in bf16 autocast, unfused and fused, each against the unfused block in
    float32 (no TF32): max |error| / max |reference| of y, dx and every parameter's gradient.
(b) time of one block forward + backward (training mode, the config's dropout and drop-path),
    and of a forward without gradients: unfused compiled (as the trainer runs it), fused eager,
    fused compiled; peak memory of each.
(c) the whole model step (bench/train_throughput.py's model mode, same arguments as in
    bench/RESULTS.md), with --core_fused_block false and true (every block fused, or the row
    fails saying why).
Every part catches its own failure, prints it and goes on; parts that would pass the time
budget (--budget_s) are skipped with a note.

Expected gain (traffic per token of one block, forward + backward, bytes; E 112, inner 160,
FF 224, bf16 activations, float32 residual stream; SDPA's own traffic ~4.5 KB in both):
  unfused: LN 0.7, 704-wide projection 1.6, RoPE + layout 1.3, SDPA fwd 1.3, dropout(o) 0.8,
           output projection 0.5, ReLU + dropout 1.1, MLP out 0.7, residual 1.3 (fwd 9.3);
           residual 0.9, MLP out 1.3, ReLU/dropout + concatenation into d_proj 3.5, output
           projection 1.1, dropout 0.8, SDPA bwd 3.2, RoPE bwd 1.3, projection bwd 3.3,
           LN bwd 1.8 (bwd 17)                                              -> ~26 KB
  fused:   qkv 1.4, SDPA fwd 1.3, post 1.2 (fwd 3.9); post dx 1.7, MLP dW 0.9, output dW 0.8,
           SDPA bwd 3.2, qkv dx 1.9, qkv dW 1.4, sum of the two dx 1.3 (bwd 11.1) -> ~15 KB
i.e. ~2 GB less per 180,000-token block: ~0.5 ms at ~4 TB/s, ~15 ms of the ~78 ms H200 step
(28 blocks), if the kernels run near bandwidth. The attention kernel (~0.8 ms per block) is
unchanged and becomes the largest part of the block.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from neurotwin.models.cores import vivit  # noqa: E402
from neurotwin.models.cores import vivit_blocks  # noqa: E402
from neurotwin.models.cores import vivit_fused as vf  # noqa: E402


class Budget:
    """Seconds left of the command's budget; parts that would overrun it are skipped."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


TINY = dict(core_emb_dim=16, core_num_heads=2, core_head_dim=8, core_ff_dim=16, core_reg_tokens=2)


def make_block(kind: str, fused: bool, dropout: bool, args):
    """(block, input shape, rope) of a spatial or temporal block with the config's widths."""
    c = vivit.ViViTOptions(**(TINY if args.tiny else {}))
    device, frames, frame_shape = args.device, args.frames, args.frame_shape
    torch.manual_seed(0)
    grid = dataclasses.replace(c, core_spatial_depth=1, core_temporal_depth=1,
                               core_fused_block=False)  # fmt: skip
    core = vivit.ViViTCore(1, frame_shape, grid)  # only for the patch grid and the RoPE tables
    rates = (c.core_mha_dropout, c.core_ff_dropout, c.core_drop_path) if dropout else (0, 0, 0)
    causal = kind == "temporal" and c.core_use_causal_attention
    block = vivit_blocks.ParallelBlock(
        c.core_emb_dim, c.core_num_heads, c.core_head_dim, c.core_ff_dim, c.core_ff_activation,
        *rates, c.core_norm_qk, causal,
    )  # fmt: skip
    block.apply(vivit_blocks.init_weights)
    patches, regs = core.grid[0] * core.grid[1], c.core_reg_tokens
    if kind == "spatial":
        shape, rope = (frames, regs + patches, c.core_emb_dim), core._spatial_rope(regs, device)
    else:
        shape = (patches, regs + frames, c.core_emb_dim)
        rope = core._temporal_rope(frames, regs, device)
    if fused:
        vf.use_fused_blocks(block)
        reason = vf.fused_block_reason(block, torch.empty(shape, device=device))
        if reason:  # the rows would silently time the unfused forward
            raise RuntimeError(f"the fused path is not taken: {reason}")
    return block.to(device).train(), shape, rope


def _forward_backward(block, x, rope, g, autocast: bool):
    dev = x.device.type
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
        y = block(x, rope)
    grads = torch.autograd.grad(y, [x, *block.parameters()], g)
    return [y.float(), *(t.float() for t in grads)]


def check_errors(kind: str, args) -> list[dict]:
    """Max relative errors of the unfused and the fused bf16 paths against unfused float32."""
    ref, shape, rope = make_block(kind, False, False, args)
    fused, _, _ = make_block(kind, True, False, args)
    fused.load_state_dict(ref.state_dict())
    gen = torch.Generator(device=args.device).manual_seed(1)
    x = torch.randn(shape, device=args.device, generator=gen).requires_grad_(True)
    g = torch.randn(shape, device=args.device, generator=gen)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        want = _forward_backward(ref, x, rope, g, autocast=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    low = _forward_backward(ref, x, rope, g, autocast=args.autocast)
    got = _forward_backward(fused, x, rope, g, autocast=args.autocast)
    names = ["y", "dx", *(f"d {n}" for n, _ in ref.named_parameters())]
    rows = []
    for name, w, a, b in zip(names, want, low, got):
        scale = w.abs().max().item() or 1.0
        ua, fa = (a - w).abs().max().item() / scale, (b - w).abs().max().item() / scale
        verdict = "ok" if fa <= 2 * ua + 1e-3 else "CHECK"
        rows.append({"block": kind, "tensor": name, "unfused": ua, "fused": fa, "": verdict})
    return rows


def _sync(device) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, steps: int, device) -> float:
    """ms per call after the caller's warm-up (wall clock over many calls = GPU time)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3 / steps


def time_variant(kind: str, variant: str, args) -> dict:
    """fwd+bwd and no-grad forward ms, peak GiB and warm-up s of one block variant."""
    torch._dynamo.reset()
    fused = variant.startswith("fused")
    block, shape, rope = make_block(kind, fused, True, args)
    fn = torch.compile(block) if variant.endswith("compiled") else block
    x = torch.randn(shape, device=args.device, requires_grad=True)
    dev = args.device

    def train_step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=args.autocast):
            y = fn(x, rope)
        y.float().sum().backward()

    def forward():
        with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=args.autocast):
            fn(x, rope)

    t0 = time.perf_counter()
    for _ in range(3):
        train_step()
    block.eval()
    for _ in range(2):
        forward()
    _sync(dev)
    warm = time.perf_counter() - t0
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fwd_ms = _timed(forward, args.steps, dev)
    block.train()
    ms = _timed(train_step, args.steps, dev)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else 0.0
    return {"block": kind, "variant": variant, "fwd+bwd ms": ms, "fwd no-grad ms": fwd_ms,
            "peak GiB": peak, "warm-up s": warm}  # fmt: skip


def model_rows(args) -> list[dict]:
    """bench/train_throughput.py's model step with --core_fused_block false, then true."""
    import train_throughput as tt

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows = []
    for fused in (False, True):
        override = f"{args.model_override} --core_fused_block {str(fused).lower()}"
        argv = ["--config", args.config, "--mode", "model", "--steps", str(args.model_steps),
                "--warmup", str(args.model_warmup), "--batch_size", "1", "--compile",
                str(args.compile), "--autocast", str(int(args.autocast)),
                "--grad_checkpointing", "0", "--frames", str(args.model_frames),
                "--frame_shape", *map(str, args.frame_shape), "--sessions", str(args.sessions),
                "--neurons", str(args.neurons), "--device", args.device,
                "--override", override.strip()]  # fmt: skip
        name = "fused" if fused else "unfused"
        try:
            t_args = tt.parse_args(argv)
            case = tt.Case(1, bool(args.compile), bool(args.autocast), False)
            print(f"# model step, {name} blocks: train_throughput {shlex.join(argv)}", flush=True)
            rows.append({"blocks": name, **tt.time_model(t_args, tt.load_config(t_args), case)})
            print_table(rows[-1:])
        except Exception:  # one failing row must not lose the other
            traceback.print_exc()
            rows.append({"blocks": name, "trials/s": "FAILED"})
        finally:
            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    width = {k: max(len(k), 9) for k in keys}

    def cell(k, v):
        if isinstance(v, float):
            v = f"{v:.3g}" if abs(v) < 0.01 and v else f"{v:.3f}"
        return f"{v!s:>{width[k]}}"

    print(" | ".join(f"{k:>{width[k]}}" for k in keys))
    for r in rows:
        print(" | ".join(cell(k, r.get(k, "")) for k in keys), flush=True)


def run_part(name: str, fn, budget: Budget, need_s: float):
    """fn() or None, with its failure printed; skipped if less than need_s seconds are left."""
    if budget.left() < need_s:
        print(f"# {name}: skipped ({budget.left():.0f} s of the budget left, needs ~{need_s:.0f})")
        return None
    t0 = time.perf_counter()
    try:
        return fn()
    except Exception:
        print(f"# {name}: FAILED")
        traceback.print_exc()
        return None
    finally:
        print(f"# {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", default="cuda", help="cuda; cpu (Triton's interpreter) only for a smoke run"
    )
    p.add_argument("--blocks", nargs="+", default=["spatial", "temporal"],
                   choices=["spatial", "temporal"])  # fmt: skip
    p.add_argument("--variants", nargs="+", default=["unfused compiled", "fused", "fused compiled"],
                   choices=["unfused", "unfused compiled", "fused", "fused compiled"])  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="smoke-test widths (emb 16, FF 16...)")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--frame_shape", type=int, nargs=2, default=[36, 64])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--autocast", type=int, default=None, help="bf16 autocast (default: on CUDA)")
    p.add_argument("--compile", type=int, default=1, help="0: 'compiled' variants run eagerly")
    p.add_argument("--block_m", type=int, default=None, help="tokens per tile of the kernels")
    p.add_argument("--num_warps", type=int, default=None, help="warps of all the kernels")
    p.add_argument("--num_stages", type=int, default=None, help="pipeline stages of the kernels")
    p.add_argument("--skip_check", action="store_true")
    p.add_argument("--skip_timing", action="store_true")
    p.add_argument("--skip_model", action="store_true")
    p.add_argument("--config", default="configs/viv1t.yaml")
    p.add_argument("--model_steps", type=int, default=10)
    p.add_argument("--model_warmup", type=int, default=10)
    p.add_argument("--model_frames", type=int, default=300)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--neurons", type=int, default=8000)
    p.add_argument("--model_override", default="", help="config flags for the model step")
    p.add_argument("--budget_s", type=float, default=560.0, help="seconds for the whole command")
    args = p.parse_args(argv)
    if args.autocast is None:
        args.autocast = args.device == "cuda"
    args.autocast = bool(args.autocast)
    args.frame_shape = tuple(args.frame_shape)
    if not args.compile:
        args.variants = [v.replace(" compiled", "") for v in args.variants]
        args.variants = list(dict.fromkeys(args.variants))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)", file=sys.stderr)
        return 2
    if args.device == "cpu":  # the interpreter, set before the kernels are first imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        vf.CPU_INTERPRETER = True
    if args.block_m:
        vf.CONFIG.block_m = vf.CONFIG.block_m_dw = args.block_m
    if args.num_warps:
        vf.CONFIG.num_warps = vf.CONFIG.num_warps_dx = vf.CONFIG.num_warps_dw = args.num_warps
    if args.num_stages:
        vf.CONFIG.num_stages = args.num_stages
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton interpreter)"
    import importlib.metadata as md

    triton_version = "not installed"
    with contextlib.suppress(md.PackageNotFoundError):
        triton_version = md.version("triton")
    print(f"# device: {name}, torch {torch.__version__}, triton {triton_version}, "
          f"{time.strftime('%Y-%m-%d')}, bf16 autocast {args.autocast}, {vf.CONFIG}")  # fmt: skip
    errors, timings, model = [], [], []
    for kind in args.blocks if not args.skip_check else []:
        rows = run_part(f"check {kind}", lambda k=kind: check_errors(k, args), budget, 30)
        errors += rows or [{"block": kind, "tensor": "FAILED"}]
        print_table(rows or [])
    for kind in args.blocks if not args.skip_timing else []:
        for variant in args.variants:
            row = run_part(f"time {kind} {variant}", lambda k=kind, v=variant: time_variant(k, v, args),
                           budget, 60)  # fmt: skip
            timings.append(row or {"block": kind, "variant": variant, "fwd+bwd ms": "FAILED"})
            print_table(timings[-1:])
    if not args.skip_model:
        model = run_part("model step", lambda: model_rows(args), budget, 240) or []
    base = {t["block"]: t["fwd+bwd ms"] for t in timings if t["variant"] == args.variants[0]}
    for t in timings:
        if isinstance(t.get("fwd+bwd ms"), float) and isinstance(base.get(t["block"]), float):
            t["speed-up"] = base[t["block"]] / t["fwd+bwd ms"]
    print("\n## (a) max |error| / max |float32 unfused reference|, bf16 paths, dropout off")
    print_table(errors)
    print(f"\n## (b) one block, forward + backward (training) and no-grad forward; speed-up vs "
          f"{args.variants[0]}")  # fmt: skip
    print_table(timings)
    print("\n## (c) model step (bench/train_throughput.py --mode model), unfused vs fused blocks "
          "(no TFLOP columns: the FLOP counter does not see inside the fused ops)")  # fmt: skip
    print_table([{k: v for k, v in r.items() if k not in ("TFLOP/s", "TFLOP/trial")}
                 for r in model])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

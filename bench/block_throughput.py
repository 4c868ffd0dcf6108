"""One compiled ViViT block, forward + backward, at the shapes of a ViV1T training step.

A quick A/B of attention backends and inductor options on the two blocks the core repeats 14
times each: the spatial block (300 frames x 600 tokens: 24 registers + 18x32 patches, 2D RoPE)
and the causal temporal block (576 patches x 324 tokens: 24 registers + 300 frames, 1D RoPE).
bf16 autocast, float32 residual stream, training mode (dropout and drop-path on), as in training.

    python bench/block_throughput.py --backend default cudnn flash efficient
    python bench/block_throughput.py --inductor force_pointwise_cat=true

A block-level difference is only a hint: a change is kept when the whole step
(bench/train_throughput.py) shows it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import inductor_option  # noqa: E402

from neurotwin.models.cores import vivit  # noqa: E402
from neurotwin.models.cores import vivit_blocks  # noqa: E402

BACKENDS = {
    "cudnn": "CUDNN_ATTENTION",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
}


def backend_context(name: str):
    """SDPA restricted to one backend, or PyTorch's own choice for "default"."""
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, BACKENDS[name])])


def time_block(
    kind: str, backend: str, options: dict, steps: int, device: str = "cuda",
    frames: int = 300, frame_shape: tuple[int, int] = (36, 64),
) -> tuple[float, float]:  # fmt: skip
    """(ms per forward+backward, seconds of compilation and warm-up) of one block."""
    c = vivit.ViViTOptions()
    torch._dynamo.reset()
    torch.manual_seed(0)
    one_block = vivit.ViViTOptions(core_spatial_depth=1, core_temporal_depth=1,
                                   core_fused_block=False)  # fmt: skip
    # only for the patch grid and the RoPE tables of the step
    core = vivit.ViViTCore(1, frame_shape, one_block)
    blocks = vivit_blocks
    block_cls = blocks.ParallelBlock if c.core_parallel_attention else blocks.SequentialBlock
    causal = kind == "temporal" and c.core_use_causal_attention
    block = block_cls(
        c.core_emb_dim, c.core_num_heads, c.core_head_dim, c.core_ff_dim,
        c.core_ff_activation, c.core_mha_dropout, c.core_ff_dropout, c.core_drop_path,
        c.core_norm_qk, causal,
    ).to(device).train()  # fmt: skip
    patches, regs = core.grid[0] * core.grid[1], c.core_reg_tokens
    if kind == "spatial":
        shape, rope = (frames, regs + patches), core._spatial_rope(regs, device)
    else:
        shape, rope = (patches, regs + frames), core._temporal_rope(frames, regs, device)
    x = torch.randn(*shape, c.core_emb_dim, device=device, requires_grad=True)
    fn = torch.compile(block, options=options or None)

    def step():
        with backend_context(backend), torch.autocast(device, dtype=torch.bfloat16):
            y = fn(x, rope)
        y.float().sum().backward()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(3):
        step()
    sync()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()  # after the warm-up, wall clock over many steps = GPU time
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) * 1e3 / steps, warm


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--blocks", nargs="+", default=["spatial", "temporal"],
                   choices=["spatial", "temporal"])  # fmt: skip
    p.add_argument("--backend", nargs="+", default=["default"], choices=["default", *BACKENDS])
    p.add_argument("--inductor", type=inductor_option, action="append", default=[],
                   metavar="KEY=VALUE", help="TorchInductor option (repeatable)")  # fmt: skip
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--frame_shape", type=int, nargs=2, default=[36, 64])
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    options = dict(args.inductor)
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"# device: {name}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, inductor options {options or 'default'}")  # fmt: skip
    print(f"{'block':>9} | {'backend':>9} | {'fwd+bwd ms':>10} | {'warm-up s':>9}")
    for backend, kind in itertools.product(args.backend, args.blocks):
        ms, warm = time_block(
            kind, backend, options, args.steps, args.device, args.frames, tuple(args.frame_shape)
        )
        print(f"{kind:>9} | {backend:>9} | {ms:10.3f} | {warm:9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

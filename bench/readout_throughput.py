"""GPU time of the Gaussian readout's sampling op, forward + backward, at the size of one
Sensorium trial: grid_sample + per-neuron channel weighting (the previous implementation)
against `point_readout` (Triton kernels), with and without bf16 autocast.

    python bench/readout_throughput.py --frames 300 --neurons 8000 --channels 112 --grid 18 32
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from neurotwin.models.readouts.point_sampling import point_readout


def grid_sample_readout(features_cl, grid, weights, h, w):
    """The readout before point_readout: sample (F, C, N) with grid_sample, weight, sum."""
    f, _, c = features_cl.shape
    x = features_cl.view(f, h, w, c).permute(0, 3, 1, 2)
    y = F.grid_sample(x, grid.unsqueeze(2).to(x.dtype), align_corners=True).squeeze(-1)
    return torch.einsum("fcn,cn->fn", y, weights.to(y.dtype))


IMPLEMENTATIONS = {"grid_sample": grid_sample_readout, "point_readout": point_readout}


def inputs(args, device):
    h, w = args.grid
    g = torch.Generator(device=device).manual_seed(0)
    feats = torch.randn(args.frames, h * w, args.channels, device=device, generator=g)
    grid = torch.rand(args.frames, args.neurons, 2, device=device, generator=g) * 2.2 - 1.1
    weights = torch.randn(args.channels, args.neurons, device=device, generator=g) / 10
    return [t.requires_grad_(True) for t in (feats, grid, weights)]


def time_one(fn, tensors, args, autocast: bool) -> float:
    h, w = args.grid
    upstream = torch.randn(args.frames, args.neurons, device=tensors[0].device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = fn(*tensors, h, w)
        torch.autograd.grad(out.float(), tensors, upstream)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.steps):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / args.steps


def relative_errors(tensors, args, autocast: bool) -> list[float]:
    """|point_readout - float64 grid_sample| / |reference| for the output and the 3 gradients."""
    h, w = args.grid
    ref_in = [t.detach().double().requires_grad_(True) for t in tensors]
    ref = grid_sample_readout(*ref_in, h, w)
    upstream = torch.randn_like(ref)
    want = [ref, *torch.autograd.grad(ref, ref_in, upstream)]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = point_readout(*tensors, h, w)
    got = [out, *torch.autograd.grad(out, tensors, upstream.float())]
    return [((a.double() - b).norm() / b.norm()).item() for a, b in zip(got, want, strict=True)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--neurons", type=int, default=8000)
    p.add_argument("--channels", type=int, default=112)
    p.add_argument("--grid", type=int, nargs=2, default=[18, 32])
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU")
        return 2
    tensors = inputs(args, torch.device("cuda"))
    rows = []
    for autocast in (False, True):
        errors = relative_errors(tensors, args, autocast)
        for name, fn in IMPLEMENTATIONS.items():
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ms = time_one(fn, tensors, args, autocast)
            extra = (torch.cuda.max_memory_allocated() - base) / 2**30
            err = " ".join(f"{e:.1e}" for e in errors) if name == "point_readout" else ""
            rows.append((name, autocast, ms, extra, err))
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {time.strftime('%F')}")
    print(
        f"# {args.frames} frames x {args.neurons} neurons x {args.channels} channels, grid {args.grid}"
    )
    print("| op | bf16 autocast | fwd+bwd ms | extra GiB | rel. error out, dF, dgrid, dW |")
    print("|---|:---:|---:|---:|---|")
    for name, autocast, ms, extra, err in rows:
        print(f"| {name} | {'yes' if autocast else 'no'} | {ms:.2f} | {extra:.2f} | {err} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

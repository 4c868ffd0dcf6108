"""GPU throughput of neurotwin-encode's two costly steps, through its own code paths:

1. embedding stimulus frames with a ViT-B-sized network (`encoding.embeddings.embed_frames`:
   host frames -> GPU, bf16 autocast, features back to host), in frames/s, and the time it
   takes for all Sensorium-size frames of `--sessions` sessions (measured on `--measure_frames`
   frames and scaled, or all of them with `--full`);
2. the regression of `--neurons` neurons on `--features` features of `--train_stimuli`
   stimuli (`encoding.regression.fit_predict`: standardise, one multi-output solve, predict
   `--test_stimuli`), per regressor.

Random weights and random frames (36x64, 0..255): the cost does not depend on them.

    python bench/encode_throughput.py --network torchvision:vit_b_16 --pooling cls \
        --sessions 10 --frames_per_session 194000 --measure_frames 20000 --batch_size 512 \
        --neurons 8000 --train_stimuli 100000 --features 768 --regressors ridge ridgecv \
        --json bench/encode_rows.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neurotwin.encoding.embeddings import EmbeddingOptions, embed_frames, resolve_device
from neurotwin.encoding.regression import DEFAULT_RIDGECV_ALPHAS, RegressionOptions, fit_predict
from neurotwin.models.backbones import build_backbone

HF_VIT_B16 = "hf-vit-b16"  # transformers' ViTConfig() defaults are ViT-B/16 at 224


def _hf_vit_b16(folder: Path) -> str:
    from transformers import ViTConfig, ViTImageProcessor

    ViTConfig().save_pretrained(folder)
    ViTImageProcessor().save_pretrained(folder)
    return f"hf:{folder}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_embedding(args, device: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec = _hf_vit_b16(Path(tmp)) if args.network == HF_VIT_B16 else args.network
        options = {"weights": "none", "pooling": args.pooling, "layers": args.layers}
        if args.input_size:
            options["input_size"] = args.input_size
        backbone = build_backbone(spec, options)
    params = sum(p.numel() for p in backbone.network.parameters())
    emb = EmbeddingOptions(batch_size=args.batch_size, dtype=args.dtype)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(args.measure_frames, *args.frame_shape)).astype(np.float32)
    embed_frames(backbone, frames[: args.batch_size], emb, device)  # warm-up
    total = args.sessions * args.frames_per_session
    _sync(device)
    start = time.perf_counter()
    if args.full:
        for _ in range(args.sessions):
            for a in range(0, args.frames_per_session, len(frames)):
                out = embed_frames(backbone, frames[: args.frames_per_session - a], emb, device)
        n = total
    else:
        out = embed_frames(backbone, frames, emb, device)
        n = len(frames)
    _sync(device)
    seconds = time.perf_counter() - start
    dims = {k: v.shape[1] for k, v in out.items()}
    rate = n / seconds
    return {
        "step": "embed",
        "network": args.network,
        "parameters": params,
        "pooling": args.pooling,
        "features": dims,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "frames_measured": n,
        "frames/s": round(rate, 1),
        "frames_total": total,
        "seconds_total": round(total / rate, 3),
        "measured_all": bool(args.full),
        "peak_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
    }


def bench_regression(args, device: torch.device, regressor: str) -> dict:
    g = torch.Generator(device="cpu").manual_seed(1)
    n, d = args.train_stimuli, args.features
    x = torch.randn(n + args.test_stimuli, d, generator=g).numpy()
    w = torch.randn(d, args.neurons, generator=g).numpy() / np.sqrt(d)
    y = (x[:n] @ w + torch.randn(n, args.neurons, generator=g).numpy()).astype(np.float32)
    options = RegressionOptions(
        regressor=regressor, alphas=args.alphas if regressor != "ridge" else None
    )
    fit_predict(options, str(device), x[:256], y[:256], x[n : n + 8])  # warm-up (kernels, cuBLAS)
    _sync(device)
    start = time.perf_counter()
    pred, _ = fit_predict(options, str(device), x[:n], y, x[n:])
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "step": "regression",
        "regressor": regressor,
        "train_stimuli": n,
        "test_stimuli": args.test_stimuli,
        "features": d,
        "neurons": args.neurons,
        "alphas": len(
            options.alphas or (DEFAULT_RIDGECV_ALPHAS if regressor == "ridgecv" else [0])
        ),
        "seconds": round(seconds, 2),
        "finite": bool(np.isfinite(pred).all()),
    }


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--network", default="torchvision:vit_b_16", help=f"backbone SOURCE:NAME, or {HF_VIT_B16}"
    )
    p.add_argument("--pooling", default="cls")
    p.add_argument("--layers", nargs="*", default=[], help="default: the source's own")
    p.add_argument("--input_size", nargs=2, type=int, default=None)
    p.add_argument("--frame_shape", nargs=2, type=int, default=[36, 64])
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument(
        "--frames_per_session", type=int, default=194_000, help="distinct frames per session"
    )
    p.add_argument("--measure_frames", type=int, default=20_000)
    p.add_argument(
        "--full", action="store_true", help="embed every frame instead of scaling a measurement"
    )
    p.add_argument("--batch_size", type=int, default=512)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--neurons", type=int, default=8000)
    p.add_argument("--train_stimuli", type=int, default=100_000)
    p.add_argument("--test_stimuli", type=int, default=10_000)
    p.add_argument("--features", type=int, default=768)
    p.add_argument("--regressors", nargs="*", default=["ridge", "ridgecv"])
    p.add_argument("--alphas", nargs="+", type=float, default=None)
    p.add_argument("--device", default="")
    p.add_argument("--skip_embedding", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    device = resolve_device(args.device)
    rows = []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}")
    if not args.skip_embedding:
        rows.append(bench_embedding(args, device))
        print(json.dumps(rows[-1]))
    for regressor in args.regressors:
        rows.append(bench_regression(args, device, regressor))
        print(json.dumps(rows[-1]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

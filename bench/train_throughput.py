"""Training throughput of a neurotwin model on one GPU: trials/s, frames/s, TFLOP/s and peak memory.

Modes
- model: forward + backward + optimizer step on batches already on the GPU (random data with the
  shapes of real trials), timed with CUDA events after warm-up.
- e2e:   the same step fed by the real data path (native layout on local disk -> loaders -> GPU).
- loader: the data path alone (batches/s, trials/s), no model.

Each row of the printed table is one combination of the speed options given, e.g.

    python bench/train_throughput.py --config configs/viv1t.yaml --mode model \
        --batch_size 1 4 8 --compile 0 1 --autocast 0 1 --grad_checkpointing 0 1

The FLOP count of one step comes from torch.utils.flop_counter (matrix products and attention),
so achieved TFLOP/s compares with the chip's bf16 ceiling.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neurotwin import config as cfg
from neurotwin.models.model import build_model


@dataclass
class Case:
    batch_size: int
    compile: bool
    autocast: bool
    grad_checkpointing: bool


def fake_specs(n_sessions: int, n_neurons: int, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    return {
        f"session{i:02d}": {
            "n_neurons": n_neurons,
            "coordinates": rng.normal(size=(n_neurons, 3)).astype(np.float32),
            "mean_response": rng.uniform(0.5, 1.5, size=n_neurons).astype(np.float32),
            "unit_ids": np.arange(n_neurons),
        }
        for i in range(n_sessions)
    }


def poisson_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    pred = pred.float()
    return (pred - target * torch.log(pred + eps)).sum()


def step_loss(model, batch: dict, session: str, autocast: bool) -> torch.Tensor:
    """Forward pass (bf16 autocast if asked) and the training loss of one batch."""
    with torch.autocast(batch["video"].device.type, dtype=torch.bfloat16, enabled=autocast):
        rates = model(
            batch["video"],
            session=session,
            behavior=batch["behavior"],
            pupil_center=batch["pupil_center"],
        )
    target = batch["response"][..., -rates.shape[-1] :]
    return poisson_loss(rates, target) + model.regularizer(session)


def make_step(model, optimizer, autocast: bool):
    """One optimisation step on a batch that is already on the GPU."""

    def step(batch: dict, session: str) -> torch.Tensor:
        loss = step_loss(model, batch, session, autocast)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def random_batch(b: int, n: int, t: int, h: int, w: int, device) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    return {
        "video": torch.randn(b, 1, t, h, w, device=device, generator=g),
        "behavior": torch.randn(b, 2, t, device=device, generator=g),
        "pupil_center": torch.randn(b, 2, t, device=device, generator=g),
        "response": torch.rand(b, n, t, device=device, generator=g),
    }


def count_flops(model, batch: dict, session: str, autocast: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step_loss(model, batch, session, autocast).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def build(config: cfg.Config, specs: dict, case: Case, frame_shape, device):
    import schedulefree

    model = build_model(config.model, specs, in_channels=1, frame_shape=frame_shape).to(device)
    model.set_grad_checkpointing(case.grad_checkpointing)
    t = config.train
    if t.schedule_free:
        optimizer = schedulefree.AdamWScheduleFree(
            model.parameters(),
            lr=t.lr,
            betas=(t.adam_beta1, t.adam_beta2),
            eps=t.adam_eps,
            weight_decay=t.weight_decay,
            warmup_steps=t.warmup_steps,
        )
        optimizer.train()
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=t.lr,
            betas=(t.adam_beta1, t.adam_beta2),
            eps=t.adam_eps,
            weight_decay=t.weight_decay,
            fused=True,
        )
    model.train()
    return model, optimizer


def compile_model(model, case: Case, args) -> None:
    """torch.compile the core in place, as the trainer does (`Module.compile`: a core that
    compiles only its parts, as conv_gru its 2D stack and GRU step, does so here too), with
    --compile_mode or with the --inductor options (torch.compile takes one or the other)."""
    if case.compile:
        model.core.compile(mode=args.compile_mode, options=args.inductor or None)


def inductor_option(text: str) -> tuple[str, object]:
    """--inductor KEY=VALUE: a TorchInductor option; VALUE as JSON (true, 0, 1.5) or a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--inductor {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def profile_steps(step, batch, sessions, n: int = 3) -> None:
    """Print the top GPU kernels of a few steps (after warm-up) and how busy the GPU was."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            step(batch, sessions[i % len(sessions)])
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    print(events.table(sort_by="cuda_time_total", row_limit=45, max_name_column_width=90))
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e3  # us -> ms
    print(
        f"profile: {n} steps, {len(kernels) / n:.0f} kernels/step, GPU busy {busy / n:.1f} ms/step "
        f"of {wall * 1e3 / n:.1f} ms/step wall (profiler overhead included)"
    )


def time_parts(model, optimizer, batch, sessions, autocast: bool, steps: int) -> dict:
    """GPU time of the step's parts, each timed alone: core forward+backward, readout (shifter,
    readout, activation, loss) forward+backward from fixed core features, optimizer step."""
    dev = batch["video"].device

    def timed(fn) -> float:
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / steps

    def core_part():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            f = model.core(batch["video"], batch["behavior"], batch["pupil_center"])
        f.float().mean().backward()

    # with grad, as in training, so that a compiled core is not compiled again for no_grad
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
        feats = model.core(batch["video"], batch["behavior"], batch["pupil_center"])
    feats = feats.detach().float().requires_grad_(True)
    session = sessions[0]
    t = feats.shape[2]

    def readout_part():
        shift = model.shifters[session](batch["behavior"], batch["pupil_center"][..., -t:])
        rates = model.activation(session)(model.readouts[session](feats, shift))
        target = batch["response"][..., -t:]
        (poisson_loss(rates, target) + model.regularizer(session)).backward()

    out = {"core fwd+bwd ms": timed(core_part), "readout+loss fwd+bwd ms": timed(readout_part)}
    out["optimizer ms"] = timed(optimizer.step)
    optimizer.zero_grad(set_to_none=True)
    return out


def time_model(args, config, case: Case) -> dict:
    device = torch.device(args.device)
    specs = fake_specs(args.sessions, args.neurons)
    sessions = list(specs)
    h, w = args.frame_shape
    model, optimizer = build(config, specs, case, (h, w), device)
    batch = random_batch(case.batch_size, args.neurons, args.frames, h, w, device)
    # count before compiling: dynamo skips frames run under the counter's dispatch mode
    flops = count_flops(model, batch, sessions[0], case.autocast)
    compile_model(model, case, args)
    step = make_step(model, optimizer, case.autocast)
    for i in range(max(args.warmup, len(sessions))):  # every session's first step is warm-up
        step(batch, sessions[i % len(sessions)])
    if args.profile and device.type == "cuda":
        profile_steps(step, batch, sessions)
    parts = {}
    if args.parts and device.type == "cuda":
        parts = time_parts(model, optimizer, batch, sessions, case.autocast, args.steps)
    if device.type != "cuda":  # CPU smoke runs: wall clock
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(batch, sessions[i % len(sessions)])
        return summarise(case, args, time.perf_counter() - t0, flops)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds = time_steps(step, batch, sessions, args.steps)
    return {**summarise(case, args, seconds, flops), **parts}


def time_e2e(args, config, case: Case) -> dict:
    from neurotwin.data import loaders as L

    device = torch.device("cuda")
    config.data.batch_size = case.batch_size
    config.data.data_dir = args.data_dir
    config.data.num_workers = args.num_workers
    config.data.crop_frame = args.frames
    specs = L.session_specs(config.data)
    # pinned host memory and non-blocking copies, as the trainer uses on CUDA
    loaders = L.build_loaders(
        config.data, {"train": config.data.train_tier}, seed=0, pin_memory=True
    )["train"]
    sessions = list(specs)
    first = next(iter(loaders[sessions[0]]))
    h, w = first["video"].shape[-2:]
    model, optimizer = build(config, specs, case, (h, w), device)
    batch0 = to_device(first, device)
    flops = count_flops(model, batch0, sessions[0], case.autocast)
    compile_model(model, case, args)
    step = make_step(model, optimizer, case.autocast)

    # the trainer's data path: one stream of all sessions' batches, persistent workers
    stream = L.TrainStream(loaders, args.num_workers, pin_memory=True, seed=0)

    def batches():
        epoch = 0
        while True:
            yield from stream.epoch(epoch)
            epoch += 1

    it = batches()
    # warm up until every session has had a step (its readout's optimizer state, the kernels of
    # its neuron count) and at least --warmup steps
    seen: set[str] = set()
    done = 0
    while len(seen) < len(sessions) or done < args.warmup:
        session, batch = next(it)
        step(to_device(batch, device), session)
        seen.add(session)
        done += 1
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trials = frames = 0
    for _ in range(args.steps):
        session, batch = next(it)
        trials += batch["video"].shape[0]
        frames += batch["video"].shape[0] * batch["video"].shape[2]  # crops may be < --frames
        step(to_device(batch, device), session)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row = summarise(case, args, seconds, flops)
    row["trials/s"] = trials / seconds
    row["frames/s"] = frames / seconds
    # the model step on a batch of the same shape already on the GPU: the yardstick of the
    # "within 10% of the model step" target (crops can be shorter than --frames)
    model_s = time_steps(step, batch0, sessions[:1], args.steps)  # its session's readout
    row["model-step trials/s"] = trials / model_s
    row["e2e / model-step"] = model_s / seconds
    return row


def time_steps(step, batch: dict, sessions: list[str], steps: int) -> float:
    """Seconds of `steps` steps on one batch already on the GPU (CUDA events), cycling sessions."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(steps):
        step(batch, sessions[i % len(sessions)])
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000


def time_loader(args, config) -> dict:
    from neurotwin.data import loaders as L

    config.data.data_dir = args.data_dir
    config.data.num_workers = args.num_workers
    config.data.crop_frame = args.frames
    rows = []
    for b in args.batch_size:
        config.data.batch_size = b
        loaders = L.build_loaders(config.data, {"train": config.data.train_tier}, seed=0)["train"]
        stream = L.TrainStream(loaders, args.num_workers, seed=0)  # the trainer's data path
        it = (pair for epoch in itertools.count() for pair in stream.epoch(epoch))
        for _ in range(args.warmup):
            next(it)
        t0, trials, n = time.perf_counter(), 0, 0
        for _session, batch in it:
            trials += batch["video"].shape[0]
            n += 1
            if n >= args.steps:
                break
        s = time.perf_counter() - t0
        rows.append(
            {
                "mode": "loader",
                "batch": b,
                "workers": args.num_workers,
                "trials/s": trials / s,
                "batches/s": n / s,
            }
        )
    return rows


def to_device(batch: dict, device) -> dict:
    keys = ("video", "behavior", "pupil_center", "response")
    return {k: batch[k].to(device, non_blocking=True) for k in keys}


def summarise(case: Case, args, seconds: float, flops: float) -> dict:
    trials = case.batch_size * args.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return {
        "mode": args.mode,
        "batch": case.batch_size,
        "compile": int(case.compile),
        "autocast": int(case.autocast),
        "ckpt": int(case.grad_checkpointing),
        "trials/s": trials / seconds,
        "frames/s": trials * args.frames / seconds,
        "TFLOP/s": flops * args.steps / seconds / 1e12,
        "TFLOP/trial": flops / case.batch_size / 1e12,
        "peak GiB": peak,
        "GiB/trial": peak / case.batch_size,
        **({"inductor": inductor_text(args.inductor)} if args.inductor else {}),
    }


def inductor_text(options: dict) -> str:
    return ",".join(f"{k}={json.dumps(v)}" for k, v in options.items())


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(" | ".join(f"{k:>11}" for k in keys))
    for r in rows:
        cells = [r.get(k, "") for k in keys]
        print(" | ".join(f"{v:11.2f}" if isinstance(v, float) else f"{v!s:>11}" for v in cells))


def load_config(args) -> cfg.Config:
    """The preset with any `--override` flags applied, exactly as train.py would resolve them."""
    return cfg.parse_config(["--config", args.config, *shlex.split(args.override)])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/viv1t.yaml")
    p.add_argument("--mode", choices=["model", "e2e", "loader"], default="model")
    p.add_argument("--batch_size", type=int, nargs="+", default=[1])
    p.add_argument("--compile", type=int, nargs="+", default=[1])
    p.add_argument("--autocast", type=int, nargs="+", default=[1])
    p.add_argument("--grad_checkpointing", type=int, nargs="+", default=[0])
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--neurons", type=int, default=8000)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--frame_shape", type=int, nargs=2, default=[36, 64])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--data_dir", default="data/sensorium_synthetic")
    p.add_argument("--num_workers", type=int, default=8)
    p.add_argument("--profile", action="store_true", help="print the top GPU kernels")
    p.add_argument(
        "--parts", action="store_true", help="also time core, readout+loss and optimizer alone"
    )
    p.add_argument(
        "--compile_mode", default=None, help="torch.compile mode (default, max-autotune...)"
    )
    p.add_argument(
        "--inductor",
        type=inductor_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TorchInductor option for the compiled core (repeatable), for A/B runs of "
        "inductor settings, e.g. --inductor force_pointwise_cat=true",
    )
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run")
    p.add_argument(
        "--override", default="", help='config flags in one string, e.g. "--core_emb_dim 32"'
    )
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.compile_mode and args.inductor:
        p.error("--compile_mode and --inductor exclude each other (as in torch.compile)")
    args.inductor = dict(args.inductor)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mode != "loader" and args.device == "cuda" and not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows: list[dict] = []
    if args.mode == "loader":
        rows = time_loader(args, load_config(args))
    else:
        for b, c, a, g in itertools.product(
            args.batch_size, args.compile, args.autocast, args.grad_checkpointing
        ):
            case = Case(b, bool(c), bool(a), bool(g))
            config = load_config(args)
            fn = time_model if args.mode == "model" else time_e2e
            try:
                rows.append(fn(args, config, case))
            except torch.cuda.OutOfMemoryError:
                rows.append(
                    {
                        "mode": args.mode,
                        "batch": b,
                        "compile": c,
                        "autocast": a,
                        "ckpt": g,
                        "trials/s": "OOM",
                    }
                )
            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print_table(rows[-1:])
    print(
        f"\n# device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

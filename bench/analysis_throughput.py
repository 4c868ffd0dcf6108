"""Throughput of in-silico experiments on one GPU: `arf` with ViV1T's 100k white-noise frames and
`tuning` over every session of the ViV1T configuration (10 sessions of 8,000 neurons).

The model is the config's (default configs/viv1t.yaml) with random weights and random readout
positions: the time does not depend on what the weights learned. Sessions have the Sensorium
frame size and statistics of the data's usual range; nothing is read from disk. Stimuli are made
on the GPU and shown in batches in bf16 autocast, as `neurotwin-analyze` does.

    python bench/analysis_throughput.py --config configs/viv1t.yaml --device cuda \
        --sessions 10 --neurons 8000 --arf_sessions 1 --noise_images 100000 --block_frames 30 \
        --batch_size 16 --json bench/analysis_throughput.json

Prints one row per analysis: sessions, neurons, stimulus frames shown, seconds (stimulus
presentation and fits together), frames/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time

import numpy as np
import torch

from neurotwin import config as cfg
from neurotwin.analysis import ANALYSES, Context, build_options
from neurotwin.analysis.subject import SessionProbe, Subject
from neurotwin.analysis.tuning import DEFAULT_SF
from neurotwin.data import native
from neurotwin.data.dataset import InputTransform, OutputTransform
from neurotwin.models.model import build_model


def fake_statistics(n_neurons: int) -> dict:
    """Statistics of the data's usual ranges: grey levels 0..255, behaviour, gaze, responses."""
    two = lambda *v: np.array(v, dtype=np.float64)  # noqa: E731
    return {
        native.VIDEOS: {
            "mean": np.array(120.0),
            "std": np.array(55.0),
            "min": np.array(0.0),
            "max": np.array(255.0),
        },
        native.BEHAVIOR: {
            "mean": two(20, 5),
            "std": two(5, 8),
            "min": two(5, 0),
            "max": two(40, 40),
        },
        native.PUPIL_CENTER: {
            "mean": two(200, 130),
            "std": two(3, 3),
            "min": two(180, 110),
            "max": two(220, 150),
        },
        native.RESPONSES: {
            k: np.full(n_neurons, v)
            for k, v in (("mean", 1.0), ("std", 1.0), ("min", 0.0), ("max", 10.0))
        },
    }


def fake_subject(config: cfg.Config, sessions: int, neurons: int, frame_shape, device) -> Subject:
    rng = np.random.default_rng(0)
    specs = {
        f"session{i:02d}": {
            "n_neurons": neurons,
            "coordinates": rng.normal(size=(neurons, 3)).astype(np.float32),
            "mean_response": np.ones(neurons, dtype=np.float32),
        }
        for i in range(sessions)
    }
    model = (
        build_model(config.model, specs, in_channels=1, frame_shape=tuple(frame_shape))
        .to(device)
        .eval()
    )
    for p in model.parameters():
        p.requires_grad_(False)
    stats = fake_statistics(neurons)
    probes = {
        name: SessionProbe(
            name=name,
            frame_shape=tuple(frame_shape),
            unit_ids=np.arange(neurons),
            frame_rate=30.0,
            luminance=(0.0, 255.0),
            video_mean=120.0,
            video_std=55.0,
            behavior=stats[native.BEHAVIOR]["mean"],
            pupil_center=stats[native.PUPIL_CENTER]["mean"],
            pupil_std=stats[native.PUPIL_CENTER]["std"],
            input_transform=InputTransform(stats, config.data.transform_input),
            output_transform=OutputTransform(stats, config.data.transform_output, neurons),
        )
        for name in specs
    }
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return Subject(
        model=model,
        sessions=probes,
        device=device,
        kind="trained",
        autocast=autocast,
        source="random weights",
    )


def frames_shown(name: str, options, sessions: int, neurons: int) -> int:
    """Stimulus frames an analysis presents (per the options), over all sessions."""
    if name == "arf":
        design = options.design()
        videos = -(-options.noise_images // design.per_video)
        return sessions * videos * design.frames
    design = options.design(30.0)
    blocks = options.directions * len(options.spatial_frequencies) * options.phases
    return sessions * -(-blocks // design.per_video) * design.frames


def run(args) -> list[dict]:
    config = cfg.parse_config(["--config", args.config, *shlex.split(args.override)])
    device = torch.device(args.device)
    subject = fake_subject(config, args.sessions, args.neurons, args.frame_shape, device)
    names = list(subject.sessions)
    plan = {
        "arf": (
            names[: args.arf_sessions],
            {
                "noise_images": args.noise_images,
                "block_frames": args.block_frames,
                "images_per_video": args.images_per_video,
            },
        ),
        "tuning": (
            names,
            {"directions": args.directions, "spatial_frequencies": args.spatial_frequencies},
        ),
    }
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for name in args.analyses:
            sessions, values = plan[name]
            cls = ANALYSES.get(name)
            options = build_options(cls.Options, values)
            ctx = Context(subject, out, sessions, None, args.batch_size, progress=args.progress)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            ctx.run(cls(options))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            frames = frames_shown(name, options, len(sessions), args.neurons)
            rows.append(
                {
                    "analysis": name,
                    "sessions": len(sessions),
                    "neurons": args.neurons,
                    "stimulus frames": frames,
                    "seconds": round(seconds, 2),
                    "frames/s": round(frames / seconds, 1),
                    "device": torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else "cpu",
                    "bf16": subject.autocast,
                    "batch_size": args.batch_size,
                    **{k: v for k, v in values.items()},
                }
            )
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/viv1t.yaml")
    p.add_argument(
        "--override", default="", help='config flags in one string, e.g. "--core_emb_dim 32"'
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--neurons", type=int, default=8000)
    p.add_argument("--frame_shape", type=int, nargs=2, default=[36, 64])
    p.add_argument("--analyses", nargs="+", default=["arf", "tuning"], choices=["arf", "tuning"])
    p.add_argument("--arf_sessions", type=int, default=1, help="sessions the arf row covers")
    p.add_argument("--noise_images", type=int, default=100_000, help="ViV1T: 100,000")
    p.add_argument("--block_frames", type=int, default=30, help="ViV1T: 30")
    p.add_argument("--images_per_video", type=int, default=8)
    p.add_argument("--directions", type=int, default=12, help="tuning: issue default 12")
    p.add_argument(
        "--spatial_frequencies", type=float, nargs="+", default=DEFAULT_SF, help="tuning, cycles/px"
    )
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rows = run(args)
    heads = list(rows[0])
    print("  ".join(heads))
    for r in rows:
        print("  ".join(str(r.get(h, "")) for h in heads))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the analyses probe: a model, and for each of its sessions how stimuli and the held
behaviour enter it and how its output becomes responses.

Stimuli are made in the data's own units (the frame as stored on disk: H x W grey levels in the
data's luminance range; behaviour and pupil centre in their recorded units). A trained model sees
them through the input transform of its training run (`neurotwin.data.dataset.InputTransform`
with the run's statistics and `transform_input`), and its output goes back to response units
through the inverse of the run's output transform, exactly as in training and prediction. The
ground-truth module of synthetic sessions takes the data's units directly (its transforms are
the identity) and returns noiseless rates in response units. Either way an analysis sees
responses in the units of `data/responses`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from neurotwin import run
from neurotwin.data import native
from neurotwin.data.dataset import InputTransform, OutputTransform
from neurotwin.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)

DEFAULT_FRAME_RATE = 30.0  # Hz: Sensorium's, used where a session does not record its own


@dataclass
class SessionProbe:
    """One session as the analyses see it: sizes, units, held inputs and transforms."""

    name: str
    frame_shape: tuple[int, int]
    unit_ids: np.ndarray
    frame_rate: float
    luminance: tuple[float, float]  # (min, max) grey level of the training videos
    video_mean: float
    video_std: float  # over pixels and frames of the training videos
    behavior: np.ndarray  # (2,) held behaviour (pupil dilation, running speed), data units
    pupil_center: np.ndarray  # (2,) held gaze, data units
    pupil_std: np.ndarray  # (2,) s.d. of the gaze over training frames
    input_transform: InputTransform
    output_transform: OutputTransform
    session: Any = None  # the NativeSession (real trials), where there is one
    coordinates: np.ndarray | None = None

    @property
    def n_neurons(self) -> int:
        return len(self.unit_ids)

    @property
    def grey(self) -> float:
        """The mean grey level of stimuli: the middle of the luminance range."""
        return 0.5 * (self.luminance[0] + self.luminance[1])

    @property
    def amplitude(self) -> float:
        """Half the luminance range: a grating of contrast 1 spans the whole range."""
        return 0.5 * (self.luminance[1] - self.luminance[0])


@dataclass
class Subject:
    """A model with its sessions: a trained run (`kind` "trained") or the generator's truth
    module ("truth"). `respond` turns stimuli in data units into responses in response units."""

    model: nn.Module
    sessions: dict[str, SessionProbe]
    device: torch.device
    kind: Literal["trained", "truth"]
    autocast: bool = False  # bf16 autocast (trained models on CUDA)
    config: Any = None  # the run's Config, for trained models
    source: str = ""  # what was loaded (checkpoint file or data folder), for summary.json
    info: dict[str, Any] = field(default_factory=dict)

    def probe(self, session: str) -> SessionProbe:
        if session not in self.sessions:
            raise ConfigError(
                f"--sessions: unknown session {session!r}; known: {list(self.sessions)}"
            )
        return self.sessions[session]

    def held(self, session: str, batch: int, frames: int, behavior=None, pupil_center=None):
        """Behaviour and pupil centre (batch, 2, frames) held at the session's values (or the
        given (2,) values), in data units, on the device."""
        p = self.probe(session)
        b = np.asarray(p.behavior if behavior is None else behavior, dtype=np.float32)
        c = np.asarray(p.pupil_center if pupil_center is None else pupil_center, dtype=np.float32)
        expand = lambda v: torch.as_tensor(v, device=self.device)[None, :, None].expand(  # noqa: E731
            batch, 2, frames
        )
        return expand(b), expand(c)

    def respond(
        self,
        session: str,
        video: torch.Tensor,
        behavior: torch.Tensor | None = None,
        pupil_center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """video (B, T, H, W) in grey levels -> responses (B, N, T) in response units, float32.

        Behaviour and pupil centre (B, 2, T) default to the held values. Frames before the
        model's first output (models that predict T' < T frames) are NaN. Differentiable when
        called outside `torch.no_grad`."""
        p = self.probe(session)
        b, t = video.shape[:2]
        if tuple(video.shape[-2:]) != p.frame_shape:
            raise ValueError(f"stimulus frames {tuple(video.shape[-2:])} != {p.frame_shape}")
        if behavior is None or pupil_center is None:
            held_b, held_c = self.held(session, b, t)
            behavior = held_b if behavior is None else behavior
            pupil_center = held_c if pupil_center is None else pupil_center
        it = p.input_transform
        x = it(native.VIDEOS, video.float()[:, None])
        beh = it(native.BEHAVIOR, behavior.float())
        pup = it(native.PUPIL_CENTER, pupil_center.float())
        ctx = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
            if self.autocast
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.model(x, session, beh, pup)
        out = p.output_transform.inverse(out.float())
        if out.shape[-1] < t:
            pad = out.new_full((*out.shape[:-1], t - out.shape[-1]), float("nan"))
            out = torch.cat([pad, out], dim=-1)
        return out


def _probe(
    session: Any, statistics: dict, input_mode: int, output_mode: int, source
) -> SessionProbe:
    video = statistics[native.VIDEOS]
    lo, hi = float(np.min(video["min"])), float(np.max(video["max"]))
    if not np.isfinite([lo, hi]).all() or hi <= lo:
        raise DataFormatError(
            source, f"training videos have no luminance range ({lo}, {hi})", "videos"
        )
    behavior = np.asarray(statistics[native.BEHAVIOR]["mean"], dtype=np.float64).reshape(2, -1)
    pupil = statistics[native.PUPIL_CENTER]
    return SessionProbe(
        name=session.name,
        frame_shape=tuple(session.frame_shape),
        unit_ids=np.asarray(session.unit_ids),
        frame_rate=float(session.meta.get("frame_rate_hz", DEFAULT_FRAME_RATE)),
        luminance=(lo, hi),
        video_mean=float(np.mean(video["mean"])),
        video_std=float(np.sqrt(np.mean(np.square(video["std"])))),
        behavior=behavior.mean(1),
        pupil_center=np.asarray(pupil["mean"], dtype=np.float64).reshape(2, -1).mean(1),
        pupil_std=np.asarray(pupil["std"], dtype=np.float64).reshape(2, -1).mean(1),
        input_transform=InputTransform(statistics if input_mode else None, input_mode, source),
        output_transform=OutputTransform(
            statistics if output_mode else None, output_mode, session.n_neurons, source
        ),
        session=session,
        coordinates=np.asarray(session.coordinates),
    )


def load_trained(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str | None = None,
    data_dir: str | Path | None = None,
) -> Subject:
    """A trained run as a Subject: its config, checkpoint weights and sessions.

    The one place that knows how a run folder is loaded (today through `neurotwin.predict`)."""
    from neurotwin import predict

    run_dir = Path(run_dir)
    config, state, ckpt_path = predict.load_run(run_dir, checkpoint)
    if data_dir is not None:
        config.data.data_dir = str(data_dir)
    config.data.generate_synthetic = False
    dev = predict.choose_device(device, config.run.device)
    saved = state.get("sessions")
    trained = (
        list(saved) if isinstance(saved, dict) and saved else list(config.data.mouse_ids or [])
    )
    if not trained:
        raise DataFormatError(ckpt_path, "names no sessions and config.yaml has no mouse_ids")
    sessions = predict.open_sessions(config, trained, state)
    model = predict.build(config, state, sessions, ckpt_path).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    probes = {}
    for name, session in sessions.items():
        stats = session.statistics(
            shipped=config.data.shipped_statistics, tier=config.data.train_tier
        )
        probes[name] = _probe(
            session, stats, config.data.transform_input, config.data.transform_output, session.path
        )
    log.info("probing %s (epoch %s) on %s", ckpt_path, state.get("epoch"), dev)
    return Subject(
        model=model,
        sessions=probes,
        device=dev,
        kind="trained",
        autocast=run.autocast_enabled(config.train.autocast, dev),
        config=config,
        source=str(ckpt_path),
        info={"epoch": state.get("epoch")},
    )


def load_truth(
    data_dir: str | Path, sessions: list[str] | None = None, device: str | None = None
) -> Subject:
    """The generator's truth module of the synthetic sessions in `data_dir` as a Subject."""
    from neurotwin.data.native import NativeSession, find_sessions
    from neurotwin.data.synthetic import GroundTruthModel

    folders = find_sessions(data_dir, sessions)
    if not folders:
        raise DataFormatError(data_dir, "holds no session folder", "data_dir")
    dev = run.pick_device(device)
    model = GroundTruthModel.from_sessions(folders).to(dev).eval()
    probes = {}
    for folder in folders:
        session = NativeSession(folder)
        probes[session.name] = _probe(session, session.statistics(), 0, 0, folder)
    return Subject(
        model=model, sessions=probes, device=dev, kind="truth", source=str(Path(data_dir))
    )

"""NeuralPredictor = shared core -> per-session readout (moved by a shifter, scaled by a modulator)
-> output activation; cores that see short clips (`core.clips`) get the trial clip by clip."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from neurotwin.config import ModelConfig
from neurotwin.errors import ConfigError
from neurotwin.models.activations import build_activation
from neurotwin.models.cores.base import VideoInput
from neurotwin.registry import CORES, MODULATORS, READOUTS, SHIFTERS


class NeuralPredictor(nn.Module):
    """video (B, C, T, H, W), behaviour (B, 2, T), pupil centre (B, 2, T), session name ->
    rates (B, N_session, T'); T' <= T and the rates align with the last T' input frames.

    `readouts`, `shifters` and `modulators` are ModuleDicts keyed by session (shifters and
    modulators may be None or lack a session). `output_activation` is one module for all
    sessions or a ModuleDict by session. A core with a `clips` attribute (models.clips.Clips)
    sees the trial cut into clips; the outputs of the clips are averaged frame by frame.
    """

    def __init__(
        self,
        core: nn.Module,
        readouts: nn.ModuleDict | Mapping[str, nn.Module],
        shifters: nn.ModuleDict | Mapping[str, nn.Module] | None = None,
        output_activation: nn.Module | None = None,
        modulators: nn.ModuleDict | Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.core = core
        self.readouts = readouts if isinstance(readouts, nn.ModuleDict) else nn.ModuleDict(readouts)
        if shifters is not None and not isinstance(shifters, nn.ModuleDict):
            shifters = nn.ModuleDict(shifters)
        self.shifters = shifters if shifters is not None and len(shifters) else None
        if output_activation is None:
            output_activation = build_activation("elu1")
        self.output_activation = output_activation
        if modulators is not None and not isinstance(modulators, nn.ModuleDict):
            modulators = nn.ModuleDict(modulators)
        self.modulators = modulators if modulators is not None and len(modulators) else None

    @property
    def sessions(self) -> list[str]:
        return list(self.readouts.keys())

    def _check_session(self, session: str) -> None:
        if session not in self.readouts:
            raise KeyError(f"unknown session {session!r}; the model has {self.sessions}")

    def activation(self, session: str) -> nn.Module:
        if isinstance(self.output_activation, nn.ModuleDict):
            return self.output_activation[session]
        return self.output_activation

    def forward(
        self,
        video: torch.Tensor,
        session: str,
        behavior: torch.Tensor | None = None,
        pupil_center: torch.Tensor | None = None,
        activate: bool = True,
    ) -> torch.Tensor:
        self._check_session(session)
        clips = getattr(self.core, "clips", None)
        if clips is not None:

            def run(v, b, p):  # noqa: E306 - one clip batch
                return self._predict(v, session, b, p, activate)

            return clips.apply(run, video, behavior, pupil_center, self.training)
        return self._predict(video, session, behavior, pupil_center, activate)

    def _predict(self, video, session, behavior, pupil_center, activate) -> torch.Tensor:
        features = self.core(video, behavior, pupil_center)
        if features.dtype != torch.float32 and video.dtype == torch.float32:
            features = features.float()  # readouts in float32 (autocast keeps the core in bf16)
        t = features.shape[2]
        shift = None
        if self.shifters is not None and session in self.shifters:
            if pupil_center is None:
                raise ValueError("the shifter needs pupil_center")
            shift = self.shifters[session](
                None if behavior is None else behavior[..., -t:], pupil_center[..., -t:]
            )
        y = self.readouts[session](features, shift)
        modulator = self.modulators[session] if self.modulators is not None and session in self.modulators else None  # fmt: skip
        if modulator is not None and not modulator.on_rates:
            y = modulator(y, behavior, pupil_center)
        if not activate:  # the readout's values, before the activation (and a gain on rates)
            return y
        rates = self.activation(session)(y)
        if modulator is not None and modulator.on_rates:
            rates = modulator(rates, behavior, pupil_center)
        return rates

    def regularizer(self, session: str) -> torch.Tensor:
        """Readout (shifter, modulator) penalty of one session, and the core's, a scalar."""
        self._check_session(session)
        reg = self.readouts[session].regularizer()
        for parts in (self.shifters, self.modulators):
            if parts is not None and session in parts:
                reg = reg + parts[session].regularizer()
        core = getattr(self.core, "_orig_mod", self.core)
        if hasattr(core, "regularizer"):
            reg = reg + core.regularizer()
        return reg

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Per-block gradient checkpointing in the core (where the core supports it)."""
        core = getattr(self.core, "_orig_mod", self.core)  # torch.compile wrapper
        if hasattr(core, "set_grad_checkpointing"):
            core.set_grad_checkpointing(enabled)


def video_input(sessions: Mapping[str, Mapping[str, Any]]) -> VideoInput:
    """The core's VideoInput from the sessions' "pixel_range" (black, white after each
    session's video transform), averaged over sessions: the core is shared, and each session
    standardises its video by its own statistics. Without ranges: untransformed frames."""
    ranges = [s["pixel_range"] for s in sessions.values() if s.get("pixel_range") is not None]
    if not ranges:
        return VideoInput()
    lo, hi = np.asarray(ranges, dtype=np.float64).reshape(-1, 2).mean(axis=0)
    return VideoInput((float(lo), float(hi)))


def build_model(
    model_config: ModelConfig,
    sessions: Mapping[str, Mapping[str, Any]],
    in_channels: int = 1,
    frame_shape: tuple[int, int] = (36, 64),
) -> NeuralPredictor:
    """Build the model of `model_config` for the sessions given as
    {name: {"n_neurons": N, "coordinates": (N, 3), "mean_response": (N,), "pixel_range":
    (black, white), "behavior_mean": (2,), ...}}: each part is the registered class of the name its slot's options
    carry, made with those options. A spec's "opto_channels" (optogenetic input channels of its
    videos) add to `in_channels`."""
    core_cls = CORES.get(model_config.core.name)
    readout_cls = READOUTS.get(model_config.readout.name)
    if not sessions:
        raise ConfigError("build_model: no sessions given")
    in_channels += _opto_channels(sessions)
    shifter, modulator = model_config.shifter, model_config.modulator
    if shifter.shifter_mode and not getattr(readout_cls, "takes_shift", True):
        raise ConfigError(
            f"--shifter_mode {shifter.shifter_mode}: the {readout_cls.registered_name} readout "
            "has no positions to shift; use --shifter_mode 0"
        )
    frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
    extra = (
        {"video": video_input(sessions)} if getattr(core_cls, "takes_video_input", False) else {}
    )
    core = core_cls(in_channels, frame_shape, model_config.core, **extra)
    in_shape = (core.out_channels, *core.out_shape(frame_shape))

    readouts, shifters, activations, modulators = {}, {}, {}, {}
    for name, spec in sessions.items():
        if "n_neurons" not in spec:
            raise ConfigError(f"session {name}: spec lacks n_neurons")
        act = build_activation(model_config.output_activation)
        mean = spec.get("mean_response")
        bias_init = None
        if mean is not None:
            mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
            bias_init = act.inverse(mean_t).detach()
        readouts[name] = readout_cls(
            in_shape,
            spec["n_neurons"],
            model_config.readout,
            coordinates=spec.get("coordinates"),
            bias_init=bias_init,
        )
        activations[name] = act
        if shifter.shifter_mode:
            shifters[name] = SHIFTERS.get(shifter.name)(shifter)
        if modulator.name != "none":
            modulator_cls = MODULATORS.get(modulator.name)
            centre = (
                {"behavior_mean": spec.get("behavior_mean")}
                if getattr(modulator_cls, "takes_behavior_mean", False)
                else {}
            )
            modulators[name] = modulator_cls(spec["n_neurons"], modulator, **centre)
    return NeuralPredictor(
        core,
        nn.ModuleDict(readouts),
        nn.ModuleDict(shifters) if shifters else None,
        nn.ModuleDict(activations),
        nn.ModuleDict(modulators) if modulators else None,
    )


def _opto_channels(sessions: Mapping[str, Mapping[str, Any]]) -> int:
    """The optogenetic channels every session's videos carry (ConfigError if they differ)."""
    counts = {name: int(spec.get("opto_channels", 0)) for name, spec in sessions.items()}
    if len(set(counts.values())) > 1:
        raise ConfigError(
            f"sessions differ in their optogenetic input channels (data/opto): {counts}; "
            "one model needs the same channels for every session"
        )
    return next(iter(counts.values()))

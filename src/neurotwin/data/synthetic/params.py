"""Sizes, presets, generative-model parameters and the harder variants of the synthetic mice.

Every option here is off or at its published default unless a preset, a variant or an override
says otherwise; the output of the defaults never changes (tests compare it bit for bit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neurotwin.errors import ConfigError

GENERATOR_VERSION = 1
FRAME_RATE = 30.0  # Hz, as the published recordings
REF_WIDTH = 64.0  # spatial parameters are given in pixels of a 64-pixel-wide screen ("ref px")
HIDDEN_TIERS = ("final_test_main",)  # responses shipped as zeros
VIDEO_IDS_FILE = "trials/video_ids.npy"  # under meta/: trials showing the same clip share an id
RECORDING_ORDER_FILE = "trials/recording_order.npy"  # under meta/, only with slow drifts


@dataclass(frozen=True)
class SyntheticSizes:
    """How big each synthetic session is."""

    height: int = 18
    width: int = 32
    frames: int = 90  # frames per trial (T); short trials are NaN-padded to T
    neurons: int = 80
    train_trials: int = 60
    oracle_clips: int = 4
    oracle_repeats: int = 5
    test_clips: int = 2  # per test tier (live_test_main, final_test_main)
    test_repeats: int = 4
    short_fraction: float = 0.1  # fraction of clips shorter than `frames` (NaN-padded)


# "small": quick CPU data (3 mice in a few seconds). Frames are 18x32, half the published 36x64
# in each direction: every spatial parameter is defined relative to the screen width, so the
# model is the same at either resolution, and a CNN trains about 4x faster per frame on CPU.
# "sensorium": the published sizes (36x64 frames, 300-frame trials, ~8k neurons, 700 trials).
PRESETS: dict[str, SyntheticSizes] = {
    "small": SyntheticSizes(),
    "sensorium": SyntheticSizes(
        height=36,
        width=64,
        frames=300,
        neurons=8000,
        train_trials=520,
        oracle_clips=6,
        oracle_repeats=10,
        test_clips=6,
        test_repeats=10,
        short_fraction=0.1,
    ),
}


@dataclass(frozen=True)
class ModelParams:
    """Parameters of the generative model (spatial ones in ref px: pixels of a 64-wide screen)."""

    # stimulus
    spatial_exponent: float = 1.0  # amplitude ~ 1 / f^a
    motion_speed: float = 0.8  # ref px / frame: temporal bandwidth = speed * spatial frequency
    max_objects: int = 3
    object_speed: tuple[float, float] = (0.3, 1.5)  # ref px / frame
    cut_probability: float = 0.5  # chance of one scene cut per clip
    luminance: tuple[float, float] = (90.0, 150.0)  # clip mean, 0..255
    contrast: tuple[float, float] = (35.0, 60.0)  # clip standard deviation, 0..255
    # neurons
    fov_um: float = 630.0  # side of the imaged field of view, micrometres
    depth_um: tuple[float, float] = (180.0, 420.0)
    planes: int = 6
    magnification: tuple[float, float] = (0.04, 0.055)  # ref px per micrometre of cortex
    retinotopic_scatter: float = 1.0  # ref px
    rf_sigma: float = 4.0  # ref px, median Gaussian envelope
    spatial_frequency: float = 0.07  # cycles per ref px, median
    complex_fraction: float = 0.35
    center_surround_fraction: float = 0.15
    filter_length: int = 16  # frames
    threshold: tuple[float, float] = (0.0, 1.0)  # rectification threshold, in drive s.d.
    sharpness: float = 3.0  # softplus sharpness
    spontaneous: float = 0.1  # fraction of the mean rate independent of the stimulus
    mean_rate: float = 1.0  # median over neurons of the mean count per frame
    rate_spread: float = 0.5  # log-normal spread of the mean counts over neurons
    overdispersion: float = 0.3  # variance of the Gamma gain on the Poisson rate
    response_scale: float = 1.0  # median units per count (per neuron, log-normal spread 0.4)
    running_gain: tuple[float, float] = (0.25, 0.15)  # mean, s.d. over neurons (log gain per z)
    pupil_gain: tuple[float, float] = (0.15, 0.1)
    # behaviour and gaze
    gaze_gain: float = 0.3  # ref px of receptive-field shift per eye-camera pixel of gaze
    saccade_rate: float = 0.4  # per second, at rest (doubles when running fast)
    saccade_size: float = 4.0  # eye-camera pixels
    # options that real data has and the defaults leave out (off: 0). Each draws its random
    # numbers from its own stream, so that switching one on leaves everything else as it was.
    surround_fraction: float = 0.0  # simple/complex cells with an iso-oriented divisive surround
    surround_ratio: tuple[float, float] = (2.0, 3.0)  # surround envelope s.d. / centre s.d.
    surround_strength: tuple[float, float] = (0.3, 1.2)  # divisive weight of the surround energy
    drift_amplitude: float = 0.0  # s.d. of each neuron's slow log-gain drift over the session


# Fields added after version 1 of the generator: session names hash them only when they differ
# from their default, so that the default output (folder names included) stays as it was.
ADDED_PARAMS = ("surround_fraction", "surround_ratio", "surround_strength", "drift_amplitude")


@dataclass(frozen=True)
class Variant:
    """A named set of harder options: sizes scaled from the preset's, model parameters set."""

    help: str
    scale_sizes: Mapping[str, float] = dataclasses.field(default_factory=dict)
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


VARIANTS: dict[str, Variant] = {
    "many_neurons": Variant(
        "8x the preset's neurons and a third of its training trials: more neurons than the "
        "trials can pin down",
        scale_sizes={"neurons": 8.0, "train_trials": 1 / 3},
    ),
    "strong_behavior": Variant(
        "running and pupil gains about 3x the default (log gain 0.7 +- 0.3 per running s.d., "
        "0.4 +- 0.2 per pupil s.d.)",
        params={"running_gain": (0.7, 0.3), "pupil_gain": (0.4, 0.2)},
    ),
    "gaze_shifts": Variant(
        "large, frequent saccades that move receptive fields by several pixels (gaze gain 1.0 "
        "ref px per eye px, 1.5 saccades/s of 10 eye px)",
        params={"gaze_gain": 1.0, "saccade_rate": 1.5, "saccade_size": 10.0},
    ),
    "slow_drifts": Variant(
        "each neuron's gain drifts slowly over the recording (log-gain s.d. 0.3; no input "
        "carries it, so part of the ceiling cannot be reached)",
        params={"drift_amplitude": 0.3},
    ),
    "surround": Variant(
        "half of the simple and complex cells have an iso-oriented divisive surround (size "
        "tuning with suppression, iso- stronger than cross-orientation suppression)",
        params={"surround_fraction": 0.5},
    ),
}
VARIANTS["hard"] = Variant(
    "all harder options together: " + ", ".join(VARIANTS),
    scale_sizes={k: v for var in VARIANTS.values() for k, v in var.scale_sizes.items()},
    params={k: v for var in VARIANTS.values() for k, v in var.params.items()},
)


def _dataclass_from(cls: type, values: Mapping[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown synthetic {what} {unknown}; expected some of {sorted(names)}")
    return cls(**values)


def check_sizes(s: SyntheticSizes) -> None:
    minimum = {
        "height": 4,
        "width": 4,
        "frames": 2,
        "neurons": 1,
        "train_trials": 1,
        "oracle_clips": 0,
        "oracle_repeats": 1,
        "test_clips": 0,
        "test_repeats": 1,
    }
    for name, low in minimum.items():
        value = getattr(s, name)
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"synthetic size {name}={value!r}: expected an integer >= {low}")
    if not 0.0 <= s.short_fraction <= 1.0:
        raise ConfigError(f"synthetic size short_fraction={s.short_fraction!r}: expected 0..1")


def check_params(p: ModelParams) -> None:
    """Range checks of the options added after version 1 (the others are trusted as given)."""
    if not 0.0 <= p.surround_fraction <= 1.0:
        raise ConfigError(f"synthetic surround_fraction={p.surround_fraction!r}: expected 0..1")
    if p.drift_amplitude < 0:
        raise ConfigError(f"synthetic drift_amplitude={p.drift_amplitude!r}: expected >= 0")
    for name in ("surround_ratio", "surround_strength"):
        lo, hi = getattr(p, name)
        if not 0 < lo <= hi:
            raise ConfigError(f"synthetic {name}={(lo, hi)!r}: expected 0 < low <= high")


def _as_field_value(cls: type, name: str, value: Any) -> Any:
    """Lists (from JSON or flags) back to the tuples the dataclass holds."""
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def resolve(
    preset: str, overrides: Mapping[str, Any], variants: Sequence[str] = ()
) -> tuple[SyntheticSizes, ModelParams]:
    """Sizes and parameters of `preset`, with `variants` applied, then `overrides` on top."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; expected one of {sorted(PRESETS)}")
    unknown_variants = [v for v in variants if v not in VARIANTS]
    if unknown_variants:
        raise ConfigError(
            f"unknown synthetic variant(s) {unknown_variants}; expected some of {sorted(VARIANTS)}"
        )
    size_names = {f.name for f in dataclasses.fields(SyntheticSizes)}
    param_names = {f.name for f in dataclasses.fields(ModelParams)}
    unknown = sorted(set(overrides) - size_names - param_names)
    if unknown:
        raise ConfigError(
            f"unknown synthetic option(s) {unknown}; sizes: {sorted(size_names)}; "
            f"model parameters: {sorted(param_names)}"
        )
    base = PRESETS[preset]
    given: dict[str, Any] = {}
    for name in variants:
        variant = VARIANTS[name]
        for k, factor in variant.scale_sizes.items():
            given[k] = max(1, int(round(getattr(base, k) * factor)))
        given.update(variant.params)
    given.update({k: v for k, v in overrides.items() if v is not None})
    sizes = dataclasses.replace(base, **{k: v for k, v in given.items() if k in size_names})
    params = _dataclass_from(
        ModelParams,
        {k: _as_field_value(ModelParams, k, v) for k, v in given.items() if k in param_names},
        "parameter",
    )
    check_sizes(sizes)
    check_params(params)
    return sizes, params


def params_from_meta(values: Mapping[str, Any]) -> ModelParams:
    """ModelParams from the "params" entry of a session's neurotwin.json."""
    fields = {f.name for f in dataclasses.fields(ModelParams)}
    return ModelParams(
        **{k: _as_field_value(ModelParams, k, v) for k, v in values.items() if k in fields}
    )


def rng(*keys: int) -> np.random.Generator:
    """An independent random stream for a tuple of non-negative integer keys."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


# Stream identifiers (first key after the seed). New streams are appended, never inserted.
S_SHARED_CLIP, S_TRAIN_CLIP, S_MOUSE, S_CALIBRATION, S_PLAN, S_TRIAL = range(6)
S_SURROUND, S_DRIFT = 6, 7

"""Stimuli shown as separate presentations (natural scenes, static and drifting gratings) ->
native trials: one trial per presentation, its frames the response bins of a window after onset.

Both converters reduce such a stimulus to a `Presentations`: each presentation's onset and
condition (an image of natural_scenes, one parameter combination of a grating; blank sweeps are
dropped, as mouse-vision drops the grey image), and what each condition looks like. A trial's
video shows the condition over the bins of `window` (static images repeated, drifting gratings
at each bin's time since onset); its responses are the recording sampled in the same bins
(2-photon: mean dF/F in each bin; Neuropixels: spike counts in each bin). Trials of one
condition are its repeats: held-out conditions (`heldout`) put their first repeats in the
`oracle` tier and the last `test_fraction` in `test_tier`; the other conditions are `train`.
meta/neurotwin.json records ``"responses_per": "presentation"``, which neurotwin-encode reads.

Gratings are rendered as the Brain Observatory describes them: full-field sinusoids at 80%
contrast around mean grey, spatial frequency in cycles per degree over a screen spanning
`SCREEN_DEG` of visual angle (the 51 x 32 cm monitor at 15 cm: 119 x 94 degrees; drawn on a flat
screen here, without the spherical warping the rig applied), orientation in degrees
(drifting gratings move along it at `temporal_frequency` Hz), phase in cycles.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from neurotwin.data import native
from neurotwin.errors import DataFormatError

log = logging.getLogger(__name__)

STIMULI = ("natural_scenes", "static_gratings", "drifting_gratings")
# seconds after onset whose responses are read (the presentation: 250 ms, 250 ms, 2 s)
DEFAULT_WINDOW = {
    "natural_scenes": (0.0, 0.25),
    "static_gratings": (0.0, 0.25),
    "drifting_gratings": (0.0, 2.0),
}
SCREEN_DEG = (2 * math.degrees(math.atan(16.0 / 15.0)), 2 * math.degrees(math.atan(25.5 / 15.0)))
GREY = 127.5
CONTRAST = 0.8
DRIFTING_SF = 0.04  # cycles per degree (every drifting grating of the Brain Observatory)

Sampler = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (starts, ends) -> (channels, intervals)


@dataclass
class Presentations:
    """One stimulus of a session: onsets (s) and condition per presentation (blanks removed)."""

    name: str
    onsets: np.ndarray
    condition: np.ndarray
    parameters: dict[str, np.ndarray] = field(default_factory=dict)  # per condition
    images: np.ndarray | None = None  # (K, H, W): what each static condition shows
    drift: np.ndarray | None = None  # drifting gratings: per condition (orientation, tf, sf)


def from_parameters(
    name: str,
    onsets: np.ndarray,
    values: Mapping[str, np.ndarray],
    frame_size: Sequence[int],
    templates=None,
    source: object = "allen",
) -> Presentations:
    """Presentations of `name` from per-presentation parameter columns (NaN: blank sweep).

    natural_scenes: values {"frame": image index, -1 for the blank}, `templates` (K, h, w)
    the images; static_gratings: orientation, spatial_frequency, phase; drifting_gratings:
    orientation, temporal_frequency (and spatial_frequency, else 0.04 cycles/degree).
    """
    from neurotwin.data.allen.resample import area_resize

    onsets = np.asarray(onsets, np.float64)
    if name == "natural_scenes":
        if templates is None:
            raise DataFormatError(source, "natural_scenes needs its images (stimulus templates)")
        frame = np.asarray(values["frame"], np.float64)
        n_img = int(templates.shape[0])
        if np.any(frame >= n_img) or np.any(~np.isfinite(frame)):
            raise DataFormatError(
                source, f"natural_scenes frame index outside -1..{n_img - 1}", "frame"
            )
        keep = frame >= 0
        return Presentations(
            name,
            onsets[keep],
            frame[keep].astype(np.int64),
            {"image": np.arange(n_img, dtype=np.float64)},
            images=area_resize(templates, tuple(frame_size)),
        )
    wanted = ["orientation", "spatial_frequency", "phase"]
    if name == "drifting_gratings":
        wanted = ["orientation", "temporal_frequency", "spatial_frequency"]
        values = dict(values)
        values.setdefault(
            "spatial_frequency", np.where(np.isfinite(values["orientation"]), DRIFTING_SF, np.nan)
        )
    missing = [w for w in wanted if w not in values]
    if missing:
        raise DataFormatError(source, f"{name}: missing parameter(s) {missing}")
    index, table = conditions({w: values[w] for w in wanted})
    keep = index >= 0
    if name == "static_gratings":
        images = (
            np.stack(
                [
                    render_grating(frame_size, o, sf, ph)
                    for o, sf, ph in zip(
                        table["orientation"], table["spatial_frequency"], table["phase"]
                    )
                ]
            )
            if len(table["orientation"])
            else np.zeros((0, *frame_size), np.float32)
        )
        return Presentations(name, onsets[keep], index[keep], table, images=images)
    drift = np.column_stack(
        [table["orientation"], table["temporal_frequency"], table["spatial_frequency"]]
    )
    return Presentations(name, onsets[keep], index[keep], table, drift=drift)


def parameter_column(raw, path: str, source: object) -> np.ndarray:
    """A stimulus parameter column as float64: numbers as they are; strings as Allen's
    Neuropixels tables store them ("null" -> NaN, "[0.04, 0.04]" -> 0.04)."""
    raw = np.asarray(raw).reshape(-1)
    if np.issubdtype(raw.dtype, np.number):
        return raw.astype(np.float64)
    out = np.empty(raw.size)
    for i, v in enumerate(raw):
        text = (
            (v.decode() if isinstance(v, bytes) else str(v))
            .strip()
            .strip("[]()")
            .split(",")[0]
            .strip()
        )
        if text.lower() in ("", "null", "none", "nan"):
            out[i] = np.nan
            continue
        try:
            out[i] = float(text)
        except ValueError:
            raise DataFormatError(source, f"expected numbers or 'null', got {v!r}", path) from None
    return out


def render_grating(
    shape: Sequence[int],
    orientation: float,
    spatial_frequency: float,
    phase: float = 0.0,
    temporal_frequency: float = 0.0,
    t: float = 0.0,
) -> np.ndarray:
    """A full-field sinusoidal grating (H, W) in 0..255 (mean grey, 80% contrast)."""
    h, w = int(shape[0]), int(shape[1])
    y = (np.arange(h) + 0.5) / h * SCREEN_DEG[0] - SCREEN_DEG[0] / 2
    x = (np.arange(w) + 0.5) / w * SCREEN_DEG[1] - SCREEN_DEG[1] / 2
    theta = math.radians(orientation)
    along = x[None, :] * math.cos(theta) + y[:, None] * math.sin(theta)
    cycles = spatial_frequency * along - phase - temporal_frequency * t
    return (GREY * (1.0 + CONTRAST * np.cos(2 * math.pi * cycles))).astype(np.float32)


def conditions(values: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per presentation parameter values -> (condition index, {name: value per condition});
    a presentation with any NaN parameter (blank sweep) gets -1."""
    names = list(values)
    table = np.column_stack([np.asarray(values[n], np.float64) for n in names])
    blank = ~np.isfinite(table).all(axis=1)
    index = np.full(len(table), -1, np.int64)
    if (~blank).any():
        unique, inverse = np.unique(table[~blank], axis=0, return_inverse=True)
        index[~blank] = inverse.reshape(-1)
    else:
        unique = np.zeros((0, len(names)))
    return index, {n: unique[:, i] for i, n in enumerate(names)}


def parse_heldout(
    specs: Sequence[str], stimulus: str, n_conditions: int, source="heldout_clips"
) -> set[int]:
    """Conditions of `stimulus` named in `specs` ("natural_scenes:*", ":3", ":0-9"); every
    condition when no spec names the stimulus (so that every image has its repeats in the
    oracle/test tiers, the encoding-model setting)."""
    chosen: set[int] = set()
    named = False
    for spec in specs:
        name, sep, value = str(spec).rpartition(":")
        if not sep or name.strip() != stimulus:
            continue
        named = True
        value = value.strip()
        try:
            if value == "*":
                chosen.update(range(n_conditions))
            elif "-" in value.lstrip("-"):
                a, b = value.split("-", 1)
                chosen.update(range(int(a), int(b) + 1))
            else:
                chosen.add(int(value))
        except ValueError:
            raise DataFormatError(
                source, f"expected {stimulus}:INDEX, :A-B or :*, got {spec!r}"
            ) from None
    if not named:
        return set(range(n_conditions))
    bad = sorted(k for k in chosen if not 0 <= k < n_conditions)
    if bad:
        raise DataFormatError(
            source, f"{stimulus} has conditions 0..{n_conditions - 1}, got {bad[:5]}"
        )
    return chosen


def bins(window: Sequence[float], bin_s: float) -> np.ndarray:
    """Start of each response bin (s after onset): round((stop - start) / bin) bins of `bin_s`
    from `start` (0-250 ms in 2-photon frames of 1/30 s: 8 bins, up to 267 ms)."""
    w0, w1 = float(window[0]), float(window[1])
    if not w1 > w0 or bin_s <= 0:
        raise DataFormatError("window", f"expected start < stop and bin > 0, got {window}, {bin_s}")
    n = max(1, int(round((w1 - w0) / bin_s)))
    return w0 + np.arange(n) * bin_s


def _videos(
    pres: Presentations, starts: np.ndarray, bin_s: float, frame_size
) -> dict[int, np.ndarray]:
    """(H, W, T) video of every condition."""
    out = {}
    for k in np.unique(pres.condition):
        if pres.images is not None:
            out[int(k)] = np.repeat(pres.images[k][:, :, None], len(starts), axis=2).astype(
                np.float32
            )
        else:
            ori, tf, sf = pres.drift[k]  # type: ignore[index]
            frames = [render_grating(frame_size, ori, sf, 0.0, tf, t + bin_s / 2) for t in starts]
            out[int(k)] = np.stack(frames, axis=-1)
    return out


def build_session(
    pres: Presentations,
    responses: Sampler,
    behavior: Sampler,
    pupil_center: Sampler,
    unit_ids: np.ndarray,
    coordinates: np.ndarray,
    frame_size: Sequence[int],
    window: Sequence[float],
    bin_s: float,
    heldout: Sequence[str] = (),
    test_fraction: float = 0.5,
    test_tier: str = "final_test_main",
    extra_meta: Mapping[str, np.ndarray] | None = None,
    source: str | object = "allen",
) -> native.SessionArrays:
    """One trial per presentation of `pres`, in time order; tiers by held-out condition."""
    if not 0.0 <= test_fraction <= 1.0:
        raise DataFormatError(source, f"test_fraction must be in [0, 1], got {test_fraction}")
    if test_tier not in native.TIERS:
        raise DataFormatError(source, f"test_tier must be one of {native.TIERS}, got {test_tier}")
    order = np.argsort(pres.onsets, kind="stable")
    onsets, cond = pres.onsets[order], pres.condition[order]
    if onsets.size == 0:
        raise DataFormatError(source, f"{pres.name}: no presentation (every one a blank sweep?)")
    starts = bins(window, bin_s)
    t0 = (onsets[:, None] + starts[None, :]).reshape(-1)
    n, T = len(onsets), len(starts)
    resp = responses(t0, t0 + bin_s).reshape(-1, n, T)
    beh = behavior(t0, t0 + bin_s).reshape(2, n, T)
    eye = pupil_center(t0, t0 + bin_s).reshape(2, n, T)
    n_cond = len(next(iter(pres.parameters.values()))) if pres.parameters else int(cond.max()) + 1
    held = parse_heldout(heldout, pres.name, n_cond)
    videos = _videos(pres, starts, bin_s, frame_size)
    repeat = np.zeros(n, np.int64)
    tiers = np.full(n, native.TRAIN_TIER, dtype=object)
    for k in np.unique(cond):
        idx = np.flatnonzero(cond == k)
        repeat[idx] = np.arange(len(idx))
        if int(k) in held:
            n_test = int(round(test_fraction * len(idx)))
            tiers[idx] = native.ORACLE_TIER
            if n_test:
                tiers[idx[len(idx) - n_test :]] = test_tier
    trials = {
        i: {
            native.VIDEOS: videos[int(cond[i])],
            native.RESPONSES: resp[:, i].astype(np.float32),
            native.BEHAVIOR: beh[:, i].astype(np.float32),
            native.PUPIL_CENTER: eye[:, i].astype(np.float32),
        }
        for i in range(n)
    }
    train = [trials[i] for i in range(n) if tiers[i] == native.TRAIN_TIER] or list(trials.values())

    statistics = native.training_statistics(train)
    meta = {
        "trials/stimulus.npy": np.asarray([pres.name] * n, dtype=str),
        "trials/condition.npy": cond.astype(np.int64),
        "trials/repeat.npy": repeat,
        "trials/start_time.npy": onsets.astype(np.float64),
    }
    for key, per_condition in pres.parameters.items():
        meta[f"trials/{key}.npy"] = np.asarray(per_condition, np.float64)[cond]
    meta.update(extra_meta or {})
    return native.SessionArrays(
        tiers=np.asarray(tiers, dtype=str),
        unit_ids=np.asarray(unit_ids, dtype=np.int64),
        coordinates=np.asarray(coordinates, dtype=np.float32),
        trials=trials,
        statistics=statistics,
        extra_meta=meta,
    )


def split_meta(
    pres: Presentations, frame_size, window, bin_s, heldout, test_fraction, test_tier
) -> dict:
    """meta/neurotwin.json entries saying how the presentations became trials and tiers."""
    return {
        "responses_per": "presentation",
        "stimulus": pres.name,
        "n_conditions": int(len(next(iter(pres.parameters.values())))) if pres.parameters else None,
        "frame_size": list(frame_size),
        "window_s": [float(window[0]), float(window[1])],
        "bin_s": float(bin_s),
        "frame_rate_hz": 1.0 / float(bin_s),
        "heldout_clips": list(heldout),
        "test_fraction": test_fraction,
        "test_tier": test_tier,
        "grating_rendering": None
        if pres.name == "natural_scenes"
        else f"flat screen of {SCREEN_DEG[1]:.1f} x {SCREEN_DEG[0]:.1f} deg, contrast {CONTRAST}",
    }


def behavior_samplers(running_t, running, eye) -> tuple[Sampler, Sampler]:
    """(behaviour, pupil centre) samplers: mean pupil size and running speed, and mean gaze, in
    each interval (zeros where the recording has none). `eye`: (size_t, size, gaze_t, gaze)."""
    from neurotwin.data.allen.resample import interval_mean

    def behavior(a, b):
        pupil = interval_mean(eye[0], eye[1], a, b) if eye is not None else np.zeros(a.size)
        run = interval_mean(running_t, running, a, b) if running is not None else np.zeros(a.size)
        return np.stack([pupil, run])

    def center(a, b):
        return interval_mean(eye[2], eye[3], a, b) if eye is not None else np.zeros((2, a.size))

    return behavior, center

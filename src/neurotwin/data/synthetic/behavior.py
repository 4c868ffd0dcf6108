"""Behaviour and gaze of a synthetic mouse: running in bouts, pupil dilating with locomotion,
fixations with slow drift, saccades (more often when running)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from neurotwin.data.synthetic.params import FRAME_RATE, ModelParams


def smooth(rng: np.random.Generator, n: int, sigma: float, size: int = 1) -> np.ndarray:
    """Smooth Gaussian noise (size, n) with unit s.d. (Gaussian-filtered white noise)."""
    margin = int(3 * sigma) + 1
    white = rng.standard_normal((size, n + 2 * margin))
    out = gaussian_filter1d(white, sigma, axis=-1, mode="wrap")[:, margin : margin + n]
    return out / (np.sqrt(1.0 / (2.0 * np.sqrt(np.pi) * sigma)) + 1e-12)


@dataclass(frozen=True)
class MouseBehavior:
    pupil_baseline: float  # pupil dilation at rest
    eye_center: tuple[float, float]  # resting gaze, eye-camera pixels
    running_propensity: float  # mean of the latent running drive


def simulate_behavior(rng: np.random.Generator, T: int, m: MouseBehavior, p: ModelParams):
    """behavior (2, T): pupil dilation, running speed (cm/s); pupil_center (2, T): gaze x, y."""
    latent = m.running_propensity + rng.normal(0.0, 0.8) + 0.9 * smooth(rng, T, 20.0)[0]
    running = 25.0 / (1.0 + np.exp(-3.0 * (latent - 0.7)))
    running = running + 0.3 * np.abs(smooth(rng, T, 2.0)[0])
    arousal = gaussian_filter1d(running, 15.0, mode="nearest")  # pupil follows running, slowly
    slow = rng.normal(0.0, 0.6) + 0.7 * smooth(rng, T, 40.0)[0]
    pupil = m.pupil_baseline * (1.0 + 0.1 * slow + 0.25 * arousal / 25.0)
    pupil = np.maximum(pupil, 0.2 * m.pupil_baseline)
    # gaze: fixations with slow drift, saccades (more often when running), drawn to the centre
    rate = p.saccade_rate / FRAME_RATE * (1.0 + running / 25.0)
    saccade = rng.random(T) < rate
    jumps = rng.normal(0.0, p.saccade_size, size=(2, T)) * saccade
    center = np.asarray(m.eye_center)[:, None]
    gaze = np.empty((2, T))
    pos = center[:, 0] + rng.normal(0.0, 2.0 * p.saccade_size / 3.0, size=2)
    for i in range(T):
        if saccade[i]:
            pos = pos + jumps[:, i] - 0.3 * (pos - center[:, 0])
        gaze[:, i] = pos
    gaze = gaussian_filter1d(gaze, 0.7, axis=-1, mode="nearest")  # saccades last ~2 frames
    gaze = gaze + 0.4 * smooth(rng, T, 10.0, size=2) + 0.05 * rng.standard_normal((2, T))
    behavior = np.stack([pupil, running]).astype(np.float32)
    return behavior, gaze.astype(np.float32)

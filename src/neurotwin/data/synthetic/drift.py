"""Slow drifts: each neuron's gain wanders over the recording session (as photobleaching, slow
z-motion or changes of state do in real recordings). No input carries the drift, so a model
cannot predict it: it is part of the noiseless rates and lowers the reachable share of them."""

from __future__ import annotations

import numpy as np

WAVES = 3  # sinusoids per drift
CYCLES = (0.5, 3.0)  # cycles per session
SHARED, OWN = 0.6, 0.8  # weights of the drift shared by all neurons and each neuron's own


class SlowDrift:
    """log gain of neuron n at session time tau in [0, 1): amplitude * (SHARED * w_0(tau) +
    OWN * w_n(tau)), each w a sum of WAVES sinusoids of random frequency and phase with unit
    variance. A trial's frames run from its recording position to the next one."""

    def __init__(self, rng: np.random.Generator, n_neurons: int, n_trials: int, amplitude: float):
        self.n_trials = int(n_trials)
        self.amplitude = float(amplitude)
        self.order = rng.permutation(self.n_trials)  # recording position of each trial file
        self.freq = rng.uniform(*CYCLES, size=(n_neurons + 1, WAVES))
        self.phase = rng.uniform(0.0, 2 * np.pi, size=(n_neurons + 1, WAVES))

    def log_gain(self, trial: int, frames: int) -> np.ndarray:
        """(N, frames) log gain of the neurons during trial file `trial`, float32."""
        tau = (self.order[trial] + np.arange(frames) / frames) / self.n_trials
        arg = 2 * np.pi * self.freq[:, :, None] * tau[None, None, :] + self.phase[:, :, None]
        waves = np.sqrt(2.0 / WAVES) * np.sin(arg).sum(1)  # (N + 1, frames), unit variance
        return (self.amplitude * (SHARED * waves[:1] + OWN * waves[1:])).astype(np.float32)

"""Ground-truth spike-table sessions from a point-process GLM with known coupling and latents.

Every unit n of trial k fires in each bin t (of `bin_ms`) with a Poisson count of rate
exp(eta), where

    eta = log(rate_n * bin) + stim_{n,c}(t) + loading_n * gain_k
          + sum_tau h(tau) y_n(t - tau)                              (self-history: refractory)
          + sum_{pairs q->p, n in p} r_n f_qp(tau) sum_{i in q} s_i y_i(t - tau)   (coupling)

- stim: a smooth condition-tuned response after trial onset;
- gain_k ~ N(0, latent_std^2): the per-trial background gain (arousal, locomotion), the latent a
  VAE should recover; loading_n ~ U(0.5, 1.5);
- f_qp(tau) = amplitude * x^3 * exp(3 (1 - x)), x = tau / peak (a gamma-shaped bump peaking at
  `peak_ms`), only for the pairs in `couplings` (default: A -> B only); receiving and sending
  weights r, s ~ U(0.5, 1.5) scaled to mean 1, so the coupling averaged over target and source
  units is exactly f_qp: the quantity `couplings.parquet` reports.

Each trial is simulated from `burn_in_ms` before its start (the history a model sees); trials
follow each other so that burn-in and trials never overlap. Truth goes into the session's
meta.json (`truth`) and `truth.parquet` (trial_id, gain).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from neurotwin.data.spikes import write_session

log = logging.getLogger(__name__)

TRUTH_FILE = "truth.parquet"
DEFAULT_COUPLINGS = {("A", "B"): (0.2, 6.0)}


@dataclass(frozen=True)
class SimulationSpec:
    """What a simulated session holds (all sessions of one call share it)."""

    populations: tuple[str, ...] = ("A", "B")
    units: int = 20
    trials: int = 200
    conditions: int = 4
    duration_ms: float = 500.0
    burn_in_ms: float = 200.0
    bin_ms: float = 1.0
    rate_hz: float = 10.0
    stimulus_gain: float = 1.0
    response_ms: float = 20.0
    latent_std: float = 0.4
    refractory: float = 3.0
    couplings: tuple[tuple[str, str, float, float], ...] = (("A", "B", 0.2, 6.0),)
    coupling_lags_ms: float = 40.0


def gamma_filter(
    lags_ms: np.ndarray, amplitude: float, peak_ms: float, order: int = 3
) -> np.ndarray:
    """amplitude * x^order * exp(order * (1 - x)), x = tau / peak: a bump with its maximum,
    `amplitude`, at tau = peak (order 1 is the alpha function; higher orders are narrower)."""
    x = np.asarray(lags_ms, dtype=np.float64) / peak_ms
    return amplitude * x**order * np.exp(order * (1.0 - x))


def refractory_filter(lags_ms: np.ndarray, depth: float) -> np.ndarray:
    """-depth * exp(-(tau - 1 ms) / 2 ms): strong self-suppression right after a spike."""
    return -depth * np.exp(-(np.asarray(lags_ms, dtype=np.float64) - 1.0) / 2.0)


def _stimulus(rng, n_units: int, n_conditions: int, times_ms: np.ndarray, gain: float, width):
    """(units, conditions, bins) log-rate change: a smooth, tuned response after onset (a
    transient bump 40-70 ms after it, then a sustained part), smooth on the scale of 10 ms so
    that a time term on B-splines can follow it."""
    preferred = rng.uniform(0, 2 * np.pi, n_units)
    angle = 2 * np.pi * np.arange(n_conditions) / max(n_conditions, 1)
    tuning = np.exp(np.cos(angle[None, :] - preferred[:, None]) - 1.0)  # (n, c) in (e^-2, 1]
    latency = rng.uniform(40, 70, n_units)[:, None]
    t = times_ms[None, :]
    transient = np.exp(-0.5 * ((t - latency) / width) ** 2)
    sustained = 0.3 / (1.0 + np.exp(-(t - latency) / (width / 2)))
    return gain * tuning[:, :, None] * (transient + sustained)[:, None, :]


def simulate_session(spec: SimulationSpec, rng: np.random.Generator) -> dict:
    """Counts and truth of one session: counts (trials, units, burn-in + trial bins)."""
    bin_s = spec.bin_ms / 1000.0
    n_burn = int(round(spec.burn_in_ms / spec.bin_ms))
    n_trial = int(round(spec.duration_ms / spec.bin_ms))
    total = n_burn + n_trial
    pops = list(spec.populations)
    population = np.repeat(pops, spec.units)
    n = population.size
    times_ms = (np.arange(total) - n_burn + 0.5) * spec.bin_ms
    base = np.log(rng.uniform(0.5, 1.5, n) * spec.rate_hz * bin_s)
    stim = _stimulus(rng, n, spec.conditions, times_ms, spec.stimulus_gain, spec.response_ms)
    condition = rng.permutation(np.arange(spec.trials) % spec.conditions)
    gain = rng.normal(0.0, spec.latent_std, spec.trials) if spec.latent_std > 0 else None
    loading = rng.uniform(0.5, 1.5, n)
    static = base[None, :, None] + stim[:, condition, :].transpose(1, 0, 2)
    if gain is not None:
        static = static + (loading[None, :] * gain[:, None])[:, :, None]

    n_lags = int(round(spec.coupling_lags_ms / spec.bin_ms))
    lags_ms = np.arange(1, n_lags + 1) * spec.bin_ms
    history = refractory_filter(lags_ms, spec.refractory) if spec.refractory else None
    pairs = []
    for source, target, amplitude, peak_ms in spec.couplings:
        if source not in pops or target not in pops:
            raise ValueError(f"coupling {source}->{target}: populations are {pops}")
        send = rng.uniform(0.5, 1.5, spec.units)
        receive = rng.uniform(0.5, 1.5, spec.units)
        pairs.append(
            {
                "source": source,
                "target": target,
                "amplitude": float(amplitude),
                "peak_ms": float(peak_ms),
                "send": send / send.mean(),
                "receive": receive / receive.mean(),
                "filter": gamma_filter(lags_ms, amplitude, peak_ms),
                "rows_source": np.flatnonzero(population == source),
                "rows_target": np.flatnonzero(population == target),
            }
        )

    counts = np.zeros((spec.trials, n, total), dtype=np.int32)
    dynamic = np.zeros((spec.trials, n, total + n_lags), dtype=np.float32)
    for t in range(total):
        eta = np.minimum(static[:, :, t] + dynamic[:, :, t], 3.0)  # at most e^3 per bin
        y = rng.poisson(np.exp(eta))
        counts[:, :, t] = y
        if not y.any():
            continue
        ahead = slice(t + 1, t + 1 + n_lags)
        if history is not None:
            dynamic[:, :, ahead] += y[:, :, None] * history[None, None, :]
        for pair in pairs:
            drive = y[:, pair["rows_source"]] @ pair["send"]  # (trials,)
            effect = drive[:, None, None] * pair["receive"][None, :, None] * pair["filter"]
            dynamic[:, pair["rows_target"], ahead] += effect
    return {
        "counts": counts,
        "population": population,
        "condition": condition,
        "gain": gain if gain is not None else np.zeros(spec.trials),
        "loading": loading,
        "pairs": pairs,
        "lags_ms": lags_ms,
        "history": history,
        "n_burn": n_burn,
        "n_trial": n_trial,
    }


def _spike_table(counts: np.ndarray, first_bin_times: np.ndarray, bin_s: float, rng, unit_ids):
    trial, unit, b = np.nonzero(counts)
    k = counts[trial, unit, b]
    trial, unit, b = (np.repeat(a, k) for a in (trial, unit, b))
    jitter = rng.uniform(0.05, 0.95, b.size)  # well inside the bin: binning gives counts back
    times = first_bin_times[trial] + (b + jitter) * bin_s
    order = np.argsort(times, kind="stable")
    return pd.DataFrame({"unit_id": unit_ids[unit[order]], "time": times[order]})


def write_simulated_session(
    folder: str | Path, spec: SimulationSpec, seed: int, overwrite: bool = False
) -> Path:
    """Simulate one session and write it in the spike table layout."""
    rng = np.random.default_rng(seed)
    sim = simulate_session(spec, rng)
    bin_s = spec.bin_ms / 1000.0
    n_burn, n_trial = sim["n_burn"], sim["n_trial"]
    step = (n_burn + n_trial) * bin_s
    starts = 1.0 + n_burn * bin_s + np.arange(spec.trials) * step
    unit_ids = 1000 + np.arange(sim["population"].size, dtype=np.int64)
    spikes = _spike_table(sim["counts"], starts - n_burn * bin_s, bin_s, rng, unit_ids)
    names = [f"grating_{c}" for c in range(spec.conditions)]
    trials = pd.DataFrame(
        {
            "trial_id": np.arange(spec.trials, dtype=np.int64),
            "start": starts,
            "stop": starts + n_trial * bin_s,
            "condition": [names[c] for c in sim["condition"]],
            "orientation": sim["condition"] * 360.0 / spec.conditions,
        }
    )
    units = pd.DataFrame(
        {
            "unit_id": unit_ids,
            "population": sim["population"].astype(object),
            "loading": sim["loading"],
        }
    )
    truth = {
        "generator": "neurotwin.data.synthetic_spikes",
        "seed": seed,
        "spec": {k: v for k, v in spec.__dict__.items() if k != "couplings"},
        "couplings": [
            {
                "source": p["source"],
                "target": p["target"],
                "amplitude": p["amplitude"],
                "peak_ms": p["peak_ms"],
                "lags_ms": sim["lags_ms"].tolist(),
                "filter": p["filter"].tolist(),
            }
            for p in sim["pairs"]
        ],
        "history_filter": None if sim["history"] is None else sim["history"].tolist(),
        "latent": "per-trial gain ~ N(0, latent_std^2) times each unit's loading "
        f"(units.parquet), in {TRUTH_FILE}",
    }
    meta = {"source": "synthetic spiking GLM", "truth": truth}
    latent = pd.DataFrame({"trial_id": trials["trial_id"], "gain": sim["gain"]})
    return write_session(
        folder,
        units,
        spikes,
        trials,
        meta=meta,
        overwrite=overwrite,
        extra_tables={TRUTH_FILE: latent},
    )


def generate(
    out_dir: str | Path,
    sessions: int = 2,
    seed: int = 0,
    overwrite: bool = False,
    couplings: Mapping[tuple[str, str], tuple[float, float]] | None = None,
    populations: Sequence[str] = ("A", "B"),
    **spec_values,
) -> list[Path]:
    """Write `sessions` simulated sessions (`session_0`, ...) under `out_dir`."""
    pairs = couplings if couplings is not None else DEFAULT_COUPLINGS
    spec = SimulationSpec(
        populations=tuple(populations),
        couplings=tuple((s, t, float(a), float(p)) for (s, t), (a, p) in pairs.items()),
        **spec_values,
    )
    out = []
    for i in range(sessions):
        folder = write_simulated_session(
            Path(out_dir) / f"session_{i}", spec, seed=seed * 1000 + i, overwrite=overwrite
        )
        log.info("wrote %s", folder)
        out.append(folder)
    return out

"""Trials of several spike-table sessions -> batches of binned spike trains, sessions interleaved.

`SpikeData(options)` reads every session, keeps the trials the condition filters select, cuts
each kept trial to the same window (`window_start_ms` after its start, `window_ms` long, with
`history_ms` of history bins before it) and splits the trials of each condition into train /
validation / test (stratified, seeded by `split_seed`, so the split does not change with the
training seed). `batches(split, epoch)` yields `SpikeBatch`es of one session each: training
batches shuffled within each session under (seed, epoch) and the sessions interleaved in the
order `neurotwin.data.loaders.session_order` gives (the video loaders' rule); evaluation batches
in session then start-time order. Counts are binned when a batch is made (`bin_trials`) and
kept sparse (one entry per spike) until `SpikeBatch.counts` assembles them on the device.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from neurotwin.config import Options, option, require
from neurotwin.data.loaders import session_order
from neurotwin.data.spikes.layout import TRIALS_FILE, SpikeSession, find_sessions, read_session
from neurotwin.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class SpikeDataOptions(Options):
    """Which sessions and trials, the time window and bins, the split and the batch size."""

    data_dir: str = option("data/spikes", "folder of session folders in the spike table layout")
    sessions: list[str] | None = option(None, "sessions to use, by folder name (default: all)")
    bin_ms: float = option(1.0, "bin width of the spike trains (ms)")
    window_start_ms: float = option(0.0, "the window starts this long after each trial's start")
    window_ms: float | None = option(
        None, "window length (ms); none: the shortest selected trial (after window_start_ms)"
    )
    history_ms: float = option(
        100.0, "history bins before the window (ms): the spikes history and coupling filters see"
    )
    conditions: list[str] | None = option(None, "keep only trials of these conditions")
    filters: list[str] | None = option(
        None,
        "keep trials whose condition variables match COLUMN=VALUE (several values of one "
        "column: any of them; different columns: all), e.g. orientation=90 contrast=0.8",
    )
    val_fraction: float = option(0.15, "fraction of each condition's trials for validation")
    test_fraction: float = option(0.15, "fraction of each condition's trials for testing")
    split_seed: int = option(0, "seed of the train/validation/test split")
    batch_size: int = option(64, "trials per batch (all from one session)")

    def check(self) -> None:
        require(self.bin_ms > 0, "bin_ms", f"must be > 0, got {self.bin_ms}")
        w = self.window_ms
        require(w is None or w >= self.bin_ms, "window_ms", f"must be >= bin_ms, got {w}")
        require(self.history_ms >= 0, "history_ms", f"must be >= 0, got {self.history_ms}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            require(0 <= value < 1, name, f"must be in [0, 1), got {value}")
        held_out = self.val_fraction + self.test_fraction
        require(held_out < 1, "val_fraction", f"val_fraction + test_fraction must be < 1, got {held_out}")  # fmt: skip
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        for spec in self.filters or []:
            ok = "=" in spec and bool(spec.split("=", 1)[0])
            require(ok, "filters", f"expected COLUMN=VALUE, got {spec!r}")


@dataclass(frozen=True)
class BinnedSpikes:
    """Counts of a batch of trials in sparse form: one entry per spike (trial, unit, bin) of
    a (trials, units, bins) array; bins [0, history) come before the trial window."""

    trial: np.ndarray
    unit: np.ndarray
    bin: np.ndarray
    shape: tuple[int, int, int]
    history: int

    def dense(self) -> np.ndarray:
        """The (trials, units, bins) count array (float32)."""
        n_trials, n_units, n_bins = self.shape
        flat = (self.trial * n_units + self.unit) * n_bins + self.bin
        counts = np.bincount(flat, minlength=n_trials * n_units * n_bins)
        return counts.reshape(self.shape).astype(np.float32)

    def subset(self, start: int, stop: int) -> BinnedSpikes:
        """The spikes of trials start..stop, renumbered from 0."""
        n_trials, n_units, n_bins = self.shape
        start, stop = max(start, 0), min(stop, n_trials)
        keep = (self.trial >= start) & (self.trial < stop)
        shape = (max(stop - start, 0), n_units, n_bins)
        return BinnedSpikes(
            self.trial[keep] - start, self.unit[keep], self.bin[keep], shape, self.history
        )


def bin_trials(
    session: SpikeSession,
    window_starts: np.ndarray,
    bin_s: float,
    n_bins: int,
    n_history: int,
) -> BinnedSpikes:
    """Spike counts in `n_history + n_bins` bins of `bin_s` seconds per trial: bin `n_history + k`
    is [w + k * bin_s, w + (k + 1) * bin_s) for the trial's window start w (so the history bins
    lie just before the window). A spike's bin is floor((t - w) / bin_s)."""
    window_starts = np.asarray(window_starts, dtype=np.float64).reshape(-1)
    total = n_history + n_bins
    lo = np.searchsorted(session.times, window_starts - (n_history + 1) * bin_s, side="left")
    hi = np.searchsorted(session.times, window_starts + (n_bins + 1) * bin_s, side="left")
    lengths = hi - lo
    trial = np.repeat(np.arange(window_starts.size), lengths)
    # indices lo[k] .. hi[k]-1 of every trial, concatenated
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = np.repeat(lo, lengths) + offsets
    rel = (session.times[rows] - window_starts[trial]) / bin_s
    idx = np.floor(rel).astype(np.int64) + n_history
    keep = (idx >= 0) & (idx < total)
    return BinnedSpikes(
        trial=trial[keep].astype(np.int64),
        unit=session.unit_index[rows[keep]],
        bin=idx[keep],
        shape=(int(window_starts.size), session.n_units, total),
        history=n_history,
    )


@dataclass
class SpikeBatch:
    """Trials of one session: ids, condition index (into the session's condition list) and the
    binned counts (history bins first)."""

    session: str
    trial_ids: np.ndarray
    condition: np.ndarray
    spikes: BinnedSpikes

    def __len__(self) -> int:
        return int(self.trial_ids.size)

    def subset(self, start: int, stop: int) -> SpikeBatch:
        """Trials start..stop of the batch (a micro-batch)."""
        return SpikeBatch(
            self.session,
            self.trial_ids[start:stop],
            self.condition[start:stop],
            self.spikes.subset(start, stop),
        )

    def counts(self, device: torch.device | str = "cpu", dtype=torch.float32) -> torch.Tensor:
        """(trials, units, history + window bins) counts, assembled on `device`."""
        s = self.spikes
        n_trials, n_units, n_bins = s.shape
        flat = torch.from_numpy((s.trial * n_units + s.unit) * n_bins + s.bin).to(device)
        counts = torch.bincount(flat, minlength=n_trials * n_units * n_bins)
        return counts.view(n_trials, n_units, n_bins).to(dtype)

    def condition_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.from_numpy(self.condition.astype(np.int64)).to(device)


@dataclass
class SessionTrials:
    """A session and its selected trials (`split`, `condition_index`, `window_start` columns)."""

    session: SpikeSession
    trials: pd.DataFrame
    conditions: list[str]

    def rows(self, split: str) -> pd.DataFrame:
        return self.trials[self.trials["split"] == split]


def _matches(trials: pd.DataFrame, filters: Sequence[str], where: str) -> np.ndarray:
    wanted: dict[str, list[str]] = {}
    for spec in filters:
        column, value = spec.split("=", 1)
        wanted.setdefault(column.strip(), []).append(value.strip())
    keep = np.ones(len(trials), bool)
    for column, values in wanted.items():
        if column not in trials.columns:
            raise ConfigError(
                f"--filters: {where} has no column {column!r}; condition variables: "
                f"{[c for c in trials.columns if c not in ('trial_id', 'start', 'stop')]}"
            )
        col = trials[column]
        hit = np.zeros(len(trials), bool)
        for value in values:
            if pd.api.types.is_numeric_dtype(col.dtype):
                try:
                    hit |= np.isclose(col.to_numpy(np.float64), float(value))
                except ValueError:
                    raise ConfigError(
                        f"--filters: {column} is numeric in {where}, got {value!r}"
                    ) from None
            else:
                hit |= col.astype(str).to_numpy() == value
        keep &= hit
    return keep


def split_trials(
    conditions: np.ndarray, val_fraction: float, test_fraction: float, seed: Sequence[int]
) -> np.ndarray:
    """A split name per trial, stratified by condition: of each condition's n trials (in a
    seeded random order) round(n * test) go to test, round(n * val) to validation, the rest
    (at least one) to train."""
    out = np.empty(conditions.size, dtype=object)
    rng = np.random.default_rng(list(seed))
    for condition in sorted(set(conditions.tolist())):
        idx = np.flatnonzero(conditions == condition)
        idx = idx[rng.permutation(idx.size)]
        n_test = min(int(round(idx.size * test_fraction)), idx.size - 1)
        n_val = min(int(round(idx.size * val_fraction)), idx.size - 1 - n_test)
        out[idx[:n_test]] = "test"
        out[idx[n_test : n_test + n_val]] = "validation"
        out[idx[n_test + n_val :]] = "train"
    return out


class SpikeData:
    """Every selected session's trials, their split, and batches of binned counts."""

    def __init__(self, options: SpikeDataOptions):
        self.options = options
        paths = find_sessions(options.data_dir, options.sessions)
        sessions = [read_session(p) for p in paths]
        self.bin_s = options.bin_ms / 1000.0
        selected = {s.name: self._select(s) for s in sessions}
        durations = [
            float((t["stop"] - t["start"]).min()) - options.window_start_ms / 1000.0
            for t in selected.values()
        ]
        window_s = options.window_ms / 1000.0 if options.window_ms else min(durations)
        self.n_bins = int(math.floor(window_s / self.bin_s + 1e-9))
        if self.n_bins < 1:
            raise ConfigError(f"--window_ms: the window holds no {options.bin_ms} ms bin")
        self.n_history = int(math.ceil(options.history_ms / options.bin_ms - 1e-9))
        self.window_ms = self.n_bins * options.bin_ms
        self.sessions: dict[str, SessionTrials] = {}
        for session in sessions:
            trials = self._cut(session, selected[session.name])
            conditions = sorted(trials["condition"].unique().tolist())
            trials["condition_index"] = trials["condition"].map(
                {c: k for k, c in enumerate(conditions)}
            )
            seed = (options.split_seed, zlib.crc32(session.name.encode()))
            trials["split"] = split_trials(
                trials["condition"].to_numpy(object),
                options.val_fraction,
                options.test_fraction,
                seed,
            )
            self.sessions[session.name] = SessionTrials(session, trials, conditions)
        log.info(
            "spike data: %d session(s), %d trials, window %.1f ms in %d bins of %g ms, "
            "%d history bins",
            len(self.sessions),
            sum(len(s.trials) for s in self.sessions.values()),
            self.window_ms,
            self.n_bins,
            options.bin_ms,
            self.n_history,
        )

    # -- selection -------------------------------------------------------------------------------
    def _select(self, session: SpikeSession) -> pd.DataFrame:
        where = str(session.path / TRIALS_FILE)
        trials = session.trials
        keep = np.ones(len(trials), bool)
        if self.options.conditions:
            keep &= trials["condition"].isin(self.options.conditions).to_numpy()
        if self.options.filters:
            keep &= _matches(trials, self.options.filters, where)
        if not keep.any():
            raise ConfigError(
                f"--conditions, --filters: no trial of {where} passes them (conditions="
                f"{self.options.conditions}, filters={self.options.filters}); conditions "
                f"there: {sorted(trials['condition'].unique().tolist())[:20]}"
            )
        return trials[keep]

    def _cut(self, session: SpikeSession, trials: pd.DataFrame) -> pd.DataFrame:
        """Trials long enough for the window, with their window start times."""
        start = self.options.window_start_ms / 1000.0
        needed = start + self.n_bins * self.bin_s
        long_enough = (trials["stop"] - trials["start"]).to_numpy() >= needed - 1e-9
        if not long_enough.all():
            log.info(
                "%s: %d of %d trials are shorter than the window (%.1f ms): left out",
                session.name,
                int((~long_enough).sum()),
                len(trials),
                needed * 1000,
            )
        trials = trials[long_enough].copy().reset_index(drop=True)
        if trials.empty:
            raise ConfigError(
                f"--window_ms: no trial of {session.name} lasts {needed * 1000:.1f} ms"
            )
        trials["window_start"] = trials["start"].to_numpy() + start
        return trials

    # -- what models need ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.sessions)

    def specs(self) -> dict[str, dict]:
        """{session: populations, sizes, conditions, unit_ids} for building per-session parts."""
        return {
            name: {
                "populations": s.session.populations,
                "sizes": s.session.population_sizes,
                "conditions": list(s.conditions),
                "unit_ids": s.session.unit_ids.tolist(),
            }
            for name, s in self.sessions.items()
        }

    def mean_counts(self, split: str = "train") -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{session: ((units, conditions, window bins) mean count per bin over the split's
        trials of each condition (the PSTH), (conditions,) trials)}."""
        out = {}
        for name, s in self.sessions.items():
            sums = np.zeros((len(s.conditions), s.session.n_units, self.n_bins))
            n = np.zeros(len(s.conditions))
            for batch in self._batches_of(name, s.rows(split), self.options.batch_size):
                np.add.at(sums, batch.condition, batch.spikes.dense()[:, :, self.n_history :])
                np.add.at(n, batch.condition, 1)
            psth = sums / np.maximum(n, 1)[:, None, None]
            out[name] = (psth.transpose(1, 0, 2), n)
        return out

    # -- batches ---------------------------------------------------------------------------------
    def _batches_of(self, name: str, rows: pd.DataFrame, size: int) -> Iterator[SpikeBatch]:
        session = self.sessions[name].session
        for i in range(0, len(rows), size):
            chunk = rows.iloc[i : i + size]
            yield SpikeBatch(
                session=name,
                trial_ids=chunk["trial_id"].to_numpy(np.int64),
                condition=chunk["condition_index"].to_numpy(np.int64),
                spikes=bin_trials(
                    session,
                    chunk["window_start"].to_numpy(),
                    self.bin_s,
                    self.n_bins,
                    self.n_history,
                ),
            )

    def n_batches(self, split: str) -> int:
        size = self.options.batch_size
        return sum(math.ceil(len(s.rows(split)) / size) for s in self.sessions.values())

    def n_trials(self, split: str) -> int:
        return sum(len(s.rows(split)) for s in self.sessions.values())

    def batches(self, split: str, epoch: int | None = None, seed: int = 0) -> Iterator[SpikeBatch]:
        """Batches of `split`. With `epoch` (training): trials shuffled within each session and
        sessions interleaved, both a function of (seed, epoch) only; else in order."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        size = self.options.batch_size
        if epoch is None:
            for name in self.sessions:
                yield from self._batches_of(name, self.sessions[name].rows(split), size)
            return
        pending: dict[str, Iterator[SpikeBatch]] = {}
        counts = {}
        for i, (name, s) in enumerate(self.sessions.items()):
            rows = s.rows(split)
            order = np.random.default_rng([seed, epoch, i]).permutation(len(rows))
            pending[name] = self._batches_of(name, rows.iloc[order], size)
            counts[name] = math.ceil(len(rows) / size)
        for name in session_order(counts, seed, epoch):
            yield next(pending[name])

"""Running an analysis: the neurons and sessions chosen, batched presentation of stimuli with a
progress bar, tables of other analyses it needs (computed first when missing), and writing
RUN/analysis/NAME/ ({session}.parquet, {session}.npz, {session}_*.png, summary.json)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotwin.analysis import output
from neurotwin.analysis.registry import ANALYSES, Analysis
from neurotwin.analysis.stimuli import CONVENTIONS
from neurotwin.analysis.subject import Subject
from neurotwin.errors import ConfigError, DataFormatError

log = logging.getLogger("neurotwin.analysis")

ANALYSIS_DIR = "analysis"


@dataclass
class SessionResult:
    """What one analysis found in one session: a table (one row per neuron; `neuron` and
    `unit_id` are added), arrays for the npz, figures (name -> matplotlib Figure), population
    statistics for summary.json, and extra files (name -> writer of that path)."""

    table: Any  # pandas.DataFrame
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Callable[[Path], Any]] = field(default_factory=dict)
    neurons: np.ndarray | None = None  # the neurons the rows are for (default: all analysed)


class Context:
    """The subject probed, where outputs go, which sessions and neurons, and shared helpers."""

    def __init__(
        self,
        subject: Subject,
        output_dir: str | Path,
        sessions: Sequence[str] | None = None,
        neurons: Sequence[int] | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> None:
        self.subject = subject
        self.output_dir = Path(output_dir)
        self.sessions = list(sessions) if sessions else list(subject.sessions)
        for name in self.sessions:
            subject.probe(name)  # unknown names: ConfigError listing the known ones
        self.neuron_request = None if neurons is None else [int(n) for n in neurons]
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size or 8
        self.progress = progress
        self._running: list[str] = []

    # -- selections --------------------------------------------------------------------------
    def neurons(self, session: str) -> np.ndarray:
        """Indices of the neurons analysed in `session` (all unless --neurons)."""
        n = self.subject.probe(session).n_neurons
        if self.neuron_request is None:
            return np.arange(n)
        idx = np.asarray(self.neuron_request, dtype=np.int64)
        bad = idx[(idx < 0) | (idx >= n)]
        if len(bad):
            raise ConfigError(f"--neurons: {bad.tolist()} out of range for {session} ({n} neurons)")
        return np.unique(idx)

    def folder(self, name: str) -> Path:
        return self.output_dir / ANALYSIS_DIR / name

    # -- presentation ------------------------------------------------------------------------
    def present(
        self,
        session: str,
        n_videos: int,
        make: Callable[[int, int], torch.Tensor],
        reduce: Callable[[torch.Tensor, int, int], torch.Tensor | None],
        desc: str,
        batch_size: int | None = None,
    ) -> torch.Tensor | None:
        """Show videos make(start, stop) -> (b, T, H, W) in grey levels, in batches, and collect
        reduce(responses (b, N_selected, T), start, stop) over batches (concatenated on the CPU;
        None when reduce keeps its own sums)."""
        from tqdm.auto import tqdm

        idx = torch.as_tensor(self.neurons(session), device=self.subject.device)
        every = len(idx) == self.subject.probe(session).n_neurons
        step = batch_size or self.batch_size
        parts = []
        bar = tqdm(total=n_videos, desc=desc, unit="video", disable=self._bar_off(), leave=False)
        with torch.inference_mode(), bar:
            for start in range(0, n_videos, step):
                stop = min(start + step, n_videos)
                responses = self.subject.respond(session, make(start, stop))
                part = reduce(responses if every else responses[:, idx], start, stop)
                if part is not None:
                    parts.append(part.float().cpu())
                bar.update(stop - start)
        return torch.cat(parts) if parts else None

    def _bar_off(self) -> bool | None:
        return None if self.progress is None else not self.progress  # None: terminals only

    # -- other analyses' tables ----------------------------------------------------------------
    def table(self, name: str, session: str):
        """The table of analysis `name` for `session` with a row per analysed neuron: read from
        RUN/analysis/NAME/ when it is there and covers them, else computed now (default
        options) and written there."""
        import pandas as pd

        path = self.folder(name) / f"{session}.parquet"
        want = self.subject.probe(session).unit_ids[self.neurons(session)]
        if path.is_file():
            table = pd.read_parquet(path)
            if "unit_id" not in table:
                raise DataFormatError(path, "no unit_id column", "unit_id")
            if set(want.tolist()) <= set(table["unit_id"].tolist()):
                return table.set_index("unit_id").loc[want].reset_index()
            log.info("%s lacks some of the neurons asked for: computing %s again", path, name)
        if name in self._running:
            raise ConfigError(f"analysis {name!r} needs itself ({' -> '.join(self._running)})")
        log.info(
            "%s needs the %s table of %s: computing it first (neurotwin-analyze %s)",
            self._running[-1] if self._running else "this analysis",
            name,
            session,
            name,
        )
        cls = ANALYSES.get(name)
        self.run(cls(cls.Options()), sessions=[session])
        return pd.read_parquet(path).set_index("unit_id").loc[want].reset_index()

    # -- running and writing ---------------------------------------------------------------------
    def run(self, analysis: Analysis, sessions: Sequence[str] | None = None) -> dict[str, Any]:
        """Run `analysis` on each session, write its outputs, return the summary."""
        name = analysis.registered_name
        folder = self.folder(name)
        sessions = list(sessions) if sessions else self.sessions
        self._running.append(name)
        results: dict[str, SessionResult] = {}
        start = time.perf_counter()
        try:
            for session in sessions:
                t0 = time.perf_counter()
                result = analysis.run_session(self, session)
                self._write_session(folder, session, result)
                results[session] = result
                log.info("%s %s: %.1f s", name, session, time.perf_counter() - t0)
        finally:
            self._running.pop()
        summary = self._summary(analysis, results, time.perf_counter() - start)
        output.write_json(summary, folder / "summary.json")
        log.info("%s: outputs in %s", name, folder)
        return summary

    def _write_session(self, folder: Path, session: str, result: SessionResult) -> None:
        probe = self.subject.probe(session)
        idx = self.neurons(session) if result.neurons is None else np.asarray(result.neurons)
        table = result.table.copy()
        if len(table) != len(idx):
            raise RuntimeError(f"table of {len(table)} rows for {len(idx)} neurons")
        table.insert(0, "unit_id", probe.unit_ids[idx])
        table.insert(0, "neuron", idx)
        output.write_parquet(table, folder / f"{session}.parquet")
        arrays = {"neuron": idx, "unit_id": probe.unit_ids[idx], **result.arrays}
        output.write_npz(arrays, folder / f"{session}.npz")
        for fig_name, fig in result.figures.items():
            output.write_png(fig, folder / f"{session}_{fig_name}.png")
        for file_name, write in result.files.items():
            write(folder / file_name)
        result.table = table

    def _summary(
        self, analysis: Analysis, results: dict[str, SessionResult], seconds: float
    ) -> dict[str, Any]:
        s = self.subject
        held = {
            name: {
                "luminance_range": list(s.probe(name).luminance),
                "grey": s.probe(name).grey,
                "frame_rate_hz": s.probe(name).frame_rate,
                "behavior_held": s.probe(name).behavior.tolist(),
                "pupil_center_held": s.probe(name).pupil_center.tolist(),
                "frame_shape": list(s.probe(name).frame_shape),
                "neurons": len(self.neurons(name)),
            }
            for name in results
        }
        summary = {
            "analysis": analysis.registered_name,
            "description": analysis.description,
            "parameters": analysis.parameters(),
            "run": {
                "subject": s.kind,
                "source": s.source,
                "device": str(s.device),
                "bf16_autocast": s.autocast,
                "batch_size": self.batch_size,
                "neurons": self.neuron_request,
                **s.info,
            },
            "conventions": {**CONVENTIONS, "sessions": held},
            "sessions": {name: r.summary for name, r in results.items()},
            "population": analysis.summarise(results),
            "seconds": seconds,
        }
        return self._merge_previous(summary)

    def _merge_previous(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Keep the entries of sessions run earlier with the same parameters and subject."""
        path = self.folder(summary["analysis"]) / "summary.json"
        if not path.is_file():
            return summary
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            return summary
        same = old.get("parameters") == output._plain(summary["parameters"])
        same = same and old.get("run", {}).get("source") == summary["run"]["source"]
        if not same:
            return summary
        for key in ("sessions",):
            summary[key] = {**old.get(key, {}), **summary[key]}
        summary["conventions"]["sessions"] = {
            **old.get("conventions", {}).get("sessions", {}),
            **summary["conventions"]["sessions"],
        }
        return summary


def build_options(cls: type, values: dict[str, Any] | None = None) -> Any:
    """The options dataclass `cls` from keyword values (ConfigError on unknown names)."""
    from neurotwin.config import convert

    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} of {cls.__name__}; known: {sorted(fields)}")
    import typing

    hints = typing.get_type_hints(cls)
    return cls(**{k: convert(v, hints[k], f"--{k}") for k, v in values.items()})

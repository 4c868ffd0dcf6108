"""What a trained spike model says: scores, coupling filters, latents, PSTHs; written to the run.

`write_outputs(task, output_dir, best_epoch)` makes one pass over every split and writes,
each atomically (neurotwin.files: a temporary name, then a rename):

- couplings.parquet: session, source, target, lag_ms, value, se, lower, upper: the change of a
  target unit's log rate per spike of a source unit at that lag, averaged over source and
  target units; se from the Fisher information of the training trials' Poisson likelihood
  (`neurotwin.models.spikes.information`: target time terms profiled out, penalties included);
  lower/upper = value -/+ 1.96 se;
- coupling_units.parquet: session, source, target, unit_id (target unit), lag_ms, value;
- latents.parquet (models with a VAE): session, trial_id, split, trial_index (order of the trial
  in its session), condition, z0, z1, ... (posterior means);
- metrics.json: bits/spike relative to a homogeneous rate per split, session and population;
  the best (validation) epoch and the epoch whose weights made the outputs;
- figures/: couplings_<session>.png, psth_<session>.png, latents_<session>.png
  (neurotwin.models.spikes.figures).

`load_trained(run_dir, ...)` rebuilds a run's task from its config.yaml with the weights of its
best (or, for runs with `restore_best false`, last) checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurotwin import files
from neurotwin.config import from_dict, read_yaml
from neurotwin.data.spikes.loader import SPLITS
from neurotwin.files import write_parquet, write_text
from neurotwin.metrics import PoissonScores, pooled_bits
from neurotwin.models.spikes import figures
from neurotwin.models.spikes.information import CouplingInformation
from neurotwin.run import RunFolder
from neurotwin.training.checkpoint import load_checkpoint
from neurotwin.training.spikes import SpikeConfig, SpikeTask, runtime_for

log = logging.getLogger(__name__)

COUPLINGS_FILE = "couplings.parquet"
COUPLING_UNITS_FILE = "coupling_units.parquet"
LATENTS_FILE = "latents.parquet"
METRICS_FILE = "metrics.json"
FIGURES_DIR = "figures"
Z = 1.959963984540054  # two-sided 95% normal quantile


def write_png(figure: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it."""
    files.write_png(figure, path)
    figures.pyplot().close(figure)
    return path


def load_trained(
    run_dir: str | Path,
    checkpoint: str | None = None,
    data_dir: str | None = None,
    device: str | None = None,
) -> tuple[SpikeTask, dict[str, Any]]:
    """The task of a spike run (its config.yaml; `data_dir`, `device` replaced when given)
    with the weights of `checkpoint` (best | last | a file; default: best, or last when the run
    kept its last weights or no epoch improved). Returns the task and the checkpoint."""
    run = RunFolder(run_dir)
    if run.config_file.is_file():
        values, source = read_yaml(run.config_file), str(run.config_file)
    else:
        values, source = load_checkpoint(run.checkpoint("last"))["config"], "checkpoint [config]"
    if checkpoint is None:
        keep_best = values.get("train", {}).get("restore_best", True)
        checkpoint = "best" if keep_best and (run.checkpoints / "best.pt").is_file() else "last"
    path = run.checkpoint(checkpoint)
    if data_dir:
        values.setdefault("data", {})["data_dir"] = data_dir
    run_values = values.setdefault("run", {})
    if device is not None:
        run_values["device"] = device
    run_values["restore"] = None
    config = from_dict(values, source, SpikeConfig)
    task = SpikeTask(config)
    task.build(runtime_for(config))
    state = load_checkpoint(path, map_location=task.device)
    task.load_weights(state, str(path))
    return task, state


class _Pass:
    """Everything one pass over the data gathers per session."""

    def __init__(self, task):
        self.task = task
        data = task.data
        self.scores = {
            s: {n: PoissonScores(task.homogeneous[n]) for n in data.names} for s in SPLITS
        }
        self.psth = {
            name: {
                "data": np.zeros((len(st.conditions), st.session.n_units, data.n_bins)),
                "model": np.zeros((len(st.conditions), st.session.n_units, data.n_bins)),
                "trials": np.zeros(len(st.conditions)),
            }
            for name, st in data.sessions.items()
        }
        self.latents: list[pd.DataFrame] = []
        model = task.model
        self.information: dict[str, CouplingInformation] = {}
        if model.coupling is not None:
            for name, spec in model.specs.items():
                key = model.keys[name]
                if not model.coupling.pairs[key]:
                    continue
                rows = list(spec.slices().values())
                targets = [rows[p] for _, p in model.coupling.pairs[key]]
                self.information[name] = CouplingInformation(
                    model.coupling, model.time, key, len(spec.conditions), targets
                )

    @torch.no_grad()
    def run(self) -> None:
        task = self.task
        task.model.eval()
        h = task.shape.n_history
        for split in SPLITS:
            for batch in task.data.batches(split):
                counts, out = task.forward(task.model, batch)
                y = counts[:, :, h:]
                self.scores[split][batch.session].add(y, out.log_rate)
                p = self.psth[batch.session]
                np.add.at(p["data"], batch.condition, y.double().cpu().numpy())
                np.add.at(p["model"], batch.condition, out.log_rate.double().exp().cpu().numpy())
                np.add.at(p["trials"], batch.condition, 1)
                if out.mu is not None:
                    self._add_latents(batch, split, out.mu)
                if split == "train" and batch.session in self.information:
                    rate = out.log_rate.exp()
                    condition = batch.condition_tensor(task.device)
                    self.information[batch.session].add(counts, rate, condition)

    def _add_latents(self, batch, split: str, mu: torch.Tensor) -> None:
        z = mu.double().cpu().numpy()
        st = self.task.data.sessions[batch.session]
        table = pd.DataFrame(
            {"session": batch.session, "trial_id": batch.trial_ids, "split": split}
        )
        table["condition"] = [st.conditions[c] for c in batch.condition]
        for i in range(z.shape[1]):
            table[f"z{i}"] = z[:, i]
        self.latents.append(table)


def coupling_tables(
    task, information: dict[str, CouplingInformation]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(couplings, coupling_units) tables of every session (empty without coupling)."""
    coupling = task.model.coupling
    columns = ["session", "source", "target", "lag_ms", "value", "se", "lower", "upper"]
    unit_columns = ["session", "source", "target", "unit_id", "lag_ms", "value"]
    rows, unit_rows = [], []
    if coupling is None:
        return pd.DataFrame(rows, columns=columns), pd.DataFrame(unit_rows, columns=unit_columns)
    glm = task.config.model.glm
    lags = task.shape.bin_ms * np.arange(1, coupling.basis.shape[0] + 1)
    for name, info in information.items():
        spec, key = task.model.specs[name], task.model.keys[name]
        mean = coupling.mean_filters(key)[0].double().cpu().numpy()
        se = info.standard_errors(glm.l2, glm.smoothness).numpy()
        units = coupling.unit_filters(key).double().cpu().numpy()  # (N, pairs, L)
        unit_ids = task.data.sessions[name].session.unit_ids
        slices = spec.slices()
        for k, (q, p) in enumerate(coupling.pairs[key]):
            source, target = spec.populations[q], spec.populations[p]
            for i, lag in enumerate(lags):
                v, e = mean[k, i], se[k, i]
                rows.append((name, source, target, lag, v, e, v - Z * e, v + Z * e))
            for n in range(slices[target].start, slices[target].stop):
                for i, lag in enumerate(lags):
                    unit_rows.append((name, source, target, int(unit_ids[n]), lag, units[n, k, i]))
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(unit_rows, columns=unit_columns)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def scores_summary(task, scores: dict[str, dict[str, PoissonScores]]) -> dict[str, Any]:
    """{split: {"all", "spikes", "sessions": {s: {"all", "populations": {p: bits}}}}}."""
    out = {}
    for split, by_session in scores.items():
        sessions = {}
        for name, s in by_session.items():
            spec = task.model.specs[name]
            sessions[name] = {
                "all": _finite(s.bits()),
                "populations": {p: _finite(s.bits(sl)) for p, sl in spec.slices().items()},
            }
        out[split] = {
            "all": _finite(pooled_bits(by_session)),
            "spikes": int(sum(s.total()[1] for s in by_session.values())),
            "trials": task.data.n_trials(split),
            "sessions": sessions,
        }
    return out


def scores_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """metrics.json's bits/spike as rows (split, session, population), "all" for pooled."""
    rows = []
    for split, scores in metrics["bits_per_spike"].items():
        rows.append((split, "all", "all", scores["all"]))
        for session, values in scores["sessions"].items():
            rows.append((split, session, "all", values["all"]))
            for population, bits in values["populations"].items():
                rows.append((split, session, population, bits))
    table = pd.DataFrame(rows, columns=["split", "session", "population", "bits_per_spike"])
    return table.pivot_table(
        index=["session", "population"], columns="split", values="bits_per_spike", sort=False
    )[list(metrics["bits_per_spike"])]


def _latent_columns(task) -> dict[str, dict[str, str]]:
    """{session: {z column: "population:dimension"}} ("all:d" for one shared latent)."""
    if task.model.latent is None:
        return {}
    vae = task.config.model.vae
    d = vae.latent_dim
    out = {}
    for name, spec in task.model.specs.items():
        groups = spec.populations if vae.per_population else ("all",)
        out[name] = {
            f"z{g * d + i}": f"{pop}:{i}" for g, pop in enumerate(groups) for i in range(d)
        }
    return out


def write_outputs(
    task: SpikeTask,
    output_dir: str | Path,
    best_epoch: int | None = None,
    weights_epoch: int | None = None,
) -> dict[str, Any]:
    """Write every output of a trained task into `output_dir`; returns metrics.json's content."""
    out = Path(output_dir)
    gathered = _Pass(task)
    gathered.run()
    couplings, per_unit = coupling_tables(task, gathered.information)
    written = []
    if not couplings.empty:
        written += [write_parquet(couplings, out / COUPLINGS_FILE)]
        written += [write_parquet(per_unit, out / COUPLING_UNITS_FILE)]
    latents = None
    if gathered.latents:
        latents = pd.concat(gathered.latents, ignore_index=True)
        latents.insert(3, "trial_index", _trial_index(task, latents))
        latents = latents.sort_values(["session", "trial_index"]).reset_index(drop=True)
        written.append(write_parquet(latents, out / LATENTS_FILE))
    metrics = {
        "model": task.config.model.name,
        "best_epoch": best_epoch,
        "weights_epoch": best_epoch if weights_epoch is None else weights_epoch,
        "epochs_trained": task.epoch,
        "bin_ms": task.shape.bin_ms,
        "window_ms": task.data.window_ms,
        "history_bins": task.shape.n_history,
        "baseline": "homogeneous Poisson rate per unit, from the training trials",
        "bits_per_spike": scores_summary(task, gathered.scores),
        "latent_columns": _latent_columns(task),
    }
    written.append(write_text(out / METRICS_FILE, json.dumps(metrics, indent=2, allow_nan=True)))
    written += _figures(task, gathered, couplings, latents, out / FIGURES_DIR)
    for path in written:
        log.info("wrote %s", path)
    return metrics


def _figures(
    task: SpikeTask,
    gathered: _Pass,
    couplings: pd.DataFrame,
    latents: pd.DataFrame | None,
    folder: Path,
) -> list[Path]:
    """Per session: its coupling filters, PSTHs of data and model, latents by trial index."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in task.data.names:
        spec = task.model.specs[name]
        if not couplings.empty:
            mine = couplings[couplings["session"] == name]
            figure = figures.coupling_figure(mine, spec.populations, name)
            written.append(write_png(figure, folder / f"couplings_{name}.png"))
        figure = figures.psth_figure(gathered.psth[name], spec, task.shape.bin_ms, name)
        written.append(write_png(figure, folder / f"psth_{name}.png"))
        if latents is not None:
            figure = figures.latent_figure(latents[latents["session"] == name], name)
            written.append(write_png(figure, folder / f"latents_{name}.png"))
    return written


def _trial_index(task, latents: pd.DataFrame) -> np.ndarray:
    index = np.zeros(len(latents), dtype=np.int64)
    for name, st in task.data.sessions.items():
        order = {int(t): i for i, t in enumerate(st.trials.sort_values("start")["trial_id"])}
        rows = latents["session"] == name
        index[rows.to_numpy()] = [order[int(t)] for t in latents.loc[rows, "trial_id"]]
    return index

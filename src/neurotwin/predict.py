"""Turn a trained run into predictions and Sensorium metrics: `predict_run(output_dir, ...)`.

Inputs: the run folder written by training (`config.yaml`, `checkpoints/{best,last}.pt`) and the data
folder named in its config (or `data_dir`). Every output goes to `OUTPUT_DIR/predictions/`, written
into a temporary folder beside it and renamed into place when everything succeeded (a failed run
leaves no partial folder and keeps an older `predictions/` as it was):

    predictions/
      metrics.json                 {"sessions": {S: {TIER: {...}}}, "mean": {TIER: {...}}}
      metrics.csv                  one row per (session, tier), then one row per tier with session=mean
      {session}/{tier}.npz         predictions of every trial of the tier, see `NPZ_DOC`
      submission_{tier}.csv        test tiers: the Sensorium 2023 submission layout, see `write_submission`

Metric keys per session and tier: single_trial_correlation, correlation_to_average, feve (null
without repeats), normalized_correlation (null without repeats), n_trials, n_neurons; for synthetic
sessions also ceiling_correlation (single-trial correlation of the noiseless rates with the
responses) and fraction_of_ceiling (the model's single-trial correlation / ceiling), null otherwise.
Tiers whose responses are hidden get predictions and null metrics. Definitions: `neurotwin.metrics`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from neurotwin import metrics as M
from neurotwin.config import Config
from neurotwin.data import loaders, native
from neurotwin.data.dataset import SessionDataset
from neurotwin.errors import CheckpointError, ConfigError, DataFormatError
from neurotwin.files import staged_folder
from neurotwin.models.model import build_model
from neurotwin.run import (
    RunFolder,
    autocast,
    autocast_enabled,
    device_available,
    pick_device,
)
from neurotwin.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

METRIC_KEYS = (
    "single_trial_correlation",
    "correlation_to_average",
    "feve",
    "normalized_correlation",
    "ceiling_correlation",
    "fraction_of_ceiling",
)
COUNT_KEYS = ("n_trials", "n_neurons")
SKIP_TIERS = ("none",)  # tiers never predicted by default (trials in no split)


# ------------------------------------------------------------------------------------------------
# Loading the run
# ------------------------------------------------------------------------------------------------


def load_run(run_dir: Path, checkpoint: str | os.PathLike) -> tuple[Config, dict[str, Any], Path]:
    """The run's resolved config and its checkpoint (weights only)."""
    run = RunFolder(run_dir)
    config = run.load_config()
    path = run.checkpoint(checkpoint)
    state = load_checkpoint(path)
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: 'model' is not a state dict")
    return config, state, path


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Load a state dict strictly; CheckpointError naming the keys and shapes that differ.

    Prefixes that DistributedDataParallel ("module.") and torch.compile ("_orig_mod.") add to the
    names are removed first."""
    weights = {_plain_key(k): v for k, v in weights.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:

        def brief(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys {brief(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {brief(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch {brief(shapes)}")
        raise CheckpointError(
            f"{path}: checkpoint does not match the model built from config.yaml "
            f"(different model config?): " + "; ".join(parts)
        )
    model.load_state_dict(weights, strict=True)


def _plain_key(key: str) -> str:
    key = key[len("module.") :] if key.startswith("module.") else key
    return key.replace("_orig_mod.", "")


def choose_device(device: str | None, run_device: str) -> torch.device:
    """`device` (an error if this machine lacks it), else the run's device where this machine
    has it, else the best available."""
    if not device and run_device and not device_available(run_device):
        log.warning("the run's device %r is not available here; choosing another", run_device)
        run_device = ""
    return pick_device(device or run_device)


# ------------------------------------------------------------------------------------------------
# Results of one session and tier
# ------------------------------------------------------------------------------------------------


@dataclass
class TierResult:
    """What predicting one session and tier gave: ids, frame counts, metrics, and the file."""

    session: str
    tier: str
    unit_ids: np.ndarray
    trial_ids: np.ndarray
    frame_counts: np.ndarray  # valid frames of each trial
    first_frames: np.ndarray  # first frame the model predicted in each trial (T - T')
    clip_keys: list[str]  # hash of each trial's valid video frames (equal: same clip)
    hidden: bool  # responses withheld: no metrics
    metrics: dict[str, Any]
    npz: Path

    @property
    def clip_ids(self) -> np.ndarray:
        keys = {k: i for i, k in enumerate(dict.fromkeys(self.clip_keys))}
        return np.asarray([keys[k] for k in self.clip_keys], dtype=np.int64)


def _clean(v: Any) -> Any:
    """JSON-ready: floats (NaN -> None), ints."""
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    v = float(v)
    return None if math.isnan(v) else v


def mean_over_sessions(per_session: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per tier: the mean of each metric over sessions that have it; counts are summed."""
    tiers: list[str] = []
    for by_tier in per_session.values():
        tiers += [t for t in by_tier if t not in tiers]
    out: dict[str, Any] = {}
    for tier in tiers:
        rows = [by_tier[tier] for by_tier in per_session.values() if tier in by_tier]
        entry: dict[str, Any] = {}
        for k in METRIC_KEYS:
            values = [r[k] for r in rows if r.get(k) is not None]
            entry[k] = float(np.mean(values)) if values else None
        for k in COUNT_KEYS:
            entry[k] = int(sum(r[k] for r in rows))
        out[tier] = entry
    return out


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


NPZ_DOC = """predictions (n_trials, N, T_max) float32 in original response units, NaN past each
trial's frame count (and before the model's first output frame, if it predicts fewer frames than
it sees); trial_ids (n_trials,) int64; unit_ids (N,); frame_counts (n_trials,) int64; clip_ids
(n_trials,) int64 (trials with equal clip_ids showed the same movie); session, tier (str)."""


def write_npz(path: Path, predictions: Path, result: TierResult) -> None:
    """An .npz of `predictions` (an .npy file, moved into the archive) and the ids (NPZ_DOC)."""
    arrays = {
        "trial_ids": np.asarray(result.trial_ids, dtype=np.int64),
        "unit_ids": np.asarray(result.unit_ids),
        "frame_counts": np.asarray(result.frame_counts, dtype=np.int64),
        "clip_ids": result.clip_ids,
        "session": np.asarray(result.session),
        "tier": np.asarray(result.tier),
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.write(predictions, arcname="predictions.npy")
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, value, allow_pickle=False)
    predictions.unlink()


SUBMISSION_COLUMNS = ("mouse", "trial_indices", "prediction", "neuron_ids")


def write_submission(path: Path, results: Sequence[TierResult], skip: int = M.SKIP_FRAMES):
    """Sensorium 2023 submission layout (ecker-lab/sensorium_2023 README and
    `sensorium/utility/submission.py`), as CSV: one row per trial with `mouse` (session folder
    name), `trial_indices` (the trial's integer index), `prediction` (JSON list of N lists: the
    last T - 50 frames of the trial, in original units) and `neuron_ids` (JSON list of unit ids,
    the order of the prediction rows)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SUBMISSION_COLUMNS)
        for r in results:
            neuron_ids = json.dumps([int(u) for u in np.asarray(r.unit_ids).tolist()])
            with np.load(r.npz) as z:
                predictions = z["predictions"]
            for i, trial in enumerate(r.trial_ids.tolist()):
                frames = np.nan_to_num(predictions[i, :, skip : r.frame_counts[i]], nan=0.0)
                rows = ("[" + ",".join(f"{v:.6g}" for v in row) + "]" for row in frames)
                writer.writerow([r.session, int(trial), "[" + ",".join(rows) + "]", neuron_ids])


def write_metrics(folder: Path, result: dict[str, Any]) -> None:
    with open(folder / "metrics.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["session", "tier", *METRIC_KEYS, *COUNT_KEYS])
        rows = [(s, t, m) for s, by_tier in result["sessions"].items() for t, m in by_tier.items()]
        rows += [("mean", t, m) for t, m in result["mean"].items()]
        for session, tier, m in rows:
            values = ["" if m[k] is None else f"{m[k]:.6f}" for k in METRIC_KEYS]
            writer.writerow([session, tier, *values, *(m[k] for k in COUNT_KEYS)])


def format_table(result: dict[str, Any], hidden: set[tuple[str, str]] | None = None) -> str:
    """The metrics as a printed table; tiers without responses say "no ground truth"."""
    hidden = hidden or set()
    heads = ["session", "tier", "trials", "neurons", "single r", "r to avg", "FEVE", "CC_norm"]
    has_ceiling = any(
        m.get("ceiling_correlation") is not None
        for by_tier in result["sessions"].values()
        for m in by_tier.values()
    )
    if has_ceiling:
        heads += ["ceiling", "of ceiling"]
    keys = ["single_trial_correlation", "correlation_to_average", "feve", "normalized_correlation"]
    if has_ceiling:
        keys += ["ceiling_correlation", "fraction_of_ceiling"]
    lines = []
    rows = [(s, t, m) for s, by_tier in result["sessions"].items() for t, m in by_tier.items()]
    rows += [("mean", t, m) for t, m in result["mean"].items()]
    for session, tier, m in rows:
        cells = [_short(session), tier, str(m["n_trials"]), str(m["n_neurons"])]
        no_truth = (session, tier) in hidden or (
            session == "mean" and all(m[k] is None for k in keys)
        )
        if no_truth:
            cells += ["no ground truth"] + [""] * (len(keys) - 1)
        else:
            cells += ["-" if m[k] is None else f"{m[k]:.4f}" for k in keys]
        lines.append(cells)
    widths = [max(len(r[i]) for r in [heads, *lines]) for i in range(len(heads))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    rule = "-" * len(fmt(heads))
    return "\n".join([fmt(heads), rule, *map(fmt, lines)])


def _short(name: str, width: int = 32) -> str:
    """A session name for the table: published names by their alias (29156-11-10)."""
    if len(name) <= width:
        return name
    m = re.match(r"^dynamic(\d+-\d+-\d+)-", name)
    return m.group(1) if m else name[: width - 3] + "..."


# ------------------------------------------------------------------------------------------------
# Prediction
# ------------------------------------------------------------------------------------------------


def predict_run(
    output_dir: str | os.PathLike,
    checkpoint: str | os.PathLike = "best",
    tiers: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    verbose: int = 1,
) -> dict[str, Any]:
    """Predict every trial of each session and tier, write `output_dir/predictions/`, return the
    metrics dict (the content of metrics.json)."""
    run_dir = Path(output_dir)
    config, state, ckpt_path = load_run(run_dir, checkpoint)
    if data_dir is not None:
        config.data.data_dir = str(data_dir)
    config.data.generate_synthetic = False  # prediction never writes data
    dev = choose_device(device, config.run.device)
    use_autocast = autocast_enabled(config.train.autocast, dev)
    log.info("checkpoint %s (epoch %s) on %s", ckpt_path, state.get("epoch"), dev)

    trained = _trained_sessions(config, state)
    sessions = open_sessions(config, trained, state)
    model = build(config, state, sessions, ckpt_path).to(dev).eval()
    batch = batch_size or config.data.batch_size

    if tiers is not None:
        tiers = list(dict.fromkeys(tiers))
        present = {str(t) for session in sessions.values() for t in np.unique(session.tiers)}
        absent = [t for t in tiers if t not in present]
        if absent:
            raise ConfigError(
                f"--tiers: {absent} not in any session; tiers present: {sorted(present)}"
            )
    final = RunFolder(run_dir).predictions
    per_session: dict[str, dict[str, Any]] = {}
    done: list[TierResult] = []
    with staged_folder(final) as tmp:
        for name, session in sessions.items():
            per_session[name] = {}
            (tmp / name).mkdir()
            for tier in _tiers_of(session, tiers):
                r = predict_tier(
                    config, model, session, tier, dev, use_autocast, batch, tmp, verbose
                )
                per_session[name][tier] = r.metrics
                done.append(r)
        for tier in dict.fromkeys(r.tier for r in done):
            if tier in native.TEST_TIERS:
                write_submission(
                    tmp / f"submission_{tier}.csv", [r for r in done if r.tier == tier]
                )
        result = {"sessions": per_session, "mean": mean_over_sessions(per_session)}
        write_metrics(tmp, result)
    table = format_table(result, {(r.session, r.tier) for r in done if r.hidden})
    if verbose:
        print(table)
    log.info("predictions and metrics written to %s", final)
    return result


def _trained_sessions(config: Config, state: dict[str, Any]) -> list[str]:
    sessions = state.get("sessions")
    if isinstance(sessions, dict) and sessions:
        return list(sessions)
    if config.data.mouse_ids:
        return list(config.data.mouse_ids)
    raise CheckpointError("checkpoint names no sessions and config.yaml has no data.mouse_ids")


def _tiers_of(session: Any, tiers: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(str(t) for t in np.asarray(session.tiers).tolist()))
    if tiers is None:
        order = [t for t in native.TIERS if t in present] + [
            t for t in present if t not in native.TIERS
        ]
        return [t for t in order if t not in SKIP_TIERS]
    return [t for t in tiers if t in present]


def open_sessions(config: Config, trained: Sequence[str], state: dict[str, Any]) -> dict[str, Any]:
    """The trained sessions, opened from the data folder; DataFormatError if any is missing or
    its neurons differ from the ones the model was trained on."""
    data_dir = Path(config.data.data_dir)
    found = {p.name: p for p in native.find_sessions(data_dir)}
    missing = [s for s in trained if s not in found]
    if missing:
        raise DataFormatError(
            data_dir,
            f"does not hold the session(s) the model was trained on: {missing}; "
            f"sessions found: {sorted(found)}",
            "data_dir",
        )
    config.data.mouse_ids = list(trained)  # folder names, in training order
    saved = state.get("sessions") or {}
    sessions = {}
    for name in trained:
        session = native.NativeSession(found[name], limit_neurons=config.data.limit_neurons)
        want = saved.get(name, {}).get("unit_ids") if isinstance(saved.get(name), dict) else None
        if want is not None:
            want = np.asarray(want.tolist() if isinstance(want, torch.Tensor) else want)
            if want.shape != session.unit_ids.shape or not np.array_equal(want, session.unit_ids):
                raise DataFormatError(
                    session.path / native.UNIT_IDS_FILE,
                    f"the session's neurons ({session.n_neurons}) are not the "
                    f"{len(want)} the model was trained on",
                    "unit_ids",
                )
        sessions[name] = session
    return sessions


def build(config: Config, state: dict[str, Any], sessions: dict[str, Any], path: Path):
    """The model of config.yaml for `sessions`, with the checkpoint's weights."""
    specs = loaders.session_specs(config.data)
    frame_shape = next(iter(sessions.values())).frame_shape
    model = build_model(config.model, specs, in_channels=1, frame_shape=frame_shape)
    load_weights(model, state["model"], path)
    return model


def _statistics(config: Config, session: Any):
    needs = config.data.transform_input or config.data.transform_output
    if not needs:
        return None
    return session.statistics(shipped=config.data.shipped_statistics, tier=config.data.train_tier)


@torch.inference_mode()
def predict_tier(
    config: Config,
    model: torch.nn.Module,
    session: Any,
    tier: str,
    device: torch.device,
    use_autocast: bool,
    batch_size: int,
    folder: Path,
    verbose: int = 1,
) -> TierResult:
    """Predict every trial of one session and tier (trials of equal length batched together),
    write `folder/{session}/{tier}.npz`, and score the predictions.

    Memory stays bounded: predictions go to a memory-mapped file, single-trial correlations are
    accumulated trial by trial, and only trials that repeat a clip are read again for the
    repeat-based metrics. The first frames of each trial are left out of the metrics by
    `metrics.frames_to_skip` (the rule validation uses too).
    """
    ds = SessionDataset(
        session,
        tier,
        crop_frame=-1,
        transform_input=config.data.transform_input,
        transform_output=config.data.transform_output,
        statistics=_statistics(config, session),
        random_crop=False,
    )
    hidden = session.responses_hidden(tier)
    noiseless = session.has_noiseless and not hidden
    n, lengths = session.n_neurons, ds.lengths
    skip = M.frames_to_skip(lengths)
    npy = folder / session.name / f".{tier}.predictions.npy"
    shape = (len(ds), n, int(lengths.max()))
    predictions = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=shape)
    predictions[:] = np.nan
    first = np.zeros(len(ds), dtype=np.int64)
    clip_keys = [""] * len(ds)
    model_acc, ceiling_acc = M.CorrelationAccumulator(), M.CorrelationAccumulator()

    by_length: dict[int, list[int]] = {}
    for i, length in enumerate(lengths.tolist()):
        by_length.setdefault(int(length), []).append(i)
    batches = [
        idx[k : k + batch_size]
        for idx in by_length.values()
        for k in range(0, len(idx), batch_size)
    ]
    desc = f"{_short(session.name, 24)} {tier}"
    # progress bars on terminals only (None), never in logs and pipes
    with tqdm(total=len(ds), desc=desc, disable=None if verbose else True, leave=False) as bar:
        for idx in batches:
            items = [ds[i] for i in idx]
            video = torch.stack([it["video"] for it in items]).to(device)
            behavior = torch.stack([it["behavior"] for it in items]).to(device)
            pupil = torch.stack([it["pupil_center"] for it in items]).to(device)
            with autocast(device, use_autocast):
                rates = model(video, session.name, behavior, pupil)
            rates = ds.output_transform.inverse(rates.float()).cpu().numpy()
            t = video.shape[2]
            if rates.ndim != 3 or rates.shape[1] != n or not 0 < rates.shape[-1] <= t:
                raise CheckpointError(
                    f"model output {tuple(rates.shape)} does not fit {len(idx)} trials of "
                    f"{n} neurons and {t} frames"
                )
            for j, i in enumerate(idx):
                trial = int(ds.trial_ids[i])
                first[i] = t - rates.shape[-1]  # the model's frames are the last T' frames
                predictions[i, :, first[i] : t] = rates[j]
                raw = session.load_trial(trial, frames=slice(0, t))
                clip_keys[i] = M.video_hash(raw[native.VIDEOS], t)
                if not hidden:
                    start = max(int(first[i]), skip)
                    response = raw[native.RESPONSES][:, start:t]
                    model_acc.add(
                        response, rates[j][:, start - t :] if start < t else rates[j][:, :0]
                    )
                    if noiseless:
                        ceiling_acc.add(response, session.load_noiseless(trial)[:, start:t])
            bar.update(len(idx))
    predictions.flush()

    result = TierResult(
        session=session.name,
        tier=tier,
        unit_ids=np.asarray(session.unit_ids),
        trial_ids=np.asarray(ds.trial_ids, dtype=np.int64),
        frame_counts=np.asarray(lengths, dtype=np.int64),
        first_frames=first,
        clip_keys=clip_keys,
        hidden=hidden,
        metrics={k: None for k in METRIC_KEYS},
        npz=folder / session.name / f"{tier}.npz",
    )
    result.metrics.update(n_trials=len(ds), n_neurons=n)
    if not hidden:
        if model_acc.n_frames == 0:
            log.warning(
                "%s %s: no trial is longer than %d frames; no metrics", session.name, tier, skip
            )
        else:
            m = result.metrics
            m["single_trial_correlation"] = float(model_acc.result().mean())
            m.update(_repeat_metrics(session, result, predictions, skip))
            if noiseless:
                ceiling = float(ceiling_acc.result().mean())
                m["ceiling_correlation"] = ceiling
                if ceiling > 0:
                    m["fraction_of_ceiling"] = m["single_trial_correlation"] / ceiling
    result.metrics = {k: _clean(v) for k, v in result.metrics.items()}
    del predictions
    write_npz(result.npz, npy, result)
    return result


def _repeat_metrics(
    session: Any, result: TierResult, predictions: np.ndarray, skip: int
) -> dict[str, Any]:
    """correlation_to_average, feve, normalized_correlation over the clips shown >= 2 times."""
    groups = [g for g in M.group_repeats(result.clip_keys) if len(g) >= 2]
    if not groups:
        return {}
    resp, pred, positions = [], [], []
    for g in groups:
        ids = []
        for i in g.tolist():
            t = int(result.frame_counts[i])
            start = min(max(int(result.first_frames[i]), skip), t)
            trial = int(result.trial_ids[i])
            resp.append(session.load_trial(trial, frames=slice(start, t))[native.RESPONSES])
            pred.append(np.asarray(predictions[i, :, start:t]))
            ids.append(len(resp) - 1)
        positions.append(ids)
    return {
        "correlation_to_average": M.correlation_to_average(resp, pred, positions, skip=0),
        "feve": M.feve(resp, pred, positions, skip=0),
        "normalized_correlation": M.normalized_correlation(resp, pred, positions, skip=0),
    }

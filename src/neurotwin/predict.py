"""Turn a trained run into predictions and Sensorium metrics: `predict_run(output_dir, ...)`.

Inputs: the run folder written by training (`config.yaml`, `checkpoints/{best,last}.pt`) and the data
folder named in its config (or `data_dir`). Every output goes to `OUTPUT_DIR/predictions/`, written
into a temporary folder beside it and renamed into place when everything succeeded (a failed run
leaves no partial folder and keeps an older `predictions/` as it was):

    predictions/
      metrics.json                 {"score_space", "checkpoint", "data_dir", "tiers" (as asked;
                                   null: all), "sessions": {S: {TIER: {...}}}, "mean": {TIER: {...}}}
      metrics.csv                  one row per (session, tier, group), then the means
      {session}/{tier}.npz         predictions of every trial of the tier, see `NPZ_DOC`
      submission/                  test tiers: the Sensorium 2023 files to upload
                                   (neurotwin.prediction.submission)

Metric keys per session and tier: single_trial_correlation, correlation_to_average, feve (null
without repeats), normalized_correlation (null without repeats), n_trials, n_neurons; for synthetic
sessions also ceiling_correlation (single-trial correlation of the noiseless rates with the
responses) and fraction_of_ceiling (the model's single-trial correlation / ceiling), null otherwise;
"by_area" / "by_stimulus" where the session's meta labels neurons or trials. Tiers whose responses
are hidden get predictions and null metrics. Definitions: `neurotwin.metrics`; the score spaces:
`neurotwin.prediction.space`.

How it runs (neurotwin.prediction): trials are read once by worker processes into pinned memory,
batched by length, predicted with the run's bf16 autocast rule (and its compiled core where the run
compiled), scored on the device, and written by a thread of their own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotwin.config import Config
from neurotwin.data import loaders, native
from neurotwin.data.dataset import InputTransform, OutputTransform
from neurotwin.errors import CheckpointError, ConfigError, DataFormatError
from neurotwin.files import staged_folder
from neurotwin.models.model import build_model
from neurotwin.prediction.engine import ModelRates, lengths_to_compile, predict_plans
from neurotwin.prediction.outputs import (  # noqa: F401  (the public names of predictions)
    METRIC_KEYS,
    NPZ_DOC,
    TierResult,
    format_table,
    write_metrics,
)
from neurotwin.prediction.scoring import metrics_document
from neurotwin.prediction.space import SCORE_SPACES, ScoreSpace
from neurotwin.prediction.stream import TierPlan
from neurotwin.run import RunFolder, autocast_enabled, device_available, pick_device
from neurotwin.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

SKIP_TIERS = ("none",)  # tiers never predicted by default (trials in no split)
GPU_BATCH_SIZE = 8  # trials per forward pass on a GPU unless told (no gradients: little memory)


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


def _trained_sessions(config: Config, state: dict[str, Any]) -> list[str]:
    sessions = state.get("sessions")
    if isinstance(sessions, dict) and sessions:
        return list(sessions)
    if config.data.mouse_ids:
        return list(config.data.mouse_ids)
    raise CheckpointError("checkpoint names no sessions and config.yaml has no data.mouse_ids")


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
    if not (config.data.transform_input or config.data.transform_output):
        return None
    return session.statistics(shipped=config.data.shipped_statistics, tier=config.data.train_tier)


def transforms(
    config: Config, sessions: dict[str, Any]
) -> tuple[dict[str, InputTransform], dict[str, OutputTransform]]:
    """Each session's input and output transforms, as training built them."""
    inputs, outputs = {}, {}
    for name, s in sessions.items():
        stats = _statistics(config, s)
        inputs[name] = InputTransform(stats, config.data.transform_input, s.path)
        outputs[name] = OutputTransform(stats, config.data.transform_output, s.n_neurons, s.path)
    return inputs, outputs


def tier_plans(sessions: dict[str, Any], tiers: Sequence[str] | None) -> list[TierPlan]:
    """What to predict: every session's tiers (`tiers`, default all but 'none'), in the
    layout's tier order; ConfigError for a tier no session has."""
    if tiers is not None:
        tiers = list(dict.fromkeys(tiers))
        present = {str(t) for s in sessions.values() for t in np.unique(s.tiers)}
        absent = [t for t in tiers if t not in present]
        if absent:
            raise ConfigError(
                f"--tiers: {absent} not in any session; tiers present: {sorted(present)}"
            )
    return [TierPlan.of(s, tier) for s in sessions.values() for tier in _tiers_of(s, tiers)]


def _tiers_of(session: Any, tiers: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(str(t) for t in np.asarray(session.tiers).tolist()))
    if tiers is None:
        order = [t for t in native.TIERS if t in present] + [
            t for t in present if t not in native.TIERS
        ]
        return [t for t in order if t not in SKIP_TIERS]
    return [t for t in tiers if t in present]


def checkpoint_record(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """What identifies the weights predicted with (an ensemble reuses predictions only of the
    same file, unchanged)."""
    stat = Path(path).stat()
    return {
        "path": str(Path(path).resolve()),
        "epoch": state.get("epoch"),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


# ------------------------------------------------------------------------------------------------
# Prediction
# ------------------------------------------------------------------------------------------------


class RunPredictor:
    """A run's model, data and options, ready to predict (`run()`); built once, so that a
    benchmark can time `run()` after a warm-up without building or compiling again."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        checkpoint: str | os.PathLike = "best",
        tiers: Sequence[str] | None = None,
        data_dir: str | os.PathLike | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
        score_space: str = "raw",
        compile: bool | None = None,
        submission: bool = True,
    ) -> None:
        if score_space not in SCORE_SPACES:
            raise ConfigError(f"--score_space: {score_space!r} is not one of {list(SCORE_SPACES)}")
        self.run_dir = Path(output_dir)
        config, state, path = load_run(self.run_dir, checkpoint)
        if data_dir is not None:
            config.data.data_dir = str(data_dir)
        config.data.generate_synthetic = False  # prediction never writes data
        self.config, self.checkpoint = config, checkpoint_record(path, state)
        self.device = choose_device(device, config.run.device)
        use_autocast = autocast_enabled(config.train.autocast, self.device)
        log.info("checkpoint %s (epoch %s) on %s", path, state.get("epoch"), self.device)
        sessions = open_sessions(config, _trained_sessions(config, state), state)
        self.plans = tier_plans(sessions, tiers)
        self.tiers = None if tiers is None else list(dict.fromkeys(tiers))  # as asked
        model = build(config, state, sessions, path).to(self.device).eval()
        on_gpu = self.device.type == "cuda"
        default_batch = max(config.data.batch_size, GPU_BATCH_SIZE if on_gpu else 1)
        self.batch_size = batch_size or default_batch
        self.num_workers = config.data.num_workers if num_workers is None else num_workers
        run_compiled = config.train.compile is True or (config.train.compile == "auto" and on_gpu)
        self.compiled = run_compiled if compile is None else bool(compile)
        if self.compiled:
            model.core.compile(dynamic=False)  # a graph per common trial length (padded batches)
        inputs, outputs = transforms(config, sessions)
        self.source = ModelRates(
            model,
            self.device,
            use_autocast,
            inputs,
            outputs,
            pad_to=self.batch_size if self.compiled else None,
            compiled_lengths=lengths_to_compile(self.plans, self.batch_size),
        )
        if self.compiled:
            lengths = sorted(self.source.compiled_lengths)
            eager = sum(int(np.isin(p.lengths, lengths, invert=True).sum()) for p in self.plans)
            log.info(
                "compiled core: trials of %s frames in batches of %d; %d trials of other "
                "lengths run eagerly", lengths or "no length", self.batch_size, eager,
            )  # fmt: skip
        self.space = ScoreSpace(score_space)
        self.submission = submission

    def run(self, verbose: int = 1) -> dict[str, Any]:
        """Predict every plan, write `predictions/` (atomically), return the metrics."""
        final = RunFolder(self.run_dir).predictions
        with staged_folder(final) as tmp:
            results = predict_plans(
                self.plans,
                self.source,
                tmp,
                self.space,
                self.device,
                self.batch_size,
                self.num_workers,
                submission=self.submission,
                verbose=verbose,
            )
            document = metrics_document(
                results,
                score_space=self.space.name,
                checkpoint=self.checkpoint,
                data_dir=str(Path(self.config.data.data_dir).resolve()),
                tiers=self.tiers,
            )
            write_metrics(tmp, document)
        if verbose:
            print(format_table(document, {(r.session, r.tier) for r in results if r.hidden}))
        log.info("predictions and metrics written to %s", final)
        return document


def predict_run(
    output_dir: str | os.PathLike,
    checkpoint: str | os.PathLike = "best",
    tiers: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    score_space: str = "raw",
    compile: bool | None = None,
    submission: bool = True,
    verbose: int = 1,
) -> dict[str, Any]:
    """Predict every trial of each session and tier, write `output_dir/predictions/`, return the
    metrics dict (the content of metrics.json). `batch_size`: trials per forward pass (default:
    the run's, at least 8 on a GPU); `num_workers`: reading processes (default: the run's);
    `score_space`: raw | normalized; `compile`: the core compiled (default: as the run was);
    `submission`: the competition's files for the test tiers."""
    predictor = RunPredictor(
        output_dir, checkpoint, tiers, data_dir, device, batch_size, num_workers,
        score_space, compile, submission,
    )  # fmt: skip
    return predictor.run(verbose)

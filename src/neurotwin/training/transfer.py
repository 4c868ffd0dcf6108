"""Transfer: start a run from another run's core (`--pretrained_core RUN`), optionally frozen
(`--core_lr 0`), as ViV1T reuses a core trained on some mice for new ones.

The other run's saved config must describe the same core (part and every option) and the same
input transform, since the core was trained on inputs made that way; anything else is a
ConfigError naming the options that differ. Its core weights then load strictly (a different
frame size or input channels: CheckpointError naming the tensors). Readouts and shifters belong
to this run's sessions and start fresh, so the sessions may be new ones.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from neurotwin import config as cfg
from neurotwin.errors import CheckpointError, ConfigError
from neurotwin.run import RunFolder, find_checkpoint
from neurotwin.training.checkpoint import load_checkpoint

CORE_PREFIX = "core."


def _saved_config(path: Path, state: dict) -> cfg.Config:
    """The config of the run a checkpoint belongs to (config.yaml, else the checkpoint's)."""
    run = RunFolder.of_checkpoint(path)
    if run.config_file.is_file():
        return run.load_config()
    return cfg.from_dict(state["config"], f"{path} [config]")


def core_differences(mine: cfg.Config, theirs: cfg.Config) -> list[str]:
    """'option: this run's value vs the pretrained run's' for every core option (and the input
    transform) that differs."""
    a = {"core": mine.model.core.name, **cfg.to_dict(mine.model.core)}
    b = {"core": theirs.model.core.name, **cfg.to_dict(theirs.model.core)}
    a["transform_input"] = mine.data.transform_input
    b["transform_input"] = theirs.data.transform_input
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]  # fmt: skip


def load_pretrained_core(model: nn.Module, config: cfg.Config, source: str) -> Path:
    """Load the core of run (or checkpoint) `source` into `model.core`; returns the checkpoint."""
    path = find_checkpoint(source, "best")
    state = load_checkpoint(path)
    differences = core_differences(config, _saved_config(path, state))
    if differences:
        raise ConfigError(
            f"--pretrained_core: {source} has another core than this run ({'; '.join(differences)}); "
            f"give the same core options (e.g. --config {RunFolder.of_checkpoint(path).config_file})"
        )
    weights = {}
    for key, value in state["model"].items():
        key = key.removeprefix("module.").replace("_orig_mod.", "")
        if key.startswith(CORE_PREFIX):
            weights[key[len(CORE_PREFIX) :]] = value
    try:
        model.core.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        message = " ".join(str(e).split())
        raise CheckpointError(f"{path}: its core does not fit this run's ({message})") from None
    return path


def freeze(core: nn.Module) -> None:
    """No gradients and eval mode (dropout off, normalisation statistics fixed): the core
    computes as in the run it came from. Call again after every `model.train()`."""
    core.requires_grad_(False)
    core.eval()

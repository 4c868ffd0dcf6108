"""A run: its folder, the device it runs on, and when it computes in bf16.

Training writes a run folder; prediction and analysis read it and write beside it:

    RUN/config.yaml             the resolved config (`neurotwin.config.save_yaml`)
    RUN/checkpoints/best.pt     best validation score so far; last.pt: the latest epoch
    RUN/metrics.csv, train.log  one row per epoch; the console lines
    RUN/predictions/            predict.py (metrics.json, {session}/{tier}.npz, submissions)
    RUN/analysis/               in-silico analyses of the trained model

Devices and autocast follow one rule everywhere, so that prediction computes as training did.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from neurotwin.config import Config, load_yaml
from neurotwin.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
PREDICTIONS_DIR = "predictions"
ANALYSIS_DIR = "analysis"
CHECKPOINT_NAMES = ("best", "last")


class RunFolder:
    """The folder of one run and the paths in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """The run a checkpoint file belongs to (RUN/checkpoints/last.pt -> RUN)."""
        parent = Path(checkpoint).parent
        return cls(parent.parent if parent.name == CHECKPOINT_DIR else parent)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS_DIR

    @property
    def analysis(self) -> Path:
        return self.path / ANALYSIS_DIR

    def holds_a_run(self) -> bool:
        """Whether training wrote here already (a last checkpoint exists)."""
        return (self.checkpoints / "last.pt").is_file()

    def never_saved(self) -> bool:
        """A run that started (config.yaml written) but stopped before its first checkpoint:
        nothing to resume, and a new training into it starts it over."""
        return self.config_file.is_file() and not self.holds_a_run()

    def checkpoint(self, which: str | Path = "best") -> Path:
        """`best` / `last` -> RUN/checkpoints/{which}.pt; anything else is a path. The file
        must exist (CheckpointError)."""
        name = str(which)
        if name in CHECKPOINT_NAMES:
            path = self.checkpoints / f"{name}.pt"
            if not path.is_file():
                raise CheckpointError(self.no_checkpoint(path))
            return path
        path = Path(name)
        if not path.is_file():
            choices = " | ".join(CHECKPOINT_NAMES)
            what = "a folder" if path.is_dir() else "no such file"
            raise CheckpointError(
                f"--checkpoint {name}: expected {choices} or the path of a checkpoint file ({what})"
            )
        return path

    def no_checkpoint(self, path: Path) -> str:
        """The message for a missing checkpoint `path` of this run."""
        if self.never_saved():
            log = self.path / "train.log"
            seen = f"; see {log}" if log.is_file() else ""
            return (
                f"{self.path}: this run never saved a checkpoint (it stopped before its first "
                f"epoch ended{seen}): nothing to resume or predict; train again with "
                f"--output_dir {self.path} to start it over"
            )
        return f"{path}: checkpoint file not found"

    def load_config(self) -> Config:
        """The run's resolved config (ConfigError if this is not a run folder)."""
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: run folder not found")
        if not self.config_file.is_file():
            raise ConfigError(
                f"{self.config_file}: config file not found (is {self.path} a run folder?)"
            )
        return load_yaml(self.config_file)


def find_checkpoint(path: str | Path, which: str = "last") -> Path:
    """A checkpoint file given as itself, a run folder (-> checkpoints/{which}.pt) or a
    checkpoints folder (-> {which}.pt), as `--restore` takes it."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / CHECKPOINT_DIR / f"{which}.pt", path / f"{which}.pt"):
        if candidate.is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint")
    run = RunFolder(path.parent if path.name == CHECKPOINT_DIR else path)
    if run.never_saved():
        raise CheckpointError(run.no_checkpoint(run.checkpoints / f"{which}.pt"))
    raise CheckpointError(f"{path}: no {CHECKPOINT_DIR}/{which}.pt in this folder")


# ----------------------------------------------------------------------------------------------
# Devices and numerics
# ----------------------------------------------------------------------------------------------


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def device_available(device: str | torch.device) -> bool:
    """Whether this machine has `device` (cpu, cuda[:K], mps)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        return False
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    if dev.type == "mps":
        return _mps_available()
    return dev.type == "cpu"


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The device `name` names ("" or None: the best available, CUDA then MPS then CPU);
    ConfigError when this machine lacks it. `cuda` without an index is cuda:LOCAL_RANK (one GPU
    per process under torchrun)."""
    name = (name or "").strip().lower()
    if not name:
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"--device: unknown device {name!r} (cpu | cuda | cuda:K | mps)"
        ) from None
    if device.type == "cuda" and torch.cuda.is_available() and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if not device_available(device):
        raise ConfigError(f"--device: {name!r} was asked for but this machine has none")
    return device


def autocast_enabled(mode: str, device: torch.device) -> bool:
    """bf16 autocast (`--autocast`): `auto` = on CUDA devices that support bf16; `enable` = on
    any device (the CPU too; an error on a GPU without bf16); `disable` = off."""
    if mode == "disable":
        return False
    if mode == "enable":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("--autocast: enable asks for bf16, which this GPU does not support")
        return True
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """The bf16 autocast context on `device` when `enabled`, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

"""Errors that neurotwin raises for bad input, so a user sees which file and field is wrong."""

from __future__ import annotations

from pathlib import Path


class NeurotwinError(Exception):
    """Base class of every error neurotwin raises on purpose."""


class ConfigError(NeurotwinError):
    """A configuration file or command-line flag is unknown or has a bad value."""


class DataFormatError(NeurotwinError):
    """A data file is missing or does not hold what the native layout expects."""

    def __init__(self, path: str | Path, problem: str, field: str | None = None):
        self.path = Path(path)
        self.problem = problem
        self.field = field
        where = f"{self.path}" + (f" [{field}]" if field else "")
        super().__init__(f"{where}: {problem}")


class CheckpointError(NeurotwinError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""

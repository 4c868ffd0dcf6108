"""Option values as users write them, read into the declared types: a YAML scalar or a flag
string converted to a field's type (`convert`), and YAML files read with errors that point at
the line and column (`read_yaml`). Used by `neurotwin.config`, which builds the tree from them."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from neurotwin.errors import ConfigError


def is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    return False, tp


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def convert(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML or a flag string) to type `tp`, or raise ConfigError."""
    optional, inner = is_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required (got none)")
    origin = get_origin(inner)
    if origin is Literal:
        choices = get_args(inner)
        for c in choices:
            try:
                if convert(value, type(c), where) == c:
                    return c
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
    if origin is list:
        (item_tp,) = get_args(inner)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [convert(v, item_tp, where) for v in value]
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if inner is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if inner is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported option type {inner!r}")  # pragma: no cover


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The nested dict of a YAML preset or saved config, unchecked (ConfigError if unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(yaml_problem(path, text, e)) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(values).__name__}")
    return values


def yaml_problem(path: Path, text: str, error: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: the file, line and column, PyYAML's problem, and the
    line it is on."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return f"{path}: not valid YAML: {problem}"
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}"
    context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and start is not None:
        problem += f" ({context} that began at line {start.line + 1}, column {start.column + 1})"
    lines = text.splitlines()
    shown = lines[mark.line].strip() if mark.line < len(lines) else ""
    return f"{where}: not valid YAML: {problem}" + (f": {shown!r}" if shown else "")

"""Command-line flags from any tree of options dataclasses (one flag per leaf field).

`add_flags(parser, Config)` adds `--config YAML` and `--<leaf>` for every leaf (a `name` field
of a section takes the section's name, e.g. model.name -> `--model`); `resolve(args, Config,
base)` applies, in order: the defaults, `base` (a saved config, when resuming), the YAML
preset, then the flags given. Values are checked by `neurotwin.config.convert` and the
dataclasses' own checks; leaf names must be unique across the tree.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from neurotwin.config import convert, from_dict, read_yaml
from neurotwin.errors import ConfigError


@dataclass(frozen=True)
class Flag:
    name: str
    path: tuple[str, ...]
    type: Any
    help: str
    default: Any


def flags(cls: type, prefix: tuple[str, ...] = ()) -> list[Flag]:
    """Every leaf option of the dataclass `cls`, depth first."""
    out: list[Flag] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(flags(tp, prefix + (f.name,)))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = prefix[-1] if f.name == "name" and prefix else f.name
        out.append(Flag(name, prefix + (f.name,), tp, f.metadata.get("help", ""), default))
    names = [x.name for x in out]
    if not prefix and len(set(names)) != len(names):  # pragma: no cover - guards the options
        raise RuntimeError(f"option names must be unique: {sorted(names)}")
    return out


def _inner(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """`--config` and one `--flag` per leaf of `cls`; only flags given are set on `args`."""
    parser.add_argument("--config", default=None, help="YAML preset to start from")
    for flag in flags(cls):
        inner = _inner(flag.type)
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": flag.name}
        text = f"{flag.help} (default: {flag.default})"
        if get_origin(inner) is Literal:
            text += f"; one of {list(get_args(inner))}"
        if inner is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif get_origin(inner) is list:
            kwargs.update(nargs="+", metavar="VALUE")
        else:
            kwargs.update(metavar=flag.name.upper())
        parser.add_argument(f"--{flag.name}", type=str, help=text, **kwargs)


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags given on the command line, as a nested dict of converted values."""
    tree: dict[str, Any] = {}
    for flag in flags(cls):
        if hasattr(args, flag.name):
            value = convert(getattr(args, flag.name), flag.type, f"--{flag.name}")
            _set(tree, flag.path, value)
    return tree


def resolve(
    args: argparse.Namespace, cls: type, base: dict[str, Any] | None = None, source: str = "config"
) -> Any:
    """defaults < `base` < --config YAML < flags, checked into a `cls`."""
    values = dict(base or {})
    if getattr(args, "config", None):
        values = deep_merge(values, read_yaml(args.config))
        source = str(args.config)
    values = deep_merge(values, given(args, cls))
    try:
        return from_dict(values, source, cls)
    except TypeError as e:  # pragma: no cover - a dataclass without defaults
        raise ConfigError(f"{source}: {e}") from None

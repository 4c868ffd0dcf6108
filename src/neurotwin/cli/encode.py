"""`neurotwin-encode`: how well do a pretrained network's features predict every neuron?

    neurotwin-encode --data_dir data/synthetic --model pixels --regressor ridge --output_dir runs/enc
    neurotwin-encode --data_dir data/allen --model mouse-vision:alexnet_bn_ir \
        --weights model_ckpts/alexnet_bn_ir.pt --regressor pls --split random --output_dir runs/mv

Every option is a field of the dataclass of the part that uses it (encoding.run.EncodeOptions,
encoding.stimuli.StimulusOptions, the backbone sources' options, encoding.splits.SplitOptions,
encoding.regression.RegressionOptions, encoding.scores.ScoreOptions,
encoding.embeddings.EmbeddingOptions); its flag is --<field name>. Bad input stops with one
line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

from neurotwin.cli.console import exit_on_error, log_messages
from neurotwin.errors import ConfigError

EXTRA = "pip install 'neurotwin[encode]'"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _sections():
    from neurotwin.encoding.embeddings import EmbeddingOptions
    from neurotwin.encoding.regression import RegressionOptions
    from neurotwin.encoding.run import EncodeOptions
    from neurotwin.encoding.scores import ScoreOptions
    from neurotwin.encoding.splits import SplitOptions
    from neurotwin.encoding.stimuli import StimulusOptions

    return {
        "encode": EncodeOptions,
        "stimuli": StimulusOptions,
        "splits": SplitOptions,
        "regression": RegressionOptions,
        "scores": ScoreOptions,
        "embedding": EmbeddingOptions,
    }


def _backbone_fields() -> dict[str, tuple[dataclasses.Field, Any]]:
    """Every option field of every backbone source (first definition wins), but weights."""
    from neurotwin.models.backbones import BACKBONES

    out: dict[str, tuple[dataclasses.Field, Any]] = {}
    for name in BACKBONES.names():
        cls = BACKBONES.options_class(name)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name != "weights" and f.name not in out:
                out[f.name] = (f, hints[f.name])
    return out


def _add(group, f: dataclasses.Field, tp: Any) -> None:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    inner = (
        [a for a in get_args(tp) if a is not type(None)]
        if get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None))
        else [tp]
    )
    base = inner[0] if inner else tp
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name, "type": str}
    help_text = f"{f.metadata.get('help', '')} (default: {default})"
    if get_origin(base) is Literal:
        help_text += f"; choices {list(get_args(base))}"
    if base is bool:
        kwargs.update(nargs="?", const="true", metavar="BOOL")
    elif get_origin(base) is list:
        kwargs.update(nargs="+", metavar="VALUE")
    else:
        kwargs["metavar"] = f.name.upper()
    group.add_argument(f"--{f.name}", help=help_text, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="neurotwin-encode",
        description="Regress every neuron's responses on a pretrained network's features, layer by "
        "layer; writes scores.parquet, predictivity.parquet, figures/ and summary.json.",
    )
    seen: set[str] = set()
    for title, cls in _sections().items():
        group = parser.add_argument_group(title)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            _add(group, f, hints[f.name])
            seen.add(f.name)
    group = parser.add_argument_group("backbone (options of the network sources)")
    for name, (f, tp) in _backbone_fields().items():
        if name in seen:
            raise RuntimeError(f"option {name} is defined twice")  # pragma: no cover
        _add(group, f, tp)
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    return parser


def settings_from(args: argparse.Namespace):
    """The dataclasses of a run from parsed flags (values checked by config.from_dict)."""
    from neurotwin.config import from_dict
    from neurotwin.encoding.run import EncodeSettings

    given = {k: v for k, v in vars(args).items() if k != "quiet"}
    sections = {}
    for title, cls in _sections().items():
        names = {f.name for f in dataclasses.fields(cls)}
        sections[title] = from_dict(
            {k: v for k, v in given.items() if k in names}, f"--{title} options", cls
        )
        for n in names:
            given.pop(n, None)
    backbone: dict[str, Any] = {}
    fields = _backbone_fields()
    from neurotwin.config import convert

    for name, value in given.items():
        backbone[name] = convert(value, fields[name][1], f"--{name}")
    return EncodeSettings(backbone=backbone, **sections)


def require_extra() -> None:
    missing = []
    for module in ("pandas", "pyarrow", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"neurotwin-encode needs {', '.join(missing)}: {EXTRA}")


def _report(result: dict) -> None:
    import pandas as pd

    table = result["table"]
    cols = ["model", "layer", "tier", "area", "n_neurons", "median_r", "median_noise_corrected_r"]
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {result['scores']}, {result['predictivity']}, {result['summary']}")
    for path in result["figures"]:
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log_messages(not args.quiet)
    with exit_on_error("neurotwin-encode"):
        require_extra()
        settings = settings_from(args)
        from neurotwin.encoding.run import run_encoding

        result = run_encoding(settings)
    _report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

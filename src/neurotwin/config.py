"""Every option of neurotwin, as dataclasses: YAML <-> dataclass <-> argparse flags.

A config is a tree: `Config(data, model(core, readout, shifter), train, run)`. Each leaf field is
one option with one home; its command-line flag is `--<leaf name>`, so leaf names are unique
across the whole tree (checked at import). YAML presets mirror the tree, e.g.

    data: {data_dir: data/synthetic, batch_size: 4}
    model: {core: {name: conv3d}}

Flags override YAML, YAML overrides the defaults. Unknown keys and bad values raise ConfigError.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from neurotwin.errors import ConfigError


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field with its help text (mutable defaults are copied per instance)."""
    metadata = {"help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the data is, which sessions and trials to use, and how to batch and transform it."""

    data_dir: str = option("data/synthetic", "folder holding one sub-folder per session")
    mouse_ids: list[str] | None = option(
        None, "sessions to use, by folder name or short alias (default: every session found)"
    )
    generate_synthetic: bool = option(
        False, "write the built-in synthetic dataset into data_dir first if it holds no session"
    )
    train_tier: str = option("train", "tier the model is trained on")
    val_tier: str = option("oracle", "tier used for validation and early stopping")
    limit_data: int | None = option(None, "use at most this many training trials per session")
    limit_neurons: int | None = option(None, "use at most this many neurons per session")
    crop_frame: int = option(
        300, "frames per training sample (random crop of consecutive frames; -1: whole trial)"
    )
    transform_input: Literal[0, 1, 2] = option(
        1,
        "video/behaviour/pupil transform (ViV1T's): 0 none, 1 standardise (video and pupil "
        "centre z-scored, behaviour divided by its std), 2 normalise (x - min) / (max - min)",
    )
    transform_output: Literal[0, 1, 2] = option(
        1,
        "response transform (ViV1T's; never centred, responses stay >= 0 for the Poisson "
        "loss): 0 none, 1 divide by each neuron's std (Sensorium's r / std), 2 normalise per "
        "neuron (r - min) / (max - min)",
    )
    shipped_statistics: bool = option(
        False,
        "use the statistics shipped in meta/statistics instead of ones computed from the "
        "training tier over trials and frames",
    )
    batch_size: int = option(8, "trials per optimisation step (per session)")
    num_workers: int = option(2, "DataLoader worker processes")


@dataclass
class CoreConfig:
    """The shared core: which one, and its hyperparameters (a core reads only its own fields).

    Defaults are ViV1T's published vivit core (bryanlimy/ViV1T-closed-loop, train.py and the
    README's training command: causal temporal attention, parallel attention+MLP blocks).
    """

    name: str = option("vivit", "core: conv2d | conv3d | vivit | pretrained")
    core_behavior_mode: Literal[0, 1, 2] = option(
        2,
        "0: no behaviour in the core, 1: behaviour (dilation, speed) as extra input channels, "
        "2: behaviour and pupil centre as extra input channels (ViV1T's core_behavior_mode)",
    )
    core_behavior_tokens: bool = option(
        False, "vivit: add one token per frame made from behaviour and pupil centre"
    )
    # conv2d / conv3d (ViV1T's factorized 3D CNN baseline names and defaults)
    core_num_layers: int = option(4, "conv cores: number of layers")
    core_hidden_dim: int = option(16, "conv cores: channels of each layer")
    core_spatial_input_kernel: int = option(11, "conv cores: spatial kernel of the first layer")
    core_spatial_hidden_kernel: int = option(5, "conv cores: spatial kernel of later layers")
    core_temporal_input_kernel: int = option(11, "conv3d: temporal kernel of the first layer")
    core_temporal_hidden_kernel: int = option(5, "conv3d: temporal kernel of later layers")
    core_dropout: float = option(0.0, "conv cores: dropout after each layer")
    # vivit
    core_spatial_patch_size: int = option(7, "vivit: spatial patch size of the tube embedding")
    core_spatial_patch_stride: int = option(2, "vivit: spatial patch stride")
    core_temporal_patch_size: int = option(13, "vivit: temporal patch size (frames per tube)")
    core_temporal_patch_stride: int = option(1, "vivit: temporal patch stride")
    core_pad_frame: bool = option(
        True,
        "vivit: zero-pad frames so patches cover the whole frame, and pad the past so that "
        "there is one output frame per input frame",
    )
    core_emb_dim: int = option(112, "vivit: token embedding size")
    core_spatial_depth: int = option(14, "vivit: spatial transformer blocks")
    core_temporal_depth: int = option(14, "vivit: temporal transformer blocks")
    core_num_heads: int = option(2, "vivit: attention heads")
    core_head_dim: int = option(80, "vivit: size of each attention head")
    core_ff_dim: int = option(224, "vivit: hidden size of the feed-forward (MLP) blocks")
    core_ff_activation: Literal["relu", "gelu", "silu", "elu", "tanh"] = option(
        "relu", "vivit: feed-forward activation"
    )
    core_p_dropout: float = option(0.17, "vivit: patch dropout (whole tokens) after embedding")
    core_mha_dropout: float = option(0.04, "vivit: dropout on the attention output")
    core_ff_dropout: float = option(0.21, "vivit: dropout in the feed-forward blocks")
    core_drop_path: float = option(0.43, "vivit: stochastic depth rate of every block")
    core_use_causal_attention: bool = option(
        True, "vivit: causal temporal attention (no output depends on later frames)"
    )
    core_parallel_attention: bool = option(
        True, "vivit: attention and MLP in parallel in each block (else one after the other)"
    )
    core_norm_qk: bool = option(False, "vivit: layer-normalise queries and keys (per head)")
    core_pos_encoding: Literal["rope", "learned", "none"] = option(
        "rope",
        "vivit: rope (rotary: 2D over patches, 1D over frames) or learned (added spatial and "
        "temporal embeddings)",
    )
    core_reg_tokens: int = option(24, "vivit: learned register tokens per transformer")
    core_max_frame: int = option(300, "vivit: most frames a clip may have (learned positions)")
    # pretrained
    core_pretrained_weights: str | None = option(
        None,
        "pretrained: local .pt state dict of the frozen per-frame conv stack (its layers are "
        "read from the file; none: a random frozen stack of core_num_layers x core_hidden_dim)",
    )


@dataclass
class ReadoutConfig:
    """The per-session readout (defaults: ViV1T's Gaussian readout)."""

    name: str = option("gaussian", "readout: gaussian | factorized")
    readout_bias_mode: Literal[0, 1, 2] = option(
        2, "0: no bias, 1: bias initialised to zero, 2: bias initialised to the mean response"
    )
    readout_grid_mode: Literal[0, 1, 2, 3] = option(
        1,
        "gaussian positions: 0 free (uniform init), 1 predicted from the (x, y) cortical "
        "coordinates by a small MLP, 2 predicted from (x, y, z), 3 free, initialised from the "
        "(x, y) coordinates scaled to [-1, 1]",
    )
    readout_gauss_type: Literal["full", "uncorrelated", "isotropic"] = option(
        "full", "gaussian: covariance of each neuron's position"
    )
    readout_init_mu_range: float = option(
        0.2, "gaussian: free positions start uniform in [-range, range]"
    )
    readout_init_sigma: float = option(
        1.0,
        "gaussian: initial spread (full: matrix entries uniform in [-s, s]; else all equal s)",
    )
    readout_reg_weight: float = option(
        0.0, "L1 penalty on the readout weights (ViV1T: 0; Sensorium baselines: 0.0076)"
    )
    readout_dropout: float = option(0.0, "factorized: dropout on the core features")


@dataclass
class ShifterConfig:
    """The per-session shifter that moves readout positions by gaze."""

    shifter_mode: Literal[0, 1, 2] = option(
        1, "0: no shifter, 1: shift from pupil centre, 2: from pupil centre and behaviour"
    )
    shifter_layers: int = option(3, "shifter: MLP layers")
    shifter_size: int = option(5, "shifter: hidden units")


@dataclass
class ModelConfig:
    """core -> per-session readout (moved by a shifter) -> output activation."""

    core: CoreConfig = field(default_factory=CoreConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    shifter: ShifterConfig = field(default_factory=ShifterConfig)
    output_activation: Literal["none", "elu1", "exp", "softplus", "sigmoid"] = option(
        "elu1",
        "keeps rates positive: none | elu1 (ELU+1) | exp | softplus (learnable beta) | sigmoid",
    )


@dataclass
class TrainConfig:
    """Loss, optimiser, schedule, and the numerics of a training step."""

    epochs: int = option(400, "maximum epochs")
    criterion: Literal["poisson"] = option(
        "poisson", "loss: poisson (summed over neurons and frames, averaged over trials)"
    )
    ds_scale: bool = option(
        True, "scale each session's loss by sqrt(training trials / batch size), as ViV1T"
    )
    lr: float = option(0.0048, "learning rate")
    core_lr: float | None = option(None, "learning rate of the core (default: lr)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    core_weight_decay: float | None = option(
        None, "AdamW weight decay of the core (default: weight_decay)"
    )
    adam_beta1: float = option(0.9, "Adam beta1")
    adam_beta2: float = option(0.999, "Adam beta2")
    adam_eps: float = option(1e-8, "Adam epsilon")
    schedule_free: bool = option(
        False,
        "schedule-free AdamW (package schedulefree): no LR reductions; training stops after "
        "lr_patience epochs without improvement",
    )
    warmup_steps: int = option(0, "schedule-free: warm-up steps")
    accumulate_sessions: bool = option(
        True,
        "accumulate gradients over as many batches as there are sessions before each optimiser "
        "step (ViV1T, neuralpredictors); false: one step per batch",
    )
    lr_patience: int = option(10, "plateau schedule: epochs without improvement before reducing")
    lr_factor: float = option(0.3, "plateau schedule: factor applied to the LR")
    max_reduce: int = option(2, "plateau schedule: reductions before early stopping")
    min_epochs: int = option(0, "never stop before this many epochs")
    grad_norm: float | None = option(None, "clip gradients to this norm (None: off)")
    autoclip_percentile: float | None = option(
        None, "AutoClip: clip to this percentile of past gradient norms (overrides grad_norm)"
    )
    micro_batch_size: int = option(
        -1, "split each batch into micro-batches of this size (-1: no split, 0: largest that fits)"
    )
    autocast: Literal["auto", "enable", "disable"] = option(
        "auto", "bf16 autocast: auto (on when the device supports bf16), enable, disable"
    )
    grad_checkpointing: Literal[0, 1, "auto"] | None = option(
        None,
        "gradient checkpointing of core blocks: 0, 1, auto (on CUDA: off unless one trial does "
        "not fit without it; off elsewhere), or none (on for CUDA)",
    )
    compile: Literal[False, True, "auto"] = option(
        False, "torch.compile the core: true, false, or auto (on for CUDA devices)"
    )


@dataclass
class RunConfig:
    """Where outputs go, which device, seeds and logging."""

    output_dir: str = option("runs/default", "folder for checkpoints, config and logs")
    device: str = option("", "cpu | cuda | cuda:K | mps (default: best available)")
    seed: int = option(1234, "random seed")
    deterministic: bool = option(False, "use deterministic algorithms")
    restore: str | None = option(
        None,
        "resume the run in this folder (or from this checkpoint file) where it stopped; its "
        "saved config is the base and flags given override it",
    )
    wandb: str | None = option(None, "wandb group; logging to wandb is off unless given")
    wandb_mode: Literal["online", "offline"] = option("online", "wandb mode")
    clear_output_dir: bool = option(False, "delete output_dir before training")
    verbose: int = option(1, "0: quiet, 1: epoch lines and progress bars, 2: more")


@dataclass
class Config:
    """The whole configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ----------------------------------------------------------------------------------------------
# Leaves: the flat view (flag name -> path in the tree)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One option: its flag name, its path in the tree, its type and help."""

    flag: str
    path: tuple[str, ...]
    type: Any
    help: str
    default: Any


def _flag_name(section_path: tuple[str, ...], f: dataclasses.Field) -> str:
    # `name` fields of the model parts take the part's name: --core, --readout (ViV1T's flags).
    if f.name == "name" and section_path[:1] == ("model",):
        return section_path[-1]
    return f.name


def leaves(cls: type = Config, prefix: tuple[str, ...] = ()) -> list[Leaf]:
    """Every option under `cls`, depth first."""
    out: list[Leaf] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(leaves(tp, prefix + (f.name,)))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(
            Leaf(_flag_name(prefix, f), prefix + (f.name,), tp, f.metadata.get("help", ""), default)
        )
    return out


LEAVES: list[Leaf] = leaves()
LEAF_BY_FLAG: dict[str, Leaf] = {leaf.flag: leaf for leaf in LEAVES}
if len(LEAF_BY_FLAG) != len(LEAVES):  # pragma: no cover - guards edits of this file
    raise RuntimeError("config leaf names must be unique across sections")


# ----------------------------------------------------------------------------------------------
# Values: checking and converting
# ----------------------------------------------------------------------------------------------


def _is_optional(tp: Any) -> tuple[bool, Any]:
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
    optional, inner = _is_optional(tp)
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


# ----------------------------------------------------------------------------------------------
# Dict <-> dataclass, YAML files
# ----------------------------------------------------------------------------------------------


def from_dict(values: dict[str, Any], source: str = "config", cls: type = Config) -> Any:
    """Build `cls` from a nested dict, checking every key and value."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        tp, where = hints[f.name], f"{source}: {f.name}"
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(values[f.name] or {}, where, tp)
        else:
            kwargs[f.name] = convert(values[f.name], tp, where)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as a nested dict of plain values (YAML-ready)."""
    return dataclasses.asdict(config)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The nested dict of a YAML preset or saved config, unchecked (ConfigError if unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(values).__name__}")
    return values


def load_yaml(path: str | Path) -> Config:
    """Read a YAML preset or a saved config."""
    return from_dict(read_yaml(path), str(path))


def save_yaml(config: Config, path: str | Path) -> Path:
    """Write the resolved config (atomically), so that `load_yaml` gives it back exactly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    tmp.replace(path)
    return path


def get_value(config: Config, leaf: Leaf) -> Any:
    obj = config
    for part in leaf.path:
        obj = getattr(obj, part)
    return obj


def set_value(config: Config, leaf: Leaf, value: Any) -> None:
    obj = config
    for part in leaf.path[:-1]:
        obj = getattr(obj, part)
    setattr(obj, leaf.path[-1], value)


# ----------------------------------------------------------------------------------------------
# argparse
# ----------------------------------------------------------------------------------------------


def add_config_flags(parser: argparse.ArgumentParser, exclude: Sequence[str] = ()) -> None:
    """Add `--config` and one `--flag` per option; only flags given on the command line are set."""
    parser.add_argument("--config", type=str, default=None, help="YAML preset to start from")
    for leaf in LEAVES:
        if leaf.flag in exclude:
            continue
        optional, inner = _is_optional(leaf.type)
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": leaf.flag}
        help_text = f"{leaf.help} (default: {leaf.default})"
        if get_origin(inner) is Literal:
            help_text += f" choices: {list(get_args(inner))}"
        if inner is bool or (
            get_origin(inner) is Literal and any(c is True for c in get_args(inner))
        ):
            kwargs.update(nargs="?", const="true", metavar="BOOL")  # a bare --flag means true
        elif get_origin(inner) is list:
            kwargs.update(nargs="+", metavar="VALUE")
        else:
            kwargs.update(metavar=leaf.flag.upper())
        parser.add_argument(f"--{leaf.flag}", type=str, help=help_text, **kwargs)


def resolve(args: argparse.Namespace) -> Config:
    """YAML preset (if any) with the command-line flags applied on top."""
    config = load_yaml(args.config) if getattr(args, "config", None) else Config()
    for flag, value in vars(args).items():
        leaf = LEAF_BY_FLAG.get(flag)
        if leaf is None:
            continue
        set_value(config, leaf, convert(value, leaf.type, f"--{flag}"))
    return config


def parse_config(argv: Sequence[str] | None = None, prog: str | None = None) -> Config:
    """Parse a command line into a Config (what train.py does)."""
    parser = argparse.ArgumentParser(prog=prog, description="neurotwin options")
    add_config_flags(parser)
    return resolve(parser.parse_args(argv))

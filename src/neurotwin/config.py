"""The config tree: YAML <-> dataclasses, checked; each model part's options live with the part.

A config is `Config(data, model, train, run)`. `data`, `train` (`VideoTrainConfig`) and `run` are
dataclasses of this module. `model` holds five part slots (core, readout, shifter, output_activation, modulator); a slot holds
the options dataclass of the part chosen for it, declared beside the part's class and registered
with it (see `neurotwin.registry`). Every option's flag is `--<field name>` (a slot's part is
picked with `--<slot>`, e.g. `--core conv3d`); names are unique across the tree, except that an
option several parts of one slot declare (e.g. `core_hidden_dim`) is one flag. YAML mirrors the
tree, a slot as `{name: PART, <option>: value, ...}` (or the bare name):

    data: {data_dir: data/synthetic, batch_size: 4}
    model: {core: {name: conv3d, core_num_layers: 2}, output_activation: elu1}

Layers (defaults < a saved run's config < a YAML preset < flags) are merged by `merge_layers`:
a layer that picks another part drops the options the layers below gave the previous one; an
option that only another part owns is an error naming its owners. Saved configs carry
`version: 2`; a config.yaml without it, holding the old release's flat core section (all its
`core_*` fields whatever the core), loads with the other cores' fields dropped.

The machinery (flags, layers, YAML) serves any tree of options dataclasses: another model family
passes its own root (`cls=`, e.g. the spike family's `SpikeConfig`), whose `train` and `run` are
`TrainConfig` (the shared loop's options, subclassed by a family for its own) and `RunConfig`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from neurotwin.config_values import convert, is_optional, read_yaml, yaml_problem  # noqa: F401
from neurotwin.errors import ConfigError
from neurotwin.files import write_text
from neurotwin.registry import (
    ACTIVATIONS,
    CORES,
    MODULATORS,
    READOUTS,
    SHIFTERS,
    Options,
    Registry,
)

CONFIG_VERSION = 2  # saved configs; files without a version are the previous release's


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field with its help text (mutable defaults are copied per instance)."""
    metadata = {"help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def part(registry: Registry, default: str, help: str) -> Any:
    """A slot of the tree that holds the options of one part of `registry` (default `default`)."""
    metadata = {"help": help, "registry": registry, "default": default}
    return field(default_factory=lambda: registry.options(default), metadata=metadata)


def new_default(cls: type, name: str, default: Any) -> Any:
    """Option `name` of the options dataclass `cls` with another default, its help kept: for a
    subclass serving another family, e.g. `epochs: int = new_default(TrainConfig, "epochs", 200)`."""
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return option(default, f.metadata["help"])


def require(condition: bool, flag: str, problem: str) -> None:
    """The range check of an option: ConfigError naming its flag unless `condition` holds."""
    if not condition:
        raise ConfigError(f"--{flag}: {problem}")


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


@dataclass
class DataConfig(Options):
    """Where the data is, which sessions and trials to use, and how to batch and transform it."""

    data_dir: str = option("data/synthetic", "folder holding one sub-folder per session")
    mouse_ids: list[str] | None = option(
        None, "sessions to use, by folder name or short alias (none: every session found)"
    )
    generate_synthetic: bool = option(
        False,
        "write the built-in synthetic dataset (3 mice) into data_dir first if it holds no "
        "session; a --data_dir given on the command line turns a preset's true off (give "
        "--generate_synthetic too to write there)",
    )
    check_data: Literal["full", "headers", "off"] = option(
        "full",
        "start-up check of every session the run reads: full (trial files, their .npy "
        "headers' shapes and dtypes, tiers, and no NaN in the valid frames of training "
        "trials; remembered per file size and time, so a second run takes seconds), headers "
        "(all but the NaN pass), off (files are checked as they are first read)",
    )
    recompute_statistics: bool = option(
        False, "compute the statistics of the training tier again instead of reading the cache"
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
        False, "use meta/statistics as shipped, not those of the training tier's frames"
    )
    batch_size: int = option(8, "trials per optimisation step (per session)")
    num_workers: int = option(2, "DataLoader worker processes")
    folds: int = option(
        1,
        "split each session's training trials into this many folds (fixed, whatever the seed) "
        "and train on all but --fold (1: no split); validation stays on val_tier",
    )
    fold: int = option(0, "the fold left out of training when folds > 1 (0 .. folds - 1)")
    cutmix_prob: float = option(
        0.0,
        "CutMix: probability that a training trial gets a box of another trial of its batch "
        "pasted into its movie, its responses mixed by the box's area (0: off)",
    )
    cutmix_alpha: float = option(1.0, "CutMix: the box's area fraction is Beta(alpha, alpha)")

    def check(self) -> None:
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(
            self.crop_frame >= 1 or self.crop_frame == -1,
            "crop_frame",
            f"must be >= 1 or -1 (whole trial), got {self.crop_frame}",
        )
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.folds >= 1, "folds", f"must be >= 1, got {self.folds}")
        require(
            0 <= self.fold < self.folds,
            "fold",
            f"must be in 0..{self.folds - 1} (--folds {self.folds}), got {self.fold}",
        )
        p, a = self.cutmix_prob, self.cutmix_alpha
        require(0 <= p <= 1, "cutmix_prob", f"must be in [0, 1], got {p}")
        require(a > 0, "cutmix_alpha", f"must be > 0, got {a}")


@dataclass
class ModelConfig(Options):
    """core -> per-session readout (moved by a shifter) -> output activation."""

    core: Any = part(CORES, "vivit", "the core shared by all sessions")
    readout: Any = part(READOUTS, "gaussian", "the readout of each session")
    shifter: Any = part(SHIFTERS, "mlp", "the shifter of each session (shifter_mode 0: no shifter)")
    output_activation: Any = part(ACTIVATIONS, "elu1", "keeps rates positive")
    modulator: Any = part(
        MODULATORS, "none", "behaviour -> a gain per neuron on each session's readout, or none"
    )


@dataclass
class TrainConfig(Options):
    """What the training loop does the same way for every model family: optimiser, schedule,
    early stopping and the numerics of a step (a family adds its own options in a subclass)."""

    epochs: int = option(400, "maximum epochs")
    lr: float = option(0.0048, "learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    adam_beta1: float = option(0.9, "Adam beta1")
    adam_beta2: float = option(0.999, "Adam beta2")
    adam_eps: float = option(1e-8, "Adam epsilon")
    optimizer: Literal["adamw", "lbfgs"] = option(
        "adamw",
        "adamw: a step per batch (or per accumulate_sessions batches); lbfgs: full-batch "
        "L-BFGS, one step of lbfgs_iterations iterations per epoch on the mean objective of all "
        "training batches, strong Wolfe line search from step size 1 (for deterministic "
        "objectives; lr, schedule_free and clipping are not used)",
    )
    lbfgs_iterations: int = option(20, "lbfgs: iterations per epoch")
    schedule_free: bool = option(
        False,
        "schedule-free AdamW (package schedulefree): no LR reductions; training stops after "
        "lr_patience epochs without improvement",
    )
    warmup_steps: int = option(0, "schedule-free: warm-up steps")
    accumulate_sessions: bool = option(
        True, "one optimiser step per as many batches as there are sessions (false: per batch)"
    )
    lr_schedule: Literal["plateau", "cosine"] = option(
        "plateau",
        "LR schedule: plateau (reduce the LR when validation stops improving, then stop early) "
        "or cosine (linear warm-up from 0 over warmup_epochs, then cosine decay to "
        "min_lr_ratio x lr by the last epoch, stepped every optimiser step; runs all epochs)",
    )
    warmup_epochs: int = option(0, "cosine schedule: epochs of linear warm-up")
    min_lr_ratio: float = option(0.01, "cosine schedule: the final LR as a fraction of lr")
    ema_decay: float | None = option(
        None,
        "keep an exponential moving average of the weights (parameters and batch-norm "
        "statistics) with this decay per optimiser step; validation, best.pt and last.pt use "
        "the averaged weights (none: off)",
    )
    lr_patience: int = option(10, "plateau schedule: epochs without improvement before reducing")
    lr_factor: float = option(0.3, "plateau schedule: factor applied to the LR")
    max_reduce: int = option(2, "plateau schedule: reductions before early stopping")
    min_epochs: int = option(0, "never stop before this many epochs")
    restore_best: bool = option(
        True,
        "end with the weights of the best validation epoch (best.pt); false: keep the last "
        "weights (last.pt), e.g. for a model fitted to convergence",
    )
    grad_norm: float | None = option(None, "clip gradients to this norm (none: off)")
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
        "gradient checkpointing of the core's blocks: 0 off, 1 on, auto (on a GPU: on only "
        "when one trial does not fit without it; off elsewhere) (none: on for CUDA, off "
        "elsewhere)",
    )
    compile: Literal[False, True, "auto"] = option(
        False, "torch.compile the core: true, false, or auto (on for CUDA devices)"
    )

    def check(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(
            self.micro_batch_size >= -1,
            "micro_batch_size",
            f"must be >= 1, 0 (search) or -1 (off), got {self.micro_batch_size}",
        )
        require(self.min_epochs >= 0, "min_epochs", f"must be >= 0, got {self.min_epochs}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 < self.lr_factor < 1, "lr_factor", f"must be in (0, 1), got {self.lr_factor}")
        require(self.lr_patience >= 1, "lr_patience", f"must be >= 1, got {self.lr_patience}")
        require(self.max_reduce >= 0, "max_reduce", f"must be >= 0, got {self.max_reduce}")
        require(
            self.grad_norm is None or self.grad_norm > 0,
            "grad_norm",
            f"must be > 0 or none, got {self.grad_norm}",
        )
        self._check_schedule()
        p = self.autoclip_percentile
        require(p is None or 0 < p <= 100, "autoclip_percentile", f"must be in (0, 100], got {p}")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            require(0 <= value < 1, name, f"must be in [0, 1), got {value}")
        n = self.lbfgs_iterations
        require(n >= 1, "lbfgs_iterations", f"must be >= 1, got {n}")
        if self.optimizer == "lbfgs":
            require(not self.schedule_free, "optimizer", "lbfgs cannot be schedule-free")
            clipping = self.grad_norm is not None or self.autoclip_percentile is not None
            require(not clipping, "optimizer", "lbfgs takes unclipped steps; leave out grad_norm and autoclip_percentile")  # fmt: skip

    def _check_schedule(self) -> None:
        cosine, w = self.lr_schedule == "cosine", self.warmup_epochs
        require(w >= 0, "warmup_epochs", f"must be >= 0, got {w}")
        require(cosine or w == 0, "warmup_epochs", "applies to --lr_schedule cosine only")
        require(w < self.epochs or not cosine, "warmup_epochs", f"must be < epochs ({self.epochs}), got {w}")  # fmt: skip
        r = self.min_lr_ratio
        require(0 <= r <= 1, "min_lr_ratio", f"must be in [0, 1], got {r}")
        require(not (cosine and self.schedule_free), "lr_schedule",
                "cosine and --schedule_free exclude each other (schedule-free AdamW has no LR schedule)")  # fmt: skip
        d = self.ema_decay
        require(d is None or 0 < d < 1, "ema_decay", f"must be in (0, 1) or none, got {d}")
        require(d is None or not self.schedule_free, "ema_decay",
                "and --schedule_free exclude each other (schedule-free AdamW averages the weights itself)")  # fmt: skip


@dataclass
class VideoTrainConfig(TrainConfig):
    """The loop's options, and the video model's loss and its core's own optimiser settings."""

    criterion: Literal["poisson"] = option(
        "poisson", "loss: poisson (summed over neurons and frames, averaged over trials)"
    )
    ds_scale: bool = option(
        True, "scale each session's loss by sqrt(training trials / batch size), as ViV1T"
    )
    core_lr: float | None = option(
        None, "learning rate of the core (none: lr; 0: the core is frozen, weights and mode)"
    )
    pretrained_core: str | None = option(
        None,
        "start from the core of this run (its folder or a checkpoint file; a folder gives its "
        "best.pt); its core options and transform_input must equal this run's; readouts and "
        "shifters of this run's sessions start fresh",
    )
    core_weight_decay: float | None = option(
        None, "AdamW weight decay of the core (none: weight_decay)"
    )

    def check(self) -> None:
        super().check()
        require(self.core_lr is None or self.core_lr >= 0, "core_lr", f"must be >= 0 (0: frozen), got {self.core_lr}")  # fmt: skip


@dataclass
class RunConfig(Options):
    """Where outputs go, which device, seeds and logging."""

    output_dir: str = option("runs/default", "folder for checkpoints, config and logs")
    device: str = option("", 'cpu | cuda | cuda:K | mps, or "" for the best available')
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
class Config(Options):
    """The whole configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: VideoTrainConfig = field(default_factory=VideoTrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


def check_config(config: Any) -> None:
    """Run every `check()` of the tree again (values may have been set after construction)."""
    if isinstance(config, Options):
        config.check()
    if dataclasses.is_dataclass(config):
        for f in dataclasses.fields(config):
            check_config(getattr(config, f.name))


# ----------------------------------------------------------------------------------------------
# The tree's shape: sections, slots and option fields
# ----------------------------------------------------------------------------------------------


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, type) of a dataclass, types resolved."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def slot_registry(f: dataclasses.Field) -> Registry | None:
    """The registry of a part slot, None for other fields."""
    return f.metadata.get("registry")


def part_fields(registry: Registry, name: str) -> dict[str, tuple[dataclasses.Field, Any]]:
    """The option fields of part `name`: {field name: (field, type)}."""
    return {f.name: (f, tp) for f, tp in _fields(registry.options_class(name))}


def current_name(registry: Registry, key: str) -> str:
    """The option's name now, for a name some part of `registry` had before (`renamed`)."""
    if registry.owners(key):
        return key
    for name in registry.names():
        new = registry.options_class(name).renamed.get(key)
        if new is not None:
            return new
    return key


def _option_type(registry: Registry, key: str) -> Any:
    """The type of option `key` in any part of `registry` (None if no part has it)."""
    for name in registry.owners(key):
        return part_fields(registry, name)[key][1]
    return None


# ----------------------------------------------------------------------------------------------
# Layers of nested dicts -> one checked dict -> dataclasses
# ----------------------------------------------------------------------------------------------

FLAGS = "flags"  # the source name of the command-line layer


def _where(source: str, path: tuple[str, ...]) -> str:
    """How an error names a value: `--flag` for flags, `file: a.b.c` for YAML."""
    if source == FLAGS:
        return f"--{path[-2] if path[-1] == 'name' and len(path) >= 2 else path[-1]}"
    return f"{source}: {'.'.join(path)}"


def _part_name(value: Any, where: str) -> dict[str, Any]:
    """A slot's value as a mapping ({"name": ...} for a bare name)."""
    if isinstance(value, str):
        return {"name": value}
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a part name or a mapping, got {value!r}")
    return dict(value)


def merge_layers(layers: Sequence[tuple[str, dict[str, Any]]], cls: type = Config) -> dict:
    """Merge nested dicts (lowest first), each checked against `cls` and converted; returns one
    dict that `build` turns into `cls`. A layer that picks another part for a slot drops the
    options lower layers gave the previous part (those the new part does not own)."""
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for source, values in layers:
        if cls is Config:
            values = _accept_version(upgrade_legacy(values), source)
        _merge_section(merged, values, cls, source, (), origins)
    _check_owners(merged, cls, (), origins)
    return merged


def _merge_section(merged, values, cls, source, path, origins) -> None:
    if not isinstance(values, dict):
        where = f"{source}: {'.'.join(path)}" if path else source
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: (f, tp) for f, tp in _fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"{source}: {'.'.join(path)}" if path else source
        raise ConfigError(f"{where}: unknown option(s) {unknown}; known: {sorted(fields)}")
    for key, value in values.items():
        f, tp = fields[key]
        here = (*path, key)
        registry = slot_registry(f)
        if registry is not None:
            slot = merged.setdefault(key, {"name": f.metadata["default"]})
            _merge_slot(slot, _part_name(value, _where(source, here)), registry, source, here, origins)  # fmt: skip
        elif dataclasses.is_dataclass(tp):
            _merge_section(merged.setdefault(key, {}), value or {}, tp, source, here, origins)
        else:
            merged[key] = convert(value, tp, _where(source, here))


def _merge_slot(slot, values, registry, source, path, origins) -> None:
    name = values.pop("name", None)
    if name is not None:
        name = convert(name, str, _where(source, (*path, "name")))
        registry.get(name)  # an unknown part is an error here, naming the known ones
        if name != slot["name"]:  # options given for the previous part no longer apply
            for key in [k for k in slot if k != "name" and name not in registry.owners(k)]:
                del slot[key]
        slot["name"] = name
    for key, value in values.items():
        key = current_name(registry, key)
        tp = _option_type(registry, key)
        if tp is None:
            known = sorted({f for n in registry.names() for f in part_fields(registry, n)})
            raise ConfigError(
                f"{_where(source, (*path, key))}: unknown {registry.kind} option; known: {known}"
            )
        slot[key] = convert(value, tp, _where(source, (*path, key)))
        origins[(*path, key)] = source


def _check_owners(merged, cls, path, origins) -> None:
    """Every option in a slot belongs to the part chosen for it."""
    for f, tp in _fields(cls):
        registry = slot_registry(f)
        if f.name not in merged:
            continue
        if registry is not None:
            slot = merged[f.name]
            for key in slot:
                owners = registry.owners(key)
                if key != "name" and slot["name"] not in owners:
                    here = (*path, f.name, key)
                    raise ConfigError(
                        f"{_where(origins.get(here, 'config'), here)} belongs to "
                        f"{registry.kind} {', '.join(owners)}; the chosen {registry.kind} is "
                        f"{slot['name']}"
                    )
        elif dataclasses.is_dataclass(tp):
            _check_owners(merged[f.name], tp, (*path, f.name), origins)


def build(cls: type, values: dict[str, Any]) -> Any:
    """`cls` from a dict `merge_layers` made (option checks run as each dataclass is made)."""
    kwargs = {}
    for f, tp in _fields(cls):
        if f.name not in values:
            continue
        registry = slot_registry(f)
        if registry is not None:
            opts = dict(values[f.name])
            kwargs[f.name] = registry.options(opts.pop("name"), **opts)
        elif dataclasses.is_dataclass(tp):
            kwargs[f.name] = build(tp, values[f.name])
        else:
            kwargs[f.name] = copy.deepcopy(values[f.name])
    return cls(**kwargs)


def from_dict(values: dict[str, Any], source: str = "config", cls: type = Config) -> Any:
    """Build `cls` from a nested dict, checking every key and value."""
    return build(cls, merge_layers([(source, values)], cls))


def to_dict(config: Any) -> dict[str, Any]:
    """The config as a nested dict of plain values (YAML-ready); a Config carries `version`."""
    out: dict[str, Any] = {"version": CONFIG_VERSION} if isinstance(config, Config) else {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if slot_registry(f) is not None:
            options = to_dict(value)
            out[f.name] = {"name": value.name, **options} if options else value.name
        elif dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = copy.deepcopy(value)
    return out


# ----------------------------------------------------------------------------------------------
# Versions: configs written by the previous release
# ----------------------------------------------------------------------------------------------

# The previous release (0.1, configs without `version`) saved one flat core section holding
# every core's fields, and every readout's fields, whatever part was chosen.
LEGACY_FIELDS = {
    "core": (
        "core_behavior_mode", "core_behavior_tokens", "core_num_layers", "core_hidden_dim",
        "core_spatial_input_kernel", "core_spatial_hidden_kernel", "core_temporal_input_kernel",
        "core_temporal_hidden_kernel", "core_dropout", "core_spatial_patch_size",
        "core_spatial_patch_stride", "core_temporal_patch_size", "core_temporal_patch_stride",
        "core_pad_frame", "core_emb_dim", "core_spatial_depth", "core_temporal_depth",
        "core_num_heads", "core_head_dim", "core_ff_dim", "core_ff_activation", "core_p_dropout",
        "core_mha_dropout", "core_ff_dropout", "core_drop_path", "core_use_causal_attention",
        "core_parallel_attention", "core_norm_qk", "core_pos_encoding", "core_reg_tokens",
        "core_max_frame", "core_pretrained_weights",
    ),
    "readout": (
        "readout_bias_mode", "readout_grid_mode", "readout_gauss_type", "readout_init_mu_range",
        "readout_init_sigma", "readout_reg_weight", "readout_dropout",
    ),
}  # fmt: skip


def is_legacy(values: dict[str, Any]) -> bool:
    """A config saved by the previous release: no `version`, a core section with every field."""
    core = (values.get("model") or {}).get("core") if isinstance(values, dict) else None
    return (
        "version" not in values
        and isinstance(core, dict)
        and set(LEGACY_FIELDS["core"]) <= set(core)
    )


def upgrade_legacy(values: dict[str, Any]) -> dict[str, Any]:
    """A previous release's saved config with the fields of the parts not chosen left out (the
    release ignored them); any other dict unchanged."""
    if not isinstance(values, dict) or not is_legacy(values):
        return values
    out = copy.deepcopy(values)
    model = out["model"]
    for slot, registry, default in (("core", CORES, "vivit"), ("readout", READOUTS, "gaussian")):
        section = model.get(slot)
        if not isinstance(section, dict):
            continue
        name = section.get("name", default)
        own = set(part_fields(registry, name)) if name in registry else set()
        own |= set(registry.options_class(name).renamed) if name in registry else set()
        model[slot] = {k: v for k, v in section.items() if k not in LEGACY_FIELDS[slot] or k in own}
    out["version"] = CONFIG_VERSION
    return out


def _accept_version(values: Any, source: str) -> Any:
    if not isinstance(values, dict) or "version" not in values:
        return values
    values = dict(values)
    version = values.pop("version")
    if version != CONFIG_VERSION:
        raise ConfigError(
            f"{source}: version {version!r}: this neurotwin reads config versions up to "
            f"{CONFIG_VERSION}"
        )
    return values


# ----------------------------------------------------------------------------------------------
# YAML files
# ----------------------------------------------------------------------------------------------


def load_yaml(path: str | Path) -> Config:
    """Read a YAML preset or a saved config (one of the previous release too)."""
    return from_dict(read_yaml(path), str(path))


def save_yaml(config: Any, path: str | Path) -> Path:
    """Write the resolved config (atomically), so that `load_yaml` gives it back exactly."""
    return write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


# ----------------------------------------------------------------------------------------------
# Flags (argparse), made from the tree
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """One command-line flag: where its value goes in the tree, its type and help.

    `owners` are the parts that declare it (empty for section options and slot choices);
    `defaults` its default per owner (one entry, key "", for the others)."""

    name: str
    path: tuple[str, ...]
    type: Any
    help: str
    defaults: dict[str, Any]
    group: str
    owners: tuple[str, ...] = ()


def flags(cls: type = Config, path: tuple[str, ...] = ()) -> list[Flag]:
    """Every flag of the tree under `cls` (any tree of options dataclasses), in help order
    (parts are looked up now). A section's `name` field is the flag of the section's name, as a
    slot's part is (`model.name` -> `--model`)."""
    out: list[Flag] = []
    for f, tp in _fields(cls):
        here = (*path, f.name)
        registry = slot_registry(f)
        if registry is not None:
            out.extend(_slot_flags(f, registry, here))
        elif dataclasses.is_dataclass(tp):
            out.extend(flags(tp, here))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            group = f"{path[0]} options" if path else "options"
            name = path[-1] if f.name == "name" and path else f.name
            out.append(Flag(name, here, tp, f.metadata.get("help", ""), {"": default}, group))
    names = [x.name for x in out]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:  # pragma: no cover - guards the declarations of options
        raise RuntimeError(f"options declared in two places of the config tree: {clash}")
    return out


def _slot_flags(f: dataclasses.Field, registry: Registry, path: tuple[str, ...]) -> list[Flag]:
    names = registry.names()
    choice = Flag(
        f.name,
        (*path, "name"),
        Literal[tuple(names)],
        f.metadata["help"],
        {"": f.metadata["default"]},
        f"{registry.kind} (the groups after this one hold the options of the parts they name)",
    )
    fields: dict[str, dict[str, tuple[dataclasses.Field, Any]]] = {}
    for name in names:
        for key, (field_, tp) in part_fields(registry, name).items():
            fields.setdefault(key, {})[name] = (field_, tp)
    out = [choice]
    for key, by_part in fields.items():
        types_ = {repr(tp) for _, tp in by_part.values()}
        if len(types_) > 1:  # pragma: no cover - guards the declarations of options
            raise RuntimeError(f"{registry.kind} option {key} has different types: {types_}")
        first_field, tp = next(iter(by_part.values()))
        defaults = {}
        for name, (field_, _) in by_part.items():
            defaults[name] = (
                field_.default
                if field_.default is not dataclasses.MISSING
                else field_.default_factory()
            )
        owners = tuple(by_part)
        group = f"{registry.kind} options of {', '.join(owners)}"
        out.append(Flag(key, (*path, key), tp, first_field.metadata.get("help", ""), defaults, group, owners))  # fmt: skip
    # options of the same parts together, in the order the parts come
    return [choice] + sorted(out[1:], key=lambda x: [x.group for x in out[1:]].index(x.group))


def _default_text(flag: Flag) -> str:
    values = list(flag.defaults.values())
    if all(v == values[0] for v in values):
        return f"default: {_show(values[0])}"
    return "default: " + ", ".join(f"{_show(v)} ({n})" for n, v in flag.defaults.items())


_SAYS_NONE = re.compile(r"(\(|; )none: ")


def help_text(flag: Flag) -> str:
    """The help of a flag with its default said once: a help that already says what none
    means ("(none: every session found)") gets "(default: none = every session found)"."""
    values = list(flag.defaults.values())
    if all(v is None for v in values) and _SAYS_NONE.search(flag.help):
        return _SAYS_NONE.sub(lambda m: f"{m.group(1)}default: none = ", flag.help, count=1)
    return f"{flag.help} ({_default_text(flag)})"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else '""'


def add_config_flags(
    parser: argparse.ArgumentParser, exclude: Sequence[str] = (), cls: type = Config
) -> None:
    """Add `--config` and one `--flag` per option of the tree `cls`, grouped by section and
    part; only flags given on the command line are set (the others are absent from the parsed
    namespace)."""
    parser.add_argument(
        "--config", type=str, default=None, help="YAML preset to start from (default: none)"
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in flags(cls):
        if flag.name in exclude:
            continue
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        optional, inner = is_optional(flag.type)
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": flag.name}
        text = help_text(flag)
        if get_origin(inner) is Literal:
            text += f" choices: {' | '.join(_show(c) for c in get_args(inner))}"
        if inner is bool or (
            get_origin(inner) is Literal and any(c is True for c in get_args(inner))
        ):
            kwargs.update(nargs="?", const="true", metavar="BOOL")  # a bare --flag means true
        elif get_origin(inner) is list:
            kwargs.update(nargs="+", metavar="VALUE")
        else:
            kwargs.update(metavar=flag.name.upper())
        groups[flag.group].add_argument(f"--{flag.name}", type=str, help=text, **kwargs)


def flag_layer(args: argparse.Namespace, cls: type = Config) -> dict[str, Any]:
    """The flags of the tree `cls` given on a command line as a nested dict (a layer for
    `merge_layers`)."""
    by_name = {flag.name: flag for flag in flags(cls)}
    layer: dict[str, Any] = {}
    for name, value in vars(args).items():
        flag = by_name.get(name)
        if flag is None:
            continue
        node = layer
        for key in flag.path[:-1]:
            node = node.setdefault(key, {})
        node[flag.path[-1]] = value
    return layer


def resolve(
    args: argparse.Namespace, base: Sequence[tuple[str, dict[str, Any]]] = (), cls: type = Config
) -> Any:
    """A `cls` (default: Config) from `base` layers (e.g. a saved run's config), the YAML
    preset (if any), then the flags."""
    layers = list(base)
    if getattr(args, "config", None):
        layers.append((str(args.config), read_yaml(args.config)))
    layers.append((FLAGS, flag_layer(args, cls)))
    return build(cls, merge_layers(layers, cls))


def parse_config(argv: Sequence[str] | None = None, prog: str | None = None) -> Config:
    """Parse a command line into a Config (what train.py does, without --restore)."""
    parser = argparse.ArgumentParser(prog=prog, description="neurotwin options")
    add_config_flags(parser)
    return resolve(parser.parse_args(argv))

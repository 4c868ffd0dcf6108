"""Parameter counts and the one-line model summary the trainer prints at start."""

from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module | None, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """{"core", "readouts", "shifters", "activations", "total", "trainable"} parameter counts."""
    counts = {
        "core": count_parameters(getattr(model, "core", None)),
        "readouts": count_parameters(getattr(model, "readouts", None)),
        "shifters": count_parameters(getattr(model, "shifters", None)),
        "activations": count_parameters(getattr(model, "output_activation", None)),
    }
    counts["total"] = count_parameters(model)
    counts["trainable"] = count_parameters(model, trainable_only=True)
    return counts


def _fmt(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def summary(model: nn.Module) -> str:
    """One line: core name and parameter counts of core / readouts / shifters / total."""
    c = parameter_counts(model)
    core = getattr(model, "core", None)
    core = getattr(core, "_orig_mod", core)
    core_name = getattr(core, "registered_name", type(core).__name__)
    readouts = getattr(model, "readouts", {})
    readout_name = next(
        (getattr(r, "registered_name", type(r).__name__) for r in readouts.values()), "-"
    )
    n = len(readouts)
    return (
        f"model: core {core_name} {_fmt(c['core'])} params | readout {readout_name} x {n} "
        f"session{'s' if n != 1 else ''} {_fmt(c['readouts'])} | shifters {_fmt(c['shifters'])} | "
        f"total {_fmt(c['total'])} ({_fmt(c['trainable'])} trainable)"
    )

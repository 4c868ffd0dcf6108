"""In-silico experiments on a trained model (or the synthetic mice's ground truth).

    from neurotwin import analysis
    analysis.run("arf", "runs/demo", noise_images=8000)            # RUN/analysis/arf/
    analysis.run("tuning", "runs/demo", sessions=[...], neurons=[0, 1, 2])
    subject = analysis.open_subject("runs/demo")                   # load once, run several
    analysis.run("size", "runs/demo", subject=subject)

Analyses (registered by name in `ANALYSES`, each in its own module with its options beside it):
arf, tuning, size, contextual, mei, readout. Each writes RUN/analysis/NAME/{session}.parquet (one
row per neuron, with `neuron` and `unit_id`), {session}.npz, {session}_*.png and summary.json.
Stimulus conventions: `neurotwin.analysis.stimuli` (CONVENTIONS, also in every summary.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurotwin.analysis import arf, contextual, mei, readout, size, tuning  # noqa: F401 (register)
from neurotwin.analysis.context import Context, SessionResult, build_options
from neurotwin.analysis.registry import ANALYSES, Analysis
from neurotwin.analysis.stimuli import CONVENTIONS
from neurotwin.analysis.subject import Subject, load_trained, load_truth

__all__ = [
    "ANALYSES",
    "Analysis",
    "CONVENTIONS",
    "Context",
    "SessionResult",
    "Subject",
    "open_subject",
    "run",
]


def open_subject(
    output_dir: str | Path,
    checkpoint: str = "best",
    device: str | None = None,
    data_dir: str | Path | None = None,
    truth: bool = False,
    sessions: Sequence[str] | None = None,
) -> Subject:
    """The model to probe: the trained run in `output_dir`, or with `truth` the generator's
    ground-truth module of the synthetic sessions in `data_dir` (default: the run's data_dir)."""
    if not truth:
        return load_trained(output_dir, checkpoint, device, data_dir)
    if data_dir is None:
        from neurotwin.config import load_yaml
        from neurotwin.errors import ConfigError

        config = Path(output_dir) / "config.yaml"
        if not config.is_file():
            raise ConfigError("--truth needs --data_dir (or a run folder with config.yaml)")
        data_dir = load_yaml(config).data.data_dir
    return load_truth(data_dir, list(sessions) if sessions else None, device)


def run(
    name: str,
    output_dir: str | Path,
    *,
    subject: Subject | None = None,
    checkpoint: str = "best",
    sessions: Sequence[str] | None = None,
    neurons: Sequence[int] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    data_dir: str | Path | None = None,
    truth: bool = False,
    progress: bool | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run analysis `name` (options as keyword arguments, the fields of its Options) on the
    model of `output_dir` (or `subject`), write OUTPUT_DIR/analysis/NAME/, return summary.json's
    content."""
    cls = ANALYSES.get(name)
    opts = build_options(cls.Options, options)
    if subject is None:
        subject = open_subject(output_dir, checkpoint, device, data_dir, truth, sessions)
    ctx = Context(subject, output_dir, sessions, neurons, batch_size, progress)
    return ctx.run(cls(opts))

"""Analyses by name: `@ANALYSES.register("name")` on a class with `Options` (a dataclass of its
options, fields made with `neurotwin.config.option`) and `run_session(context, session)`.

    from neurotwin.analysis.registry import ANALYSES, Analysis

    @ANALYSES.register("mine")
    class Mine(Analysis):
        Options = MineOptions
        def run_session(self, ctx, session): ...

plus one import line in `neurotwin/analysis/__init__.py`. The CLI makes one flag per field of
`Options`, so an analysis's options have one home.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from neurotwin.models.registry import Registry

if TYPE_CHECKING:
    from neurotwin.analysis.context import Context, SessionResult

ANALYSES = Registry("analysis")


class Analysis:
    """One in-silico experiment. Subclasses set `Options`, `needs` (analyses whose tables they
    read, computed first when missing) and implement `run_session`; `summarise` and
    `figures` have defaults."""

    registered_name: ClassVar[str]
    Options: ClassVar[type]
    needs: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, options: Any) -> None:
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} expects {self.Options.__name__} options")
        self.options = options

    def run_session(self, ctx: Context, session: str) -> SessionResult:
        """Probe one session; the table, arrays and figures of its result are written by the
        caller."""
        raise NotImplementedError

    def summarise(self, results: dict[str, SessionResult]) -> dict[str, Any]:
        """Population statistics over sessions for summary.json (default: each session's)."""
        return {}

    def parameters(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

"""How every command talks to the terminal: log lines as plain messages, and on bad input one
line on stderr and status 2 (as argparse's own errors), on Ctrl-C status 130 with how to go on,
instead of a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from neurotwin.errors import NeurotwinError


def log_messages(verbose: bool = True) -> None:
    """Log lines as bare messages on stderr: INFO and up when `verbose`, else warnings only."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


def one_line(error: BaseException) -> str:
    """The error's message with its white space folded onto one line (its class name if empty)."""
    return " ".join(str(error).split()) or type(error).__name__


@contextmanager
def exit_on_error(prog: str, interrupted: Callable[[], str] | None = None) -> Iterator[None]:
    """Run the block; a NeurotwinError prints `PROG: error: MESSAGE` and exits 2. With
    `interrupted`, Ctrl-C prints `PROG: interrupted` plus what it returns and exits 130."""
    try:
        yield
    except NeurotwinError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"{prog}: interrupted{interrupted()}", file=sys.stderr)
        raise SystemExit(130) from None

"""Run logging: console and `train.log`, progress bars, `metrics.csv`, and optionally wandb.

Only the process that writes (rank 0) logs; the others get a silent logger. wandb is imported only
when a wandb group is given (`--wandb GROUP`); `--wandb_mode offline` works without a network.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from neurotwin.errors import ConfigError
from neurotwin.files import write_text

METRICS_FILE = "metrics.csv"
LOG_FILE = "train.log"
LOG_ONLY = 99  # a `print` level that no verbosity reaches: train.log only


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    return str(value)


class RunLogger:
    """Prints lines (console + train.log), keeps metrics.csv and, if asked, a wandb run."""

    def __init__(
        self,
        output_dir: str | Path,
        enabled: bool = True,
        verbose: int = 1,
        wandb_group: str | None = None,
        wandb_mode: str = "online",
        config: dict[str, Any] | None = None,
        resume_epoch: int | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.verbose = verbose
        self._log = None
        self._wandb = None
        self._columns: list[str] | None = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.output_dir / LOG_FILE, "a", encoding="utf-8")
        self._prepare_metrics(resume_epoch)
        if wandb_group:
            self._wandb = _init_wandb(self.output_dir, wandb_group, wandb_mode, config or {})

    # -- text --------------------------------------------------------------------------------
    def print(self, message: str = "", level: int = 1) -> None:
        """Write a line to train.log and, if `verbose >= level`, to the console."""
        if not self.enabled:
            return
        if self._log is not None:
            self._log.write(message + "\n")
            self._log.flush()
        if self.verbose >= level:
            print(message, flush=True)

    def progress(self, iterable: Iterable, total: int | None = None, desc: str = "") -> Iterator:
        """A tqdm progress bar (stderr, when it is a terminal) if enabled and verbose."""
        if not self.enabled or self.verbose < 1:
            return iter(iterable)
        return iter(
            tqdm(
                iterable,
                total=total,
                desc=desc,
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=0.5,
                disable=None,  # on a terminal; not in files and pipes
            )
        )

    # -- metrics.csv ---------------------------------------------------------------------------
    def _prepare_metrics(self, resume_epoch: int | None) -> None:
        """On resume, keep the rows up to the restored epoch (a killed run may have written more)."""
        path = self.output_dir / METRICS_FILE
        if not path.is_file():
            return
        if resume_epoch is None:
            path.unlink()
            return
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        keep = [r for r in body if r and r[0].isdigit() and int(r[0]) <= resume_epoch]
        self._columns = header
        self._write_rows(header, keep)

    def _write_rows(self, header: list[str], rows: list[list[str]]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows(rows)
        write_text(self.output_dir / METRICS_FILE, buf.getvalue())

    def log_metrics(self, row: dict[str, Any], step: int | None = None) -> None:
        """Append one row to metrics.csv (new columns rewrite the header) and log to wandb."""
        if not self.enabled:
            return
        path = self.output_dir / METRICS_FILE
        if self._columns is None or not path.is_file():
            self._columns = list(row)
            self._write_rows(self._columns, [])
        elif any(k not in self._columns for k in row):
            with open(path, newline="", encoding="utf-8") as f:
                old = list(csv.DictReader(f))
            self._columns = self._columns + [k for k in row if k not in self._columns]
            rows = [[r.get(c, "") or "" for c in self._columns] for r in old]
            self._write_rows(self._columns, rows)
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([_fmt(row.get(c, "")) for c in self._columns])
        if self._wandb is not None:
            self._wandb.log(
                {k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step
            )

    def close(self, exit_code: int = 0) -> None:
        if self._wandb is not None:
            self._wandb.finish(exit_code=exit_code)
            self._wandb = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _init_wandb(output_dir: Path, group: str, mode: str, config: dict[str, Any]) -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "run.wandb: wandb is not installed; install it with `pip install neurotwin[wandb]` "
            "or leave out --wandb"
        ) from None
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "neurotwin"),
        group=group,
        name=output_dir.name,
        dir=str(output_dir),
        mode=mode,
        config=config,
        resume="allow",
        id=_wandb_id(output_dir),
    )
    return run


def _wandb_id(output_dir: Path) -> str:
    """A stable run id per output folder, so that a resumed run continues the same wandb run."""
    path = output_dir / ".wandb_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id)
    return run_id

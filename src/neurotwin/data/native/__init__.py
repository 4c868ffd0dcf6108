"""The native on-disk layout, the format of every source: Sensorium 2023 session folders.

`layout` names its arrays, files and tiers; `reader` reads a session folder (`NativeSession`,
`find_sessions`); `writer` writes one (`SessionArrays`, `write_session`); `statistics` computes
the statistics of its arrays; `check` checks the trial files of the sessions a run reads.
Everything is importable from here: `native.NativeSession`, `native.VIDEOS`, `native.check`, ...
"""

from neurotwin.data.native import check
from neurotwin.data.native.layout import *  # noqa: F403
from neurotwin.data.native.reader import (
    SENSORIUM_2023_MICE,
    NativeSession,
    find_sessions,
    is_session_folder,
    session_alias,
)
from neurotwin.data.native.statistics import (
    RunningStatistics,
    compute_statistics,
    training_statistics,
    trial_statistics,
)
from neurotwin.data.native.writer import SessionArrays, write_session

__all__ = [  # noqa: F405
    "SENSORIUM_2023_MICE",
    "NativeSession",
    "RunningStatistics",
    "SessionArrays",
    "check",
    "compute_statistics",
    "find_sessions",
    "is_session_folder",
    "session_alias",
    "training_statistics",
    "trial_statistics",
    "write_session",
]

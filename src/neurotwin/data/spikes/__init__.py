"""Spike trains: the spike table layout, and the loader that bins it into trains.

`layout` reads, checks and writes session folders of three parquet tables (`SpikeSession`,
`read_session`, `write_session`, `find_sessions`), re-exported here; `loader` selects and splits
their trials and bins them into batches of counts on the fly (`SpikeData`, `SpikeDataOptions`,
`SpikeBatch`, `bin_trials`): import it as `neurotwin.data.spikes.loader` (it needs torch, the
layout does not, so that the converters and the simulator load without it).
"""

from neurotwin.data.spikes.layout import (
    LAYOUT_FILES,
    META_FILE,
    SPIKES_FILE,
    TRIALS_FILE,
    UNITS_FILE,
    SpikeSession,
    find_sessions,
    is_session,
    read_session,
    write_session,
)

__all__ = [
    "LAYOUT_FILES",
    "META_FILE",
    "SPIKES_FILE",
    "TRIALS_FILE",
    "UNITS_FILE",
    "SpikeSession",
    "find_sessions",
    "is_session",
    "read_session",
    "write_session",
]

"""Responses as tables + stimuli as video files (the dLGN projects' format) -> a native session.

Response table (--responses, a pickled pandas DataFrame .pkl/.pickle or a .parquet file), one
row per unit and trial:
- `unit_id` (int), `trial_id` (int): every unit has exactly one row in every trial;
- exactly one of `spike_times` (a sequence of seconds from the trial's first movie frame; spikes
  before it or after the last whole bin are left out) or `rates` (a sequence of non-negative
  numbers, one per response bin of `bin_ms`, starting at that frame; one length per trial).

Trial table (--trials, same file types), one row per trial:
- `trial_id` (int, unique; the same ids as the response table's, no more, no fewer);
- `video` (str): the movie file, relative to --videos (or absolute), any format FFmpeg reads;
- `tier` (str): train, oracle, live_test_main, live_test_bonus, final_test_main,
  final_test_bonus or none;
- optional `pupil_dilation`, `running_speed`, `pupil_x`, `pupil_y`: sequences with one value per
  response bin (zeros where absent).

Native frames are the response bins: each movie (shown at --fps, default the file's rate) is
resampled to bins of --bin_ms by time-weighted averaging, so any frame rate works. A trial's
length is its rates' length, or (spike times) the whole bins its movie covers.

- `convert.convert_table_video(responses, trials, videos, out, bin_ms, ...)`: the conversion.
- CLI: `neurotwin-data table-video` (neurotwin.cli.data_table_video).
"""

from neurotwin.data.tablevideo.convert import convert_table_video

__all__ = ["convert_table_video"]

"""The space responses are scored in, and the trial frames the official Sensorium loader gives.

The competition scored submissions with its own data loader (organisers' note of 2023-09-15;
ecker-lab/sensorium_2023 `sensorium/datasets/mouse_video_loaders.py`), which changes responses in
two ways that neurotwin's raw metrics do not:

- `NeuroNormalizer` (sinzlab/neuralpredictors `data/transforms.py`) multiplies the responses by
  a precision made from the *shipped* standard deviation `meta/statistics/responses/all/std.npy`
  (over trials, one value per neuron and frame as published): `threshold = 0.01 * nanmean(std)`
  over the whole array, `precision = 1 / std` where `std > threshold`, else `1 / threshold`. The
  stored (N, T) response array is multiplied element-wise, so frame t of a trial is scaled by
  column t. Since the scale changes from frame to frame, correlations change too (DwiseNeuro's
  submission rose from 0.249 to 0.272 when it submitted its predictions in this space).
- `CutVideos(max_frame=None)` cuts every array of a trial at the first frame where any of its
  arrays (videos, responses, behavior, pupil_center) holds a NaN (`loader_frames`).

`ScoreSpace("raw")` scores responses as stored over each trial's valid video frames;
`ScoreSpace("normalized")` scores both responses and predictions multiplied by the precision, over
the frames the loader keeps. The submission is written in the normalized units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neurotwin.data import native
from neurotwin.errors import DataFormatError

SCORE_SPACES = ("raw", "normalized")
STD_FILE = f"{native.STATISTICS_DIR}/{native.RESPONSES}/all/std.npy"
THRESHOLD_FRACTION = 0.01  # NeuroNormalizer: std below 1% of the mean std is replaced by it


def response_precision(session: native.NativeSession) -> np.ndarray:
    """NeuroNormalizer's response precision of a session, (N, T_stat) float32 (T_stat = 1 when
    the shipped std has no frame axis), for the session's neurons (`limit_neurons` applied)."""
    path = session.path / STD_FILE
    if not path.is_file():
        raise DataFormatError(path, "file not found (the normalized space needs it)", "std")
    std = np.load(path, allow_pickle=False)
    n = session.n_neurons_total
    if std.dtype.kind not in "iuf" or std.ndim not in (1, 2) or std.shape[0] != n:
        raise DataFormatError(
            path,
            f"expected ({n},) or ({n}, T) numbers, got dtype {std.dtype} shape {std.shape}",
            "std",
        )
    std = np.asarray(std, dtype=np.float64).reshape(n, -1)
    threshold = THRESHOLD_FRACTION * np.nanmean(std)
    with np.errstate(invalid="ignore"):
        above = std > threshold
    precision = np.full(std.shape, 1.0 / threshold)
    precision[above] = 1.0 / std[above]
    if session.neuron_index is not None:
        precision = precision[session.neuron_index]
    return precision.astype(np.float32)


def loader_frames(arrays: dict[str, np.ndarray], hidden: bool) -> int:
    """Frames of a trial the official loader keeps (CutVideos, max_frame=None): up to the first
    frame at which any array holds a NaN. Responses of a tier shipped without them (zeros or
    NaN) are left out: zeros never cut, and NaN there says nothing about the trial."""
    names = [native.VIDEOS, native.BEHAVIOR, native.PUPIL_CENTER]
    if not hidden:
        names.append(native.RESPONSES)
    end = arrays[native.VIDEOS].shape[-1]
    for name in names:
        a = arrays[name]
        bad = np.isnan(a.reshape(-1, a.shape[-1])).any(axis=0)
        if bad.any():
            end = min(end, int(np.argmax(bad)))
    return end


@dataclass
class ScoreSpace:
    """How responses and predictions are compared: `raw` or `normalized` (see the module)."""

    name: str = "raw"

    def __post_init__(self) -> None:
        if self.name not in SCORE_SPACES:
            raise ValueError(f"score space must be one of {SCORE_SPACES}, got {self.name!r}")

    @property
    def normalized(self) -> bool:
        return self.name == "normalized"

    def end(self, length: int, loader_end: int) -> int:
        """The end of a trial's scored frames: its valid frames (raw) or the loader's."""
        return min(length, loader_end) if self.normalized else length


class Precision:
    """A session's NeuroNormalizer precision, applied to frames [start, stop) of (..., N, T)
    numpy arrays or tensors (on any device)."""

    def __init__(self, session: native.NativeSession) -> None:
        self.values = response_precision(session)
        self.source = session.path / STD_FILE
        self._tensors: dict[torch.device, torch.Tensor] = {}

    def _check(self, start: int, stop: int) -> None:
        frames = self.values.shape[1]
        if frames > 1 and stop > max(frames, start):  # an empty range needs no frame
            raise DataFormatError(
                self.source, f"has {frames} frames; a trial needs frame {stop - 1}", "std"
            )

    def columns(self, start: int, stop: int) -> np.ndarray:
        """(N, stop - start) float32: the precision of those frames."""
        self._check(start, stop)
        if self.values.shape[1] == 1:
            return np.repeat(self.values, max(stop - start, 0), axis=1)
        return self.values[:, start:stop]

    def apply(self, x, start: int, stop: int):
        """`x` (..., N, stop - start) times the precision of frames [start, stop)."""
        self._check(start, stop)
        if not isinstance(x, torch.Tensor):
            v = self.values if self.values.shape[1] == 1 else self.values[:, start:stop]
            return x * v
        if x.device not in self._tensors:
            self._tensors[x.device] = torch.from_numpy(self.values).to(x.device)
        v = self._tensors[x.device]
        v = v if v.shape[1] == 1 else v[:, start:stop]
        return x * v.to(x.dtype)

"""Movie files -> grey frames, and frames at any rate -> the responses' time bins.

Decoding goes through PyAV (FFmpeg's libraries; any container and codec FFmpeg reads). Frames
become 8-bit luminance (FFmpeg's "gray" conversion), as float32 in 0-255, the native layout's
pixel range. `frames_in_bins` resamples them: the value of a bin is the time-weighted mean of the
frames on screen during it (frame k is shown from k / fps to (k + 1) / fps), which averages when
bins are longer than frames and repeats a frame when they are shorter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurotwin.errors import DataFormatError, NeurotwinError

INSTALL_HINT = "reading video files needs PyAV: pip install 'neurotwin[video]' (or pip install av)"


@dataclass
class Movie:
    """A decoded movie: `frames` (F, H, W) float32 grey levels and the file's frame rate."""

    path: Path
    frames: np.ndarray
    file_fps: float | None

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def _av():
    try:
        import av
    except ImportError:
        raise NeurotwinError(INSTALL_HINT) from None
    return av


def read_movie(path: str | Path) -> Movie:
    """Decode every frame of the first video stream of `path` to grey levels.

    DataFormatError (field "video") when the file is missing, holds no video stream or no
    frame, cannot be decoded, or yields fewer frames than its header declares (a cut file)."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "video file not found", "video")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataFormatError(path, "no video stream in the file", "video")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            declared = _declared_frames(stream, container, rate)
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="gray"))
    except DataFormatError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DataFormatError(
            path, f"unreadable frames ({len(frames)} decoded before the error): {e}", "video"
        ) from None
    if not frames:
        raise DataFormatError(path, "no frame could be decoded", "video")
    if declared and len(frames) < declared - 1:  # one frame of rounding in a duration
        raise DataFormatError(
            path,
            f"unreadable frames: the header declares {declared} frames, {len(frames)} could be "
            "decoded (a cut or damaged file)",
            "video",
        )
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise DataFormatError(
            path, f"frames change size within the file: {sorted(shapes)}", "video"
        )
    return Movie(path, np.stack(frames).astype(np.float32), float(rate) if rate else None)


def _declared_frames(stream, container, rate) -> int:
    """The frames the header promises: its frame count, else its duration x rate (Matroska
    states a duration but no count); 0 when it says neither."""
    if stream.frames:
        return int(stream.frames)
    if container.duration and rate:
        return int(round(container.duration / 1e6 * float(rate)))  # duration in microseconds
    return 0


def frame_weights(n_frames: int, fps: float, bin_s: float, n_bins: int) -> np.ndarray:
    """(n_bins, n_frames) weights: the share of bin i during which frame k is on screen (rows
    sum to 1 where the movie covers the bin; the caller checks that it covers every bin)."""
    frame_edges = np.arange(n_frames + 1, dtype=np.float64) / fps
    bin_edges = np.arange(n_bins + 1, dtype=np.float64) * bin_s
    lo = np.maximum(bin_edges[:-1, None], frame_edges[None, :-1])
    hi = np.minimum(bin_edges[1:, None], frame_edges[None, 1:])
    return np.clip(hi - lo, 0.0, None) / bin_s


def frames_in_bins(frames: np.ndarray, fps: float, bin_s: float, n_bins: int) -> np.ndarray:
    """(F, H, W) frames shown at `fps` -> (n_bins, H, W) float32: each bin's time-weighted mean
    frame (see the module docstring)."""
    w = frame_weights(frames.shape[0], fps, bin_s, n_bins).astype(np.float32)
    return np.einsum("bf,fhw->bhw", w, frames.astype(np.float32), optimize=True)


def covered_bins(n_frames: int, fps: float, bin_s: float) -> int:
    """Whole bins the movie's frames cover (a float tolerance of 1e-6 of a bin)."""
    return int(np.floor(n_frames / fps / bin_s + 1e-6))

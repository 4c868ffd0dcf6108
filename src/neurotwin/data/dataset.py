"""A torch Dataset over one session and tier, with the input/output transforms.

Transforms follow ViV1T's ``--transform_input`` / ``--transform_output`` (0/1/2), using the
session's statistics (by default computed from the training tier over trials and frames):

inputs (``transform_input``)
    0  none
    1  standardise: video and pupil centre ``(x - mean) / std``; behaviour (pupil dilation,
       running speed) ``x / std``, not centred (as ViV1T and neuralpredictors' NeuroNormalizer)
    2  normalise: ``(x - min) / (max - min)`` for all three

responses (``transform_output``); never centred, so that they stay >= 0 for the Poisson loss
    0  none
    1  divide by each neuron's std: ``r / std`` as the Sensorium scoring did, with std below 1% of
       the mean std replaced by that threshold (neuralpredictors' response precision)
    2  normalise per neuron: ``(r - min) / (max - min)``

Deconvolved responses of the published data hold tiny negative values (about -1e-8); the output
transform clips its result at 0, so its `inverse` is exact for every response >= its minimum.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from neurotwin.data import native
from neurotwin.data.native import NativeSession
from neurotwin.errors import DataFormatError

log = logging.getLogger(__name__)

Stats = Mapping[str, Mapping[str, np.ndarray]]


def _channel_stat(
    stat: str,
    value: np.ndarray,
    channels: int | None,
    source: str | Path = "statistics",
    array: str = "",
) -> np.ndarray:
    """A statistic as one value per channel (channels=None: one scalar).

    Statistics with extra axes (e.g. shipped ones with a frame axis) are reduced over them:
    min of mins, max of maxes, mean of means, root-mean-square of stds.
    """
    v = np.asarray(value, dtype=np.float64)
    if channels is None:
        v = v.reshape(1, -1)
    else:
        if v.ndim == 0 or v.shape[0] != channels:
            raise DataFormatError(
                source,
                f"statistics: expected {channels} values along the first axis, got {v.shape}",
                f"statistics {array}/{stat}",
            )
        v = v.reshape(channels, -1)
    if v.shape[1] > 1:
        if stat == "min":
            v = np.nanmin(v, axis=1, keepdims=True)
        elif stat == "max":
            v = np.nanmax(v, axis=1, keepdims=True)
        elif stat == "std":
            v = np.sqrt(np.nanmean(v**2, axis=1, keepdims=True))
        else:
            v = np.nanmean(v, axis=1, keepdims=True)
    return v[:, 0]


def _safe(scale: np.ndarray) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float64).copy()
    scale[~(scale > 0) | ~np.isfinite(scale)] = 1.0
    return scale


class InputTransform:
    """Video/behaviour/pupil-centre transform: ``y = (x - shift) / scale`` per channel."""

    def __init__(self, statistics: Stats | None, mode: int, source: str | Path = "statistics"):
        if mode not in (0, 1, 2):
            raise ValueError(f"transform_input must be 0, 1 or 2, got {mode}")
        if mode and statistics is None:
            raise ValueError("transform_input 1 and 2 need statistics")
        self.mode = mode
        self.shift: dict[str, torch.Tensor] = {}
        self.scale: dict[str, torch.Tensor] = {}
        for name, channels in (
            (native.VIDEOS, None),
            (native.BEHAVIOR, 2),
            (native.PUPIL_CENTER, 2),
        ):
            if mode == 0:
                shift, scale = np.zeros(1), np.ones(1)
            else:
                s = {
                    k: _channel_stat(k, v, channels, source, name)
                    for k, v in statistics[name].items()
                }
                if mode == 1:
                    shift = np.zeros_like(s["std"]) if name == native.BEHAVIOR else s["mean"]
                    scale = _safe(s["std"])
                else:
                    shift, scale = s["min"], _safe(s["max"] - s["min"])
            # videos are (C=1, T, H, W): a scalar; behaviour/pupil (2, T): one value per row
            shape = (1, 1, 1, 1) if name == native.VIDEOS else (-1, 1)
            self.shift[name] = torch.as_tensor(shift, dtype=torch.float32).reshape(shape)
            self.scale[name] = torch.as_tensor(scale, dtype=torch.float32).reshape(shape)
        self._np = {k: (v.numpy(), (1 / self.scale[k]).numpy()) for k, v in self.shift.items()}

    def pixel_range(self) -> tuple[float, float]:
        """Black and white (native.PIXEL_RANGE) after the video transform: the range of grey
        levels in the units the model sees (standardised: ((0 - mean) / std, (255 - mean) /
        std)); a pretrained image network maps it back to its own input range."""
        lo, hi = (float(v) for v in self(native.VIDEOS, torch.tensor(native.PIXEL_RANGE)).flatten())
        return lo, hi

    def apply_(self, name: str, x: np.ndarray) -> np.ndarray:
        """In place on a float32 numpy array (the Dataset's fast path)."""
        if self.mode:
            shift, inv_scale = self._np[name]
            x -= shift
            x *= inv_scale
        return x

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.mode == 0:
            return x
        return (x - self.shift[name].to(x.device)) / self.scale[name].to(x.device)

    def inverse(self, name: str, y: torch.Tensor) -> torch.Tensor:
        if self.mode == 0:
            return y
        return y * self.scale[name].to(y.device) + self.shift[name].to(y.device)


class OutputTransform:
    """Response transform ``y = max((r - shift) / scale, 0)`` per neuron, with `.inverse`.

    Works on (N, T) and batched (B, N, T) tensors.
    """

    def __init__(
        self,
        statistics: Stats | None,
        mode: int,
        n_neurons: int | None = None,
        source: str | Path = "statistics",
    ):
        if mode not in (0, 1, 2):
            raise ValueError(f"transform_output must be 0, 1 or 2, got {mode}")
        if mode and statistics is None:
            raise ValueError("transform_output 1 and 2 need statistics")
        self.mode = mode
        if mode == 0:
            shift, scale = np.zeros(1), np.ones(1)
        else:
            stats = statistics[native.RESPONSES]
            n = n_neurons if n_neurons is not None else np.asarray(stats["std"]).shape[0]
            s = {k: _channel_stat(k, v, n, source, native.RESPONSES) for k, v in stats.items()}
            if mode == 1:
                std = s["std"]
                threshold = 0.01 * np.nanmean(std)
                scale = np.where(std > threshold, std, threshold)
                scale = _safe(scale)
                shift = np.zeros_like(scale)
            else:
                shift, scale = s["min"], _safe(s["max"] - s["min"])
        self.shift = torch.as_tensor(shift, dtype=torch.float32).reshape(-1, 1)
        self.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1, 1)
        self._np = (self.shift.numpy(), (1 / self.scale).numpy())

    def apply_(self, r: np.ndarray) -> np.ndarray:
        """In place on a float32 numpy array (N, T) (the Dataset's fast path)."""
        if self.mode:
            r -= self._np[0]
            r *= self._np[1]
        np.maximum(r, 0, out=r)
        return r

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        y = r if self.mode == 0 else (r - self.shift.to(r.device)) / self.scale.to(r.device)
        return torch.clamp_min(y, 0.0)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Back to the original units (predictions are written in these)."""
        if self.mode == 0:
            return y
        return y * self.scale.to(y.device, y.dtype) + self.shift.to(y.device, y.dtype)

    def transform_mean(self, mean: np.ndarray) -> np.ndarray:
        """A per-neuron mean response (N,) in the transformed space."""
        y = self(torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1, 1))
        return y[:, 0].numpy()


class SessionDataset(Dataset):
    """One session and tier. Items are dicts:

    ``video`` (1, T, H, W) float32, ``response`` (N, T) float32, ``behavior`` (2, T),
    ``pupil_center`` (2, T), ``trial_id`` int, ``session`` str. A session with data/opto has
    K more video channels, (1 + K, T, H, W): each frame's opto values, spatially uniform and not
    transformed.

    With `random_crop` (default: tier "train" and crop_frame > 0) each item is a crop of
    `crop_frame` consecutive valid frames, its start drawn from (seed, epoch, trial) so that it
    is the same in any worker (`set_epoch` moves on; `item(index, epoch)` reads any epoch's).
    If a trial is shorter than `crop_frame`, the crop is shortened to the shortest trial of the dataset (with a warning), so that batches
    have one length. Otherwise items are whole trials without their NaN padding.
    """

    def __init__(
        self,
        session: NativeSession,
        tier: str,
        crop_frame: int = -1,
        transform_input: int = 0,
        transform_output: int = 0,
        statistics: Stats | None = None,
        random_crop: bool | None = None,
        trial_ids: Sequence[int] | np.ndarray | None = None,
        seed: int = 0,
    ):
        self.session = session
        self.tier = tier
        ids = session.trial_ids(tier) if trial_ids is None else np.asarray(trial_ids, np.int64)
        self.trial_ids = np.asarray(ids, dtype=np.int64)
        self.lengths = np.array([session.trial_length(t) for t in self.trial_ids], dtype=np.int64)
        if statistics is None and (transform_input or transform_output):
            statistics = session.statistics()
        self.input_transform = InputTransform(statistics, transform_input, session.path)
        self.output_transform = OutputTransform(
            statistics, transform_output, session.n_neurons, session.path
        )
        if random_crop is None:
            random_crop = tier == native.TRAIN_TIER and crop_frame > 0
        self.random_crop = bool(random_crop)
        self.crop_frame = int(crop_frame)
        if self.random_crop:
            if crop_frame <= 0:
                raise ValueError(f"random crops need crop_frame > 0, got {crop_frame}")
            shortest = int(self.lengths.min()) if len(self.lengths) else crop_frame
            if shortest < crop_frame:
                log.warning(
                    "%s %s: shortest trial has %d frames < crop_frame %d; crops use %d frames",
                    session.name,
                    tier,
                    shortest,
                    crop_frame,
                    shortest,
                )
            self.crop_frame = min(crop_frame, shortest)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def equal_lengths(self) -> bool:
        """Whether every item has the same number of frames (batches of >1 can be formed)."""
        return self.random_crop or len(set(self.lengths.tolist())) <= 1

    @property
    def responses_hidden(self) -> bool:
        return self.session.responses_hidden(self.tier)

    def __len__(self) -> int:
        return len(self.trial_ids)

    def frames(self, index: int, epoch: int | None = None) -> slice:
        """The frames item `index` reads in `epoch` (default: the current one, `set_epoch`)."""
        trial, length = int(self.trial_ids[index]), int(self.lengths[index])
        if not self.random_crop:
            return slice(0, length)
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch, trial])
        start = int(rng.integers(0, length - self.crop_frame + 1))
        return slice(start, start + self.crop_frame)

    def __getitem__(self, index: int) -> dict:
        return self.item(index, self.epoch)

    def item(self, index: int, epoch: int) -> dict:
        """Item `index` with the crop of `epoch`, whatever epoch the dataset is set to (for
        workers that outlive an epoch: they never see a stale `set_epoch`)."""
        trial = int(self.trial_ids[index])
        data = self.session.load_trial(trial, frames=self.frames(index, epoch))
        video = np.moveaxis(data[native.VIDEOS], -1, 0)[None]  # (H, W, T) -> (1, T, H, W)
        it = self.input_transform
        video = it.apply_(native.VIDEOS, _float32(video))
        if native.OPTO in data:  # (K, T) -> K spatially uniform channels after the movie's
            opto = _float32(data[native.OPTO])
            opto = np.broadcast_to(opto[:, :, None, None], (*opto.shape, *video.shape[2:]))
            video = np.concatenate((video, opto), axis=0)
        # the arrays load_trial returns are private copies: transform them in place
        return {
            "video": _tensor(video),
            "response": _tensor(self.output_transform.apply_(_float32(data[native.RESPONSES]))),
            "behavior": _tensor(it.apply_(native.BEHAVIOR, _float32(data[native.BEHAVIOR]))),
            "pupil_center": _tensor(
                it.apply_(native.PUPIL_CENTER, _float32(data[native.PUPIL_CENTER]))
            ),
            "trial_id": trial,
            "session": self.session.name,
        }


def _float32(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a if a.flags.writeable else a.copy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)

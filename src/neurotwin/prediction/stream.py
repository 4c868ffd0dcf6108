"""The trials prediction reads: each trial read once, batched, by worker processes.

A `TierPlan` is one session and tier (its trial ids and valid lengths); `plan_batches` cuts the
plans into batches of trials of equal length (in trial order within each length). `TrialReader`
reads a batch in a worker: every array of every trial once, giving what the model needs (video,
behaviour and pupil centre with the run's input transform) and what scoring and the outputs
need (raw responses, noiseless rates of synthetic sessions, the hash of the valid video frames
that tells repeats apart, the frames the official loader keeps). `trial_stream` puts it in a
DataLoader with workers and pinned memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from neurotwin import metrics as M
from neurotwin.data import native
from neurotwin.data.dataset import InputTransform
from neurotwin.prediction.space import loader_frames


@dataclass
class TierPlan:
    """One session and tier to predict: its trials (ascending ids) and their valid lengths."""

    session: native.NativeSession
    tier: str
    trial_ids: np.ndarray
    lengths: np.ndarray
    hidden: bool  # responses withheld: nothing to score
    noiseless: bool  # synthetic session with ground-truth rates

    @classmethod
    def of(cls, session: native.NativeSession, tier: str) -> TierPlan:
        ids = np.asarray(session.trial_ids(tier), dtype=np.int64)
        lengths = np.array([session.trial_length(t) for t in ids], dtype=np.int64)
        hidden = session.responses_hidden(tier)
        return cls(session, tier, ids, lengths, hidden, session.has_noiseless and not hidden)

    @property
    def key(self) -> tuple[str, str]:
        return self.session.name, self.tier

    def __len__(self) -> int:
        return len(self.trial_ids)


BatchKey = tuple[int, tuple[int, ...]]
"""(plan index, positions of the batch's trials in that plan)."""


def plan_batches(plans: Sequence[TierPlan], batch_size: int) -> list[BatchKey]:
    """Batches of at most `batch_size` trials of one plan and one length, plan by plan; within
    a plan the lengths in the order they first appear, the trials of a length in trial order."""
    keys: list[BatchKey] = []
    for p, plan in enumerate(plans):
        by_length: dict[int, list[int]] = {}
        for i, length in enumerate(plan.lengths.tolist()):
            by_length.setdefault(int(length), []).append(i)
        for positions in by_length.values():
            for k in range(0, len(positions), batch_size):
                keys.append((p, tuple(positions[k : k + batch_size])))
    return keys


@dataclass
class TrialBatch:
    """Trials of one plan and one length T, as `TrialReader` reads them.

    video (B, 1, T, H, W), behavior and pupil_center (B, 2, T): model inputs, transformed (None
    when the reader gives no inputs); responses (B, N, T) raw (None when hidden); noiseless
    (B, N, T) or None; clip_keys: hash of each trial's valid video; loader_ends: frames the
    official loader keeps of each trial."""

    plan: int
    positions: list[int]
    trial_ids: list[int]
    length: int
    video: torch.Tensor | None
    behavior: torch.Tensor | None
    pupil_center: torch.Tensor | None
    responses: torch.Tensor | None
    noiseless: torch.Tensor | None
    clip_keys: list[str]
    loader_ends: list[int]

    def __len__(self) -> int:
        return len(self.positions)

    def pin_memory(self) -> TrialBatch:
        """The batch with its tensors in page-locked memory (DataLoader's pin_memory calls it)."""
        pinned = {
            f.name: getattr(self, f.name).pin_memory()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **pinned)


def _float32(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a if a.flags.writeable else a.copy()


class TrialReader(Dataset):
    """Item `(plan index, positions)` -> the `TrialBatch` of those trials. `transforms` maps a
    session name to the run's input transform; None gives no model inputs (an ensemble of
    written predictions needs only what scoring needs)."""

    def __init__(
        self, plans: Sequence[TierPlan], transforms: dict[str, InputTransform] | None
    ) -> None:
        self.plans = list(plans)
        self.transforms = transforms

    def __len__(self) -> int:  # items are batch keys, never indices
        return 0

    def __getitem__(self, key: BatchKey) -> TrialBatch:
        p, positions = key
        plan = self.plans[p]
        t = int(plan.lengths[positions[0]])
        rows: dict[str, list[np.ndarray]] = {
            k: [] for k in ("video", "behavior", "pupil", "r", "n")
        }
        keys, ends, ids = [], [], []
        transform = None if self.transforms is None else self.transforms[plan.session.name]
        for i in positions:
            trial = int(plan.trial_ids[i])
            arrays = plan.session.load_trial(trial, frames=slice(0, t))
            ids.append(trial)
            keys.append(M.video_hash(arrays[native.VIDEOS], t))
            ends.append(loader_frames(arrays, plan.hidden))
            if transform is not None:
                video = np.moveaxis(arrays[native.VIDEOS], -1, 0)[None]  # (H,W,T) -> (1,T,H,W)
                rows["video"].append(transform.apply_(native.VIDEOS, _float32(video)))
                rows["behavior"].append(
                    transform.apply_(native.BEHAVIOR, _float32(arrays[native.BEHAVIOR]))
                )
                rows["pupil"].append(
                    transform.apply_(native.PUPIL_CENTER, _float32(arrays[native.PUPIL_CENTER]))
                )
            if not plan.hidden:
                rows["r"].append(_float32(arrays[native.RESPONSES]))
            if plan.noiseless:
                rows["n"].append(_float32(plan.session.load_noiseless(trial)[:, :t]))
        stack = lambda k: torch.from_numpy(np.stack(rows[k])) if rows[k] else None  # noqa: E731
        return TrialBatch(
            plan=p,
            positions=list(positions),
            trial_ids=ids,
            length=t,
            video=stack("video"),
            behavior=stack("behavior"),
            pupil_center=stack("pupil"),
            responses=stack("r"),
            noiseless=stack("n"),
            clip_keys=keys,
            loader_ends=ends,
        )


def _identity(batch: TrialBatch) -> TrialBatch:
    return batch


def trial_stream(
    reader: TrialReader, keys: Sequence[BatchKey], num_workers: int, pin_memory: bool
) -> Iterator[TrialBatch]:
    """The batches of `keys` in order, read by `num_workers` processes (0: here), in pinned
    memory when `pin_memory` (for asynchronous copies to the GPU)."""
    if not keys:
        return iter(())
    loader = DataLoader(
        reader,
        batch_size=None,
        sampler=list(keys),
        num_workers=num_workers,
        collate_fn=_identity,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return iter(loader)

"""{split: {session: DataLoader}} from a DataConfig, and the iterators that interleave sessions.

Training loaders shuffle their trials with (seed, epoch); with ``world_size > 1`` each rank reads
its own share (every rank gets the same number of batches: the shuffled list is padded by
repeating its first trials, as torch's DistributedSampler does). Evaluation loaders read whole
trials in order, split between ranks without padding, one trial a batch unless all trials of
the tier have the same length.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from neurotwin.config import DataConfig
from neurotwin.data import native
from neurotwin.data.cutmix import CutMix
from neurotwin.data.dataset import InputTransform, OutputTransform, SessionDataset
from neurotwin.data.native import NativeSession, find_sessions
from neurotwin.errors import ConfigError

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"


class TrialSampler(Sampler[int]):
    """Dataset indices for one rank: shuffled under (seed, epoch) or in order."""

    def __init__(
        self,
        n: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in 0..{world_size - 1}")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's indices in `epoch` (default: the one `set_epoch` set)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.world_size > 1:
            if self.pad and self.n:
                order = np.resize(order, math.ceil(self.n / self.world_size) * self.world_size)
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))


def open_sessions(data_config: DataConfig) -> list[NativeSession]:
    """The sessions a DataConfig selects (data_dir, mouse_ids, limit_neurons)."""
    return [
        NativeSession(path, limit_neurons=data_config.limit_neurons)
        for path in find_sessions(data_config.data_dir, data_config.mouse_ids)
    ]


FOLD_SEED = 20231015  # folds are fixed: members of an ensemble with other seeds share them


def fold_trials(trial_ids: np.ndarray, fold: int, folds: int) -> np.ndarray:
    """The trials kept for training when `trial_ids` are split into `folds` folds and `fold`
    is left out: each trial's fold is its place in a permutation drawn from (FOLD_SEED, folds,
    number of trials), modulo `folds`, so the folds are equal in size (within one), disjoint,
    and the same whatever the run's seed. folds=1 keeps every trial."""
    trial_ids = np.asarray(trial_ids, dtype=np.int64)
    if folds == 1:
        return trial_ids
    order = np.random.default_rng([FOLD_SEED, folds, len(trial_ids)]).permutation(len(trial_ids))
    fold_of = np.empty(len(trial_ids), dtype=np.int64)
    fold_of[order] = np.arange(len(trial_ids)) % folds
    return trial_ids[fold_of != fold]


def _training_trials(session: NativeSession, tier: str, data_config: DataConfig, seed: int):
    """The training trials of a session: at most limit_data of the tier (a random subset drawn
    with `seed`), without the left-out fold (--folds/--fold)."""
    ids = session.trial_ids(tier, limit=data_config.limit_data, seed=seed)
    return fold_trials(ids, data_config.fold, data_config.folds)


def _statistics(session: NativeSession, data_config: DataConfig):
    return session.statistics(
        shipped=data_config.shipped_statistics,
        tier=data_config.train_tier,
        recompute=data_config.recompute_statistics,
    )


def build_loaders(
    data_config: DataConfig,
    splits: Mapping[str, str],
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> dict[str, dict[str, DataLoader]]:
    """{split: {session name: DataLoader}} for `splits` (split name -> tier).

    The split named "train" gets random crops of `crop_frame` frames, shuffling, its fold
    (`folds`/`fold`, see `fold_trials`) and `limit_data` (a random subset, seeded by `seed`, of
    at most that many trials per session); the others give whole trials in order.
    """
    sessions = open_sessions(data_config)
    out: dict[str, dict[str, DataLoader]] = {split: {} for split in splits}
    cropped: list[SessionDataset] = []
    for session in sessions:
        needs_stats = data_config.transform_input or data_config.transform_output
        stats = _statistics(session, data_config) if needs_stats else None
        for split, tier in splits.items():
            training = split == TRAIN_SPLIT
            if training:
                trial_ids = _training_trials(session, tier, data_config, seed)
            else:
                trial_ids = session.trial_ids(tier)
            dataset = SessionDataset(
                session,
                tier,
                crop_frame=data_config.crop_frame if training else -1,
                transform_input=data_config.transform_input,
                transform_output=data_config.transform_output,
                statistics=stats,
                random_crop=training and data_config.crop_frame > 0,
                trial_ids=trial_ids,
                seed=seed,
            )
            if dataset.random_crop:
                cropped.append(dataset)
            sampler = TrialSampler(
                len(dataset),
                shuffle=training,
                seed=seed,
                rank=rank,
                world_size=world_size,
                pad=training,
            )
            batch_size = data_config.batch_size if dataset.equal_lengths else 1
            out[split][session.name] = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                num_workers=data_config.num_workers,
                pin_memory=pin_memory,
                drop_last=False,
            )
    _share_crop_length(cropped, data_config.crop_frame)
    return out


def _share_crop_length(datasets: list[SessionDataset], asked: int) -> None:
    """One crop length for every session (the shortest any session allows), so that training
    batches of all sessions have the same shape: a compiled core then never recompiles. A crop
    longer than every training trial of every session is an error, not silently shortened."""
    if not datasets:
        return
    longest = max(int(d.lengths.max()) for d in datasets if len(d.lengths))
    if asked > longest:
        raise ConfigError(
            f"--crop_frame {asked}: longer than every training trial (the longest has "
            f"{longest} frames); give at most {longest}, or -1 for whole trials"
        )
    common = min(d.crop_frame for d in datasets)
    for d in datasets:
        if d.crop_frame != common:
            logger.info("%s: crops use %d frames, as in every session", d.session.name, common)
            d.crop_frame = common


def session_order(batches: Mapping[str, int], seed: int, epoch: int) -> list[str]:
    """The sessions of an epoch's batches in training order: each session as many times as it
    has batches (`batches`: session -> count), shuffled under (seed, epoch)."""
    order = [name for name in sorted(batches) for _ in range(batches[name])]
    np.random.default_rng([seed, epoch, 7]).shuffle(order)
    return order


def interleave(
    loaders_by_session: Mapping[str, DataLoader], seed: int, epoch: int
) -> Iterator[tuple[str, dict]]:
    """(session, batch) pairs: every session's batches once, in an order shuffled under
    (seed, epoch); each loader's sampler and dataset are set to `epoch` first.

    Each session's loader starts its own workers when the session first comes up; training
    uses `TrainStream`, which gives the same pairs from one set of persistent workers."""
    for loader in loaders_by_session.values():
        for obj in (loader.sampler, loader.dataset):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
    order = session_order({n: len(x) for n, x in loaders_by_session.items()}, seed, epoch)
    iterators: dict[str, Iterator] = {}
    for name in order:
        if name not in iterators:
            iterators[name] = iter(loaders_by_session[name])
        yield name, next(iterators[name])


BatchKey = tuple[str, int, tuple[int, ...]]
"""(session, epoch, dataset indices): one training batch."""


def _identity(pair: tuple[str, dict]) -> tuple[str, dict]:
    return pair


class SessionBatches(Dataset):
    """Whole batches of several sessions' datasets: item (session, epoch, indices) is
    (session, the batch that session's loader collates from those indices), each trial cropped
    as in `epoch`, then mixed by `mix` (CutMix) if given."""

    def __init__(self, loaders_by_session: Mapping[str, DataLoader], mix: CutMix | None = None):
        self.datasets = {name: loader.dataset for name, loader in loaders_by_session.items()}
        self.collate = {name: loader.collate_fn for name, loader in loaders_by_session.items()}
        self.mix = mix

    def __getitem__(self, key: BatchKey) -> tuple[str, dict]:
        name, epoch, indices = key
        dataset = self.datasets[name]
        if hasattr(dataset, "item"):
            items = [dataset.item(i, epoch) for i in indices]
        else:  # a dataset without epochs
            items = [dataset[i] for i in indices]
        batch = self.collate[name](items)
        return name, batch if self.mix is None else self.mix(batch, name, epoch, indices)


class InterleavedBatches(Sampler[BatchKey]):
    """The batch keys of `interleave`'s order, for the epoch set by `set_epoch`: sessions
    shuffled by `session_order`, each session's sampler indices of the epoch in batches of its
    loader's batch size (the last one possibly short)."""

    def __init__(self, loaders_by_session: Mapping[str, DataLoader], seed: int):
        self.samplers = {name: loader.sampler for name, loader in loaders_by_session.items()}
        self.batch_sizes = {}
        for name, loader in loaders_by_session.items():
            if loader.batch_size is None or loader.drop_last:
                raise ValueError(f"{name}: needs a loader with a batch size and drop_last=False")
            self.batch_sizes[name] = loader.batch_size
        self.counts = {name: len(loader) for name, loader in loaders_by_session.items()}
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self, name: str) -> list[int]:
        sampler = self.samplers[name]
        if hasattr(sampler, "indices"):
            return sampler.indices(self.epoch).tolist()
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        return list(sampler)

    def __iter__(self) -> Iterator[BatchKey]:
        pending: dict[str, Iterator[BatchKey]] = {}
        for name in session_order(self.counts, self.seed, self.epoch):
            if name not in pending:
                indices, size = self._indices(name), self.batch_sizes[name]
                pending[name] = iter(
                    [
                        (name, self.epoch, tuple(indices[i : i + size]))
                        for i in range(0, len(indices), size)
                    ]
                )
            yield next(pending[name])

    def __len__(self) -> int:
        return sum(self.counts.values())


class TrainStream:
    """The training batches of all sessions through one DataLoader: the (session, batch) pairs
    `interleave` gives, read by `num_workers` persistent workers in total (not `num_workers` per
    session, started anew each epoch). The per-session loaders' datasets and samplers are used
    as they are (rank shares, limit_data, the shared crop length); each batch key carries its
    epoch, so workers that outlive an epoch crop (and mix, with `mix`) as in the right one."""

    def __init__(
        self,
        loaders_by_session: Mapping[str, DataLoader],
        num_workers: int,
        pin_memory: bool = False,
        seed: int = 0,
        mix: CutMix | None = None,
    ):
        self.sampler = InterleavedBatches(loaders_by_session, seed)
        self.loader = DataLoader(
            SessionBatches(loaders_by_session, mix),
            batch_size=None,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=_identity,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            # its own generator for the workers' base seed: reading data draws nothing from
            # torch's global RNG (which a resumed run restores), whatever num_workers
            generator=torch.Generator().manual_seed(int(seed)),
        )

    def epoch(self, epoch: int) -> Iterator[tuple[str, dict]]:
        """(session, batch) pairs of `epoch`, in `interleave`'s order."""
        self.sampler.set_epoch(epoch)
        yield from self.loader

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.sampler)


def training_mix(data_config: DataConfig, seed: int) -> CutMix | None:
    """The CutMix of the training stream (`cutmix_prob` > 0), None when off."""
    if data_config.cutmix_prob <= 0:
        return None
    return CutMix(data_config.cutmix_prob, data_config.cutmix_alpha, seed)


def _behavior_mean(stats, transform_input: int, source) -> np.ndarray:
    """The mean (pupil dilation, running speed) of the training tier, as the model sees it."""
    mean = np.asarray(stats[native.BEHAVIOR]["mean"], dtype=np.float32)
    if mean.ndim > 1:  # shipped statistics with a frame axis
        mean = np.nanmean(mean.reshape(mean.shape[0], -1), axis=1)
    values = torch.as_tensor(mean.reshape(2, 1))
    return InputTransform(stats, transform_input, source)(native.BEHAVIOR, values)[:, 0].numpy()


def session_specs(data_config: DataConfig) -> dict[str, dict]:
    """{session: {"n_neurons", "coordinates" (N, 3), "mean_response" (N,) in the transformed
    output space, "unit_ids" (N,), "pixel_range" (black, white in the transformed video),
    "behavior_mean" (2,) in the transformed behaviour, "opto_channels"}} for building a model's
    per-session parts (and telling its core what its input is, a modulator where to centre
    behaviour)."""
    specs = {}
    for session in open_sessions(data_config):
        stats = _statistics(session, data_config)
        transform = OutputTransform(stats, data_config.transform_output, session.n_neurons)
        mean = np.asarray(stats[native.RESPONSES]["mean"], dtype=np.float32)
        if mean.ndim > 1:  # shipped statistics with a frame axis
            mean = np.nanmean(mean.reshape(mean.shape[0], -1), axis=1)
        specs[session.name] = {
            "n_neurons": session.n_neurons,
            "coordinates": session.coordinates,
            "mean_response": transform.transform_mean(mean),
            "unit_ids": session.unit_ids,
            "pixel_range": InputTransform(
                stats, data_config.transform_input, session.path
            ).pixel_range(),
            "behavior_mean": _behavior_mean(stats, data_config.transform_input, session.path),
            "opto_channels": session.opto_channels,
        }
    return specs

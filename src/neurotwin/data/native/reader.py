"""Reader of the native layout (see `layout`): one session folder per recording, read lazily.

Every source ends up in this layout (Sensorium 2023 downloads, synthetic mice, converted Allen
recordings), so this one reader serves all. Facts it relies on (checked against the published
readers, see `neurotwin.data.dataset`): a trial's length is the index of the first NaN frame of
its video (else T); test tiers ship with responses withheld (all zeros, or NaN); the shipped
statistics were computed over trials rather than over trials and frames, so by default
statistics are computed here from the training tier over trials *and* frames and cached beside
the data in ``meta/statistics_neurotwin/`` (see `statistics`).

Session selection: a session is named by its folder name or by a short alias. The alias of a
published folder ``dynamic<mouse>-<session>-<scan>-Video-<hash>`` is ``<mouse>-<session>-<scan>``
(e.g. ``29156-11-10``); the ten Sensorium 2023 mice are also known by ViV1T's letters ``A``..``J``.
Any other folder (synthetic mice, converted Allen sessions) is its own alias, unless
``meta/neurotwin.json`` names an ``alias``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neurotwin.data.native import layout
from neurotwin.data.native.npy import why_unreadable
from neurotwin.data.native.statistics import (
    CACHE_VERSION,
    compute_statistics,
    read_cache,
    write_cache,
)
from neurotwin.errors import DataFormatError

__all__ = [
    "SENSORIUM_2023_MICE",
    "NativeSession",
    "find_sessions",
    "is_session_folder",
    "session_alias",
]

log = logging.getLogger(__name__)

# Published Sensorium 2023 session folders, by the letters ViV1T uses for them.
SENSORIUM_2023_MICE = {
    "A": "dynamic29156-11-10-Video-8744edeac3b4d1ce16b680916b5267ce",
    "B": "dynamic29228-2-10-Video-8744edeac3b4d1ce16b680916b5267ce",
    "C": "dynamic29234-6-9-Video-8744edeac3b4d1ce16b680916b5267ce",
    "D": "dynamic29513-3-5-Video-8744edeac3b4d1ce16b680916b5267ce",
    "E": "dynamic29514-2-9-Video-8744edeac3b4d1ce16b680916b5267ce",
    "F": "dynamic29515-10-12-Video-9b4f6a1a067fe51e15306b9628efea20",
    "G": "dynamic29623-4-9-Video-9b4f6a1a067fe51e15306b9628efea20",
    "H": "dynamic29647-19-8-Video-9b4f6a1a067fe51e15306b9628efea20",
    "I": "dynamic29712-5-9-Video-9b4f6a1a067fe51e15306b9628efea20",
    "J": "dynamic29755-2-8-Video-9b4f6a1a067fe51e15306b9628efea20",
}
_LETTER_OF = {v: k for k, v in SENSORIUM_2023_MICE.items()}
_PUBLISHED_NAME = re.compile(r"^dynamic(\d+-\d+-\d+)-")


def session_alias(folder: str | Path) -> str:
    """The short alias of a session folder (``29156-11-10`` for a published folder name)."""
    name = Path(folder).name
    m = _PUBLISHED_NAME.match(name)
    if m:
        return m.group(1)
    meta = _read_meta(Path(folder))
    alias = meta.get("alias")
    return str(alias) if alias else name


def _aliases(folder: Path) -> set[str]:
    names = {folder.name, session_alias(folder)}
    if folder.name in _LETTER_OF:
        names.add(_LETTER_OF[folder.name])
    return names


def is_session_folder(path: Path) -> bool:
    """A folder that looks like a native session (has data/ and meta/)."""
    return (
        path.is_dir()
        and not path.name.startswith(".")
        and (path / "data").is_dir()
        and (path / "meta").is_dir()
    )


def find_sessions(data_dir: str | Path, mouse_ids: Sequence[str] | None = None) -> list[Path]:
    """Session folders under `data_dir`.

    `mouse_ids` picks sessions by folder name, by short alias (``29156-11-10`` for
    ``dynamic29156-11-10-Video-...``; ViV1T's letters ``A``..``J`` for the Sensorium 2023 mice;
    a folder's own name otherwise), in the order given. None: every session folder, sorted by name.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataFormatError(data_dir, "data folder not found", field="data_dir")
    folders = sorted((p for p in data_dir.iterdir() if is_session_folder(p)), key=lambda p: p.name)
    if not folders and is_session_folder(data_dir):
        raise DataFormatError(
            data_dir,
            "is itself a session folder; give the folder that holds the session folders",
            field="data_dir",
        )
    if not folders:
        raise DataFormatError(
            data_dir,
            "holds no session folder (expected sub-folders with data/ and meta/ in the "
            "Sensorium 2023 layout)",
            field="data_dir",
        )
    if mouse_ids is None:
        return folders
    by_name: dict[str, list[Path]] = {}
    for folder in folders:
        for alias in _aliases(folder):
            by_name.setdefault(alias, []).append(folder)
    out: list[Path] = []
    for mouse_id in mouse_ids:
        key = str(mouse_id)
        matches = by_name.get(key, [])
        if len(matches) != 1:
            known = ", ".join(
                f"{f.name} ({session_alias(f)})" if session_alias(f) != f.name else f.name
                for f in folders
            )
            problem = "is ambiguous" if matches else "is not a session folder or alias"
            raise DataFormatError(
                data_dir, f"session {key!r} {problem}; sessions found: {known}", field="mouse_ids"
            )
        if matches[0] not in out:
            out.append(matches[0])
    return out


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / layout.SESSION_META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataFormatError(path, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataFormatError(path, "expected a JSON object")
    return meta


# np.load parses each .npy header with ast.literal_eval, which CPython 3.11 does not make safe
# across threads ("SystemError: AST constructor recursion depth mismatch", seen in CI while
# prediction's threads read trials): one load at a time per process.
_NPY_LOAD_LOCK = threading.Lock()


def _load(path: Path, field: str | None = None, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise DataFormatError(path, "file not found", field=field)
    try:
        with _NPY_LOAD_LOCK:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise why_unreadable(path, field, e) from None


def _first_nan(values: np.ndarray) -> int:
    nan = np.flatnonzero(np.isnan(values))
    return int(nan[0]) if nan.size else int(values.shape[0])


class NativeSession:
    """One session folder in the native layout, read lazily (one trial at a time).

    `limit_neurons` keeps a random (seeded by `neuron_seed`), sorted subset of that many neurons;
    it applies to everything neuron-wise (responses, unit ids, coordinates, statistics).
    """

    def __init__(self, path: str | Path, limit_neurons: int | None = None, neuron_seed: int = 1234):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataFormatError(self.path, "session folder not found")
        for sub in ("data", "meta"):
            if not (self.path / sub).is_dir():
                raise DataFormatError(self.path / sub, "folder not found (not a session folder?)")
        self.name = self.path.name
        self.alias = session_alias(self.path)
        self.meta = _read_meta(self.path)
        self._lengths: dict[int, int] = {}
        self._hidden: dict[str | tuple[str, ...], bool] = {}

        # tiers
        tiers_file = self.path / layout.TIERS_FILE
        tiers = _load(tiers_file, "tiers")
        if tiers.dtype.kind == "S":
            tiers = tiers.astype(str)
        if tiers.dtype.kind != "U" or tiers.ndim != 1:
            raise DataFormatError(
                tiers_file,
                f"expected a 1-D string array, got dtype {tiers.dtype} shape {tiers.shape}",
                "tiers",
            )
        unknown = sorted(set(tiers.tolist()) - set(layout.TIERS))
        if unknown:
            raise DataFormatError(
                tiers_file, f"unknown tier names {unknown}; expected {list(layout.TIERS)}", "tiers"
            )
        self.tiers = tiers
        self._tiers_file = tiers_file

        # trial files: integer names 0..n_trials-1, the same set for every trial array
        videos_dir = self.path / "data" / layout.VIDEOS
        if not videos_dir.is_dir():
            raise DataFormatError(videos_dir, "folder not found")
        names = [p.stem for p in videos_dir.glob("*.npy") if not p.name.startswith(".")]
        bad = [n for n in names if not n.isdigit()]
        if bad:
            raise DataFormatError(
                videos_dir, f"trial files must be named by integer trial index, got {bad[:3]}"
            )
        trials = sorted(int(n) for n in names)
        missing = sorted(set(range(len(tiers))) - set(trials))
        elsewhere = missing and (self.path / "data" / layout.RESPONSES / f"{missing[0]}.npy").is_file()  # fmt: skip
        if elsewhere and set(trials) <= set(range(len(tiers))):
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataFormatError(
                videos_dir / f"{missing[0]}.npy",
                f"file not found{more} (trial {missing[0]} is in {layout.TIERS_FILE}, which "
                f"names {len(tiers)} trials)",
                layout.VIDEOS,
            )
        if len(trials) != len(tiers) or (trials and trials[-1] != len(tiers) - 1):
            raise DataFormatError(
                tiers_file,
                f"{len(tiers)} entries, but {videos_dir} holds {len(trials)} trial files "
                f"(indices {trials[:1]}..{trials[-1:]}); expected one tier per trial file",
                "tiers",
            )
        for name in layout.TRIAL_ARRAYS[1:]:
            folder = self.path / "data" / name
            if not folder.is_dir():
                raise DataFormatError(folder, "folder not found")

        # neurons
        ids_file = self.path / layout.UNIT_IDS_FILE
        unit_ids = _load(ids_file, "unit_ids")
        if unit_ids.dtype.kind not in "iu" or unit_ids.ndim != 1:
            raise DataFormatError(
                ids_file,
                f"expected a 1-D integer array, got dtype {unit_ids.dtype} shape {unit_ids.shape}",
                "unit_ids",
            )
        coord_file = self.path / layout.COORDINATES_FILE
        coords = _load(coord_file, "cell_motor_coordinates")
        if coords.dtype.kind not in "iuf" or coords.shape != (len(unit_ids), 3):
            raise DataFormatError(
                coord_file,
                f"expected a numeric ({len(unit_ids)}, 3) array (one row per unit id), "
                f"got dtype {coords.dtype} shape {coords.shape}",
                "cell_motor_coordinates",
            )
        self.n_neurons_total = len(unit_ids)
        if limit_neurons is not None and limit_neurons < 1:
            raise DataFormatError(self.path, f"limit_neurons must be >= 1, got {limit_neurons}")
        if limit_neurons is not None and limit_neurons < self.n_neurons_total:
            rng = np.random.default_rng(neuron_seed)
            index = np.sort(rng.choice(self.n_neurons_total, size=limit_neurons, replace=False))
            self.neuron_index: np.ndarray | None = index
        else:
            self.neuron_index = None
        sel = slice(None) if self.neuron_index is None else self.neuron_index
        self.unit_ids = np.asarray(unit_ids)[sel]
        self.coordinates = np.asarray(coords, dtype=np.float32)[sel]
        self.n_neurons = len(self.unit_ids)

        # frame shape from the first trial (every trial is checked when loaded)
        first = _load(self._file(layout.VIDEOS, 0), layout.VIDEOS, mmap=True)
        if first.ndim != 3:
            raise DataFormatError(
                self._file(layout.VIDEOS, 0),
                f"expected (H, W, T), got shape {first.shape}",
                layout.VIDEOS,
            )
        self.frame_shape: tuple[int, int] = (int(first.shape[0]), int(first.shape[1]))
        self.n_frames = int(first.shape[2])
        self.opto_channels = self._opto_channels()

    # ------------------------------------------------------------------------------------------
    @property
    def n_trials(self) -> int:
        return len(self.tiers)

    @property
    def tier_counts(self) -> dict[str, int]:
        """Number of trials per tier present in this session."""
        names, counts = np.unique(self.tiers, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}

    @property
    def has_noiseless(self) -> bool:
        return (self.path / "data" / layout.NOISELESS).is_dir()

    def __repr__(self) -> str:
        return (
            f"NativeSession({self.name!r}, neurons={self.n_neurons}, trials={self.n_trials}, "
            f"frame_shape={self.frame_shape})"
        )

    def _opto_channels(self) -> int:
        """K of the optional data/opto arrays (K, T) (0 without data/opto/)."""
        if not (self.path / "data" / layout.OPTO).is_dir():
            return 0
        return int(self._load_opto(0).shape[0])

    def _load_opto(self, trial: int, mmap: bool = False) -> np.ndarray:
        """A trial's opto array as (K, T) (a 1-D file is one channel), checked."""
        path = self._file(layout.OPTO, trial)
        if not path.is_file():
            raise DataFormatError(
                path, "file not found: data/opto/ exists, so every trial needs its opto array",
                layout.OPTO,
            )  # fmt: skip
        a = _load(path, layout.OPTO, mmap=mmap)
        a = a.reshape(1, -1) if a.ndim == 1 else a
        expected = f"a float (K, {self.n_frames}) or ({self.n_frames},) array"
        if a.dtype.kind != "f" or a.ndim != 2 or a.shape[1] != self.n_frames:
            raise DataFormatError(
                path, f"expected {expected}, got {a.dtype} {a.shape}", layout.OPTO
            )
        if getattr(self, "opto_channels", a.shape[0]) != a.shape[0]:
            raise DataFormatError(
                path, f"{a.shape[0]} opto channels, but trial 0 has {self.opto_channels}", layout.OPTO
            )  # fmt: skip
        return a

    def _file(self, array: str, trial: int) -> Path:
        return self.path / "data" / array / f"{int(trial)}.npy"

    def trial_ids(
        self, tier: str | Sequence[str], limit: int | None = None, seed: int = 1234
    ) -> np.ndarray:
        """Trial indices of one tier (or several), ascending. An empty selection is an error.

        `limit` (limit_data): a random subset of at most that many trials, drawn with `seed`.
        """
        wanted = [tier] if isinstance(tier, str) else list(tier)
        unknown = [t for t in wanted if t not in layout.TIERS]
        if unknown:
            raise DataFormatError(
                self._tiers_file, f"unknown tier {unknown}; expected {list(layout.TIERS)}", "tiers"
            )
        ids = np.flatnonzero(np.isin(self.tiers, wanted)).astype(np.int64)
        if ids.size == 0:
            raise DataFormatError(
                self._tiers_file,
                f"tier {tier!r} has no trials; tiers present: {self.tier_counts}",
                "tiers",
            )
        if limit is not None:
            if limit < 1:
                raise DataFormatError(
                    self.path, f"limit_data must be >= 1, got {limit}", "limit_data"
                )
            if len(ids) > limit:
                ids = np.sort(np.random.default_rng(seed).choice(ids, size=limit, replace=False))
        return ids

    def trial_length(self, trial: int) -> int:
        """Valid frames of a trial: index of the first NaN frame of its video (else T)."""
        trial = int(trial)
        if trial not in self._lengths:
            path = self._file(layout.VIDEOS, trial)
            video = _load(path, layout.VIDEOS, mmap=True)
            if video.ndim != 3:
                raise DataFormatError(
                    path, f"expected (H, W, T), got shape {video.shape}", "videos"
                )
            length = _first_nan(np.asarray(video[0, 0, :]))
            if length == 0:
                raise DataFormatError(
                    path, "the first frame is NaN: the trial has no frames", "videos"
                )
            self._lengths[trial] = length
        return self._lengths[trial]

    def responses_hidden(self, tier: str | Sequence[str], check: int = 3) -> bool:
        """True if the tier's responses are withheld (all zeros or all NaN in its first trials)."""
        key = tier if isinstance(tier, str) else tuple(tier)
        if key not in self._hidden:
            hidden = True
            for trial in self.trial_ids(tier)[:check]:
                r = _load(self._file(layout.RESPONSES, trial), layout.RESPONSES, mmap=True)
                r = np.asarray(r[:, : self.trial_length(trial)])
                if not (np.all(np.isnan(r)) or not np.any(r)):
                    hidden = False
                    break
            self._hidden[key] = hidden
        return self._hidden[key]

    def load_trial(self, trial: int, frames: slice | None = None) -> dict[str, np.ndarray]:
        """The four native arrays of a trial (and "opto", where the session has it), as stored
        (all T frames, NaN padding included).

        `frames` reads only those frames (memory-mapped). Responses keep the selected neurons.
        """
        trial = int(trial)
        if not 0 <= trial < self.n_trials:
            raise DataFormatError(
                self.path / "data", f"trial {trial} out of range 0..{self.n_trials - 1}", "trial"
            )
        t = frames if frames is not None else slice(None)
        # memory-map when reading a small part (a short crop, a few neurons); else one read
        part = len(range(self.n_frames)[t]) if frames is not None else self.n_frames
        mmap = part <= self.n_frames // 2 or self.neuron_index is not None
        out: dict[str, np.ndarray] = {}
        n_frames = None
        for name in layout.TRIAL_ARRAYS:
            path = self._file(name, trial)
            a = _load(path, name, mmap=mmap)
            if a.dtype.kind != "f":
                raise DataFormatError(path, f"expected a float array, got dtype {a.dtype}", name)
            expected = {
                layout.VIDEOS: (*self.frame_shape, a.shape[-1] if a.ndim == 3 else -1),
                layout.RESPONSES: (self.n_neurons_total, a.shape[-1] if a.ndim == 2 else -1),
                layout.BEHAVIOR: (2, a.shape[-1] if a.ndim == 2 else -1),
                layout.PUPIL_CENTER: (2, a.shape[-1] if a.ndim == 2 else -1),
            }[name]
            if a.shape != expected:
                raise DataFormatError(path, f"expected shape {expected}, got {a.shape}", name)
            if n_frames is None:
                n_frames = a.shape[-1]
            elif a.shape[-1] != n_frames:
                raise DataFormatError(
                    path, f"{a.shape[-1]} frames, but the trial's video has {n_frames}", name
                )
            if name == layout.RESPONSES and self.neuron_index is not None:
                a = a[self.neuron_index]
            out[name] = np.array(a[..., t]) if mmap else a[..., t]
        if self.opto_channels:
            out[layout.OPTO] = np.array(self._load_opto(trial, mmap=mmap)[:, t])
        if self.tiers[trial] == layout.TRAIN_TIER:
            # training data must be complete within the valid frames (video's first NaN frame)
            length = self.trial_length(trial)
            valid = np.arange(n_frames or 0)[t] < length
            for name in (layout.RESPONSES, layout.BEHAVIOR, layout.PUPIL_CENTER):
                if np.isnan(out[name][:, valid]).any():
                    what = "responses" if name == layout.RESPONSES else f"{name} values"
                    raise DataFormatError(
                        self._file(name, trial),
                        f"NaN {what} within the {length} valid frames of a training trial",
                        name,
                    )
        return out

    def load_noiseless(self, trial: int) -> np.ndarray:
        """Noiseless rates (N, T) of a synthetic session (data/noiseless_responses)."""
        path = self._file(layout.NOISELESS, trial)
        if not self.has_noiseless:
            raise DataFormatError(path.parent, "this session has no noiseless responses")
        a = _load(path, layout.NOISELESS, mmap=self.neuron_index is not None)
        if a.ndim != 2 or a.shape[0] != self.n_neurons_total:
            raise DataFormatError(
                path, f"expected ({self.n_neurons_total}, T), got {a.shape}", layout.NOISELESS
            )
        return np.array(a[self.neuron_index]) if self.neuron_index is not None else a

    # ------------------------------------------------------------------------------------------
    def statistics(
        self, shipped: bool = False, tier: str = layout.TRAIN_TIER, recompute: bool = False
    ) -> dict[str, dict[str, np.ndarray]]:
        """{array: {stat: value}} for the four trial arrays, neuron selection applied.

        Default: computed from `tier` over trials and frames (NaN padding ignored): videos a
        scalar, responses (N,), behavior (2,), pupil_center (2,); cached in
        meta/statistics_neurotwin/. `shipped=True`: the published meta/statistics files as
        they are.
        """
        stats = (
            self._shipped_statistics() if shipped else self._computed_statistics(tier, recompute)
        )
        if self.neuron_index is not None:
            resp = stats[layout.RESPONSES]
            stats[layout.RESPONSES] = {
                k: (v[self.neuron_index] if v.ndim and v.shape[0] == self.n_neurons_total else v)
                for k, v in resp.items()
            }
        return stats

    def _shipped_statistics(self) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        for array in layout.TRIAL_ARRAYS:
            out[array] = {}
            for stat in layout.STATISTIC_NAMES:
                path = self.path / layout.STATISTICS_DIR / array / "all" / f"{stat}.npy"
                value = _load(path, f"{array}/{stat}")
                if value.dtype.kind not in "iuf":
                    raise DataFormatError(path, f"expected numbers, got {value.dtype}", stat)
                out[array][stat] = np.asarray(value, dtype=np.float32)
        return out

    def trial_files_signature(self, trials: Sequence[int]) -> str:
        """A digest of the size and modification time of every trial file of `trials`: any
        change to one of them (rewritten, damaged, replaced) changes it."""
        digest = hashlib.sha1()
        for name in layout.TRIAL_ARRAYS:
            folder = self.path / "data" / name
            try:
                with os.scandir(folder) as entries:
                    stats = {e.name: e.stat() for e in entries if e.name.endswith(".npy")}
            except OSError:
                stats = {}
            for trial in trials:
                s = stats.get(f"{int(trial)}.npy")
                digest.update(f"{name}/{int(trial)}:{s.st_size if s else -1}:{s.st_mtime_ns if s else -1};".encode())  # fmt: skip
        return digest.hexdigest()

    def _stats_key(self, tier: str, trials: np.ndarray) -> dict[str, Any]:
        digest = hashlib.sha1(np.ascontiguousarray(trials, dtype=np.int64).tobytes()).hexdigest()
        return {
            "version": CACHE_VERSION,
            "tier": tier,
            "n_trials": int(len(trials)),
            "trials_sha1": digest,
            "files_sha1": self.trial_files_signature(trials),
            "n_neurons": self.n_neurons_total,
            "frame_shape": list(self.frame_shape),
        }

    def _computed_statistics(self, tier: str, recompute: bool) -> dict[str, dict[str, np.ndarray]]:
        trials = self.trial_ids(tier)
        key = self._stats_key(tier, trials)
        cache = self.path / layout.COMPUTED_STATISTICS_DIR / tier
        if not recompute:
            cached = read_cache(cache, key)
            if cached is not None:
                return cached
        log.info("%s: computing statistics of %d %s trials", self.name, len(trials), tier)
        stats = compute_statistics(self, trials)
        try:
            write_cache(cache, key, stats)
        except OSError as e:  # read-only data: still usable, just not cached
            warnings.warn(f"could not cache statistics in {cache}: {e}", stacklevel=3)
        return stats

"""Metrics of predicted against recorded responses, with the Sensorium 2023 conventions.

Conventions (checked against the published code: ecker-lab/sensorium_2023
`sensorium/utility/scores.py`, sinzlab/sensorium `sensorium/utility/metrics.py`, sinzlab/neuralpredictors
0.3.0 `measures/np_functions.py`, bryanlimy/ViV1T `src/viv1t/metrics.py` and `utils/utils.py`):

- The first 50 frames of every trial are left out (the model has not yet seen enough of the
  movie); a trial with T valid frames contributes its last T - 50 frames. `frames_to_skip` is
  the one rule, used by validation (early stopping), prediction and the synthetic ceiling: 50,
  unless no trial of the scored set is longer than 50 frames (toy data), then 0.
- Correlations are per neuron, over the frames of all trials concatenated, then averaged over neurons.
  A neuron whose responses or predictions do not vary gets a correlation of 0, never NaN (the
  published code adds 1e-8 to each standard deviation and sets remaining NaNs to 0).
- Repeats: a "stimulus" is one frame of one clip; the oracle (and test) tiers show each clip several
  times. Which trials repeat one clip is not recorded anywhere in the layout, so `group_repeats`
  groups trials by a hash of their valid video frames (`video_hash`): identical movies, one group.

Metrics (all return the mean over neurons unless `per_neuron=True`):

- `single_trial_correlation`: Pearson r between prediction and response of each neuron over all
  (trial, frame) samples.
- `correlation_to_average`: r between the prediction averaged over the repeats of each clip and the
  response averaged over the same repeats, over all (clip, frame) stimuli (sinzlab/sensorium
  `correlation_to_mean_across_repeats`).
- `feve`: fraction of explainable variance explained (neuralpredictors `fev`): with stimuli =
  (clip, frame), total variance = var of all responses (ddof=1), noise variance = mean over stimuli
  of the variance across repeats (ddof=1), FEV = (total - noise) / total, and
  FEVE = 1 - (MSE - noise) / (total - noise), MSE over every (repeat, stimulus). The mean is over
  neurons whose FEV >= 0.15 only (sinzlab/sensorium `Metrics.feve(fev_threshold=0.15)`).
- `normalized_correlation`: CC_norm of Schoppe et al. (2016, Front. Comput. Neurosci. 10:10),
  CC_abs / CC_max, with CC_abs = `correlation_to_average` per neuron and CC_max = sqrt(SP / Var(mean
  response)); the signal power SP = Var(mean response) - mean over stimuli of (noise variance /
  number of repeats), i.e. Schoppe's estimator with the noise power taken per stimulus across
  repeats (so that clips may have different numbers of repeats). Neurons without signal power
  (SP <= 0) get 0 and are left out of the mean.

Spike trains (`PoissonScores`, `pooled_bits`): the Poisson log-likelihood in bits per spike
relative to a homogeneous rate. For unit n with counts y_t and predicted expected counts
lambda_t per bin, against the unit's constant training-set rate lambda0_n:

    bits/spike = [ sum_t (y_t log lambda_t - lambda_t) - sum_t (y_t log lambda0_n - lambda0_n) ]
                 / (ln 2 * sum_t y_t)

(the log y_t! terms cancel). Groups of units (a population, a session, everything) pool their
likelihood differences and spikes. 0 means no better than a constant rate; higher is better.

Trials are given as a sequence of (N, T_i) arrays (numpy or torch; lengths may differ) or one
(B, N, T) array. Everything is computed in float64: numpy, except the streamed correlation
(`CorrelationAccumulator`, torch, on the device of its inputs); `correlation` takes either.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

SKIP_FRAMES = 50  # Sensorium 2023: frames left out at the start of every trial
FEV_THRESHOLD = 0.15  # Sensorium: FEVE averages over neurons with FEV >= this

ArrayLike = np.ndarray | torch.Tensor
Trials = ArrayLike | Sequence[ArrayLike]

# A variance at or below this fraction of the mean square counts as "no variance" (what is left of
# a constant signal after float rounding).
_REL_VAR_EPS = 1e-20


# ------------------------------------------------------------------------------------------------
# Basic correlation
# ------------------------------------------------------------------------------------------------


def _no_variance(var: Any, mean_square: Any) -> Any:
    return var <= _REL_VAR_EPS * mean_square


def correlation(x: ArrayLike, y: ArrayLike, axis: int = -1) -> ArrayLike:
    """Pearson correlation of `x` and `y` along `axis` (numpy or torch, same type back).

    Where `x` or `y` does not vary along `axis` the result is 0, never NaN.
    """
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        x = torch.as_tensor(x)
        y = torch.as_tensor(y, device=x.device)
        dtype = torch.float64 if x.device.type != "mps" else torch.float32
        x, y = x.to(dtype), y.to(dtype)
        xc = x - x.mean(dim=axis, keepdim=True)
        yc = y - y.mean(dim=axis, keepdim=True)
        vx, vy = (xc * xc).mean(dim=axis), (yc * yc).mean(dim=axis)
        cov = (xc * yc).mean(dim=axis)
        bad = _no_variance(vx, (x * x).mean(dim=axis)) | _no_variance(vy, (y * y).mean(dim=axis))
        denom = torch.sqrt(torch.where(bad, torch.ones_like(vx), vx * vy))
        return torch.where(bad, torch.zeros_like(cov), cov / denom)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    vx, vy = (xc * xc).mean(axis=axis), (yc * yc).mean(axis=axis)
    cov = (xc * yc).mean(axis=axis)
    bad = _no_variance(vx, (x * x).mean(axis=axis)) | _no_variance(vy, (y * y).mean(axis=axis))
    denom = np.sqrt(np.where(bad, 1.0, vx * vy))
    out = np.where(bad, 0.0, cov / denom)
    if not np.all(np.isfinite(out)):  # NaN in the inputs: as the published code, count as 0
        warnings.warn(
            f"{np.mean(~np.isfinite(out)) * 100:.1f}% of correlations are NaN (NaN inputs); "
            "set to 0",
            RuntimeWarning,
            stacklevel=2,
        )
        out = np.where(np.isfinite(out), out, 0.0)
    return out


def frames_to_skip(lengths: Iterable[int]) -> int:
    """Frames left out at the start of every trial of a scored set of trials with these valid
    lengths: Sensorium's 50 (a trial of T <= 50 frames then adds none), or 0 when no trial is
    longer than 50 frames, so that toy data still gets a score."""
    return SKIP_FRAMES if max((int(t) for t in lengths), default=0) > SKIP_FRAMES else 0


class CorrelationAccumulator:
    """Per-neuron Pearson correlation over frames added piece by piece (constant memory).

    Equal to concatenating all frames of all pieces and correlating per neuron (Sensorium's
    single-trial correlation); a neuron whose responses or predictions do not vary gets 0. The
    sums (`stats`: count, sum x, sum y, sum x^2, sum y^2, sum xy per neuron, float64) are of
    the values minus a centre, so that a large offset loses no precision: by default each
    neuron's means in the first piece; give `center` (e.g. 0.0) where several processes
    accumulate and sum their `stats` before `result()`, so that all use the same. The sums stay
    on the device of the inputs: streaming reads nothing back.
    """

    def __init__(
        self,
        n_neurons: int | None = None,
        device: torch.device | str = "cpu",
        center: float | None = None,
    ) -> None:
        self.stats: torch.Tensor | None = None
        self.center: tuple[Any, Any] | None = None if center is None else (center, center)
        self._shifted = center != 0.0
        if n_neurons is not None:
            self.stats = torch.zeros(6, n_neurons, dtype=torch.float64, device=device)

    def add(self, responses: ArrayLike, predictions: ArrayLike, ignore_nan: bool = False) -> None:
        """responses, predictions: (N, T) or (B, N, T), numpy or torch. With `ignore_nan`, a
        frame that is NaN in either is left out (per neuron)."""
        x, y = _frames_by_neuron(responses), _frames_by_neuron(predictions)
        if x.shape != y.shape:
            raise ValueError(f"responses {tuple(x.shape)} but predictions {tuple(y.shape)}")
        if x.shape[1] == 0:
            return
        y = y.to(x.device)
        if self.stats is None:
            self.stats = torch.zeros(6, x.shape[0], dtype=torch.float64, device=x.device)
        if self.center is None:
            means = (x.nanmean(1, keepdim=True), y.nanmean(1, keepdim=True))
            self.center = tuple(torch.nan_to_num(m) for m in means)
        if self._shifted:
            x, y = x - self.center[0], y - self.center[1]
        s = self.stats
        if ignore_nan:
            valid = torch.isfinite(x) & torch.isfinite(y)
            x, y = torch.where(valid, x, 0.0), torch.where(valid, y, 0.0)
            s[0] += valid.sum(1)
        else:
            s[0] += x.shape[1]
        s[1] += x.sum(1)
        s[2] += y.sum(1)
        s[3] += (x * x).sum(1)
        s[4] += (y * y).sum(1)
        s[5] += (x * y).sum(1)

    @property
    def n_frames(self) -> int:
        """Frames added so far (the most of any neuron); reads back from the device."""
        return 0 if self.stats is None else int(self.stats[0].max())

    def result(self) -> torch.Tensor:
        """(N,) correlations, on the device of the sums."""
        if self.stats is None:
            raise ValueError("no frames added")
        n, sx, sy, sxx, syy, sxy = self.stats
        n = n.clamp_min(1)
        vx = (sxx - sx * sx / n).clamp_min(0)
        vy = (syy - sy * sy / n).clamp_min(0)
        cov = sxy - sx * sy / n
        tiny = 1e-12  # what is left of a constant signal after rounding, relative to sum x^2
        bad = (vx <= tiny * sxx.clamp_min(tiny)) | (vy <= tiny * syy.clamp_min(tiny))
        denom = torch.sqrt(torch.where(bad, torch.ones_like(vx), vx * vy))
        return torch.where(bad, torch.zeros_like(cov), cov / denom).clamp(-1, 1)


def _frames_by_neuron(a: ArrayLike) -> torch.Tensor:
    """(N, T) or (B, N, T) -> (N, frames) float64 torch."""
    t = a.detach() if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    t = t.to(torch.float64)
    if t.ndim == 3:
        return t.transpose(0, 1).reshape(t.shape[1], -1)
    if t.ndim != 2:
        raise ValueError(f"expected (N, T) or (B, N, T), got shape {tuple(t.shape)}")
    return t


# ------------------------------------------------------------------------------------------------
# Input handling
# ------------------------------------------------------------------------------------------------


def _to_numpy(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _as_trials(trials: Trials, name: str) -> list[np.ndarray]:
    """A list of (N, T_i) float64 arrays."""
    if isinstance(trials, (np.ndarray, torch.Tensor)):
        arr = _to_numpy(trials)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"{name}: expected (B, N, T) or a list of (N, T), got {arr.shape}")
        return list(arr)
    out = [_to_numpy(t) for t in trials]
    for i, t in enumerate(out):
        if t.ndim != 2:
            raise ValueError(f"{name}[{i}]: expected (N, T), got shape {t.shape}")
    return out


def _check_pair(responses: list[np.ndarray], predictions: list[np.ndarray]) -> None:
    if len(responses) != len(predictions):
        raise ValueError(
            f"{len(responses)} response trials but {len(predictions)} prediction trials"
        )
    if not responses:
        raise ValueError("no trials")
    n = responses[0].shape[0]
    for i, (r, p) in enumerate(zip(responses, predictions)):
        if r.shape != p.shape:
            raise ValueError(f"trial {i}: responses {r.shape} but predictions {p.shape}")
        if r.shape[0] != n:
            raise ValueError(f"trial {i}: {r.shape[0]} neurons, trial 0 has {n}")


def skip_frames(trial: np.ndarray, skip: int = SKIP_FRAMES) -> np.ndarray:
    """The frames of an (N, T) trial that are scored: all but the first `skip`."""
    return trial[:, skip:]


def _skip(skip: int | None, trials: list[np.ndarray]) -> int:
    """`skip`, or (None) the rule of `frames_to_skip` for these trials."""
    return frames_to_skip(t.shape[1] for t in trials) if skip is None else int(skip)


def _mean(values: np.ndarray, per_neuron: bool) -> Any:
    return values if per_neuron else float(np.mean(values))


# ------------------------------------------------------------------------------------------------
# Repeats
# ------------------------------------------------------------------------------------------------


def video_hash(video: ArrayLike, length: int | None = None) -> str:
    """Hash of a trial's valid video frames (time is the last axis; frames past `length` ignored).

    Two trials with equal hashes showed the same movie: they are repeats of one clip.
    """
    v = _to_numpy(video).astype(np.float32)
    if length is not None:
        v = v[..., :length]
    v = np.ascontiguousarray(v)
    h = hashlib.sha1(str(v.shape).encode())
    h.update(v.tobytes())
    return h.hexdigest()


def group_repeats(keys: Sequence[Any]) -> list[np.ndarray]:
    """Group positions by equal key (e.g. `video_hash`), in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return [np.asarray(g, dtype=np.int64) for g in groups.values()]


def _repeats(
    responses: Trials, predictions: Trials, groups: Sequence[Sequence[int]], skip: int | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The checked inputs of a repeat-based metric as `_repeat_blocks` (empty: no repeats)."""
    resp, pred = _as_trials(responses, "responses"), _as_trials(predictions, "predictions")
    _check_pair(resp, pred)
    return _repeat_blocks(resp, pred, groups, _skip(skip, resp))


def _repeat_blocks(
    responses: list[np.ndarray],
    predictions: list[np.ndarray],
    groups: Sequence[Sequence[int]],
    skip: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per clip with >= 2 repeats: (responses, predictions), each (R, N, T') after skipping."""
    blocks = []
    for g in groups:
        g = [int(i) for i in g]
        if len(g) < 2:
            continue
        lengths = {responses[i].shape[1] for i in g}
        if len(lengths) != 1:
            raise ValueError(f"repeats {g} have different lengths {sorted(lengths)}")
        r = np.stack([skip_frames(responses[i], skip) for i in g])
        p = np.stack([skip_frames(predictions[i], skip) for i in g])
        if r.shape[-1] > 0:
            blocks.append((r, p))
    return blocks


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


def single_trial_correlation(
    responses: Trials, predictions: Trials, skip: int | None = None, per_neuron: bool = False
) -> Any:
    """Correlation per neuron over the frames (after `skip`; None: `frames_to_skip`) of all
    trials; mean over neurons."""
    resp, pred = _as_trials(responses, "responses"), _as_trials(predictions, "predictions")
    _check_pair(resp, pred)
    skip = _skip(skip, resp)
    acc = CorrelationAccumulator()
    for r, p in zip(resp, pred):
        acc.add(skip_frames(r, skip), skip_frames(p, skip))
    if acc.n_frames == 0:
        raise ValueError(f"no frames left after skipping the first {skip} of each trial")
    values = acc.result().numpy()
    if not np.all(np.isfinite(values)):  # NaN in the inputs: as the published code, count as 0
        warnings.warn("NaN correlations (NaN inputs) set to 0", RuntimeWarning, stacklevel=2)
        values = np.where(np.isfinite(values), values, 0.0)
    return _mean(values, per_neuron)


def correlation_to_average(
    responses: Trials,
    predictions: Trials,
    groups: Sequence[Sequence[int]],
    skip: int | None = None,
    per_neuron: bool = False,
) -> Any:
    """Correlation of repeat-averaged predictions with repeat-averaged responses.

    `groups` lists, per clip, the positions of its repeats in `responses` (see `group_repeats`);
    clips with fewer than 2 repeats are left out. Returns None when no clip has 2 repeats.
    """
    blocks = _repeats(responses, predictions, groups, skip)
    if not blocks:
        return None
    r, p = _repeat_means(blocks)
    return _mean(correlation(r, p, axis=1), per_neuron)


def _repeat_means(blocks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Responses and predictions averaged over the repeats of each clip: (N, stimuli) each."""
    r = np.concatenate([b[0].mean(axis=0) for b in blocks], axis=1)
    p = np.concatenate([b[1].mean(axis=0) for b in blocks], axis=1)
    return r, p


def explainable_variance(
    responses: Trials, groups: Sequence[Sequence[int]], skip: int | None = None
) -> np.ndarray | None:
    """Fraction of explainable variance (FEV) per neuron, (total - noise) / total (0 if no variance)."""
    resp = _as_trials(responses, "responses")
    blocks = _repeat_blocks(resp, resp, groups, _skip(skip, resp))
    if not blocks:
        return None
    total, noise, _ = _variances(blocks)
    ok = ~_no_variance(total, _mean_square(blocks))
    return np.where(ok, (total - noise) / np.where(ok, total, 1.0), 0.0)


def _mean_square(blocks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    n = sum(b[0].shape[0] * b[0].shape[2] for b in blocks)
    return sum((b[0] ** 2).sum(axis=(0, 2)) for b in blocks) / n


def _variances(blocks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """(total variance ddof=1, noise variance = mean over stimuli of var across repeats, MSE)."""
    all_r = np.concatenate([b[0].transpose(1, 0, 2).reshape(b[0].shape[1], -1) for b in blocks], 1)
    total = all_r.var(axis=1, ddof=1)
    # (N, stimuli): variance across repeats of each (clip, frame)
    noise = np.concatenate([b[0].var(axis=0, ddof=1) for b in blocks], axis=1).mean(axis=1)
    sq = np.concatenate(
        [((b[0] - b[1]) ** 2).transpose(1, 0, 2).reshape(b[0].shape[1], -1) for b in blocks], 1
    )
    return total, noise, sq.mean(axis=1)


def feve(
    responses: Trials,
    predictions: Trials,
    groups: Sequence[Sequence[int]],
    skip: int | None = None,
    fev_threshold: float = FEV_THRESHOLD,
    per_neuron: bool = False,
) -> Any:
    """Fraction of explainable variance explained, mean over neurons with FEV >= `fev_threshold`.

    With `per_neuron=True`, returns FEVE for every neuron (0 where the responses or the explainable
    variance are zero) — the threshold is then up to the caller (see `explainable_variance`). Returns None
    when no clip has 2 repeats, NaN when no neuron passes the threshold.
    """
    blocks = _repeats(responses, predictions, groups, skip)
    if not blocks:
        return None
    total, noise, mse = _variances(blocks)
    explainable = total - noise
    ok_total = ~_no_variance(total, _mean_square(blocks))
    fev = np.where(ok_total, explainable / np.where(ok_total, total, 1.0), 0.0)
    ok = ok_total & (np.abs(explainable) > _REL_VAR_EPS * np.where(ok_total, total, 0.0))
    values = np.where(ok, 1.0 - (mse - noise) / np.where(ok, explainable, 1.0), 0.0)
    if per_neuron:
        return values
    keep = ok & (fev >= fev_threshold)
    return float(values[keep].mean()) if keep.any() else float("nan")


def normalized_correlation(
    responses: Trials,
    predictions: Trials,
    groups: Sequence[Sequence[int]],
    skip: int | None = None,
    per_neuron: bool = False,
) -> Any:
    """CC_norm = CC_abs / CC_max (Schoppe et al. 2016); mean over neurons with signal power > 0.

    Returns None when no clip has 2 repeats, NaN when no neuron has signal power.
    """
    blocks = _repeats(responses, predictions, groups, skip)
    if not blocks:
        return None
    mean_r, mean_p = _repeat_means(blocks)
    cc_abs = correlation(mean_r, mean_p, axis=1)
    var_mean = mean_r.var(axis=1)
    # noise power left in the repeat average of each stimulus: var across repeats / repeats
    noise = np.concatenate([b[0].var(axis=0, ddof=1) / b[0].shape[0] for b in blocks], axis=1).mean(
        axis=1
    )
    signal = var_mean - noise
    ok = (signal > 0) & ~_no_variance(var_mean, (mean_r**2).mean(axis=1))
    cc_max = np.sqrt(np.where(ok, signal / np.where(ok, var_mean, 1.0), 1.0))
    values = np.where(ok, cc_abs / cc_max, 0.0)
    if per_neuron:
        return values
    return float(values[ok].mean()) if ok.any() else float("nan")


def compute_metrics(
    responses: Trials,
    predictions: Trials,
    groups: Sequence[Sequence[int]] | None = None,
    skip: int | None = None,
) -> dict[str, float | None]:
    """All metrics as one dict (repeat-based ones None when there are no repeats)."""
    resp, pred = _as_trials(responses, "responses"), _as_trials(predictions, "predictions")
    groups = groups if groups is not None else []
    return {
        "single_trial_correlation": single_trial_correlation(resp, pred, skip),
        "correlation_to_average": correlation_to_average(resp, pred, groups, skip),
        "feve": feve(resp, pred, groups, skip),
        "normalized_correlation": normalized_correlation(resp, pred, groups, skip),
    }


# ------------------------------------------------------------------------------------------------
# Encoding-model scores: per column (neuron) of (samples, neurons) arrays, and noise ceilings from
# repeats (R, stimuli, neurons). Conventions of brainscore-vision (InternalConsistency: split the
# repeats in halves, correlate the half means per neuron, Spearman-Brown with n = 2) and
# mouse-vision (mean over random split-halves; noise-corrected r = r / sqrt(reliability)).
# ------------------------------------------------------------------------------------------------


def r2_per_column(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column, as sklearn's r2_score(multioutput='raw_values')
    (a column without variance scores 1 when predicted exactly, else 0)."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    ss_res = ((y - pred) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    flat = ss_tot <= _REL_VAR_EPS * (y**2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1.0 - ss_res / np.where(flat, 1.0, ss_tot)
    return np.where(flat, np.where(ss_res == 0, 1.0, 0.0), out)


def spearman_brown(r: ArrayLike, factor: float = 2.0) -> np.ndarray:
    """Reliability of `factor` times as many repeats, from the reliability `r`:
    factor * r / (1 + (factor - 1) * r)."""
    r = _to_numpy(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        return factor * r / (1.0 + (factor - 1.0) * r)


def random_halves(
    n_repeats: int, n_splits: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n_splits` random splits of repeat indices into halves (the first n // 2 of a permutation,
    and the rest), drawn with `seed`; the same halves for every stimulus (mouse-vision's 'sync')."""
    if n_repeats < 2:
        return []
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_splits):
        perm = rng.permutation(n_repeats)
        out.append((np.sort(perm[: n_repeats // 2]), np.sort(perm[n_repeats // 2 :])))
    return out


def split_half_reliability(
    responses: np.ndarray, halves: Sequence[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Spearman-Brown corrected split-half reliability per neuron, mean over `halves`.

    `responses` (R, S, N): repeats x stimuli x neurons, NaN where a stimulus lacks a repeat. For
    each split, the responses of each half are averaged over its repeats (stimuli missing from a
    half are left out of that split), correlated with the other half over stimuli per neuron,
    and corrected to the full number of repeats with Spearman-Brown (factor 2). NaN when there
    are no halves.
    """
    y = np.asarray(responses, dtype=np.float64)
    if y.ndim != 3:
        raise ValueError(f"expected (repeats, stimuli, neurons), got shape {y.shape}")
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty halves: NaN, dropped below
        for a, b in halves:
            ma, mb = np.nanmean(y[a], axis=0), np.nanmean(y[b], axis=0)
            ok = np.all(np.isfinite(ma) & np.isfinite(mb), axis=1)
            if ok.sum() < 3:
                continue
            values.append(spearman_brown(correlation(ma[ok], mb[ok], axis=0)))
    if not values:
        return np.full(y.shape[2], np.nan)
    return np.mean(values, axis=0)


def mean_pairwise_correlation(responses: np.ndarray) -> np.ndarray:
    """Single-trial reliability per neuron: the mean over pairs of repeats of their correlation
    over stimuli. `responses` (R, S, N) with every repeat present (no NaN); NaN when R < 2."""
    y = np.asarray(responses, dtype=np.float64)
    n_rep = y.shape[0]
    if n_rep < 2 or y.shape[1] < 3:
        return np.full(y.shape[2], np.nan)
    z = y - y.mean(axis=1, keepdims=True)
    sd = np.sqrt((z**2).mean(axis=1, keepdims=True))
    z = np.where(sd > 0, z / np.where(sd > 0, sd, 1.0), 0.0)
    total = (z.sum(axis=0) ** 2).sum(axis=0)  # sum over stimuli of (sum over repeats)^2
    own = (z**2).sum(axis=(0, 1))
    return (total - own) / (n_rep * (n_rep - 1) * y.shape[1])


def noise_corrected_correlation(r: ArrayLike, reliability: ArrayLike) -> np.ndarray:
    """r / sqrt(reliability): the correlation as a fraction of the highest one the noise allows
    (NaN where the reliability is not positive)."""
    r, rel = _to_numpy(r), _to_numpy(reliability)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rel > 0, r / np.sqrt(np.where(rel > 0, rel, 1.0)), np.nan)


# ----------------------------------------------------------------------------------------------
# Spike trains: Poisson log-likelihood in bits per spike over a homogeneous rate
# ----------------------------------------------------------------------------------------------

RATE_FLOOR = 1e-8  # expected count per bin below which a homogeneous rate is taken as this


class PoissonScores:
    """Accumulates, per unit of one session, spikes and the two log-likelihoods."""

    def __init__(self, homogeneous: np.ndarray):
        self.log_rate0 = torch.as_tensor(np.log(np.maximum(homogeneous, RATE_FLOOR)))
        self.rate0 = self.log_rate0.exp()
        n = self.rate0.numel()
        self.spikes = torch.zeros(n, dtype=torch.float64)
        self.model = torch.zeros(n, dtype=torch.float64)
        self.baseline = torch.zeros(n, dtype=torch.float64)
        self.bins = 0

    @torch.no_grad()
    def add(self, counts: torch.Tensor, log_rate: torch.Tensor) -> None:
        """counts, log_rate: (B, N, T) window bins (any device)."""
        y = counts.detach().double()
        eta = log_rate.detach().double()
        log_rate0 = self.log_rate0.to(y.device)
        self.spikes += y.sum((0, 2)).cpu()
        self.model += (y * eta - eta.exp()).sum((0, 2)).cpu()
        n_bins = y.shape[0] * y.shape[2]
        self.baseline += (
            (y * log_rate0[None, :, None]).sum((0, 2)) - self.rate0.to(y.device) * n_bins
        ).cpu()
        self.bins += n_bins

    def bits(self, units: slice | Sequence[int] | None = None) -> float:
        """Bits per spike of these units together (NaN without spikes)."""
        index = slice(None) if units is None else units
        spikes = float(self.spikes[index].sum())
        if spikes == 0:
            return math.nan
        gain = float((self.model[index] - self.baseline[index]).sum())
        return gain / (math.log(2.0) * spikes)

    def total(self) -> tuple[float, float]:
        """(likelihood gain over the homogeneous rate in nats, spikes) of all units."""
        return float((self.model - self.baseline).sum()), float(self.spikes.sum())


def pooled_bits(scores: Mapping[str, PoissonScores]) -> float:
    """Bits per spike over every unit of every session."""
    gain = sum(s.total()[0] for s in scores.values())
    spikes = sum(s.total()[1] for s in scores.values())
    return gain / (math.log(2.0) * spikes) if spikes else math.nan

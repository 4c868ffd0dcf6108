"""neurotwin.metrics against independent computations (scipy loops, hand-built exact cases, and
neuralpredictors' measures where that package imports)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from neurotwin import metrics

SKIP = metrics.SKIP_FRAMES


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(pearsonr(x, y)[0])


def _random_trials(rng, n_trials=5, n=7, lengths=None, corr=0.5):
    lengths = lengths or [int(rng.integers(60, 90)) for _ in range(n_trials)]
    resp, pred = [], []
    for t in lengths:
        r = rng.gamma(2.0, 1.0, size=(n, t))
        p = corr * r + rng.normal(size=(n, t))
        resp.append(r)
        pred.append(p)
    return resp, pred


def _repeats(rng, n_clips=3, n_repeats=4, n=6, t=80, noise=1.0):
    """Trials of `n_clips` clips shown `n_repeats` times each, shuffled; returns groups too."""
    signal = rng.gamma(2.0, 1.0, size=(n_clips, n, t))
    # neuron-specific noise levels (the last one is pure noise: no signal)
    signal[:, -1] = 1.0
    resp, pred, clip_of = [], [], []
    for c in range(n_clips):
        for _ in range(n_repeats):
            resp.append(signal[c] + noise * rng.normal(size=(n, t)))
            pred.append(0.7 * signal[c] + 0.3 * rng.normal(size=(n, t)))
            clip_of.append(c)
    order = rng.permutation(len(resp))
    resp = [resp[i] for i in order]
    pred = [pred[i] for i in order]
    clip_of = [clip_of[i] for i in order]
    groups = metrics.group_repeats(clip_of)
    return resp, pred, groups, signal


# ------------------------------------------------------------------------------------------------
# correlation
# ------------------------------------------------------------------------------------------------


def test_correlation_matches_scipy_numpy_and_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 200))
    y = 0.3 * x + rng.normal(size=(9, 200))
    expected = np.array([pearsonr(a, b)[0] for a, b in zip(x, y)])
    np.testing.assert_allclose(metrics.correlation(x, y, axis=1), expected, atol=1e-12)
    out = metrics.correlation(torch.tensor(x, dtype=torch.float32), torch.tensor(y), axis=1)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    # along axis 0
    np.testing.assert_allclose(metrics.correlation(x.T, y.T, axis=0), expected, atol=1e-12)


def test_correlation_no_variance_is_zero_not_nan():
    x = np.stack([np.full(100, 0.1), np.arange(100.0), np.zeros(100)])
    y = np.stack([np.arange(100.0), np.full(100, 3.3), np.zeros(100)])
    out = metrics.correlation(x, y, axis=1)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0])
    out_t = metrics.correlation(torch.tensor(x), torch.tensor(y), axis=1)
    np.testing.assert_array_equal(out_t.numpy(), [0.0, 0.0, 0.0])


def test_correlation_nan_inputs_warn_and_give_zero():
    x = np.stack([np.arange(10.0), np.arange(10.0)])
    y = x.copy()
    y[1, 3] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        out = metrics.correlation(x, y, axis=1)
    np.testing.assert_allclose(out, [1.0, 0.0])


# ------------------------------------------------------------------------------------------------
# single-trial correlation
# ------------------------------------------------------------------------------------------------


def test_single_trial_correlation_against_scipy_loop():
    rng = np.random.default_rng(1)
    resp, pred = _random_trials(rng, lengths=[60, 75, 90, 51, 50])  # 50: contributes nothing
    per_neuron = metrics.single_trial_correlation(resp, pred, per_neuron=True)
    for i in range(resp[0].shape[0]):
        r = np.concatenate([t[i, SKIP:] for t in resp])
        p = np.concatenate([t[i, SKIP:] for t in pred])
        assert per_neuron[i] == pytest.approx(_pearson(r, p), abs=1e-12)
    assert metrics.single_trial_correlation(resp, pred) == pytest.approx(per_neuron.mean())


def test_single_trial_correlation_array_and_torch_inputs():
    rng = np.random.default_rng(2)
    resp, pred = _random_trials(rng, lengths=[70] * 4)
    expected = metrics.single_trial_correlation(resp, pred)
    assert metrics.single_trial_correlation(np.stack(resp), np.stack(pred)) == pytest.approx(
        expected
    )
    t_resp = [torch.tensor(r) for r in resp]
    t_pred = torch.tensor(np.stack(pred))
    assert metrics.single_trial_correlation(t_resp, t_pred) == pytest.approx(expected)


def test_single_trial_correlation_exact_cases():
    rng = np.random.default_rng(3)
    resp = [rng.normal(size=(4, 80)) for _ in range(3)]
    # an affine transform per neuron (same for all trials) correlates perfectly
    scale = np.array([[2.0], [0.5], [-1.0], [3.0]])
    pred = [scale * r + 7.0 for r in resp]
    out = metrics.single_trial_correlation(resp, pred, per_neuron=True)
    np.testing.assert_allclose(out, [1.0, 1.0, -1.0, 1.0], atol=1e-12)
    # the first 50 frames are ignored: garbage there changes nothing
    pred2 = [p.copy() for p in pred]
    for p in pred2:
        p[:, :SKIP] = rng.normal(size=(4, SKIP)) * 100
    np.testing.assert_allclose(metrics.single_trial_correlation(resp, pred2, per_neuron=True), out)
    # a silent neuron gives 0 and the mean is over all neurons
    resp[0][1] = 0.0
    for r in resp:
        r[1] = 0.0
    out = metrics.single_trial_correlation(resp, pred, per_neuron=True)
    assert out[1] == 0.0 and np.all(np.isfinite(out))
    assert metrics.single_trial_correlation(resp, pred) == pytest.approx((1 + 0 - 1 + 1) / 4)


def test_single_trial_correlation_bad_input():
    with pytest.raises(ValueError):
        metrics.single_trial_correlation([np.zeros((3, 60))], [np.zeros((4, 60))])
    with pytest.raises(ValueError, match="no frames left"):
        metrics.single_trial_correlation([np.zeros((3, 40))], [np.zeros((3, 40))], skip=50)


def test_the_first_50_frames_are_skipped_unless_no_trial_is_longer():
    """One rule (`frames_to_skip`) for validation, prediction and the synthetic ceiling:
    Sensorium's 50 frames, or none when every trial of the set has at most 50 (toy data)."""
    assert metrics.frames_to_skip([90, 60, 30]) == 50
    assert metrics.frames_to_skip([51]) == 50
    assert metrics.frames_to_skip([50, 40]) == 0 and metrics.frames_to_skip([]) == 0
    rng = np.random.default_rng(1)
    resp = [rng.random((3, 70)), rng.random((3, 40))]  # the 40-frame trial adds no frame
    pred = [r + rng.normal(0, 0.3, r.shape) for r in resp]
    expected = metrics.correlation(resp[0][:, 50:], pred[0][:, 50:], axis=1).mean()
    assert metrics.single_trial_correlation(resp, pred) == pytest.approx(expected)
    short = [r[:, :40] for r in resp], [p[:, :40] for p in pred]  # all short: every frame
    expected = metrics.correlation(np.concatenate(short[0], 1), np.concatenate(short[1], 1), axis=1)
    assert metrics.single_trial_correlation(*short) == pytest.approx(expected.mean())


# ------------------------------------------------------------------------------------------------
# repeats
# ------------------------------------------------------------------------------------------------


def test_video_hash_groups_identical_valid_frames():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(6, 8, 30)).astype(np.float32)
    b = rng.normal(size=(6, 8, 30)).astype(np.float32)
    a_padded = np.concatenate([a, np.full((6, 8, 10), np.nan, np.float32)], axis=-1)
    b_other_pad = np.concatenate([b, np.zeros((6, 8, 10), np.float32)], axis=-1)
    hashes = [
        metrics.video_hash(a, 30),
        metrics.video_hash(b_other_pad, 30),
        metrics.video_hash(a_padded, 30),
        metrics.video_hash(b, 30),
        metrics.video_hash(a[..., :20], 20),  # a shorter clip is another clip
    ]
    groups = metrics.group_repeats(hashes)
    assert [g.tolist() for g in groups] == [[0, 2], [1, 3], [4]]


def test_correlation_to_average_against_loop():
    rng = np.random.default_rng(5)
    resp, pred, groups, _ = _repeats(rng)
    out = metrics.correlation_to_average(resp, pred, groups, per_neuron=True)
    for i in range(resp[0].shape[0]):
        mr = np.concatenate([np.mean([resp[j][i, SKIP:] for j in g], axis=0) for g in groups])
        mp = np.concatenate([np.mean([pred[j][i, SKIP:] for j in g], axis=0) for g in groups])
        assert out[i] == pytest.approx(_pearson(mr, mp), abs=1e-12)
    # no clip repeated -> None
    singles = [[i] for i in range(len(resp))]
    assert metrics.correlation_to_average(resp, pred, singles) is None


def _feve_loop(resp, pred, groups, skip=SKIP):
    """FEV and FEVE per neuron, written out with explicit loops over stimuli (clip, frame)."""
    n = resp[0].shape[0]
    fev, feve = np.zeros(n), np.zeros(n)
    for i in range(n):
        all_r, noise, sq = [], [], []
        for g in groups:
            t = resp[g[0]].shape[1]
            for f in range(skip, t):
                r = np.array([resp[j][i, f] for j in g])
                p = np.array([pred[j][i, f] for j in g])
                all_r.extend(r)
                noise.append(np.var(r, ddof=1))
                sq.extend((r - p) ** 2)
        total = np.var(all_r, ddof=1)
        nv = np.mean(noise)
        fev[i] = (total - nv) / total
        feve[i] = 1 - (np.mean(sq) - nv) / (total - nv)
    return fev, feve


def test_feve_against_loop_and_threshold():
    rng = np.random.default_rng(6)
    resp, pred, groups, _ = _repeats(rng, n_clips=3, n_repeats=3, n=5, t=60)
    fev_ref, feve_ref = _feve_loop(resp, pred, groups)
    np.testing.assert_allclose(metrics.explainable_variance(resp, groups), fev_ref, atol=1e-10)
    np.testing.assert_allclose(
        metrics.feve(resp, pred, groups, per_neuron=True), feve_ref, atol=1e-10
    )
    keep = fev_ref >= 0.15
    assert not keep[-1]  # the pure-noise neuron is excluded
    assert keep[:-1].any()
    assert metrics.feve(resp, pred, groups) == pytest.approx(feve_ref[keep].mean(), abs=1e-10)
    assert metrics.feve(resp, pred, [[i] for i in range(len(resp))]) is None


def test_feve_exact_case_prediction_is_repeat_mean():
    # predicting each stimulus' mean over its R repeats: MSE = noise (R-1)/R, so
    # FEVE = 1 + noise / (R (total - noise)) exactly
    rng = np.random.default_rng(7)
    resp, _, groups, _ = _repeats(rng, n_clips=2, n_repeats=5, n=3, t=70, noise=0.5)
    pred = [None] * len(resp)
    for g in groups:
        m = np.mean([resp[j] for j in g], axis=0)
        for j in g:
            pred[j] = m
    fev_ref, _ = _feve_loop(resp, resp, groups)
    out = metrics.feve(resp, pred, groups, per_neuron=True)
    all_r = np.concatenate([np.stack([resp[j][:, SKIP:] for j in g], 1) for g in groups], 2)
    total = all_r.reshape(3, -1).var(axis=1, ddof=1)
    noise = total * (1 - fev_ref)
    np.testing.assert_allclose(out, 1 + noise / (5 * (total - noise)), rtol=1e-10)


def test_no_nan_for_silent_neurons_in_repeat_metrics():
    rng = np.random.default_rng(8)
    resp, pred, groups, _ = _repeats(rng, n=4)
    for r in resp:
        r[0] = 0.0
    for p in pred:
        p[1] = 2.0
    for fn in (metrics.correlation_to_average, metrics.feve, metrics.normalized_correlation):
        values = fn(resp, pred, groups, per_neuron=True)
        assert np.all(np.isfinite(values)), fn.__name__
        assert values[0] == 0.0
        assert math.isfinite(fn(resp, pred, groups))


def _cc_norm_loop(resp, pred, groups, skip=SKIP):
    n = resp[0].shape[0]
    out = np.zeros(n)
    for i in range(n):
        mr, mp, noise = [], [], []
        for g in groups:
            r = np.stack([resp[j][i, skip:] for j in g])
            p = np.stack([pred[j][i, skip:] for j in g])
            mr.extend(r.mean(0))
            mp.extend(p.mean(0))
            noise.extend(r.var(0, ddof=1) / len(g))
        sp = np.var(mr) - np.mean(noise)
        out[i] = _pearson(np.array(mr), np.array(mp)) / math.sqrt(sp / np.var(mr)) if sp > 0 else 0
    return out


def test_normalized_correlation_against_loop():
    rng = np.random.default_rng(9)
    resp, pred, groups, _ = _repeats(rng, n_clips=3, n_repeats=4)
    out = metrics.normalized_correlation(resp, pred, groups, per_neuron=True)
    ref = _cc_norm_loop(resp, pred, groups)
    np.testing.assert_allclose(out, ref, atol=1e-10)
    valid = ref != 0
    assert metrics.normalized_correlation(resp, pred, groups) == pytest.approx(ref[valid].mean())


def test_normalized_correlation_of_the_true_signal_is_one():
    # many repeats and frames: the noiseless signal scores CC_norm ~ 1, although its raw
    # correlation with the (noisy) repeat average is clearly below 1
    rng = np.random.default_rng(10)
    resp, _, groups, signal = _repeats(rng, n_clips=4, n_repeats=6, n=4, t=450, noise=2.0)
    # groups come in order of first appearance; map trials back to the signal they show
    truth = [None] * len(resp)
    for g in groups:
        mean = np.mean([resp[j] for j in g], axis=0)
        best = np.argmin([np.abs(mean - s).mean() for s in signal])
        for j in g:
            truth[j] = signal[best]
    assert all(t is not None for t in truth)
    cc_abs = metrics.correlation_to_average(resp, truth, groups, per_neuron=True)[:-1]
    cc_norm = metrics.normalized_correlation(resp, truth, groups, per_neuron=True)[:-1]
    assert np.all(cc_abs < 0.97)
    np.testing.assert_allclose(cc_norm, 1.0, atol=0.04)


def test_normalized_correlation_close_to_schoppe_single_clip():
    # Schoppe et al. 2016: SP = (Var(sum_n r_n) - sum_n Var(r_n)) / (N (N - 1));
    # CC_norm = Cov(mean r, p) / sqrt(Var(p) SP). Ours differs only by the per-trial offset term.
    rng = np.random.default_rng(11)
    resp, pred, groups, _ = _repeats(rng, n_clips=1, n_repeats=8, n=3, t=1050, noise=1.0)
    out = metrics.normalized_correlation(resp, pred, groups, per_neuron=True)
    for i in range(2):
        r = np.stack([resp[j][i, SKIP:] for j in groups[0]])
        p = np.mean([pred[j][i, SKIP:] for j in groups[0]], axis=0)
        n = r.shape[0]
        sp = (np.var(r.sum(0)) - np.var(r, axis=1).sum()) / (n * (n - 1))
        cov = np.mean((r.mean(0) - r.mean()) * (p - p.mean()))
        assert out[i] == pytest.approx(cov / math.sqrt(np.var(p) * sp), rel=0.02)


def test_compute_metrics_keys():
    rng = np.random.default_rng(12)
    resp, pred, groups, _ = _repeats(rng)
    out = metrics.compute_metrics(resp, pred, groups)
    assert set(out) == {
        "single_trial_correlation",
        "correlation_to_average",
        "feve",
        "normalized_correlation",
    }
    out = metrics.compute_metrics(resp, pred)
    assert out["correlation_to_average"] is None and out["feve"] is None


# ------------------------------------------------------------------------------------------------
# neuralpredictors (reference implementation of the Sensorium measures), when it imports
# ------------------------------------------------------------------------------------------------


def _np_functions():
    try:
        from neuralpredictors.measures import np_functions
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        pytest.skip(f"neuralpredictors not importable: {e}")
    return np_functions


def test_against_neuralpredictors_corr():
    npf = _np_functions()
    rng = np.random.default_rng(13)
    resp, pred = _random_trials(rng)
    # sensorium_2023 get_correlations: concatenate frames after skip, corr(axis=0) over frames
    target = np.concatenate([r[:, SKIP:] for r in resp], axis=1).T
    output = np.concatenate([p[:, SKIP:] for p in pred], axis=1).T
    ref = npf.corr(target, output, axis=0)
    ours = metrics.single_trial_correlation(resp, pred, per_neuron=True)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_against_neuralpredictors_fev():
    npf = _np_functions()
    rng = np.random.default_rng(14)
    resp, pred, groups, _ = _repeats(rng, n_clips=2, n_repeats=4, n=5, t=70)
    # neuralpredictors' stimuli are images: one (repeats, neurons) array per (clip, frame)
    targets, outputs = [], []
    for g in groups:
        for f in range(SKIP, resp[g[0]].shape[1]):
            targets.append(np.stack([resp[j][:, f] for j in g]))
            outputs.append(np.stack([pred[j][:, f] for j in g]))
    fev_ref, feve_ref = npf.fev(targets, outputs, return_exp_var=True)
    np.testing.assert_allclose(metrics.explainable_variance(resp, groups), fev_ref, atol=1e-10)
    np.testing.assert_allclose(
        metrics.feve(resp, pred, groups, per_neuron=True), feve_ref, atol=1e-10
    )
    # sinzlab/sensorium Metrics.feve: mean over neurons with FEV >= 0.15
    assert metrics.feve(resp, pred, groups) == pytest.approx(feve_ref[fev_ref >= 0.15].mean())
    # explainable_var agrees too (it adds 1e-9 to the total variance)
    np.testing.assert_allclose(npf.explainable_var(np.stack(targets)), fev_ref, atol=1e-6)
    # correlation to average: corr of repeat means over stimuli (sensorium get_signal_correlations)
    ref = npf.corr(
        np.stack([t.mean(0) for t in targets]), np.stack([o.mean(0) for o in outputs]), axis=0
    )
    np.testing.assert_allclose(
        metrics.correlation_to_average(resp, pred, groups, per_neuron=True), ref, atol=1e-6
    )


def test_correlation_accumulator_pieces_and_precision():
    rng = np.random.default_rng(15)
    # a large offset with small fluctuations: naive sums of squares would lose the signal
    x = 1e6 + rng.normal(size=(3, 600))
    y = 0.5 * (x - 1e6) + rng.normal(size=(3, 600)) - 2e5
    acc = metrics.CorrelationAccumulator()
    for a, b in ((0, 100), (100, 101), (101, 101), (101, 600)):
        acc.add(x[:, a:b], y[:, a:b])
    assert acc.n_frames == 600
    expected = [pearsonr(a, b)[0] for a, b in zip(x, y)]
    np.testing.assert_allclose(acc.result().numpy(), expected, atol=1e-9)
    # sums about a common centre (0, for data without an offset) add up over processes
    parts = [metrics.CorrelationAccumulator(3, center=0.0) for _ in range(2)]
    parts[0].add(x[:, :300] - 1e6, y[:, :300] + 2e5)
    parts[1].add(x[:, 300:] - 1e6, y[:, 300:] + 2e5)
    total = metrics.CorrelationAccumulator(3, center=0.0)
    total.stats = parts[0].stats + parts[1].stats
    np.testing.assert_allclose(total.result().numpy(), expected, atol=1e-9)
    # NaN frames left out when asked (padding past the end of short trials)
    padded = metrics.CorrelationAccumulator()
    padded.add(np.concatenate([x, np.full((3, 5), np.nan)], 1), np.concatenate([y, np.ones((3, 5))], 1), ignore_nan=True)  # fmt: skip
    np.testing.assert_allclose(padded.result().numpy(), expected, atol=1e-9)
    with pytest.raises(ValueError):
        metrics.CorrelationAccumulator().result()

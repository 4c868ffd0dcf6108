"""Regression against scikit-learn's (and himalaya's) own results on the same design matrix;
splits; noise ceilings against direct computations and against ground truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cross_decomposition import PLSRegression
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import explained_variance_score, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurotwin import metrics
from neurotwin.encoding.regression import (
    RegressionOptions,
    TorchRidge,
    build_regressor,
    fit_predict,
)
from neurotwin.encoding.scores import ScoreOptions, mean_ceiling, metric_functions
from neurotwin.encoding.splits import SplitOptions, interleaved_split, make_splits, random_splits
from neurotwin.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n, p, targets=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 3, size=p) + rng.normal(size=p)
    noise = np.geomspace(0.1, 30.0, targets)  # from nearly clean to nearly pure noise
    y = x[:, :4] @ rng.normal(size=(4, targets)) + noise * rng.normal(size=(n, targets)) + 5.0
    return x, y


@pytest.mark.parametrize("shape", [(90, 25), (30, 80)])
def test_ridge_equals_sklearn_ridge(shape):
    x, y = _data(*shape)
    ours = TorchRidge([3.0]).fit(x, y)
    ref = Ridge(alpha=3.0).fit(x, y)
    np.testing.assert_allclose(ours.coef_.numpy(), ref.coef_.T, atol=1e-10)
    np.testing.assert_allclose(ours.intercept_.numpy(), ref.intercept_, atol=1e-10)
    np.testing.assert_allclose(ours.predict(x[:7]), ref.predict(x[:7]), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(90, 25), (30, 80)])
def test_ridgecv_equals_sklearn_ridgecv_per_target(shape):
    """Leave-one-out choice of alpha per neuron, as RidgeCV(alpha_per_target=True) on the centred
    design (the intercept is handled by centring, as himalaya does)."""
    x, y = _data(*shape, targets=9)
    alphas = [0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5]
    ours = TorchRidge(alphas).fit(x, y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    ref = RidgeCV(alphas=alphas, fit_intercept=False, alpha_per_target=True).fit(xc, yc)
    np.testing.assert_array_equal(ours.alpha_, ref.alpha_)
    np.testing.assert_allclose(ours.coef_.numpy(), ref.coef_.T, atol=1e-10)
    if shape[0] > shape[1]:
        assert len(set(ours.alpha_)) > 1  # the data make the choice differ between targets


def test_ridge_equals_himalaya():
    himalaya = pytest.importorskip("himalaya.ridge")
    x, y = _data(120, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = himalaya.Ridge(alpha=7.0, fit_intercept=True).fit(x, y)
    np.testing.assert_allclose(TorchRidge([7.0]).fit(x, y).coef_.numpy(), ref.coef_, atol=1e-10)


def test_standardised_fit_equals_sklearn_pipeline_and_pls():
    x, y = _data(80, 20)
    opts = RegressionOptions(regressor="ridge", alphas=[5.0])
    pred, alpha = fit_predict(opts, "cpu", x[:60], y[:60], x[60:])
    ref = make_pipeline(StandardScaler(), Ridge(alpha=5.0)).fit(x[:60], y[:60]).predict(x[60:])
    np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-4)
    assert alpha is None  # one fixed penalty, nothing chosen
    pls, _ = fit_predict(
        RegressionOptions(regressor="pls", pls_components=5, standardize=False),
        "cpu",
        x[:60],
        y[:60],
        x[60:],
    )
    ref = PLSRegression(n_components=5, scale=False).fit(x[:60], y[:60]).predict(x[60:])
    np.testing.assert_allclose(pls, ref, rtol=1e-4, atol=1e-4)
    est, _ = fit_predict(
        RegressionOptions(regressor="sklearn:sklearn.linear_model.Ridge", alphas=[5.0]),
        "cpu",
        x[:60],
        y[:60],
        x[60:],
    )
    np.testing.assert_allclose(est, pred, rtol=1e-4, atol=1e-4)
    _, chosen = fit_predict(
        RegressionOptions(regressor="ridgecv", alphas=[1.0, 1e3]), "cpu", x[:60], y[:60], x[60:]
    )
    assert chosen.shape == (y.shape[1],)


def test_regressor_errors():
    with pytest.raises(ConfigError, match="unknown regressor"):
        build_regressor(RegressionOptions(regressor="lasso"))
    with pytest.raises(ConfigError, match="cannot import"):
        build_regressor(RegressionOptions(regressor="sklearn:sklearn.linear_model.Nope"))
    with pytest.raises(ConfigError, match="one penalty"):
        build_regressor(RegressionOptions(regressor="ridge", alphas=[1.0, 2.0]))


def test_interleaved_split_is_huggingmouse_and_random_splits_are_halves():
    train, test = interleaved_split(900, 20, 0.5)[0]
    assert len(test) == 20 * 23 and len(train) == 900 - 460  # 23 of every 45-frame segment
    assert list(test[:23]) == list(range(23)) and test[23] == 45
    assert set(train) | set(test) == set(range(900)) and not set(train) & set(test)
    splits = random_splits(118, 10, 0.5, seed=3)
    assert len(splits) == 10 and all(len(te) == 59 and len(tr) == 59 for tr, te in splits)
    assert not np.array_equal(splits[0][1], splits[1][1])
    with pytest.raises(ConfigError, match="test stimuli"):
        make_splits(4, SplitOptions(), "tiny")


# ------------------------------------------------------------------------------------------------
# scores and noise ceilings


def test_per_neuron_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y, p = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    fns = metric_functions(["r", "r2", "sklearn:explained_variance_score", "sklearn:max_error"])
    np.testing.assert_allclose(fns["r2"](y, p), r2_score(y, p, multioutput="raw_values"))
    np.testing.assert_allclose(
        fns["sklearn:explained_variance_score"](y, p),
        explained_variance_score(y, p, multioutput="raw_values"),
    )
    np.testing.assert_allclose(
        fns["r"](y, p), [np.corrcoef(y[:, i], p[:, i])[0, 1] for i in range(4)]
    )
    assert fns["sklearn:max_error"](y, p).shape == (4,)
    with pytest.raises(ConfigError):
        ScoreOptions(metrics=["spearman"])


def test_split_half_reliability_equals_a_direct_computation():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(7, 40, 3)) + rng.normal(size=(1, 40, 3))
    halves = metrics.random_halves(7, 5, seed=4)
    got = metrics.split_half_reliability(y, halves)
    direct = []
    for n in range(3):
        values = []
        for a, b in halves:
            rho = np.corrcoef(y[a, :, n].mean(0), y[b, :, n].mean(0))[0, 1]
            values.append(2 * rho / (1 + rho))
        direct.append(np.mean(values))
    np.testing.assert_allclose(got, direct, rtol=1e-10)
    pairs = [
        np.mean(
            [np.corrcoef(y[i, :, n], y[j, :, n])[0, 1] for i in range(7) for j in range(i + 1, 7)]
        )
        for n in range(3)
    ]
    np.testing.assert_allclose(metrics.mean_pairwise_correlation(y), pairs, rtol=1e-10)


def test_noise_ceiling_recovers_the_true_reliability_and_corrects_to_one():
    """Signal s (var 1) + noise (var 4) over R = 10 repeats: the mean's reliability is
    1 / (1 + 4 / 10) = 0.714; predicting with the true signal gives noise-corrected r = 1."""
    rng = np.random.default_rng(5)
    signal = rng.normal(size=(4000, 6))
    y = signal[None] + 2.0 * rng.normal(size=(10, 4000, 6))
    ceiling = mean_ceiling(y, ScoreOptions(ceiling_splits=20))
    np.testing.assert_allclose(ceiling**2, 1 / (1 + 4 / 10), atol=0.02)
    r = metrics.correlation(y.mean(0), signal, axis=0)
    np.testing.assert_allclose(metrics.noise_corrected_correlation(r, ceiling**2), 1.0, atol=0.02)
    single = metrics.mean_pairwise_correlation(y)
    np.testing.assert_allclose(single, 1 / (1 + 4), atol=0.02)  # one repeat's reliability
    missing = y.copy()
    missing[8:, :100] = np.nan  # some stimuli lack two repeats: halves average what they have
    assert np.isfinite(mean_ceiling(missing, ScoreOptions(ceiling_splits=4))).all()

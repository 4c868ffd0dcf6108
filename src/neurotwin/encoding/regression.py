"""Linear maps from network features to the responses of every neuron, in one solve.

- ridge: one penalty for every neuron; ridgecv: the penalty chosen per neuron among `alphas`
  by efficient leave-one-out error (sklearn's RidgeCV(alpha_per_target=True) formula, on the
  centred design). Both are closed form in torch from one thin SVD of the training design
  (from the eigendecomposition of its smaller Gram matrix), so all neurons and all penalties
  cost one decomposition, on the GPU when there is one. The same thing himalaya's
  `solve_ridge_svd` / RidgeCV do (there with K-fold selection); himalaya itself is a test
  reference here and can be used as `sklearn:himalaya.ridge.RidgeCV`.
- pls: scikit-learn's PLSRegression(n_components=25, scale=False), fitted to all neurons at once
  (mouse-vision's and brainscore's mapping).
- sklearn:module.Class: any estimator with fit/predict (`alpha` / `alphas` / `n_components`
  are passed when it takes them).

Features are standardised with the training stimuli's mean and std first (`standardize`).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from neurotwin.config import option
from neurotwin.errors import ConfigError
from neurotwin.models.registry import Registry

REGRESSORS = Registry("regressor")
DEFAULT_RIDGE_ALPHA = 1.0e3  # for standardised features (see the README's alpha notes)
DEFAULT_RIDGECV_ALPHAS = [float(a) for a in np.logspace(-1, 7, 17)]
CHUNK_BYTES = 1 << 30  # leave-one-out predictions are computed this many bytes of targets at a time


@dataclass
class RegressionOptions:
    """The map from features to responses."""

    regressor: str = option("ridge", "ridge | ridgecv | pls | sklearn:module.Class")
    alphas: list[float] | None = option(
        None,
        f"ridge: the penalty (default {DEFAULT_RIDGE_ALPHA:g}); ridgecv: the penalties to choose "
        "from per neuron (default 17 from 1e-1 to 1e7); sklearn: passed as alpha/alphas",
    )
    pls_components: int = option(25, "pls: number of components (mouse-vision, brainscore: 25)")
    standardize: bool = option(True, "z-score every feature with the training stimuli's statistics")
    solver_dtype: Literal["float64", "float32"] = option("float64", "ridge: precision of the solve")

    def __post_init__(self) -> None:
        if self.alphas is not None and (not self.alphas or min(self.alphas) < 0):
            raise ConfigError(f"alphas must be non-negative numbers, got {self.alphas}")
        if self.pls_components < 1:
            raise ConfigError(f"pls_components must be >= 1, got {self.pls_components}")


class Regressor(Protocol):
    def fit(self, x: np.ndarray, y: np.ndarray) -> Regressor: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...


class Standardizer:
    """Mean and std of each feature over the training rows (std 1 where a feature is constant)."""

    def fit(self, x: np.ndarray) -> Standardizer:
        self.mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = x.std(axis=0, dtype=np.float64).astype(np.float32)
        self.std = np.where(std > 0, std, 1.0).astype(np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


# ----------------------------------------------------------------------------------------------
# Ridge in torch
# ----------------------------------------------------------------------------------------------


def thin_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x = u diag(s) v^T with the rank-r parts only, from the eigendecomposition of the smaller
    Gram matrix (x^T x or x x^T); components below numerical precision are dropped."""
    n, p = x.shape
    gram = x.T @ x if n >= p else x @ x.T
    lam, vec = torch.linalg.eigh(gram)
    tol = lam.max().clamp(min=0) * max(n, p) * torch.finfo(x.dtype).eps
    keep = lam > tol
    lam, vec = lam[keep], vec[:, keep]
    s = lam.sqrt()
    if n >= p:
        return (x @ vec) / s, s, vec
    return vec, s, (x.T @ vec) / s


class TorchRidge:
    """Ridge for many targets at once; one alpha, or the best of `alphas` per target (LOO)."""

    def __init__(
        self, alphas: list[float], device: str | torch.device = "cpu", dtype=torch.float64
    ):
        self.alphas = [float(a) for a in alphas]
        self.device = torch.device(device)
        self.dtype = dtype

    def fit(self, x: np.ndarray, y: np.ndarray) -> TorchRidge:
        xt = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        yt = torch.as_tensor(y, dtype=self.dtype, device=self.device)
        xm, ym = xt.mean(0), yt.mean(0)
        xt, yt = xt - xm, yt - ym
        u, s, v = thin_svd(xt)
        uty = u.T @ yt
        alphas = torch.tensor(self.alphas, dtype=self.dtype, device=self.device)
        if len(self.alphas) == 1:
            best = torch.zeros(yt.shape[1], dtype=torch.long, device=self.device)
        else:
            best = self._loo_best(u, s, yt, uty, alphas)
        factor = s[:, None] / (s[:, None] ** 2 + alphas[best][None, :])  # (r, targets)
        coef = v @ (factor * uty)
        self.coef_ = coef
        self.intercept_ = ym - xm @ coef
        self.alpha_ = alphas[best].cpu().numpy()
        return self

    def _loo_best(self, u, s, y, uty, alphas) -> torch.Tensor:
        """Index of the alpha with the least mean squared leave-one-out error, per target."""
        n = u.shape[0]
        chunk = max(1, CHUNK_BYTES // (8 * n))
        errors = torch.empty(len(alphas), y.shape[1], dtype=self.dtype, device=self.device)
        u2 = u * u
        for i, a in enumerate(alphas):
            shrink = s**2 / (s**2 + a)
            leverage = (u2 @ shrink)[:, None]
            for j in range(0, y.shape[1], chunk):
                fitted = u @ (shrink[:, None] * uty[:, j : j + chunk])
                resid = (y[:, j : j + chunk] - fitted) / (1.0 - leverage)
                errors[i, j : j + chunk] = (resid**2).mean(0)
        return errors.argmin(0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        return (xt @ self.coef_ + self.intercept_).float().cpu().numpy()


@REGRESSORS.register("ridge")
def _ridge(options: RegressionOptions, device: str) -> Regressor:
    alphas = options.alphas or [DEFAULT_RIDGE_ALPHA]
    if len(alphas) != 1:
        raise ConfigError(
            f"ridge takes one penalty (got alphas {alphas}); ridgecv chooses among several"
        )
    return TorchRidge(alphas, device, getattr(torch, options.solver_dtype))


@REGRESSORS.register("ridgecv")
def _ridgecv(options: RegressionOptions, device: str) -> Regressor:
    return TorchRidge(
        options.alphas or DEFAULT_RIDGECV_ALPHAS, device, getattr(torch, options.solver_dtype)
    )


# ----------------------------------------------------------------------------------------------
# scikit-learn estimators
# ----------------------------------------------------------------------------------------------


class SklearnRegressor:
    """An sklearn-style estimator; predictions as float32 (n, targets)."""

    def __init__(self, estimator) -> None:
        self.estimator = estimator

    def fit(self, x: np.ndarray, y: np.ndarray) -> SklearnRegressor:
        self.estimator.fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self.estimator.predict(x), dtype=np.float32)
        return out.reshape(len(x), -1)


class PLS(SklearnRegressor):
    """PLSRegression(scale=False) with at most min(n - 1, features) components."""

    def __init__(self, n_components: int) -> None:
        self.n_components = n_components

    def fit(self, x: np.ndarray, y: np.ndarray) -> PLS:
        from sklearn.cross_decomposition import PLSRegression

        k = max(1, min(self.n_components, x.shape[0] - 1, x.shape[1]))
        self.estimator = PLSRegression(n_components=k, scale=False)
        return super().fit(x, y)


@REGRESSORS.register("pls")
def _pls(options: RegressionOptions, device: str) -> Regressor:
    _sklearn()
    return PLS(options.pls_components)


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "this regressor needs scikit-learn: pip install 'neurotwin[encode]'"
        ) from None


def sklearn_estimator(path: str, options: RegressionOptions) -> Regressor:
    """'module.Class' -> an instance, with alpha/alphas/n_components from `options`."""
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(
            f"regressor sklearn:{path}: cannot import {name!r} from {module!r} ({e})"
        ) from None
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs: dict = {}
    if options.alphas:
        if "alphas" in params:
            kwargs["alphas"] = list(options.alphas)
        elif "alpha" in params:
            kwargs["alpha"] = options.alphas[0]
    if "n_components" in params:
        kwargs["n_components"] = options.pls_components
    estimator = cls(**kwargs)
    if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
        raise ConfigError(f"regressor sklearn:{path}: {name} has no fit/predict")
    return SklearnRegressor(estimator)


def build_regressor(options: RegressionOptions, device: str = "cpu") -> Regressor:
    """The regressor `options.regressor` names (a new, unfitted one on each call)."""
    name = options.regressor
    if name.startswith("sklearn:"):
        return sklearn_estimator(name[len("sklearn:") :], options)
    return REGRESSORS.get(name)(options, device)


def fit_predict(
    options: RegressionOptions, device: str, x_train, y_train, x_test
) -> tuple[np.ndarray, np.ndarray | None]:
    """Standardise (optional), fit on the training stimuli, predict the test stimuli; also the
    penalty chosen per target (None unless the regressor chose one: ridgecv, sklearn RidgeCV)."""
    if options.standardize:
        scaler = Standardizer().fit(x_train)
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    model = build_regressor(options, device).fit(x_train, y_train)
    alpha = getattr(getattr(model, "estimator", model), "alpha_", None)
    if isinstance(model, TorchRidge) and len(model.alphas) == 1:
        alpha = None  # one fixed penalty: nothing chosen
    if alpha is not None:
        alpha = np.broadcast_to(np.asarray(alpha, np.float64), (y_train.shape[1],))
    return model.predict(x_test), alpha

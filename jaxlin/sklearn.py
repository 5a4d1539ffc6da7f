"""A scikit-learn estimator around ``jaxlin.fit``: pipelines, cross-validation, grid search.

``SGDLinearRegression`` is the lecture's model trained by jaxlin's compiled
engine (``fit(..., engine="scan")``: the whole run one compiled XLA call), with
scikit-learn's input handling (``validate_data``) in front: lists, integer and
object arrays, read-only and non-contiguous arrays are converted; NaN, Inf,
empty and mis-shaped input is refused with scikit-learn's own messages.

scikit-learn is an optional extra (``pip install "jaxlin[sklearn]"``); this
module is imported only on first use of ``jaxlin.SGDLinearRegression`` (or
``from jaxlin.sklearn import SGDLinearRegression``).

Example:
  >>> import numpy as np
  >>> from sklearn.model_selection import cross_val_score
  >>> from jaxlin import SGDLinearRegression
  >>> rng = np.random.default_rng(0)
  >>> X = rng.normal(size=(200, 2))
  >>> y = X @ [2.0, -3.4] + 4.2 + 0.01 * rng.normal(size=200)
  >>> scores = cross_val_score(SGDLinearRegression(max_epochs=20), X, y, cv=5)
  >>> scores.shape, bool(scores.min() > 0.99)  # R^2 of each fold
  ((5,), True)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from jaxlin import checks
from jaxlin.config import TrainConfig, make_config
from jaxlin.model import init_params
from jaxlin.trainer import fit


class SGDLinearRegression(RegressorMixin, BaseEstimator):
    """Linear regression by minibatch SGD on the squared loss (jaxlin's compiled engine).

    Args:
      lr: learning rate, > 0.
      max_epochs: passes over the training data.
      batch_size: examples per step; clipped to the number of samples, so
        tiny data sets (one sample included) still fit.
      gradient_clip_val: clip gradients to this global norm when > 0.
      shuffle: shuffle the examples every epoch (keyed by ``random_state``).
      sigma: std of the initial weights.
      standardize: train on features scaled to mean 0 and std 1 (``coef_``
        and ``intercept_`` are mapped back to the original units). Plain SGD
        with a fixed ``lr`` diverges when features are large (the step must be
        below 2 / the largest eigenvalue of ``X^T X / n``); standardizing
        makes one ``lr`` work for any scale. ``False`` trains on ``X`` as given.
      random_state: int seed (reproducible), ``None`` (a fresh seed per fit)
        or a ``numpy.random.RandomState``; the seed becomes a
        ``jax.random.key`` for the initial weights and the shuffles.

    Attributes (after ``fit``):
      coef_: ``(n_features,)`` learned weights.
      intercept_: the learned bias (a float).
      n_features_in_, feature_names_in_: as in scikit-learn.
      history_: the ``jaxlin.History`` of the run.
      n_iter_: epochs run.

    Data are trained in JAX's default float dtype: float32, or float64 when
    x64 mode is on (``jax.config.update("jax_enable_x64", True)``).
    """

    def __init__(
        self,
        lr: float = 0.03,
        max_epochs: int = 50,
        batch_size: int = 32,
        gradient_clip_val: float = 0.0,
        shuffle: bool = True,
        sigma: float = 0.01,
        standardize: bool = True,
        random_state=None,
    ):
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.gradient_clip_val = gradient_clip_val
        self.shuffle = shuffle
        self.sigma = sigma
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X, y):
        """Train on ``X: (n_samples, n_features)``, ``y: (n_samples,)``; returns ``self``."""
        config = TrainConfig(
            lr=self.lr, max_epochs=self.max_epochs, batch_size=self.batch_size,
            shuffle=self.shuffle, gradient_clip_val=self.gradient_clip_val,
        )  # fmt: skip
        sigma = checks.finite_float("sigma", self.sigma, nonnegative=True)
        checks.boolean("standardize", self.standardize)
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True)
        if np.asarray(y).dtype.kind not in "biuf":  # y_numeric converts only object arrays
            raise ValueError(f"y must hold numbers (a regression target), got dtype {y.dtype}")
        dtype = jnp.result_type(float)  # float32, or float64 in x64 mode
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        key_init, key_shuffle = jax.random.split(jax.random.key(seed))
        params = init_params(key_init, X.shape[1], sigma=sigma)
        mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
        if self.standardize:
            mean, scale = _standardization(X)
        _check_range("X" if not self.standardize else None, X, dtype)
        _check_range("y", y, dtype)
        Xj, yj = jnp.asarray((X - mean) / scale, dtype), jnp.asarray(y, dtype)
        config = make_config(config, batch_size=min(config.batch_size, X.shape[0]))
        params, self.history_ = fit(params, (Xj, yj), key=key_shuffle, config=config)
        w = np.asarray(params["w"], np.float64).ravel() / scale  # back to X's units
        self.coef_ = w
        self.intercept_ = float(params["b"][0]) - float(mean @ w)
        self.n_iter_ = config.max_epochs
        return self

    def predict(self, X) -> np.ndarray:
        """``X @ coef_ + intercept_`` for ``X: (n_samples, n_features)``: ``(n_samples,)``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return np.asarray(X, np.float64) @ self.coef_ + self.intercept_


def _standardization(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's mean and std (1 for a constant feature), or a ValueError if they overflow.

    Features near 1e200 overflow float64 in the variance; scaling them to
    zero silently would fit all-zero coefficients, so they are refused.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = np.asarray(X, np.float64).mean(axis=0), np.asarray(X, np.float64).std(axis=0)
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(
            f"X has features too large to standardize in float64 (feature {j}: max |x| = "
            f"{np.abs(X[:, j]).max():.3g}); rescale X before fitting"
        )
    return mean, np.where(std > 0, std, 1.0)  # a constant feature stays as it is


def _check_range(name: str | None, values: np.ndarray, dtype) -> None:
    """Refuse ``values`` that the training dtype (float32 or float64) cannot hold."""
    if name is None:
        return
    limit = float(np.finfo(dtype).max)
    largest = float(np.abs(values).max()) if values.size else 0.0
    if largest > limit:
        raise ValueError(
            f"{name} has values up to {largest:.3g}, beyond the range of {np.dtype(dtype)} "
            f"(jaxlin trains in it; max {limit:.3g}): rescale {name} before fitting"
        )

"""Model and loss: shapes, the analytic gradient, no silent broadcasting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlin
from jaxlin.engines.compiled import NARROW, fused_loss


def test_init_params_shapes_and_scale(key):
    params = jaxlin.init_params(key, 500, sigma=0.5)
    assert params["w"].shape == (500, 1) and params["b"].shape == (1,)
    np.testing.assert_array_equal(params["b"], 0.0)
    assert 0.4 < float(jnp.std(params["w"])) < 0.6  # 500 draws of N(0, 0.25)
    np.testing.assert_array_equal(params["w"], jaxlin.init_params(key, 500, sigma=0.5)["w"])


@pytest.mark.parametrize("d", [1, 2, NARROW, NARROW + 1, 100])
def test_linreg_and_the_engines_fused_loss_match_numpy(d, key):
    """linreg is X @ w + b; the compiled engine's fused loss (a multiply-sum for
    narrow X) is the same loss."""
    kx, kw = jax.random.split(key)
    X = jax.random.normal(kx, (50, d))
    params = jaxlin.init_params(kw, d, sigma=1.0)
    params["b"] = jnp.array([0.25])
    expected = np.asarray(X, np.float64) @ np.asarray(params["w"], np.float64) + 0.25
    np.testing.assert_allclose(jaxlin.linreg(params, X), expected, rtol=1e-5, atol=1e-5)
    y = jax.random.normal(kx, (50, 1))
    want = np.mean((expected - np.asarray(y, np.float64)) ** 2 / 2)
    np.testing.assert_allclose(fused_loss(params, X, y), want, rtol=1e-5)
    np.testing.assert_allclose(jaxlin.loss_fn(params, X, y), want, rtol=1e-5)


def test_linreg_is_xw_plus_b(key):
    X = jax.random.normal(key, (7, 3))
    params = {"w": jnp.array([[1.0], [2.0], [-1.0]]), "b": jnp.array([0.5])}
    np.testing.assert_allclose(
        jaxlin.linreg(params, X), np.asarray(X) @ [[1.0], [2.0], [-1.0]] + 0.5, rtol=1e-6
    )


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 64), d=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_gradient_equals_analytic_gradient(n, d, seed):
    """d/dw mean((Xw + b - y)^2 / 2) = X^T r / n and d/db = mean(r), r = Xw + b - y."""
    rng = np.random.default_rng(seed)  # numpy draws: one compile per shape, the gradient's
    X, y = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, 1)).astype(np.float32)
    params = {"w": rng.normal(size=(d, 1)).astype(np.float32), "b": np.float32([rng.normal()])}
    grads = jax.jit(jax.grad(jaxlin.loss_fn))(params, X, y)
    Xn, yn = np.asarray(X, np.float64), np.asarray(y, np.float64)
    r = Xn @ np.asarray(params["w"], np.float64) + float(params["b"][0]) - yn
    np.testing.assert_allclose(grads["w"], Xn.T @ r / n, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(grads["b"], [r.mean()], atol=1e-5, rtol=1e-5)


def test_loss_of_flat_and_column_labels_agree(key):
    y_hat = jax.random.normal(key, (10, 1))
    y = jnp.arange(10.0)
    expected = np.mean((np.asarray(y_hat).ravel() - np.arange(10.0)) ** 2 / 2)
    np.testing.assert_allclose(jaxlin.squared_loss(y_hat, y), expected, rtol=1e-6)
    np.testing.assert_allclose(jaxlin.squared_loss(y_hat, y.reshape(-1, 1)), expected, rtol=1e-6)


def test_loss_refuses_mismatched_sizes():
    with pytest.raises(ValueError, match="y has 3 values but y_hat has 4"):
        jaxlin.squared_loss(jnp.zeros((4, 1)), jnp.zeros(3))


def test_estimation_error_is_true_minus_learned():
    params = {"w": jnp.array([[1.5], [-3.0]]), "b": jnp.array([4.0])}
    w_err, b_err = jaxlin.estimation_error(params, [2.0, -3.4], 4.2)
    np.testing.assert_allclose(w_err, [0.5, -0.4], rtol=1e-6)
    np.testing.assert_allclose(b_err, 0.2, rtol=1e-6)

"""Synthetic data and the from-scratch minibatch iterator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlin


def test_synthetic_data_follows_the_linear_model(key):
    w, b = [2.0, -3.4], 4.2
    X, y = jaxlin.synthetic_data(key, w, b, 5000, noise=0.01)
    assert X.shape == (5000, 2) and y.shape == (5000, 1)
    residual = np.asarray(y).ravel() - (np.asarray(X) @ w + b)
    assert 0.009 < residual.std() < 0.011 and abs(residual.mean()) < 1e-3
    assert abs(float(X.mean())) < 0.05 and 0.95 < float(X.std()) < 1.05
    X0, y0 = jaxlin.synthetic_data(key, w, b, 10, noise=0.0)
    np.testing.assert_allclose(y0.ravel(), np.asarray(X0) @ w + b, rtol=1e-5)


def test_same_key_same_data_other_key_other_data():
    a = jaxlin.synthetic_data(jax.random.key(0), [1.0], 0.0, 50)
    b = jaxlin.synthetic_data(jax.random.key(0), [1.0], 0.0, 50)
    c = jaxlin.synthetic_data(jax.random.key(1), [1.0], 0.0, 50)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_splits_are_one_draw_cut_in_order(key):
    s = jaxlin.synthetic_splits(key, num_train=30, num_val=20, num_test=10)
    X, y = jaxlin.synthetic_data(key, jaxlin.TRUE_W, jaxlin.TRUE_B, 60)
    np.testing.assert_array_equal(np.concatenate([s.train[0], s.val[0], s.test[0]]), X)
    np.testing.assert_array_equal(np.concatenate([s.train[1], s.val[1], s.test[1]]), y)
    assert jaxlin.synthetic_splits(key).test is None
    np.testing.assert_allclose(s.w, jaxlin.TRUE_W)


def _indices_seen(X, batches):
    """Row ids of each batch, read back from column 0 of X (which holds arange(n))."""
    del X
    return [np.asarray(xb[:, 0]).astype(int) for xb, _ in batches]


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 300), batch=st.integers(1, 64), seed=st.integers(0, 2**31 - 1))
def test_every_example_exactly_once_and_last_batch_partial(n, batch, seed):
    X = jnp.stack([jnp.arange(n, dtype=jnp.float32), jnp.zeros(n)], axis=1)
    y = jnp.arange(n, dtype=jnp.float32)
    for key in (None, jax.random.key(seed)):
        batches = list(jaxlin.minibatches(X, y, batch, key=key))
        sizes = [len(xb) for xb, _ in batches]
        assert sizes == [batch] * (n // batch) + ([n % batch] if n % batch else [])
        seen = np.concatenate(_indices_seen(X, batches))
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
        for xb, yb in batches:  # X and y rows stay paired
            np.testing.assert_array_equal(xb[:, 0], yb)
        if key is None:
            np.testing.assert_array_equal(seen, np.arange(n))  # validation: in order


def test_shuffled_order_differs_between_keys_and_epochs(key):
    X, y = jnp.arange(200.0).reshape(100, 2), jnp.zeros(100)

    def order(k):
        return np.concatenate(
            [np.asarray(xb[:, 0]) for xb, _ in jaxlin.minibatches(X, y, 10, key=k)]
        )

    assert not np.array_equal(
        order(jaxlin.shuffle.epoch_key(key, 0)), order(jaxlin.shuffle.epoch_key(key, 1))
    )
    assert not np.array_equal(order(key), np.arange(0, 200, 2))
    np.testing.assert_array_equal(order(key), order(key))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: jaxlin.minibatches(jnp.zeros((4, 2)), jnp.zeros(3), 2), "y must have shape"),
        (lambda: jaxlin.minibatches(jnp.zeros(4), jnp.zeros(4), 2), "X must be 2-D"),
        (lambda: jaxlin.minibatches(jnp.zeros((4, 2)), jnp.zeros(4), 0), "batch_size must be"),
        (lambda: jaxlin.synthetic_data(jax.random.key(0), [[1.0]], 0.0, 5), "w must be 1-D"),
        (lambda: jaxlin.synthetic_data(jax.random.key(0), [1.0], 0.0, 0), "num_examples must be"),
        (lambda: jaxlin.synthetic_data(0, [1.0], 0.0, 5), "key must be a jax.random.key"),
        (
            lambda: jaxlin.synthetic_data(jax.random.key(0), [1.0], 0.0, 5, noise=-1),
            "noise must be",
        ),
        (lambda: jaxlin.init_params(jax.random.key(0), 0), "num_inputs must be"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()

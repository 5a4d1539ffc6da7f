"""The hand-written SGD and clipping, cross-checked against optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxlin


def _tree(key):
    kw, kb = jax.random.split(key)
    return {"w": jax.random.normal(kw, (5, 1)), "b": jax.random.normal(kb, (1,))}


def test_sgd_matches_optax_sgd(key):
    kp, kg = jax.random.split(key)
    params, grads = _tree(kp), _tree(kg)
    updates, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params), params)
    expected = optax.apply_updates(params, updates)
    got = jaxlin.sgd(params, grads, 0.1)
    for k in params:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6)


def test_sgd_does_not_touch_its_arguments_even_when_they_are_mutable(key):
    """numpy arrays can be written in place (``p -= lr * g`` would): sgd returns new ones."""
    params = jax.tree.map(np.array, _tree(key))
    grads = jax.tree.map(np.ones_like, params)
    before = jax.tree.map(np.copy, (params, grads))
    out = jaxlin.sgd(params, grads, 0.5)
    for k in params:
        np.testing.assert_array_equal(params[k], before[0][k])
        np.testing.assert_array_equal(grads[k], before[1][k])
        np.testing.assert_allclose(out[k], before[0][k] - 0.5, rtol=1e-6)


def test_clipping_matches_optax(key):
    grads = jax.tree.map(lambda g: 10 * g, _tree(key))
    for max_norm in (0.1, 1.0, 1e6):
        expected, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
        got = jaxlin.optim.clip_by_global_norm(grads, max_norm)
        for k in grads:
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-6)
    np.testing.assert_allclose(
        jaxlin.optim.global_norm(jaxlin.optim.clip_by_global_norm(grads, 0.1)), 0.1, rtol=1e-6
    )


def test_zero_clip_means_no_clipping(key):
    grads = jax.tree.map(lambda g: 100 * g, _tree(key))
    got = jaxlin.optim.clip_by_global_norm(grads, 0.0)
    for k in grads:
        np.testing.assert_array_equal(got[k], grads[k])
    assert float(jaxlin.optim.global_norm(grads)) > 1.0 and jnp.isfinite(
        jaxlin.optim.global_norm(grads)
    )

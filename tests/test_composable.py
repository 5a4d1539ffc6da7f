"""The pure functions compose: under jax.jit and jax.vmap they give the plain call's values,
and the whole training run differentiates with respect to the learning rate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import count_compiles

import jaxlin
from jaxlin.engines.compiled import run_epochs


@pytest.fixture
def batch(key):
    """Three minibatches of the lecture's shape and one set of parameters."""
    kx, ky, kp = jax.random.split(key, 3)
    Xs = jax.random.normal(kx, (3, 16, 2))
    ys = jax.random.normal(ky, (3, 16, 1))
    return Xs, ys, jaxlin.init_params(kp, 2, sigma=1.0)


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-6)


FUNCTIONS = {
    "linreg": lambda p, X, y: jaxlin.linreg(p, X),
    "squared_loss": lambda p, X, y: jaxlin.squared_loss(jaxlin.linreg(p, X), y),
    "sgd": lambda p, X, y: jaxlin.sgd(p, jax.grad(jaxlin.loss_fn)(p, X, y), 0.1),
    "clip_by_global_norm": lambda p, X, y: jaxlin.optim.clip_by_global_norm(
        jax.grad(jaxlin.loss_fn)(p, X, y), 0.5
    ),
    "train_step": lambda p, X, y: jaxlin.train_step(p, X, y, 0.1, 0.5),
    "run_epochs": lambda p, X, y: run_epochs(
        p,
        X,
        y,
        (X, y),
        jax.random.key(3),
        0,
        0.1,
        None,
        batch_size=5,
        shuffle=True,
        num_epochs=2,
    ),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jit_and_vmap_give_the_plain_calls_values(name, batch):
    Xs, ys, params = batch
    fn = FUNCTIONS[name]
    plain = [fn(params, X, y) for X, y in zip(Xs, ys, strict=True)]
    for i in range(len(plain)):
        _close(jax.jit(fn)(params, Xs[i], ys[i]), plain[i])
    mapped = jax.vmap(fn, in_axes=(None, 0, 0))(params, Xs, ys)
    for i in range(len(plain)):
        _close(jax.tree.map(lambda a, i=i: a[i], mapped), plain[i])


@pytest.mark.slow
def test_make_train_is_fit_and_composes_with_jit_and_vmap(key):
    s = jaxlin.synthetic_splits(key, num_train=200, num_val=50)
    p = jaxlin.init_params(key, 2)
    config = jaxlin.TrainConfig(max_epochs=3, batch_size=32)
    train = jaxlin.make_train(config)
    params, (losses, val_losses) = jax.jit(train)(p, s.train, s.val, key)
    ref, hist = jaxlin.fit(p, s.train, s.val, key=key, config=config)
    _close(params, ref)
    np.testing.assert_allclose(losses, hist.train_loss, rtol=1e-5)
    np.testing.assert_allclose(val_losses, hist.val_loss, rtol=1e-5)

    lrs = jnp.asarray([0.01, 0.03, 0.1])  # one compiled call, three runs
    batched, (_, vals) = jax.jit(jax.vmap(train, in_axes=(None, None, None, None, 0)))(
        p, s.train, s.val, key, lrs
    )
    for i, lr in enumerate(lrs.tolist()):
        one, h = jaxlin.fit(p, s.train, s.val, key=key, config=config, lr=lr)
        _close(jax.tree.map(lambda a, i=i: a[i], batched), one)
        np.testing.assert_allclose(vals[i], h.val_loss, rtol=1e-5)

    keys = jax.random.split(key, 2)  # and over shuffling keys
    _, (_, per_key) = jax.vmap(train, in_axes=(None, None, None, 0))(p, s.train, s.val, keys)
    for i in range(2):
        _, h = jaxlin.fit(p, s.train, s.val, key=keys[i], config=config)
        np.testing.assert_allclose(per_key[i], h.val_loss, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["scan", "affine"])
def test_gradient_of_the_final_val_loss_wrt_lr_matches_finite_differences(key, engine):
    s = jaxlin.synthetic_splits(key, num_train=96, num_val=64)
    p = jaxlin.init_params(key, 2)
    train = jaxlin.make_train(jaxlin.TrainConfig(max_epochs=2, batch_size=16, engine=engine))

    def final_val(lr):
        return train(p, s.train, s.val, key, lr)[1][1][-1]

    lr, h = 0.05, 1e-3
    grad = jax.grad(final_val)(lr)
    fd = (final_val(lr + h) - final_val(lr - h)) / (2 * h)
    assert grad < 0  # a larger lr gets further in two epochs
    np.testing.assert_allclose(grad, fd, rtol=2e-2)


def test_make_train_refuses_the_loop_engines_and_a_missing_key():
    with pytest.raises(ValueError, match=r"config.engine must be 'scan' or 'affine'"):
        jaxlin.make_train(jaxlin.TrainConfig(engine="step"))
    train = jaxlin.make_train(jaxlin.TrainConfig(batch_size=2))
    with pytest.raises(ValueError, match="key is required when shuffle=True"):
        train(jaxlin.init_params(jax.random.key(0), 2), (jnp.ones((4, 2)), jnp.ones(4)))


@pytest.mark.slow
def test_step_engine_compiles_nothing_that_grows_with_the_number_of_steps(key):
    """With its batch programs compiled, a step-engine epoch of 10 steps and one of
    100 compile the same programs: none (the losses are read, not stacked on the device)."""
    counts = []
    for steps in (10, 100):
        n = steps * 32 - 24  # the same last batch of 8 rows
        X, y = jaxlin.synthetic_data(key, [1.0, 2.0], 0.5, n)
        p = jaxlin.init_params(key, 2)
        ekey = jaxlin.shuffle.epoch_key(key, 0)
        for Xb, yb in jaxlin.minibatches(X, y, 32, key=ekey):  # the epoch's programs
            jaxlin.train_step(p, Xb, yb, 0.03)
        with count_compiles() as compiles:
            _, hist = jaxlin.fit(p, (X, y), key=key, engine="step", max_epochs=1)
        assert hist.train_loss.shape == (1, steps)
        counts.append(compiles[0])
    assert counts == [0, 0]

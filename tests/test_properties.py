"""Property tests (hypothesis) over random shapes, sizes, batch sizes and keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlin
from jaxlin.shuffle import epoch_key

seeds = st.integers(0, 2**31 - 1)


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 48), batch=st.integers(1, 48), seed=seeds, shuffle=st.booleans())
def test_compiled_engine_uses_every_example_exactly_once_per_epoch(n, batch, seed, shuffle):
    """Read the visits off the engine itself: with one-hot rows ``X = I_n``, ``y = 1``
    and ``w = b = 0``, a step on batch ``B`` moves ``w_i`` by ``lr (1 - b) / |B|`` for
    ``i`` in ``B`` and leaves every other ``w_i`` alone (b stays ~0 with a tiny lr).
    So ``w_i |B(i)| / lr`` counts the visits of row ``i``: 1 in every epoch."""
    batch = min(batch, n)
    lr = 1e-4
    X, y = jnp.eye(n, dtype=jnp.float32), jnp.ones(n, jnp.float32)
    params = {"w": jnp.zeros((n, 1)), "b": jnp.zeros(1)}
    key = jax.random.key(seed)
    ends = []
    jaxlin.fit(params, (X, y), lr=lr, max_epochs=2, batch_size=batch, key=key,
               shuffle=shuffle, callback=ends.append)  # fmt: skip
    before = np.zeros(n)
    for end in ends:
        e = end.epoch
        order = (
            np.asarray(jaxlin.shuffle.permutation(epoch_key(key, e), n))
            if shuffle
            else np.arange(n)
        )
        size = np.empty(n)  # the size of the batch that should hold each row
        for start in range(0, n, batch):
            size[order[start : start + batch]] = len(order[start : start + batch])
        w = np.asarray(end.params["w"]).ravel()
        visits = (w - before) * size / lr
        np.testing.assert_allclose(visits, np.ones(n), rtol=0.02)
        before = w


@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(2, 64),
    d=st.integers(1, 4),
    batch=st.integers(1, 64),
    log_lr=st.floats(-3, 3),
    log_scale=st.floats(-2, 3),
    seed=seeds,
    engine=st.sampled_from(["scan", "step"]),
)
@pytest.mark.slow
def test_fit_never_returns_non_finite_params_without_raising(
    n, d, batch, log_lr, log_scale, seed, engine
):
    kd, ki, ks = jax.random.split(jax.random.key(seed), 3)
    X, y = jaxlin.synthetic_data(kd, np.linspace(-2, 2, d), 1.0, n)
    X = X * 10.0**log_scale
    params = jaxlin.init_params(ki, d)
    try:
        out, hist = jaxlin.fit(params, (X, y), lr=10.0**log_lr, max_epochs=2,
                               batch_size=min(batch, n), key=ks, engine=engine)  # fmt: skip
    except jaxlin.TrainingDiverged as err:
        assert "training diverged" in str(err)
        return
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(out))
    assert np.isfinite(hist.train_loss).all()


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 80), d=st.integers(1, 3), batch=st.integers(1, 80), seed=seeds)
def test_same_key_same_result_bit_for_bit(n, d, batch, seed):
    def run():
        kd, ki, ks = jax.random.split(jax.random.key(seed), 3)
        s = jaxlin.synthetic_splits(kd, np.ones(d), 0.5, num_train=n, num_val=3)
        params = jaxlin.init_params(ki, d)
        return jaxlin.fit(params, s.train, s.val, lr=0.05, max_epochs=2,
                          batch_size=min(batch, n), key=ks)  # fmt: skip

    (p1, h1), (p2, h2) = run(), run()
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])
    np.testing.assert_array_equal(h1.train_loss, h2.train_loss)
    np.testing.assert_array_equal(h1.val_loss, h2.val_loss)

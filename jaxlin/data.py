"""Synthetic regression data and the from-scratch minibatch iterator.

The seed's ``SyntheticRegressionData`` draws from PyTorch's global RNG and
keeps ``X``/``y`` as attributes; here a generator takes an explicit key and
returns arrays, so the same key always gives the same data.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxlin import checks
from jaxlin.shuffle import permutation

SEED_W = (2.0, -3.4)  # the lecture's true parameters
SEED_B = 4.2


class Splits(NamedTuple):
    """Train / validation (/ test) ``(X, y)`` pairs drawn from one key, with the truth."""

    train: tuple[jax.Array, jax.Array]
    val: tuple[jax.Array, jax.Array]
    test: tuple[jax.Array, jax.Array] | None
    w: jax.Array  # (d,) true weights
    b: jax.Array  # () true bias


def _true_params(w, b) -> tuple[jax.Array, jax.Array]:
    """Checks and converts the true ``w`` (1-D, d >= 1) and scalar ``b``."""
    try:  # JAX's default float: float32, or float64 when the user enabled x64 mode.
        w_host = np.asarray(w, dtype=jnp.result_type(float))
    except (TypeError, ValueError):
        raise TypeError(f"w must be a 1-D sequence of numbers, got {w!r:.60}") from None
    w = checks.float_array("w", w_host, ndim=(1,))
    if np.ndim(b) != 0:
        raise ValueError(f"b must be a scalar, got shape {np.shape(b)}")
    b = checks.finite_float("b", b.item() if hasattr(b, "item") else b)
    return w, jnp.asarray(b, w.dtype)


def synthetic_data(
    key: jax.Array, w: ArrayLike, b: float, num_examples: int, noise: float = 0.01
) -> tuple[jax.Array, jax.Array]:
    """``X ~ N(0, 1)`` of shape ``(n, d)`` and ``y = X w + b + noise * N(0, 1)``, ``(n, 1)``.

    Example:
      >>> X, y = synthetic_data(jax.random.key(0), [2.0, -3.4], 4.2, 1000)
      >>> X.shape, y.shape
      ((1000, 2), (1000, 1))
    """
    key = checks.key("key", key)
    w, b = _true_params(w, b)
    num_examples = checks.positive_int("num_examples", num_examples)
    noise = checks.finite_float("noise", noise, nonnegative=True)
    return _draw(key, w, b, noise, (num_examples,))[0]


@partial(jax.jit, static_argnames=("sizes",))
def _draw(key, w, b, noise, sizes: tuple[int, ...]):
    """One draw of ``sum(sizes)`` rows, cut in order into ``len(sizes)`` ``(X, y)`` pairs.

    One compiled program: op by op, the draw and the cuts cost a dozen compiles
    (~1 s of a cold ``jaxlin train``).
    """
    d = w.shape[0]
    Z = jax.random.normal(key, (sum(sizes), d + 1), w.dtype)  # one sampler: X and the noise
    X, eps = Z[:, :d], noise * Z[:, d:]
    y = X @ w.reshape(-1, 1) + b + eps
    starts = np.cumsum((0, *sizes))
    return tuple((X[a:z], y[a:z]) for a, z in itertools.pairwise(starts))


def synthetic_splits(
    key: jax.Array,
    w: ArrayLike = SEED_W,
    b: float = SEED_B,
    *,
    num_train: int = 1000,
    num_val: int = 1000,
    num_test: int = 0,
    noise: float = 0.01,
) -> Splits:
    """The seed's dataset: one draw of ``num_train + num_val (+ num_test)`` rows, split in order.

    The lecture's defaults (w = [2, -3.4], b = 4.2, 1000 + 1000 examples).
    ``num_test > 0`` adds the third split the lecture recommends for the final
    evaluation, kept apart from the validation set used to pick hyperparameters.
    """
    num_train = checks.positive_int("num_train", num_train)
    num_val = checks.positive_int("num_val", num_val)
    if isinstance(num_test, bool) or not isinstance(num_test, int) or num_test < 0:
        raise ValueError(f"num_test must be an int >= 0, got {num_test!r}")
    key = checks.key("key", key)
    w_true, b_true = _true_params(w, b)
    noise = checks.finite_float("noise", noise, nonnegative=True)
    sizes = (num_train, num_val, num_test) if num_test else (num_train, num_val)
    train, val, *test = _draw(key, w_true, b_true, noise, sizes)
    return Splits(train, val, test[0] if test else None, w_true, b_true)


def minibatches(
    X: ArrayLike, y: ArrayLike, batch_size: int, *, key: jax.Array | None = None
) -> Iterator[tuple[jax.Array, jax.Array]]:
    """The seed's from-scratch ``get_dataloader``: ``(X_batch, y_batch)`` pairs, one epoch.

    With a ``key`` the examples are read in the order of ``jaxlin.shuffle.permutation
    (key, n)`` (training); without one, in order (validation). ``fit(..., key=k)``
    reads epoch ``e`` as ``minibatches(X, y, B, key=epoch_key(k, e))``: pass the
    epoch's key, not ``k`` itself, to see the batches ``fit`` trains on. The last batch is
    smaller when ``batch_size`` does not divide ``n``, as in the seed. Every
    example appears exactly once. Arguments are checked now, not at first ``next``.
    """
    if not hasattr(X, "shape") or len(X.shape) != 2:
        raise ValueError(f"X must be 2-D (n, d), got {getattr(X, 'shape', type(X).__name__)}")
    X = checks.float_array("X", X, ndim=(2,), finite=False)  # dtype; NaN is fit's to refuse
    if hasattr(y, "shape"):
        y = checks.float_array("y", y, ndim=(1, 2), finite=False)
    if not hasattr(y, "shape") or len(y.shape) not in (1, 2) or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"y must have shape (n,) or (n, 1) with n = {X.shape[0]} (X's rows), "
            f"got {getattr(y, 'shape', type(y).__name__)}"
        )
    batch_size = checks.positive_int("batch_size", batch_size)
    n = int(X.shape[0])
    order = None if key is None else np.asarray(permutation(checks.key("key", key), n))
    return _batches(jnp.asarray(X), jnp.asarray(y), batch_size, order)


@jax.jit
def _take(X: jax.Array, y: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rows ``idx`` of ``X`` and ``y`` in one compiled call (one dispatch, not a dozen)."""
    return X.at[idx].get(mode="promise_in_bounds"), y.at[idx].get(mode="promise_in_bounds")


def _batches(X, y, batch_size, order):
    """The generator behind ``minibatches``: slices (in order) or gathers (shuffled)."""
    n = X.shape[0]
    for start in range(0, n, batch_size):
        if order is None:
            yield X[start : start + batch_size], y[start : start + batch_size]
        else:
            yield _take(X, y, order[start : start + batch_size])

"""The lecture's data: synthetic ``y = X w + b + noise`` from a key, and its minibatches.

The lecture's ``SyntheticRegressionData`` draws from PyTorch's global RNG and
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

TRUE_W = (2.0, -3.4)  # the lecture's true parameters
TRUE_B = 4.2


class Splits(NamedTuple):
    """Train / validation (/ test) ``(X, y)`` pairs drawn from one key, with the truth."""

    train: tuple[jax.Array, jax.Array]
    val: tuple[jax.Array, jax.Array]
    test: tuple[jax.Array, jax.Array] | None
    w: jax.Array  # (d,) true weights
    b: jax.Array  # () true bias


def synthetic_data(
    key: jax.Array, w: ArrayLike, b: float, num_examples: int, noise: float = 0.01
) -> tuple[jax.Array, jax.Array]:
    """``X ~ N(0, 1)`` of shape ``(n, d)`` and ``y = X w + b + noise * N(0, 1)``, ``(n, 1)``.

    Example:
      >>> import jax
      >>> import jaxlin
      >>> X, y = jaxlin.synthetic_data(jax.random.key(0), [2.0, -3.4], 4.2, 1000)
      >>> X.shape, y.shape
      ((1000, 2), (1000, 1))
    """
    key = checks.key("key", key)
    w, b = checks.true_params(w, b)
    num_examples = checks.positive_int("num_examples", num_examples)
    noise = checks.finite_float("noise", noise, nonnegative=True)
    checks.labels_fit(w, float(b), noise, w.dtype)
    check_draw_memory({"num_examples": num_examples}, w)
    return draw(key, w, b, noise, (num_examples,))[0][0]


def check_draw_memory(sizes: dict[str, int], w: ArrayLike) -> None:
    """Refuse a draw whose rows cannot fit in memory, before anything is allocated.

    A draw of ``n`` rows holds ``X`` and ``y`` (``n * (d + 1)`` floats) and
    its splits as much again; the message names the largest of ``sizes``.
    """
    name = max(sizes, key=sizes.get)
    num_values = 2 * sum(sizes.values()) * (w.shape[0] + 1)
    checks.fits_in_memory(name, sizes[name], num_values, w.dtype)


@partial(jax.jit, static_argnames=("sizes",))
def draw(key: jax.Array, w: ArrayLike, b: ArrayLike, noise: ArrayLike, sizes: tuple[int, ...]):
    """One draw of ``sum(sizes)`` rows, cut in order into ``len(sizes)`` ``(X, y)`` pairs.

    The unchecked, traceable core of ``synthetic_data`` and ``synthetic_splits``
    (``w: (d,)``, ``b`` and ``noise`` scalars, ``sizes`` static). Returns
    ``(pairs, w, b)``, the truth as arrays beside the data.
    """
    w, b = jnp.asarray(w), jnp.asarray(b, w.dtype)
    key_X, key_noise = jax.random.split(key)
    n, d = sum(sizes), w.shape[0]
    X = jax.random.normal(key_X, (n, d), w.dtype)
    y = X @ w.reshape(d, 1) + b + noise * jax.random.normal(key_noise, (n, 1), w.dtype)
    starts = np.cumsum((0, *sizes))
    return tuple((X[a:z], y[a:z]) for a, z in itertools.pairwise(starts)), w, b


def splits_args(
    w: ArrayLike, b: float, *, num_train: int, num_val: int, num_test: int = 0, noise: float
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], float]:
    """``synthetic_splits``' arguments checked: ``(w, b, sizes, noise)`` for ``draw``.

    ``w`` and ``b`` come back as host arrays of JAX's default float, ``sizes``
    as the splits' row counts (``num_test`` only when > 0). Every bad value is
    refused here, before anything is compiled.
    """
    num_train = checks.positive_int("num_train", num_train)
    num_val = checks.positive_int("num_val", num_val)
    num_test = checks.nonnegative_int("num_test", num_test)
    w, b = checks.true_params(w, b)
    noise = checks.finite_float("noise", noise, nonnegative=True)
    checks.labels_fit(w, float(b), noise, w.dtype)
    check_draw_memory({"num_train": num_train, "num_val": num_val, "num_test": num_test}, w)
    sizes = (num_train, num_val, num_test) if num_test else (num_train, num_val)
    return w, b, sizes, noise


def synthetic_splits(
    key: jax.Array,
    w: ArrayLike = TRUE_W,
    b: float = TRUE_B,
    *,
    num_train: int = 1000,
    num_val: int = 1000,
    num_test: int = 0,
    noise: float = 0.01,
) -> Splits:
    """The lecture's dataset: one draw of ``num_train + num_val (+ num_test)`` rows, in order.

    The lecture's defaults (w = [2, -3.4], b = 4.2, 1000 + 1000 examples).
    ``num_test > 0`` adds the third split the lecture recommends for the final
    evaluation, kept apart from the validation set used to pick hyperparameters.
    """
    w, b, sizes, noise = splits_args(
        w, b, num_train=num_train, num_val=num_val, num_test=num_test, noise=noise
    )
    (train, val, *test), w, b = draw(checks.key("key", key), w, b, noise, sizes)
    return Splits(train, val, test[0] if test else None, w, b)


def split_batches(rows: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """An epoch's ``rows`` (leading axis ``n``) as full batches and the smaller last one.

    Returns ``(full, rest)``: ``full`` is ``(n // B, B, ...)``, ``rest`` the
    last ``n % B`` rows (empty when ``B`` divides ``n``). As in the lecture,
    the last batch is smaller rather than dropped. Every loop over an epoch's
    batches in jaxlin (this iterator, the compiled engines, the sweep, the
    stream) cuts its epoch with this function.
    """
    full = rows.shape[0] // batch_size * batch_size
    return rows[:full].reshape(-1, batch_size, *rows.shape[1:]), rows[full:]


def minibatches(
    X: ArrayLike, y: ArrayLike, batch_size: int, *, key: jax.Array | None = None
) -> Iterator[tuple[jax.Array, jax.Array]]:
    """The lecture's from-scratch ``get_dataloader``: ``(X_batch, y_batch)`` pairs, one epoch.

    With a ``key`` the examples are read in the order ``permutation(key, n)``
    (training); without one, in order (validation). ``fit(..., key=k)`` reads
    epoch ``e`` as ``minibatches(X, y, B, key=epoch_key(k, e))``. The last
    batch is smaller when ``batch_size`` does not divide ``n``. Every example
    appears exactly once. Arguments are checked now, not at the first ``next``.
    """
    X, y = checks.loader_data(X, y)
    batch_size = checks.positive_int("batch_size", batch_size)
    n = X.shape[0]
    order = np.arange(n) if key is None else np.asarray(permutation(checks.key("key", key), n))
    return _batches(X, y, order, batch_size)


def _batches(X, y, order, batch_size):
    """The generator behind ``minibatches``: each batch's rows ``order[i : i + B]``."""
    full, rest = split_batches(order, batch_size)
    for idx in [*full, rest] if rest.size else full:
        yield _take(X, y, idx)


@jax.jit
def _take(X: jax.Array, y: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rows ``idx`` of ``X`` and ``y``: one compiled call per batch."""
    return X[idx], y[idx]

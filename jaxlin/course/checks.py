"""The grader's checks: for each function a student writes, a verdict and a hint per check.

Each task (``reference.TASKS``) has checks run in order: pure (the same
inputs give the same outputs, the inputs are left as they were, the key is
what decides a draw), equal to jaxlin's function on random inputs of random
sizes (hypothesis), then composable (``jax.jit``, ``jax.vmap``, ``jax.grad``).
The first check that fails gives the task's verdict and the later ones are
skipped: composing a wrong function says nothing new. A failed value check
is diagnosed: the known mistakes (the sum for the mean, the key used twice,
the last batch dropped...) each get their own hint.

A student's function that calls another task's function (``loss_fn`` calls
``linreg``) is graded with jaxlin's in its place, so one mistake costs one task.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import signal
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin.course import reference
from jaxlin.course.stub import NotWritten, grading

__all__ = ["CACHE_VARIABLE", "CHECKS", "TASKS", "CheckTimeout", "Failed", "Verdict",
           "grade_namespace", "grade_task", "isolated", "score", "table", "use_cache"]  # fmt: skip

# The functions a student writes, in the notebook's order.
TASKS = reference.TASKS


@dataclass(frozen=True)
class Verdict:
    """One check of one task: ``status`` is ``pass``, ``fail``, ``skip`` or ``missing``."""

    task: str
    check: str
    status: str
    message: str = ""
    hint: str = ""


class Failed(Exception):
    """A check's failure: what was seen (one line) and what to do about it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


# ---------------------------------------------------------------- helpers


def _close(a, b, rtol: float = 1e-5, atol: float = 1e-5) -> bool:
    """Same shape and equal to float32 rounding."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _same_tree(a, b, **tol) -> bool:
    """Same pytree structure and every leaf ``_close``."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        _close(x, y, **tol) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _exact_tree(a, b) -> bool:
    """Same structure and bit-for-bit equal leaves (the same call twice)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _shape(x) -> str:
    return str(tuple(np.shape(x)))


def _params(rng: np.random.Generator, d: int) -> dict:
    """Numpy float32 params (writable, so an in-place update shows)."""
    return {
        "w": rng.normal(size=(d, 1)).astype(np.float32),
        "b": rng.normal(size=(1,)).astype(np.float32),
    }


def _batch(rng: np.random.Generator, n: int, d: int):
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.normal(size=(n, 1)).astype(np.float32)
    return X, y


def _copy(tree):
    """Fresh copies of a tree's numpy arrays (other leaves, such as a float lr, as they are)."""
    return jax.tree.map(lambda x: np.array(x, copy=True) if isinstance(x, np.ndarray) else x, tree)


def _unchanged(name: str, before, after) -> None:
    """Fail if an argument was changed by the call (in place, or a dict's entries)."""
    if isinstance(before, dict) and isinstance(after, dict) and set(before) != set(after):
        raise Failed(
            f"changed the dict {name} it was given (its keys)",
            "build and return a new dict; never assign into an argument",
        )
    if not _exact_tree(before, after):
        raise Failed(
            f"changed its argument {name} in place",
            "a pure function returns new values and leaves its arguments as they were: "
            "no `-=` or `[...] =` on an argument (jax.tree.map returns a new tree)",
        )


def _pure(fn, names: tuple[str, ...], *args):
    """Call with ``args``, then with copies of them: the arguments unchanged, the results equal."""
    before = _copy(args)
    first = fn(*args)
    for name, was, now in zip(names, before, args, strict=True):
        _unchanged(name, was, now)
    if not _exact_tree(first, fn(*_copy(before))):
        raise Failed(
            "the same inputs gave different outputs",
            "the result depends on something besides the arguments: a global random "
            "generator (np.random, random) or a counter kept between calls",
        )
    return first


def _keyed(fn, draw: Callable) -> None:
    """The key decides the draw: the same key twice the same, two keys different."""
    first, second, other = draw(fn, 1), draw(fn, 1), draw(fn, 2)
    if not _exact_tree(first, second):
        raise Failed(
            "the same key gave different results",
            "the draw depends on something besides the key: a global random generator "
            "(np.random, random) or a counter; draw only with jax.random and the key",
        )
    if _exact_tree(first, other):
        raise Failed(
            "two different keys gave the same results",
            "the key argument is not used: draw from it (or keys split from it), "
            "never from a fixed jax.random.key(0)",
        )


def _hypothesis(strategy, examples: int = 10):
    """``@given(strategy)`` with the grader's settings: deterministic, no shrinking, quiet."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings

    def wrap(test):
        return settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=(Phase.explicit, Phase.generate),
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
            report_multiple_bugs=False,
        )(given(strategy)(test))

    return wrap


# The sizes the checks draw: random, but from a few values, so that one grading compiles
# each shape's programs once rather than once per example.
ROWS = (1, 2, 3, 5, 8, 13, 33, 64)
FEATURES = (1, 2, 3, 5)


def _rows(least: int = 1):
    """A hypothesis strategy for a batch's number of rows (at least ``least``)."""
    from hypothesis import strategies as st

    return st.sampled_from([n for n in ROWS if n >= least])


def _features():
    """A hypothesis strategy for the number of features."""
    from hypothesis import strategies as st

    return st.sampled_from(FEATURES)


def _traced_failure(err: BaseException, check: str) -> Failed | None:
    """A Python branch or conversion on a traced value, worded for the student."""
    names = {"TracerBoolConversionError", "ConcretizationTypeError",
             "TracerIntegerConversionError", "TracerArrayConversionError"}  # fmt: skip
    if type(err).__name__ not in names:
        return None
    where = {"jit": "jax.jit", "grad": "jax.grad"}.get(check, "jax.vmap" if "vmap" in check else "")
    return Failed(
        f"does not run under {where or 'a JAX transformation'} ({type(err).__name__})",
        "traced arguments have no value yet: a Python `if`, float(), np.asarray or a numpy "
        "function on them fails; use jnp functions, jnp.where or jax.lax.cond, or leave "
        "the test out",
    )


def _jit_agrees(fn, args, what: str, static: tuple[int, ...] = (), names: str = "") -> None:
    """Fail unless ``jax.jit(fn)`` (arguments ``static`` static) gives what ``fn`` gives."""
    if not _same_tree(jax.jit(fn, static_argnums=static)(*args), fn(*args)):
        where = f"jax.jit ({names} static)" if names else "jax.jit"
        raise Failed(f"under {where} it gives {what}", "")


# ---------------------------------------------------------------- synthetic_data


def _sd_draw(fn, seed):
    return fn(jax.random.key(seed), np.array([2.0, -3.4], np.float32), 4.2, 50)


def synthetic_data_pure(fn):
    _keyed(fn, _sd_draw)
    w = np.array([2.0, -3.4], np.float32)
    fn(jax.random.key(0), w, 4.2, 10)
    _unchanged("w", np.array([2.0, -3.4], np.float32), w)


def _sd_diagnose(key, w, b, n, noise, X, y) -> Failed:
    d = len(w)
    w_col = np.asarray(w, np.float32).reshape(-1, 1)
    if np.shape(X) != (n, d):
        return Failed(
            f"X has shape {_shape(X)}, expected ({n}, {d}) for num_examples={n}, len(w)={d}",
            "X is num_examples rows of len(w) features",
        )
    if np.shape(y) == (n,):
        return Failed(
            f"y has shape ({n},), expected ({n}, 1)",
            "reshape w to a column (d, 1) so X @ w is (n, 1), and draw the noise as (n, 1)",
        )
    if np.shape(y) != (n, 1):
        return Failed(f"y has shape {_shape(y)}, expected ({n}, 1)", "y is one column")
    key_X, key_noise = jax.random.split(key)
    noise_of = lambda k: noise * jax.random.normal(k, (n, 1))  # noqa: E731
    if not _close(X, jax.random.normal(key_X, (n, d))):
        if _close(X, jax.random.normal(key, (n, d))) and _close(y - X @ w_col - b, noise_of(key)):
            return Failed(
                "X and the noise are drawn with the same key",
                "a key used twice gives related numbers: split it, "
                "key_X, key_noise = jax.random.split(key), one key per draw",
            )
        return Failed(
            "X differs from jaxlin's draw",
            "draw X as jax.random.normal(key_X, (num_examples, len(w))) with "
            "key_X, key_noise = jax.random.split(key)",
        )
    residual = np.asarray(y) - np.asarray(X) @ w_col
    if _close(residual, noise_of(key_noise)) and abs(b) > 1e-3:
        return Failed("y has no bias: y - X w is the noise alone", "y = X w + b + noise: add b")
    if _close(residual - b, noise_of(key_X)) and noise > 0:
        return Failed(
            "X and the noise are drawn with the same key",
            "a key used twice gives related numbers: draw the noise with the second key "
            "of jax.random.split(key)",
        )
    if _close(residual, b) and noise > 0:
        return Failed("y has no noise: y = X w + b exactly", "add noise * N(0, 1), shape (n, 1)")
    return Failed(
        "y differs from jaxlin's y = X w + b + noise",
        "the noise is noise * jax.random.normal(key_noise, (num_examples, 1))",
    )


def synthetic_data_equal(fn):
    from hypothesis import strategies as st

    inputs = st.tuples(
        st.integers(0, 2**31 - 1),
        st.lists(st.floats(-5, 5, width=32), min_size=1, max_size=3),
        st.floats(-5, 5, width=32),
        _rows(),
        st.floats(0, 1, width=32),
    )

    @_hypothesis(inputs)
    def prop(case):
        seed, w, b, n, noise = case
        key = jax.random.key(seed)
        X, y = reference.synthetic_data(key, w, b, n, noise)
        got = fn(key, list(w), b, n, noise)
        if not (isinstance(got, tuple | list) and len(got) == 2):
            raise Failed("does not return a pair", "return (X, y)")
        if not (_close(got[0], X) and _close(got[1], y)):
            raise _sd_diagnose(key, w, b, n, noise, *got)

    prop()


def synthetic_data_jit(fn):
    args = (jax.random.key(3), jnp.array([2.0, -3.4]), 4.2, 20, 0.01)
    _jit_agrees(fn, args, "other numbers", static=(2, 3, 4), names="b, num_examples, noise")


def synthetic_data_vmap(fn):
    keys = jax.random.split(jax.random.key(4), 3)
    w = jnp.array([2.0, -3.4])
    mapped = jax.vmap(lambda k: fn(k, w, 4.2, 20))(keys)
    each = [fn(k, w, 4.2, 20) for k in keys]
    if not _same_tree(mapped, jax.tree.map(lambda *xs: jnp.stack(xs), *each)):
        raise Failed(
            "jax.vmap over keys gives other draws than one key at a time",
            "a draw must depend on its key alone",
        )


# ---------------------------------------------------------------- data_iter


def _epoch(fn, n, batch_size, key):
    """Rows ``[2i, 2i+1]`` with label ``i``: the batches, as (labels per batch, X per batch)."""
    X = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    y = np.arange(n, dtype=np.float32).reshape(n, 1)
    most = -(-n // batch_size)  # one epoch's batches
    batches = [
        (np.asarray(a), np.asarray(b))
        for a, b in itertools.islice(fn(X, y, batch_size, key), most + 1)
    ]
    if len(batches) > most:
        raise Failed(
            f"n={n}, batch_size={batch_size}: more than the {most} batches of one epoch",
            "stop after the last example: for start in range(0, n, batch_size)",
        )
    for Xb, yb in batches:
        paired = Xb.ndim == 2 and yb.shape == (Xb.shape[0], 1)
        if not (paired and np.array_equal(Xb[:, 0], 2 * yb[:, 0])):
            raise Failed(
                "a batch's X and y rows do not belong together (or y is not (batch, 1))",
                "index X and y with the same indices: X[idx], y[idx]",
            )
    return batches


def data_iter_pure(fn):
    _keyed(fn, lambda f, seed: _epoch(f, 40, 8, jax.random.key(seed)))
    X = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10, dtype=np.float32).reshape(10, 1)
    list(fn(X, y, 3, jax.random.key(0)))
    _unchanged("X", np.arange(20, dtype=np.float32).reshape(10, 2), X)
    _unchanged("y", np.arange(10, dtype=np.float32).reshape(10, 1), y)


def data_iter_once(fn):
    from hypothesis import strategies as st

    @_hypothesis(st.tuples(_rows(), st.integers(1, 70), st.integers(0, 2**31 - 1)))
    def prop(case):
        n, batch_size, seed = case
        batch_size = min(batch_size, n + 3)
        batches = _epoch(fn, n, batch_size, jax.random.key(seed))
        labels = np.concatenate([b[:, 0] for _, b in batches]) if batches else np.zeros(0)
        sizes = [len(b) for _, b in batches]
        if sorted(labels.tolist()) != list(range(n)):
            if len(labels) == n - n % batch_size and n % batch_size:
                raise Failed(
                    f"n={n}, batch_size={batch_size}: the last, short batch of "
                    f"{n % batch_size} examples is missing",
                    "keep it: range(0, n, batch_size) with the slice [start:start + "
                    "batch_size] gives a short last batch",
                )
            raise Failed(
                f"n={n}, batch_size={batch_size}: {len(labels)} examples read, "
                f"{len(set(labels.tolist()))} different ones",
                "every example exactly once per epoch: slice one permutation of 0..n-1",
            )
        if any(size != batch_size for size in sizes[:-1]) or not 0 < sizes[-1] <= batch_size:
            raise Failed(
                f"n={n}, batch_size={batch_size}: batch sizes {sizes}",
                "every batch has batch_size examples but the last, which has the rest",
            )

    prop()


def data_iter_in_order(fn):
    batches = _epoch(fn, 23, 5, None)
    labels = np.concatenate([b[:, 0] for _, b in batches])
    if not np.array_equal(labels, np.arange(23)):
        raise Failed(
            "without a key (validation) the examples are not read in order",
            "shuffle only when a key is given: validation reads the examples in order",
        )


def data_iter_equal(fn):
    from hypothesis import strategies as st

    @_hypothesis(st.tuples(_rows(), st.integers(1, 32), st.integers(0, 2**31 - 1)))
    def prop(case):
        n, batch_size, seed = case
        key = jax.random.key(seed)
        got = [b[:, 0] for _, b in _epoch(fn, n, batch_size, key)]
        want = [b[:, 0] for _, b in _epoch(reference.data_iter, n, batch_size, key)]
        if len(got) != len(want) or not all(
            np.array_equal(a, b) for a, b in zip(got, want, strict=True)
        ):
            raise Failed(
                f"n={n}, batch_size={batch_size}: another order than jaxlin's",
                "read the examples in the order jaxlin.shuffle.permutation(key, n)",
            )

    prop()


# ---------------------------------------------------------------- init_params


def init_params_pure(fn):
    _keyed(fn, lambda f, seed: f(jax.random.key(seed), 3))


def _init_diagnose(key, d, sigma, got) -> Failed:
    if not isinstance(got, dict) or set(got) != {"w", "b"}:
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        return Failed(
            f"returns {keys}, expected a dict with 'w' and 'b'", 'return {"w": w, "b": b}'
        )
    w, b = got["w"], got["b"]
    if np.shape(w) != (d, 1):
        return Failed(
            f"w has shape {_shape(w)}, expected ({d}, 1)",
            "w is a column: shape (num_inputs, 1), so X @ w is (n, 1)",
        )
    if np.shape(b) != (1,):
        return Failed(f"b has shape {_shape(b)}, expected (1,)", "b is jnp.zeros(1)")
    normal = np.asarray(jax.random.normal(key, (d, 1)))
    if not _close(b, np.zeros(1)):
        return Failed("b does not start at 0", "b = jnp.zeros(1)")
    if sigma not in (0.0, 1.0) and _close(w, sigma**2 * normal):
        return Failed(
            "w is scaled by sigma**2",
            "sigma is the standard deviation: w = sigma * jax.random.normal(key, (d, 1))",
        )
    if sigma != 1.0 and _close(w, normal):
        return Failed("w is not scaled by sigma", "w = sigma * jax.random.normal(key, (d, 1))")
    return Failed("w differs from jaxlin's draw", "w = sigma * jax.random.normal(key, (d, 1))")


def init_params_equal(fn):
    from hypothesis import strategies as st

    inputs = st.tuples(st.integers(0, 2**31 - 1), _features(), st.floats(2**-10, 2, width=32))

    @_hypothesis(inputs)
    def prop(case):
        seed, d, sigma = case
        key = jax.random.key(seed)
        got = fn(key, d, sigma)
        if not _same_tree(got, reference.init_params(key, d, sigma)):
            raise _init_diagnose(key, d, sigma, got)

    prop()


def init_params_jit(fn):
    _jit_agrees(fn, (jax.random.key(5), 3, 0.5), "other params", (1, 2), "num_inputs, sigma")


def init_params_vmap(fn):
    keys = jax.random.split(jax.random.key(6), 4)
    mapped = jax.vmap(lambda k: fn(k, 3))(keys)
    each = jax.tree.map(lambda *xs: jnp.stack(xs), *[fn(k, 3) for k in keys])
    if not _same_tree(mapped, each):
        raise Failed("jax.vmap over keys gives other params than one key at a time", "")


# ---------------------------------------------------------------- linreg


def linreg_pure(fn):
    rng = np.random.default_rng(0)
    params, (X, _) = _params(rng, 3), _batch(rng, 7, 3)
    _pure(fn, ("params", "X"), params, X)


def linreg_equal(fn):
    from hypothesis import strategies as st

    @_hypothesis(st.tuples(_rows(), _features(), st.integers(0, 2**31 - 1)))
    def prop(case):
        n, d, seed = case
        rng = np.random.default_rng(seed)
        params, (X, _) = _params(rng, d), _batch(rng, n, d)
        got, want = fn(params, X), reference.linreg(params, X)
        if _close(got, want):
            return
        if np.shape(got) == (n,):
            raise Failed(f"returns shape ({n},), expected ({n}, 1)", "keep w a (d, 1) column")
        if _close(got, X @ params["w"]):
            raise Failed("the bias is not added: the result is X @ w", "return X @ w + b")
        raise Failed(f"differs from X @ w + b (n={n}, d={d})", "return X @ w + b")

    prop()


def linreg_jit(fn):
    rng = np.random.default_rng(1)
    _jit_agrees(fn, (_params(rng, 2), _batch(rng, 6, 2)[0]), "other predictions")


def linreg_vmap(fn):
    rng = np.random.default_rng(2)
    many = [_params(rng, 3) for _ in range(4)]
    X, _ = _batch(rng, 5, 3)
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *many)
    mapped = jax.vmap(fn, in_axes=(0, None))(stacked, X)
    if not _close(mapped, np.stack([np.asarray(fn(p, X)) for p in many])):
        raise Failed("jax.vmap over a batch of parameter sets gives other predictions", "")


# ---------------------------------------------------------------- squared_loss


def squared_loss_pure(fn):
    rng = np.random.default_rng(3)
    y_hat, y = _batch(rng, 9, 1)
    _pure(fn, ("y_hat", "y"), y_hat, y)


def _loss_diagnose(y_hat, y, got) -> Failed:
    n = y_hat.shape[0]
    if np.shape(got) != ():
        return Failed(
            f"returns shape {_shape(got)}, expected a scalar ()",
            "the loss is one number: the mean over the batch",
        )
    diff = y_hat - y.reshape(y_hat.shape)
    if _close(got, np.mean(diff**2)):
        return Failed(
            "twice jaxlin's loss: the / 2 is missing", "the squared loss is (y_hat - y)**2 / 2"
        )
    if _close(got, np.sum(diff**2 / 2)):
        return Failed(
            f"{n} times jaxlin's loss on a batch of {n}: the sum, not the mean",
            "average over the batch (jnp.mean), so the learning rate need not change with "
            "the batch size",
        )
    if y.ndim == 1 and _close(got, np.mean((y_hat - y) ** 2 / 2)):
        return Failed(
            f"with y of shape ({n},), (y_hat - y) broadcasts to ({n}, {n})",
            "reshape y to y_hat's shape first: y.reshape(y_hat.shape)",
        )
    return Failed(f"differs from the mean of (y_hat - y)**2 / 2 (n={n})", "")


def squared_loss_equal(fn):
    from hypothesis import strategies as st

    inputs = st.tuples(_rows(3), st.booleans(), st.integers(0, 2**31 - 1))

    @_hypothesis(inputs)
    def prop(case):
        n, flat, seed = case
        y_hat, y = _batch(np.random.default_rng(seed), n, 1)
        if flat:
            y = y.reshape(n)
        got = fn(y_hat, y)
        if not _close(got, reference.squared_loss(y_hat, y)):
            raise _loss_diagnose(y_hat, y, got)

    prop()


def squared_loss_jit(fn):
    _jit_agrees(fn, _batch(np.random.default_rng(4), 8, 1), "another loss")


def squared_loss_grad(fn):
    y_hat, y = _batch(np.random.default_rng(5), 8, 1)
    grad = jax.grad(fn)(jnp.asarray(y_hat), jnp.asarray(y))
    if not _close(grad, (y_hat - y) / len(y)):
        raise Failed(
            "jax.grad with respect to y_hat is not (y_hat - y) / n",
            "compute the loss with jnp operations only, so JAX can differentiate it",
        )


# ---------------------------------------------------------------- loss_fn


def loss_fn_pure(fn):
    rng = np.random.default_rng(6)
    params, (X, y) = _params(rng, 2), _batch(rng, 9, 2)
    _pure(fn, ("params", "X", "y"), params, X, y)


def loss_fn_equal(fn):
    from hypothesis import strategies as st

    @_hypothesis(st.tuples(_rows(), _features(), st.integers(0, 2**31 - 1)))
    def prop(case):
        n, d, seed = case
        rng = np.random.default_rng(seed)
        params, (X, y) = _params(rng, d), _batch(rng, n, d)
        got = fn(params, X, y)
        if not _close(got, reference.loss_fn(params, X, y)):
            raise Failed(
                f"differs from squared_loss(linreg(params, X), y) (n={n}, d={d})",
                "the loss of the model's predictions: squared_loss(linreg(params, X), y)",
            )

    prop()


def loss_fn_grad(fn):
    rng = np.random.default_rng(7)
    params, (X, y) = _params(rng, 3), _batch(rng, 11, 3)
    r = X @ params["w"] + params["b"] - y
    want = {"w": X.T @ r / len(y), "b": np.mean(r, axis=0)}
    if not _same_tree(jax.grad(fn)(params, X, y), want):
        raise Failed(
            "jax.grad of it is not the analytic gradient X^T r / n, mean(r)",
            "write the loss with jnp operations on params, so JAX can differentiate it",
        )


def loss_fn_vmap(fn):
    rng = np.random.default_rng(8)
    many = [_params(rng, 2) for _ in range(5)]
    X, y = _batch(rng, 6, 2)
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *many)
    mapped = jax.vmap(fn, in_axes=(0, None, None))(stacked, X, y)
    if not _close(mapped, np.array([np.asarray(fn(p, X, y)) for p in many])):
        raise Failed("jax.vmap over a batch of parameter sets gives other losses", "")


def loss_fn_jit(fn):
    rng = np.random.default_rng(9)
    _jit_agrees(fn, (_params(rng, 2), *_batch(rng, 6, 2)), "another loss")


# ---------------------------------------------------------------- sgd


def sgd_pure(fn):
    rng = np.random.default_rng(10)
    params, grads = _params(rng, 3), _params(rng, 3)
    _pure(fn, ("params", "grads", "lr"), params, grads, 0.1)


def sgd_equal(fn):
    from hypothesis import strategies as st

    inputs = st.tuples(_features(), st.floats(2**-10, 2, width=32), st.integers(0, 2**31 - 1))

    @_hypothesis(inputs)
    def prop(case):
        d, lr, seed = case
        rng = np.random.default_rng(seed)
        params, grads = _params(rng, d), _params(rng, d)
        got = fn(params, grads, lr)
        if _same_tree(got, reference.sgd(params, grads, lr)):
            return
        raise _update_diagnose(params, grads, lr, got)

    prop()


def _update_diagnose(params, grads, lr, got) -> Failed:
    """The known wrong updates of ``param - lr * grad``."""
    like = lambda f: _same_tree(got, jax.tree.map(f, params, grads))  # noqa: E731
    if like(lambda p, g: p - lr * lr * g):
        return Failed(
            f"the update is lr**2 * grad (lr={lr:g}): the learning rate is applied twice",
            "multiply the gradient by lr once: in sgd, not also before calling it",
        )
    if like(lambda p, g: p + lr * g):
        return Failed("moves along the gradient", "descend: param - lr * grad")
    if lr != 1 and like(lambda p, g: p - g):
        return Failed("the learning rate is not applied", "param - lr * grad")
    if like(lambda p, g: p):
        return Failed("returns the params unchanged", "return the updated params")
    return Failed(f"differs from param - lr * grad (lr={lr:g})", "param - lr * grad, every leaf")


def sgd_jit(fn):
    rng = np.random.default_rng(11)
    _jit_agrees(fn, (_params(rng, 2), _params(rng, 2), 0.1), "other params")


def sgd_vmap(fn):
    rng = np.random.default_rng(12)
    params, grads = _params(rng, 2), _params(rng, 2)
    lrs = np.array([0.01, 0.1, 0.5], np.float32)
    mapped = jax.vmap(fn, in_axes=(None, None, 0))(params, grads, lrs)
    each = jax.tree.map(lambda *xs: jnp.stack(xs), *[fn(params, grads, lr) for lr in lrs])
    if not _same_tree(mapped, each):
        raise Failed("jax.vmap over learning rates gives other params", "")


# ---------------------------------------------------------------- train_step


def _python(fn):
    """A jitted function's Python function (``jax.jit`` keeps it as ``__wrapped__``)."""
    return getattr(fn, "__wrapped__", fn)


def train_step_pure(fn):
    fn = _python(fn)
    rng = np.random.default_rng(13)
    params, (X, y) = _params(rng, 2), _batch(rng, 8, 2)
    _pure(fn, ("params", "X", "y", "lr"), params, X, y, 0.1)


def train_step_jit(fn):
    rng = np.random.default_rng(14)
    _jit_agrees(_python(fn), (_params(rng, 2), *_batch(rng, 8, 2), 0.1), "another step")


def train_step_equal(fn):
    from hypothesis import strategies as st

    inputs = st.tuples(
        _rows(), _features(), st.floats(2**-10, 0.5, width=32),
        st.integers(0, 2**31 - 1),
    )  # fmt: skip

    @_hypothesis(inputs, examples=8)
    def prop(case):
        n, d, lr, seed = case
        rng = np.random.default_rng(seed)
        params, (X, y) = _params(rng, d), _batch(rng, n, d)
        got = fn(params, X, y, lr)
        if not (isinstance(got, tuple | list) and len(got) == 2):
            raise Failed("does not return a pair", "return (new params, loss)")
        new, loss = got
        if np.ndim(new) == 0 and isinstance(loss, dict):
            raise Failed("returns (loss, params): the pair is swapped", "return (new params, loss)")
        want_params, want_loss = reference.train_step(params, X, y, lr)
        if not _same_tree(new, want_params):
            grads = jax.grad(reference.loss_fn)(params, X, y)
            raise _update_diagnose(params, grads, lr, new)
        if not _close(loss, want_loss):
            if _close(loss, reference.loss_fn(new, X, y)):
                raise Failed(
                    "returns the loss after the update",
                    "return the loss of the batch before the step: the value that "
                    "jax.value_and_grad gives with the gradient",
                )
            raise Failed(f"the loss differs from the batch's loss (n={n})", "")

    prop()


def train_step_vmap(fn):
    fn = _python(fn)
    rng = np.random.default_rng(15)
    params, (X, y) = _params(rng, 2), _batch(rng, 8, 2)
    lrs = np.array([0.01, 0.1, 0.3], np.float32)
    mapped = jax.vmap(fn, in_axes=(None, None, None, 0))(params, X, y, lrs)
    each = jax.tree.map(lambda *xs: jnp.stack(xs), *[fn(params, X, y, lr) for lr in lrs])
    if not _same_tree(mapped, each):
        raise Failed("jax.vmap over learning rates gives other steps", "")


# ---------------------------------------------------------------- train


def _problem(num_train: int, d: int, seed: int):
    """The lecture's problem (w = [2, -3.4], b = 4.2 for d = 2), its splits and initial params."""
    w = [2.0, -3.4] if d == 2 else list(np.linspace(-2, 2, d))
    key = jax.random.key(seed)
    key_data, key_init, key_shuffle = jax.random.split(key, 3)
    data = reference.synthetic_data(key_data, w, 4.2, 2 * num_train)
    train = (data[0][:num_train], data[1][:num_train])
    val = (data[0][num_train:], data[1][num_train:])
    return reference.init_params(key_init, d), train, val, key_shuffle


def _quiet(fn, *args):
    """Call without the student's prints (a loop prints each epoch's loss)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def train_pure(fn):
    params, train, val, key = _problem(64, 2, 1)
    params = _copy(params)
    before = _copy(params)
    first = _quiet(fn, params, train, val, 0.05, 2, 16, key)
    _unchanged("params", before, params)
    if not _exact_tree(first, _quiet(fn, _copy(before), train, val, 0.05, 2, 16, key)):
        raise Failed(
            "the same key gave different params",
            "shuffle only with keys derived from the key argument",
        )
    other = jax.random.fold_in(key, 1)
    if _exact_tree(first, _quiet(fn, _copy(before), train, val, 0.05, 2, 16, other)):
        raise Failed(
            "two different keys gave the same params",
            "shuffle with the key argument (fold_in(key, epoch)), not a key from elsewhere",
        )


def _train_diagnose(fn_result, params, train, val, lr, epochs, batch_size, key) -> Failed:
    """The known wrong loops: the same shuffle every epoch, an epoch too many or too few."""
    same_key = params
    for _ in range(epochs):
        for X, y in reference.data_iter(*train, batch_size, key):
            same_key, _ = reference.train_step(same_key, X, y, lr)
    if _same_tree(fn_result, same_key, rtol=1e-4, atol=1e-5):
        return Failed(
            "every epoch reads the examples in the same order",
            "shuffle epoch e with its own key, jax.random.fold_in(key, e)",
        )
    for other in (epochs - 1, epochs + 1):
        if other > 0 and _same_tree(
            fn_result, reference.train(params, train, val, lr, other, batch_size, key),
            rtol=1e-4, atol=1e-5,
        ):  # fmt: skip
            return Failed(f"ran {other} epochs, not num_epochs={epochs}", "range(num_epochs)")
    return Failed(
        "differs from jaxlin.fit with the same key and settings",
        "each epoch: data_iter(X, y, batch_size, jax.random.fold_in(key, epoch)), then "
        "train_step on every batch, in order",
    )


def train_equal(fn):
    # The lecture's problem with settings and keys of its own, then one whose last batch is short.
    for num_train, d, lr, epochs, batch_size in ((1000, 2, 0.05, 3, 25), (100, 3, 0.03, 2, 32)):
        params, train, val, key = _problem(num_train, d, 3)
        got = _quiet(fn, params, train, val, lr, epochs, batch_size, key)
        want = reference.train(params, train, val, lr, epochs, batch_size, key)
        if not _same_tree(got, want, rtol=1e-4, atol=1e-5):
            raise _train_diagnose(got, params, train, val, lr, epochs, batch_size, key)


def train_converges(fn):
    params, train, val, key = _problem(1000, 2, 2)
    got = _quiet(fn, params, train, val, 0.03, 10, 32, key)
    X = np.concatenate([np.asarray(train[0]), np.ones((len(train[0]), 1), np.float32)], axis=1)
    solution = np.linalg.lstsq(X, np.asarray(train[1]), rcond=None)[0].ravel()
    learned = np.append(np.asarray(got["w"]).ravel(), np.asarray(got["b"]))
    gap = float(np.max(np.abs(learned - solution)))
    if not gap < 1e-2:
        raise Failed(
            f"after 10 epochs the params are {gap:.2g} from the least-squares solution",
            "the loop must take a train_step on every batch of every epoch",
        )


# ---------------------------------------------------------------- running them

# Each task's checks, ``(name, check)`` in the order they run; a check raises ``Failed``.
CHECKS: dict[str, tuple[tuple[str, Callable], ...]] = {
    "synthetic_data": (
        ("pure", synthetic_data_pure),
        ("equals jaxlin", synthetic_data_equal),
        ("jit", synthetic_data_jit),
        ("vmap over keys", synthetic_data_vmap),
    ),
    "data_iter": (
        ("pure", data_iter_pure),
        ("every example once", data_iter_once),
        ("validation in order", data_iter_in_order),
        ("equals jaxlin", data_iter_equal),
    ),
    "init_params": (
        ("pure", init_params_pure),
        ("equals jaxlin", init_params_equal),
        ("jit", init_params_jit),
        ("vmap over keys", init_params_vmap),
    ),
    "linreg": (
        ("pure", linreg_pure),
        ("equals jaxlin", linreg_equal),
        ("jit", linreg_jit),
        ("vmap over params", linreg_vmap),
    ),
    "squared_loss": (
        ("pure", squared_loss_pure),
        ("equals jaxlin", squared_loss_equal),
        ("jit", squared_loss_jit),
        ("grad", squared_loss_grad),
    ),
    "loss_fn": (
        ("pure", loss_fn_pure),
        ("equals jaxlin", loss_fn_equal),
        ("jit", loss_fn_jit),
        ("grad", loss_fn_grad),
        ("vmap over params", loss_fn_vmap),
    ),
    "sgd": (
        ("pure", sgd_pure),
        ("equals jaxlin", sgd_equal),
        ("jit", sgd_jit),
        ("vmap over lr", sgd_vmap),
    ),
    "train_step": (
        ("pure", train_step_pure),
        ("jit", train_step_jit),
        ("equals jaxlin", train_step_equal),
        ("vmap over lr", train_step_vmap),
    ),
    "train": (
        ("pure", train_pure),
        ("converges", train_converges),
        ("equals fit", train_equal),
    ),
}


def _raised(err: BaseException) -> Failed:
    """An unexpected exception from the student's code, as one line (with hypothesis's input)."""
    text = str(err).strip().splitlines()
    example = [n for n in getattr(err, "__notes__", []) if n.startswith("Falsifying example")]
    where = f" (on {example[0].partition(':')[2].strip()[:120]})" if example else ""
    return Failed(
        f"raised {type(err).__name__}" + (f": {text[0][:160]}" if text else "") + where,
        "run the function on those inputs in the notebook and read the traceback",
    )


def _names(code: types.CodeType) -> set[str]:
    """The global names a function's code reads, its nested functions' and lambdas' included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def isolated(fn, task: str):
    """``fn`` with jaxlin's functions in place of the other tasks it calls by name."""
    inner = _python(fn)
    if not isinstance(inner, types.FunctionType):
        return fn
    names = _names(inner.__code__) & (set(TASKS) - {task})
    if not names:
        return fn
    scope = dict(inner.__globals__)
    scope.update({name: getattr(reference, name) for name in names})
    copy = types.FunctionType(
        inner.__code__, scope, inner.__name__, inner.__defaults__, inner.__closure__
    )
    copy.__kwdefaults__ = inner.__kwdefaults__
    return copy


class CheckTimeout(Exception):
    """A check ran past its time limit (an endless loop in the student's function)."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise ``CheckTimeout`` in the main thread after ``seconds`` (no limit: ``None``)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise CheckTimeout(f"ran past the time limit of {seconds:g} s for one check")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _copied(fn, task: str) -> str:
    """Why ``fn`` is jaxlin's own function rather than the student's ('' if it is theirs)."""
    inner = _python(fn)
    module = getattr(inner, "__module__", "") or ""
    if module == "jaxlin" or module.startswith("jaxlin."):
        return f"{task} is jaxlin's own function ({module}), not one written in the submission"
    code = getattr(inner, "__code__", None)
    if code is not None and "jaxlin" in _names(code) and task in _names(code):
        return f"{task} calls jaxlin's {task}: the assignment is to write it"
    return ""


def grade_task(namespace: dict, task: str, check_timeout: float | None = None) -> list[Verdict]:
    """The verdicts of one task's checks on ``namespace[task]``, in order.

    ``check_timeout``: seconds for each check (in the main thread), after which
    it fails as an endless loop; ``None``, no limit.
    """
    checks = CHECKS[task]
    fn = namespace.get(task)
    if not callable(fn):
        return [Verdict(task, checks[0][0], "missing", f"no function {task} defined")] + [
            Verdict(task, name, "skip", "") for name, _ in checks[1:]
        ]
    copied = _copied(fn, task)
    if copied:
        return [Verdict(task, checks[0][0], "fail", copied, "write the function's body")] + [
            Verdict(task, name, "skip", f"after '{checks[0][0]}'") for name, _ in checks[1:]
        ]
    fn = isolated(fn, task)
    verdicts, failed = [], None
    for name, check in checks:
        if failed is not None:
            verdicts.append(Verdict(task, name, "skip", f"after '{failed}'"))
            continue
        try:
            # The lecture broadcasts (n, 1) + (1,), whatever the caller's setting; matrix
            # products at full float32 precision on every device (a GPU's default is coarser).
            with (
                grading(),
                jax.numpy_rank_promotion("allow"),
                jax.default_matmul_precision("highest"),
                contextlib.redirect_stdout(io.StringIO()),
                _time_limit(check_timeout),
            ):
                check(fn)
        except NotWritten as err:
            verdicts.append(Verdict(task, name, "missing", str(err)))
            failed = name
            continue
        except Failed as err:
            verdicts.append(Verdict(task, name, "fail", err.message, err.hint))
        except CheckTimeout as err:
            hint = "a loop that never ends: check that each pass moves on (start += batch_size)"
            verdicts.append(Verdict(task, name, "fail", str(err), hint))
        except BaseException as err:  # SystemExit, KeyboardInterrupt from the student's code too
            fail = _traced_failure(err, name) or _raised(err)
            verdicts.append(Verdict(task, name, "fail", fail.message, fail.hint))
        else:
            verdicts.append(Verdict(task, name, "pass"))
            continue
        failed = name
    return verdicts


# The environment variable naming the folder of JAX's compilation cache for the checks.
CACHE_VARIABLE = "JAXLIN_GRADE_CACHE"


def use_cache() -> None:
    """Use JAX's persistent compilation cache in ``$JAXLIN_GRADE_CACHE``, if it is set.

    The checks compile the same programs for every submission (hypothesis
    draws the same inputs each time), so the second grading on a machine
    loads them instead of compiling: about three times faster.
    """
    folder = os.environ.get(CACHE_VARIABLE)
    if not folder:
        return
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def grade_namespace(namespace: dict, check_timeout: float | None = None) -> list[Verdict]:
    """Every task's verdicts: what ``jaxlin grade`` reports for one submission."""
    return [verdict for task in TASKS for verdict in grade_task(namespace, task, check_timeout)]


def score(verdicts: list[Verdict]) -> tuple[int, int]:
    """``(checks passed, checks in all)``."""
    return sum(v.status == "pass" for v in verdicts), len(verdicts)


def table(verdicts: list[Verdict]) -> str:
    """The verdicts as an aligned table: task, check, verdict, and a hint under each failure."""
    marks = {"pass": "pass", "fail": "FAIL", "skip": "skip", "missing": "not written"}
    rows = []
    for v in verdicts:
        line = f"{v.task:<15} {v.check:<20} {marks[v.status]:<12}"
        if v.status in ("fail", "missing"):
            line += v.message
        rows.append(line.rstrip())
        if v.status == "fail" and v.hint:
            rows.append(f"{'':<49}hint: {v.hint}")
    return "\n".join(rows)

"""The lecture's linear model: its parameters, the forward pass and the squared loss.

The lecture's ``LinearRegressionScratch`` holds ``w`` and ``b`` as attributes
and changes them in place; here they are a plain pytree ``{"w": (d, 1), "b": (1,)}``
that functions take and return.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxlin import checks

Params = dict[str, jax.Array]


def init_params(key: jax.Array, num_inputs: int, sigma: float = 0.01) -> Params:
    """``w ~ N(0, sigma^2)`` of shape ``(num_inputs, 1)`` and ``b = 0`` of shape ``(1,)``.

    Example:
      >>> import jax
      >>> import jaxlin
      >>> params = jaxlin.init_params(jax.random.key(0), 2)
      >>> params["w"].shape, params["b"].shape
      ((2, 1), (1,))
    """
    key = checks.key("key", key)
    num_inputs = checks.positive_int("num_inputs", num_inputs)
    sigma = checks.finite_float("sigma", sigma, nonnegative=True)
    checks.fits_in_memory("num_inputs", num_inputs, num_inputs + 1, jnp.result_type(float))
    return draw_params(key, sigma, num_inputs)


@partial(jax.jit, static_argnames="num_inputs")
def draw_params(key: jax.Array, sigma: ArrayLike, num_inputs: int) -> Params:
    """The unchecked, traceable core of ``init_params``: one compiled program."""
    w = sigma * jax.random.normal(key, (num_inputs, 1))
    return {"w": w, "b": jnp.zeros((1,), w.dtype)}


def linreg(params: Params, X: ArrayLike) -> jax.Array:
    """The forward pass ``X @ w + b``: ``(n, d) -> (n, 1)``, the bias added to every row."""
    d = checks.params(params)
    if jnp.ndim(X) != 2 or jnp.shape(X)[1] != d:
        raise ValueError(f"X must have shape (n, {d}) to match params['w'], got {jnp.shape(X)}")
    return jnp.asarray(X) @ params["w"] + params["b"][None, :]  # (n, 1) + (1, 1)


def squared_loss(y_hat: ArrayLike, y: ArrayLike) -> jax.Array:
    """Mean of ``(y_hat - y)**2 / 2`` over the batch (a scalar).

    As in the lecture, ``y`` is reshaped to ``y_hat``'s shape first, so ``(n,)``
    and ``(n, 1)`` labels give the same value. Without it ``(n, 1) - (n,)``
    would broadcast to ``(n, n)`` and silently train on the wrong loss.
    """
    y_hat, y = jnp.asarray(y_hat), jnp.asarray(y)
    if y.size != y_hat.size:
        raise ValueError(
            f"y has {y.size} values but y_hat has {y_hat.size} (shapes {y.shape}, {y_hat.shape})"
        )
    return jnp.mean((y_hat - y.reshape(y_hat.shape)) ** 2 / 2)


def loss_fn(params: Params, X: ArrayLike, y: ArrayLike) -> jax.Array:
    """Squared loss of the linear model on a batch: what ``jax.grad`` differentiates."""
    return squared_loss(linreg(params, X), y)


def estimation_error(params: Params, w: ArrayLike, b: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``(true w - learned w, true b - learned b)``, the lecture's last cell; ``(d,), ()``."""
    d = checks.params(params)
    w = jnp.asarray(w).reshape(-1)
    if w.shape != (d,) or jnp.ndim(b) > 1 or jnp.size(b) != 1:
        raise ValueError(
            f"w and b must have shapes ({d},) and () to match params, got {jnp.shape(w)} "
            f"and {jnp.shape(b)}"
        )
    return w - params["w"].reshape(w.shape), jnp.asarray(b) - params["b"][0]

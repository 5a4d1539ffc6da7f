"""A whole epoch of SGD on the squared loss in logarithmic depth.

For the linear model and the squared loss, one SGD step on batch ``k`` is an
affine map of the parameters ``theta = (w, b)``::

    theta <- theta - lr * (A_k theta - c_k) = (I - lr A_k) theta + lr c_k

with ``A_k = Z_k^T Z_k / B_k`` and ``c_k = Z_k^T y_k / B_k`` (``Z_k = [X_k, 1]``,
the batch with a column of ones). Affine maps compose associatively, so all
the parameters of an epoch come out of a parallel prefix over the
``(I - lr A_k, lr c_k)`` pairs: the same trajectory as the sequential loop,
in ``2 sqrt(K)`` vectorised steps instead of ``K`` sequential ones. Each step
costs ``(d + 1)^2`` instead of ``d``, so this wins for small ``d`` (where the
per-step overhead is the limit) and loses for large ``d``.
Gradient clipping is not affine, so it is not supported here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes on GPUs: this must be exact


def _compose(earlier, later):
    """``later o earlier`` for batches of affine maps ``theta -> M theta + v``."""
    m1, v1 = earlier
    m2, v2 = later
    m = jnp.matmul(m2, m1, precision=HIGHEST)
    v = jnp.einsum("kij,kj->ki", m2, v1, precision=HIGHEST) + v2
    return m, v


def _prefix_compose(m: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """All prefix compositions ``map_k o ... o map_0`` of ``K`` affine maps ``(m, v)``.

    Two levels of about ``sqrt(K)`` sequential steps, each vectorised over the
    other axis, instead of ``jax.lax.associative_scan``: the same result with a
    program whose size (and compile time) does not grow with ``K``.
    """
    steps, d1 = v.shape
    width = max(1, math.isqrt(steps))
    blocks = -(-steps // width)
    pad = blocks * width - steps
    eye = jnp.eye(d1, dtype=m.dtype)
    m = jnp.concatenate([m, jnp.broadcast_to(eye, (pad, d1, d1))]).reshape(blocks, width, d1, d1)
    v = jnp.pad(v, ((0, pad), (0, 0))).reshape(blocks, width, d1)

    def within(carry, later):  # one step inside every block at once
        carry = _compose(carry, later)
        return carry, carry

    start = (jnp.broadcast_to(eye, (blocks, d1, d1)), jnp.zeros((blocks, d1), m.dtype))
    _, (local_m, local_v) = jax.lax.scan(within, start, (m.swapaxes(0, 1), v.swapaxes(0, 1)))
    local_m, local_v = local_m.swapaxes(0, 1), local_v.swapaxes(0, 1)  # (blocks, width, ...)

    def across(carry, total):  # exclusive prefix over the blocks' totals
        m1, v1 = carry
        m2, v2 = total
        nxt = (jnp.matmul(m2, m1, precision=HIGHEST), jnp.matmul(m2, v1, precision=HIGHEST) + v2)
        return nxt, carry

    _, (excl_m, excl_v) = jax.lax.scan(
        across, (eye, jnp.zeros((d1,), m.dtype)), (local_m[:, -1], local_v[:, -1])
    )
    prefix_m = jnp.matmul(local_m, excl_m[:, None], precision=HIGHEST)
    prefix_v = jnp.einsum("bwij,bj->bwi", local_m, excl_v, precision=HIGHEST) + local_v
    return prefix_m.reshape(-1, d1, d1)[:steps], prefix_v.reshape(-1, d1)[:steps]


def affine_epoch(params, X: jax.Array, y: jax.Array, order: jax.Array, lr, batch_size: int):
    """One epoch of minibatch SGD reading ``X[order[:n]]`` in batches; ``(params, losses)``.

    Args:
      params: ``{"w": (d, 1), "b": (1,)}``.
      X, y: ``(n, d)``, ``(n, 1)``.
      order: the epoch's example order, length ``>= n`` (entries past ``n`` ignored).
      lr: learning rate (traced).
      batch_size: static; the last batch is smaller when it does not divide ``n``.

    Returns:
      the parameters after the epoch and the ``(ceil(n / B),)`` batch losses,
      each taken before its step, as the sequential engine records them.
    """
    n, d = X.shape
    steps = -(-n // batch_size)
    pad = steps * batch_size - n
    idx = order[:n]
    Xp = X.at[idx].get(mode="promise_in_bounds")
    yp = y.at[idx].get(mode="promise_in_bounds")[:, 0]
    Z = jnp.concatenate([Xp, jnp.ones((n, 1), X.dtype)], axis=1)  # (n, d + 1)
    Z = jnp.pad(Z, ((0, pad), (0, 0))).reshape(steps, batch_size, d + 1)  # padded rows: 0
    yb = jnp.pad(yp, (0, pad)).reshape(steps, batch_size)
    count = jnp.full((steps,), batch_size, X.dtype).at[-1].set(batch_size - pad)
    A = jnp.einsum("kbi,kbj->kij", Z, Z, precision=HIGHEST) / count[:, None, None]
    c = jnp.einsum("kbi,kb->ki", Z, yb, precision=HIGHEST) / count[:, None]
    eye = jnp.eye(d + 1, dtype=X.dtype)
    maps = (eye[None] - lr * A, lr * c)
    prefix_m, prefix_v = _prefix_compose(*maps)  # theta_{k+1} = P_k theta_0 + q_k
    theta0 = jnp.concatenate([params["w"][:, 0], params["b"]])
    after = jnp.einsum("kij,j->ki", prefix_m, theta0, precision=HIGHEST) + prefix_v
    before = jnp.concatenate([theta0[None], after[:-1]])  # theta_k, the params each step sees
    residual = jnp.einsum("kbi,ki->kb", Z, before, precision=HIGHEST) - yb
    mask = (jnp.arange(steps * batch_size) < n).reshape(steps, batch_size)
    losses = jnp.sum(jnp.where(mask, residual**2, 0.0), axis=1) / (2 * count)
    last = after[-1]
    return {"w": last[:d, None], "b": last[d:]}, losses

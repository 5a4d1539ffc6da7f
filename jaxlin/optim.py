"""Minibatch SGD, written by hand: a pure update and global-norm clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def sgd(params, grads, lr: ArrayLike):
    """One SGD step, ``param - lr * grad`` for every leaf; returns new params.

    The lecture's ``SGD`` has a ``zero_grad`` because PyTorch *accumulates*
    gradients into ``param.grad`` across ``backward`` calls. ``jax.grad``
    returns fresh gradients as a value on every call and nothing is stored,
    so there is nothing to reset. Nor is anything updated in place: the old
    ``params`` are left as they were.
    """
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def global_norm(tree) -> jax.Array:
    """The L2 norm of all leaves of ``tree`` taken together (a scalar)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(grads, max_norm: ArrayLike):
    """Scale ``grads`` down so their global norm is at most ``max_norm``.

    The lecture's ``Trainer.clip_gradients``: ``g * max_norm / ||g||`` when
    ``||g|| > max_norm``. A ``max_norm <= 0`` means "no clipping", so that it
    can be a traced argument and switching it on does not recompile.
    """
    norm = global_norm(grads)
    scale = jnp.where((max_norm > 0) & (norm > max_norm), max_norm / norm, 1.0)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)

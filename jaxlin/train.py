"""The lecture's training step and epoch: ``jax.value_and_grad``, SGD, a loop over minibatches.

The lecture's ``Trainer.fit_epoch`` loops over a data loader and calls
``backward`` and ``optim.step`` on objects that change in place. Here one
step is the pure function ``(params, X, y, lr) -> (new params, loss)``, and
an epoch is a Python loop of it over ``minibatches``. ``jaxlin.fit`` with
``engine="eager"`` or ``"step"`` runs exactly ``train_epoch``; its compiled
engines (``jaxlin.engines``) run the same steps on the same batches.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.typing import ArrayLike

from jaxlin import checks
from jaxlin.data import minibatches
from jaxlin.model import Params, loss_fn
from jaxlin.optim import clip_by_global_norm, sgd


def step(params: Params, X, y, lr: ArrayLike, gradient_clip_val=None, *, loss=loss_fn):
    """One minibatch SGD step: gradient, optional clipping, update; returns ``(params, loss)``.

    ``gradient_clip_val=None`` leaves clipping out (no norm is computed).
    ``loss`` is what is differentiated: the model's squared loss.
    """
    value, grads = jax.value_and_grad(loss)(params, X, y)
    if gradient_clip_val is not None:
        grads = clip_by_global_norm(grads, gradient_clip_val)
    return sgd(params, grads, lr), value


jitted_step = jax.jit(step, static_argnames="loss")


def train_step(
    params: Params,
    X: ArrayLike,
    y: ArrayLike,
    lr: ArrayLike,
    gradient_clip_val: ArrayLike | None = None,
) -> tuple[Params, jax.Array]:
    """The lecture's ``training_step`` + ``backward`` + ``optim.step``, jitted: ``(params, loss)``.

    ``lr`` and ``gradient_clip_val`` are traced, so changing them does not
    recompile (``None``, no clipping, is a program of its own); a new batch
    shape (the smaller last batch) compiles once more. Shapes and dtypes are
    checked on the host; values are not.
    """
    X, y = checks.dataset("batch", (X, y), checks.params(params), finite=False)
    checks.same_dtype(("batch X", X), ("params['w']", params["w"]))
    for name, value in (("lr", lr), ("gradient_clip_val", gradient_clip_val)):
        if value is not None and jax.numpy.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {jax.numpy.shape(value)}")
    return jitted_step(params, X, y, lr, gradient_clip_val)


def train_epoch(
    params: Params,
    X: jax.Array,
    y: jax.Array,
    lr: ArrayLike,
    *,
    batch_size: int,
    key: jax.Array | None = None,
    gradient_clip_val: ArrayLike | None = None,
    jit: bool = True,
) -> tuple[Params, np.ndarray]:
    """One pass over ``(X, y)`` in minibatches (shuffled by ``key``): ``(params, losses)``.

    ``losses`` is ``(ceil(n / B),)``, each batch's loss before its step, read
    from the device once at the end. ``jit=False`` runs every step op by op.
    """
    update = jitted_step if jit else step
    losses = []
    for X_batch, y_batch in minibatches(X, y, batch_size, key=key):
        params, loss = update(params, X_batch, y_batch, lr, gradient_clip_val)
        losses.append(loss)
    return params, np.asarray(jax.device_get(losses))

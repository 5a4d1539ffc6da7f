"""The lecture's functions as the notebook defines them, computed by jaxlin.

The grader compares a student's function with the one of the same name here,
and a student's function that calls another task (``loss_fn`` calls
``linreg``) is graded with these in place of the student's others, so one
mistake costs the points of one task. Signatures are the notebook's.
"""

from __future__ import annotations

import jaxlin
from jaxlin.train import jitted_step

# The public name is TASKS alone: the functions below are jaxlin's, under the notebook's names.
__all__ = ["TASKS"]

# The functions a student writes, in the notebook's order.
TASKS = (
    "synthetic_data", "data_iter", "init_params", "linreg", "squared_loss", "loss_fn", "sgd",
    "train_step", "train",
)  # fmt: skip


def synthetic_data(key, w, b, num_examples, noise=0.01):
    """``(X, y)``: ``X`` ``(n, d)`` drawn with ``split(key)[0]``, the noise with ``[1]``."""
    return jaxlin.synthetic_data(key, w, b, num_examples, noise)


def data_iter(X, y, batch_size, key=None):
    """One epoch of minibatches: shuffled by ``permutation(key, n)``, in order without a key."""
    return jaxlin.minibatches(X, y, batch_size, key=key)


def init_params(key, num_inputs, sigma=0.01):
    """``{"w": (d, 1) ~ N(0, sigma^2), "b": zeros (1,)}``."""
    return jaxlin.init_params(key, num_inputs, sigma)


def linreg(params, X):
    """``X @ w + b``: ``(n, d) -> (n, 1)``."""
    return jaxlin.linreg(params, X)


def squared_loss(y_hat, y):
    """The mean over the batch of ``(y_hat - y)**2 / 2``, ``y`` reshaped to ``y_hat``'s shape."""
    return jaxlin.squared_loss(y_hat, y)


def loss_fn(params, X, y):
    """``squared_loss(linreg(params, X), y)``."""
    return jaxlin.loss_fn(params, X, y)


def sgd(params, grads, lr):
    """``param - lr * grad`` for every leaf, as new params."""
    return jaxlin.sgd(params, grads, lr)


def train_step(params, X, y, lr):
    """``(new params, loss before the step)``: one jitted minibatch SGD step."""
    return jitted_step(params, X, y, lr)


def train(params, train_data, val_data, lr, num_epochs, batch_size, key):
    """The lecture's loop: epoch ``e`` shuffled by ``fold_in(key, e)``; prints each val loss."""
    params, _ = jaxlin.fit(
        params, train_data, val_data, lr=lr, max_epochs=num_epochs, batch_size=batch_size,
        key=key, engine="step", callback=_report,
    )  # fmt: skip
    return params


def _report(end) -> None:
    """Each epoch's validation loss, as the lecture's loop prints it."""
    print(f"epoch {end.epoch + 1}: val loss {end.val_loss:.4f}")

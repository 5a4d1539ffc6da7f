"""Mistakes students make in the lecture's assignment, each a small wrong solution.

``MISTAKES`` maps a name to ``(the function, the task it solves, the check
that must fail, words its verdict or hint must hold)``. ``test_course.py``
grades each in place of the lecture's solution and asserts that exactly that
check fails, with those words, and that no check of another task fails.
``CORRECT`` holds right solutions written otherwise than the lecture's: each
must get full marks.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np

import jaxlin

_calls = 0


def reused_key(key, w, b, num_examples, noise=0.01):
    w = jnp.asarray(w).reshape(-1, 1)
    X = jax.random.normal(key, (num_examples, w.shape[0]))
    return X, X @ w + b + noise * jax.random.normal(key, (num_examples, 1))


def global_rng(key, w, b, num_examples, noise=0.01):
    w = np.asarray(w, np.float32).reshape(-1, 1)
    X = np.random.normal(size=(num_examples, w.shape[0])).astype(np.float32)  # noqa: NPY002
    return X, X @ w + b + noise * np.random.normal(size=(num_examples, 1))  # noqa: NPY002


def fixed_key(key, w, b, num_examples, noise=0.01):
    key_X, key_noise = jax.random.split(jax.random.key(0))  # not the key it was given
    w = jnp.asarray(w).reshape(-1, 1)
    X = jax.random.normal(key_X, (num_examples, w.shape[0]))
    return X, X @ w + b + noise * jax.random.normal(key_noise, (num_examples, 1))


def no_bias_data(key, w, b, num_examples, noise=0.01):
    key_X, key_noise = jax.random.split(key)
    w = jnp.asarray(w).reshape(-1, 1)
    X = jax.random.normal(key_X, (num_examples, w.shape[0]))
    return X, X @ w + noise * jax.random.normal(key_noise, (num_examples, 1))


def dropped_last_batch(X, y, batch_size, key=None):
    n = X.shape[0]
    order = jnp.arange(n) if key is None else jaxlin.shuffle.permutation(key, n)
    for start in range(0, n - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield X[idx], y[idx]


def shuffled_validation(X, y, batch_size, key=None):
    n = X.shape[0]
    order = jaxlin.shuffle.permutation(jax.random.key(0) if key is None else key, n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield X[idx], y[idx]


def python_shuffle(X, y, batch_size, key=None):
    indices = list(range(X.shape[0]))
    if key is not None:
        random.shuffle(indices)
    for start in range(0, len(indices), batch_size):
        idx = np.array(indices[start : start + batch_size])
        yield X[idx], y[idx]


def variance_sigma(key, num_inputs, sigma=0.01):
    return {"w": sigma**2 * jax.random.normal(key, (num_inputs, 1)), "b": jnp.zeros(1)}


def flat_weights(key, num_inputs, sigma=0.01):
    return {"w": sigma * jax.random.normal(key, (num_inputs,)), "b": jnp.zeros(1)}


def bias_forgotten(params, X):
    return X @ params["w"]


def sum_not_mean(y_hat, y):
    return jnp.sum((y_hat - y.reshape(y_hat.shape)) ** 2 / 2)


def missing_half(y_hat, y):
    return jnp.mean((y_hat - y.reshape(y_hat.shape)) ** 2)


def not_reshaped(y_hat, y):
    return jnp.mean((y_hat - y) ** 2 / 2)


def per_example_loss(y_hat, y):
    return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2


def decaying_lr(params, grads, lr):
    global _calls  # a step counter kept between calls, for a decaying learning rate
    _calls += 1
    return jax.tree.map(lambda p, g: p - lr * 0.99**_calls * g, params, grads)


def numpy_loss(params, X, y):
    diff = np.asarray(linreg(params, X)) - np.asarray(y).reshape(-1, 1)  # noqa: F821
    return np.mean(diff**2 / 2)


def mutates_input(params, grads, lr):
    for name in params:
        params[name] -= lr * grads[name]
    return params


def gradient_ascent(params, grads, lr):
    return jax.tree.map(lambda p, g: p + lr * g, params, grads)


def lr_twice(params, X, y, lr):
    loss, grads = jax.value_and_grad(loss_fn)(params, X, y)  # noqa: F821 (the grader's)
    grads = jax.tree.map(lambda g: lr * g, grads)
    return sgd(params, grads, lr), loss  # noqa: F821


def loss_after_update(params, X, y, lr):
    grads = jax.grad(loss_fn)(params, X, y)  # noqa: F821
    new = sgd(params, grads, lr)  # noqa: F821
    return new, loss_fn(new, X, y)  # noqa: F821


def python_if(params, X, y, lr):
    loss, grads = jax.value_and_grad(loss_fn)(params, X, y)  # noqa: F821
    if loss > 1e6:
        raise FloatingPointError("diverged")
    return sgd(params, grads, lr), loss  # noqa: F821


def same_shuffle_every_epoch(params, train_data, val_data, lr, num_epochs, batch_size, key):
    for _ in range(num_epochs):
        for X, y in data_iter(*train_data, batch_size, key):  # noqa: F821
            params, _ = train_step(params, X, y, lr)  # noqa: F821
    return params


def one_epoch_short(params, train_data, val_data, lr, num_epochs, batch_size, key):
    for epoch in range(num_epochs - 1):
        for X, y in data_iter(*train_data, batch_size, jax.random.fold_in(key, epoch)):  # noqa: F821
            params, _ = train_step(params, X, y, lr)  # noqa: F821
    return params


MISTAKES = {
    "reused key": (reused_key, "synthetic_data", "equals jaxlin", "same key"),
    "global RNG": (global_rng, "synthetic_data", "pure", "global random generator"),
    "fixed key": (fixed_key, "synthetic_data", "pure", "key argument is not used"),
    "no bias in the data": (no_bias_data, "synthetic_data", "equals jaxlin", "add b"),
    "dropped last batch": (dropped_last_batch, "data_iter", "every example once", "short batch"),
    "shuffled validation": (shuffled_validation, "data_iter", "validation in order", "in order"),
    "Python's random.shuffle": (python_shuffle, "data_iter", "pure", "global random generator"),
    "sigma as variance": (variance_sigma, "init_params", "equals jaxlin", "sigma**2"),
    "flat weights": (flat_weights, "init_params", "equals jaxlin", "column"),
    "bias forgotten": (bias_forgotten, "linreg", "equals jaxlin", "X @ w + b"),
    "sum instead of mean": (sum_not_mean, "squared_loss", "equals jaxlin", "jnp.mean"),
    "missing / 2": (missing_half, "squared_loss", "equals jaxlin", "/ 2"),
    "y not reshaped": (not_reshaped, "squared_loss", "equals jaxlin", "y.reshape(y_hat.shape)"),
    "loss per example": (per_example_loss, "squared_loss", "equals jaxlin", "one number"),
    "numpy inside the loss": (numpy_loss, "loss_fn", "jit", "np.asarray"),
    "a step counter between calls": (decaying_lr, "sgd", "pure", "a counter"),
    "update mutates its input": (mutates_input, "sgd", "pure", "-="),
    "gradient ascent": (gradient_ascent, "sgd", "equals jaxlin", "descend"),
    "lr applied twice": (lr_twice, "train_step", "equals jaxlin", "applied twice"),
    "loss after the update": (loss_after_update, "train_step", "equals jaxlin", "before the step"),
    "Python if on a traced value": (python_if, "train_step", "jit", "jnp.where"),
    "same shuffle every epoch": (same_shuffle_every_epoch, "train", "equals fit", "fold_in"),
    "an epoch short": (one_epoch_short, "train", "equals fit", "range(num_epochs)"),
}


# ---------------------------------------------------------------- right, written otherwise


def synthetic_data_dot(key, w, b, num_examples, noise=0.01):
    key_X, key_noise = jax.random.split(key)
    w = jnp.asarray(w)
    X = jax.random.normal(key_X, (num_examples, w.size))
    eps = jax.random.normal(key_noise, (num_examples,)).reshape(-1, 1)
    return X, (jnp.dot(X, w) + b).reshape(-1, 1) + noise * eps


def data_iter_while(X, y, batch_size, key=None):
    n = len(X)
    order = np.arange(n) if key is None else np.asarray(jaxlin.shuffle.permutation(key, n))
    start = 0
    while start < n:
        idx = order[start : min(start + batch_size, n)]
        yield X[idx], y[idx]
        start += batch_size


def init_params_after(key, num_inputs, sigma=0.01):
    w = jax.random.normal(key, (num_inputs, 1))
    return {"b": jnp.zeros((1,)), "w": w * sigma}


def linreg_einsum(params, X):
    return jnp.einsum("nd,do->no", X, params["w"]) + params["b"]


def squared_loss_method(y_hat, y):
    return ((y_hat - jnp.reshape(y, y_hat.shape)) ** 2).mean() / 2


def sgd_comprehension(params, grads, lr):
    return {name: params[name] - lr * grads[name] for name in params}


def step_through_a_lambda(params, X, y, lr):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(p, X, y))(params)  # noqa: F821
    return sgd(params, grads, lr), loss  # noqa: F821


def train_keys_first(params, train_data, val_data, lr, num_epochs, batch_size, key):
    keys = [jax.random.fold_in(key, epoch) for epoch in range(num_epochs)]
    for epoch_key in keys:
        for X, y in data_iter(train_data[0], train_data[1], batch_size, epoch_key):  # noqa: F821
            params = train_step(params, X, y, lr)[0]  # noqa: F821
        print("val loss", loss_fn(params, *val_data))  # noqa: F821
    return params


CORRECT = {
    "jnp.dot, a flat noise reshaped": (synthetic_data_dot, "synthetic_data"),
    "a while loop over numpy indices": (data_iter_while, "data_iter"),
    "sigma applied after the draw": (init_params_after, "init_params"),
    "einsum": (linreg_einsum, "linreg"),
    "array methods": (squared_loss_method, "squared_loss"),
    "a dict comprehension": (sgd_comprehension, "sgd"),
    "the loss in a lambda": (step_through_a_lambda, "train_step"),
    "the epoch keys first": (train_keys_first, "train"),
}

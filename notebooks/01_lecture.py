# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Linear regression from scratch, in JAX
#
# The d2l lecture "Linear Regression Implementation from Scratch" (sections
# 3.2-3.4), cell by cell, with every PyTorch object replaced by a pure function
# from `jaxlin`. We build
#
# - the data pipeline,
# - the model,
# - the loss function,
# - the minibatch stochastic gradient descent optimizer,
#
# relying only on arrays and automatic differentiation. The difference from
# the lecture: nothing is stored in objects and nothing changes in place.
# Randomness comes from explicit keys, parameters are a small dictionary that
# functions take and return, and gradients are values returned by `jax.grad`.

# %%
# %matplotlib inline
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

import jaxlin
from jaxlin.plot import plot_history

print("jax", jax.__version__, "on", jax.default_backend())

# %% [markdown]
# ## Generating the dataset
#
# We construct an artificial dataset from a linear model with additive noise:
# 1000 training and 1000 validation examples, each with 2 features drawn from
# a standard normal distribution, so $X \in \mathbb{R}^{2000 \times 2}$. The
# true parameters are $\mathbf{w} = [2, -3.4]^\top$ and $b = 4.2$, and the labels
# are
#
# $$\mathbf{y} = X\mathbf{w} + b + \epsilon,$$
#
# where the noise $\epsilon$ is normal with mean 0 and standard deviation 0.01
# (think of it as measurement error).
#
# The lecture's `SyntheticRegressionData` draws from PyTorch's global random
# number generator and keeps `X` and `y` as attributes. Here
# `jaxlin.synthetic_splits` takes a **key** and returns arrays: the same key
# always gives the same data. We make one root key and split it into one key
# per purpose, so no key is ever used twice.

# %%
key = jax.random.key(0)
key_data, key_init, key_shuffle = jax.random.split(key, 3)

data = jaxlin.synthetic_splits(
    key_data, w=[2.0, -3.4], b=4.2, num_train=1000, num_val=1000, noise=0.01
)
X_train, y_train = data.train
X_val, y_val = data.val

# %% [markdown]
# Each row of `X` is one 2-dimensional example; each row of `y` is its
# 1-dimensional label (a scalar).

# %%
print("features:", X_train[0], "\nlabel:", y_train[0])

# %% [markdown]
# ## Reading the dataset
#
# Training makes several passes over the data, taking one minibatch at a time
# and updating the model with it. The lecture's from-scratch `get_dataloader`
# shuffles a list of indices with `random.shuffle` and yields slices of
# `batch_size` examples. `jaxlin.minibatches(X, y, batch_size, key=...)` is the
# same generator, except that the order comes from a key
# (`jaxlin.permutation(key, n)`), so an epoch's order can be reproduced exactly.
# We give it the key of epoch 0, `fold_in(key_shuffle, 0)`, which is what
# training will use for its first epoch.
# Without a key it reads the examples in order, as the lecture does for
# validation.
#
# Minibatches let us use parallel hardware: the model and the gradient are
# computed for all examples of a batch at once.

# %%
batch_size = 32
key_epoch0 = jaxlin.epoch_key(key_shuffle, 0)  # fold_in(key_shuffle, 0): epoch 0's shuffle
X, y = next(jaxlin.minibatches(X_train, y_train, batch_size, key=key_epoch0))
print("X shape:", X.shape, "\ny shape:", y.shape)

# %% [markdown]
# The feature batch has shape (batch size, number of features), the label
# batch (batch size, 1). Iterating further gives new batches until every
# example has been used exactly once; that is one epoch.
#
# This iterator is simple but slow: every batch is gathered by Python, one at a
# time, and sent to the model separately.

# %% [markdown]
# ## Data loader
#
# The lecture then replaces its iterator with PyTorch's built-in `DataLoader`,
# which shuffles and batches more efficiently. JAX has no data loader, and for
# data that fits on the device it does not need one: a shuffle is just an array
# of indices, and a whole epoch of batches is that array reshaped to
# `(steps, batch_size)`. `jaxlin.fit` with its default engine does exactly this
# on the device, inside one compiled program. Epoch `e` uses the order
# `permutation(fold_in(key, e), n)` (`jaxlin.epoch_key`), so every epoch is
# shuffled differently but reproducibly.

# %%
n = X_train.shape[0]
order = jaxlin.permutation(key_epoch0, n)  # epoch 0's order
steps = n // batch_size
batches = order[: steps * batch_size].reshape(steps, batch_size)  # one row per step
X, y = X_train[batches[0]], y_train[batches[0]]
print("X shape:", X.shape, "\ny shape:", y.shape)
print(f"{steps} full batches and a last batch of {n - steps * batch_size} examples")

# %% [markdown]
# It is the same first batch as the iterator's: both read the same keyed order.

# %%
X_it, _ = next(jaxlin.minibatches(X_train, y_train, batch_size, key=key_epoch0))
print("same first batch:", bool(jnp.array_equal(X, X_it)))

# %% [markdown]
# ## Defining the model
#
# Before optimizing the parameters by minibatch SGD we need some parameters.
# We draw the weights from a normal distribution with mean 0 and standard
# deviation `sigma = 0.01` (a value that often works well), and set the bias
# to 0. The lecture stores them as attributes of a `LinearRegressionScratch`
# object, with `requires_grad=True`; here `jaxlin.init_params` returns a plain
# dictionary (a *pytree*). JAX can differentiate with respect to any pytree,
# so nothing needs to be marked.

# %%
params = jaxlin.init_params(key_init, num_inputs=2, sigma=0.01)
print(jax.tree.map(jnp.shape, params))
print(params)

# %% [markdown]
# The model relates inputs and parameters to outputs: the matrix-vector product
# of the features $X$ and the weights $\mathbf{w}$, plus the offset $b$ for
# each example. $X\mathbf{w}$ is a vector and $b$ a scalar, so broadcasting
# adds $b$ to every component. The lecture's `forward` method becomes the
# function `jaxlin.linreg(params, X)`: the parameters are an argument, not
# `self`.

# %%
y_hat = jaxlin.linreg(params, X)
print("y_hat shape:", y_hat.shape)

# %% [markdown]
# ## Defining the loss function
#
# Updating the model needs the gradient of the loss, so we define the loss
# first: the squared loss $\frac{1}{2}(\hat{y} - y)^2$, averaged over the batch.
# `jaxlin.squared_loss` reshapes the true `y` to the shape of `y_hat` first, as
# the lecture does, so labels of shape `(n,)` and `(n, 1)` give the same value.
# `jaxlin.loss_fn(params, X, y)` composes the model and the loss: it is the
# function we differentiate.

# %%
print("loss:", jaxlin.squared_loss(y_hat, y))
print("same with y of shape (n,):", jaxlin.squared_loss(y_hat, y.ravel()))
print("loss_fn:", jaxlin.loss_fn(params, X, y))

# %% [markdown]
# ## Defining the optimization algorithm
#
# At each step we take one minibatch, estimate the gradient of the loss with
# respect to the parameters, and move the parameters a small step (the learning
# rate $\eta$) against it. Because the loss is a mean over the batch, the
# learning rate does not need adjusting for the batch size.
#
# The lecture's `SGD` class updates `param -= lr * param.grad` in place and has
# a `zero_grad` method, because PyTorch accumulates gradients in `param.grad`.
# In JAX, `jax.grad(loss_fn)` returns the gradient as a new pytree of the same
# shape as `params`, and nothing is stored anywhere, so there is nothing to
# reset. `jaxlin.sgd(params, grads, lr)` returns **new** parameters and leaves
# the old ones as they were. There is no `configure_optimizers` either: the
# optimizer is a function, and the learning rate is its argument.

# %%
grads = jax.grad(jaxlin.loss_fn)(params, X, y)
new_params = jaxlin.sgd(params, grads, lr=0.03)
print("grads:", jax.tree.map(jnp.ravel, grads))
print("old b:", params["b"], " new b:", new_params["b"])

# %% [markdown]
# ## Training
#
# The training loop:
#
# - initialize the parameters $(\mathbf{w}, b)$;
# - repeat until done:
#   - compute the gradient
#     $\mathbf{g} \leftarrow \partial_{(\mathbf{w}, b)} \frac{1}{|\mathcal{B}|}
#     \sum_{i \in \mathcal{B}} l(\mathbf{x}^{(i)}, y^{(i)}, \mathbf{w}, b)$;
#   - update the parameters $(\mathbf{w}, b) \leftarrow (\mathbf{w}, b) - \eta \mathbf{g}$.
#
# In each *epoch* we pass once through the whole training set. The number of
# epochs and the learning rate are hyperparameters, here 3 and 0.03; setting
# them takes some trial and error.
#
# One step of this loop, the lecture's `training_step` + `backward` +
# `optim.step`, is `jaxlin.train_step(params, X, y, lr)`: a pure function,
# compiled with `jax.jit`, that returns the new parameters and the batch loss.
# The lecture's `prepare_batch` has nothing to do here (a batch is already a
# pair of arrays), so it has no counterpart.

# %%
params_1, loss_1 = jaxlin.train_step(params, X, y, 0.03)
print("loss before the step:", loss_1)
print("loss after the step: ", jaxlin.loss_fn(params_1, X, y))

# %% [markdown]
# To measure the model's quality we also evaluate it on the validation set
# after each epoch. The lecture's `Trainer.fit` / `fit_epoch` becomes
# `jaxlin.fit(params, train, val, ...)`, which returns the trained parameters
# and a `History` of losses instead of changing a model object. By default each
# epoch (shuffle, batches, steps and validation loss) is one `lax.scan` inside
# one compiled program. The optional `callback` is called once per epoch with
# the new parameters and losses, which is how we report progress without
# reading anything back from the device at every step.
#
# In general we would use three splits: training, validation (to choose
# hyperparameters), and a test set kept for the final evaluation. We elide
# that for now.


# %%
def report(end):
    print(
        f"epoch {end.epoch + 1}: last train loss {end.train_loss[-1]:.6f}, "
        f"val loss {end.val_loss:.6f}"
    )


params, history = jaxlin.fit(
    params,
    data.train,
    data.val,
    lr=0.03,
    max_epochs=3,
    batch_size=32,
    key=key_shuffle,
    callback=report,
)

# %% [markdown]
# The lecture's `ProgressBoard` draws the curves while training runs; here we
# draw them afterwards from the returned `History`: the loss of every training
# batch (before its update) and the validation loss after each epoch.

# %%
ax = plot_history(history, title="linear regression, lr=0.03, batch 32")
plt.show()

# %% [markdown]
# Because we made the dataset ourselves, we know the true parameters and can
# compare them with the learned ones.

# %%
w_err, b_err = jaxlin.estimation_error(params, data.w, data.b)
print(f"error in estimating w: {w_err}")
print(f"error in estimating b: {b_err}")

# %% [markdown]
# They turn out to be very close. We should not take it for granted that the
# parameters can be recovered exactly; what we usually care about more is
# parameters that predict accurately. Even on hard optimization problems,
# stochastic gradient descent often finds very good solutions, partly because
# deep networks have many parameter settings that predict well.
#
# ## Summary
#
# We implemented and trained a linear model from scratch using only arrays and
# automatic differentiation. In the functional version every piece is a pure
# function: data from a key, parameters as a pytree, gradients as returned
# values, updates that return new parameters, and a training loop that JAX
# compiles into one program. The notebook `02_objects_to_functions` shows each
# object-oriented piece of the lecture next to its functional counterpart.

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
# 3.2-3.4), cell by cell. We write every piece ourselves in a few lines of JAX:
#
# - the data generator and the minibatch iterator,
# - the model and the loss function,
# - the minibatch stochastic gradient descent (SGD) update,
# - the training step and the training loop,
#
# relying only on arrays and automatic differentiation. After each piece we
# check it against the function of the same name in the `jaxlin` library: the
# library *is* this code, so after this notebook you can read any of it.
#
# The difference from the lecture's PyTorch code: nothing is stored in objects
# and nothing changes in place. Randomness comes from explicit **keys**,
# parameters are a small dictionary that functions take and return, and
# gradients are values returned by `jax.grad`.
#
# Inside each function, two comment lines (nbgrader's solution markers) enclose
# what the course's assignment leaves for students to write: `jaxlin
# assignment` makes the student notebook from this one.
#
# Two words we will use. JAX runs array operations on a **device**: the
# processor that holds the arrays and does the arithmetic, here the CPU, on
# other machines a GPU or TPU. The same code runs on any of them. And
# `jax.jit` **compiles** a function: more on that when we first use it.

# %%
# %matplotlib inline
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

import jaxlin

print("jax", jax.__version__, "on", jax.default_backend())


def check_same(name, mine, library, atol=1e-6):
    """Assert that our result and jaxlin's agree, leaf by leaf, and say how closely."""
    assert jax.tree.structure(mine) == jax.tree.structure(library), name
    pairs = zip(jax.tree.leaves(mine), jax.tree.leaves(library), strict=True)
    diff = max(float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b)))) for a, b in pairs)
    assert diff <= atol, f"{name}: ours and jaxlin's differ by {diff}"
    how = "bit for bit" if diff == 0 else f"to float rounding (largest difference {diff:.1e})"
    print(f"{name}: equal, {how}")


# %% [markdown]
# `check_same` asserts that two results (ours and the library's, or two
# engines') agree: exactly, or up to the last bits of a float, which can
# differ when the compiler orders the same arithmetic differently. A real
# difference would stop the notebook here.
#
# ## Generating the dataset
#
# We construct an artificial dataset from a linear model with additive noise:
# 1000 training and 1000 validation examples, each with 2 features drawn from
# a standard normal distribution. The true parameters are
# $\mathbf{w} = [2, -3.4]^\top$ and $b = 4.2$, and the labels are
#
# $$\mathbf{y} = X\mathbf{w} + b + \epsilon,$$
#
# where the noise $\epsilon$ is normal with mean 0 and standard deviation 0.01
# (think of it as measurement error).
#
# The lecture's `SyntheticRegressionData` draws from PyTorch's global random
# number generator. JAX has none: a random function takes a **key**, and the
# same key always gives the same numbers. We split one key in two, one for the
# features and one for the noise, so that no key is used twice.


# %%
def synthetic_data(key, w, b, num_examples, noise=0.01):
    """X ~ N(0, 1) of shape (n, d) and y = X w + b + noise, of shape (n, 1)."""
    ### BEGIN SOLUTION
    key_X, key_noise = jax.random.split(key)
    w = jnp.asarray(w).reshape(-1, 1)
    X = jax.random.normal(key_X, (num_examples, w.shape[0]))
    y = X @ w + b + noise * jax.random.normal(key_noise, (num_examples, 1))
    return X, y
    ### END SOLUTION


key = jax.random.key(0)
key_data, key_init, key_shuffle = jax.random.split(key, 3)  # one key per purpose

X_all, y_all = synthetic_data(key_data, [2.0, -3.4], 4.2, 2000)
X_train, y_train, X_val, y_val = X_all[:1000], y_all[:1000], X_all[1000:], y_all[1000:]
print("features:", X_train[0], "\nlabel:", y_train[0])

# %% [markdown]
# Each row of `X` is one 2-dimensional example; each row of `y` its label (a
# scalar). `jaxlin.synthetic_splits` is this draw of 2000 rows cut into a
# training and a validation split:

# %%
data = jaxlin.synthetic_splits(key_data, w=[2.0, -3.4], b=4.2, num_train=1000, num_val=1000)
check_same("synthetic data", ((X_train, y_train), (X_val, y_val)), (data.train, data.val))

# %% [markdown]
# ## Reading the dataset
#
# Training makes several passes over the data, taking one minibatch at a time
# and updating the model with it. The lecture's `get_dataloader` shuffles a
# list of indices with `random.shuffle` and yields slices of `batch_size`
# examples. Ours does the same with a keyed shuffle: `jaxlin.shuffle.permutation(key,
# n)` is a random order of `0 .. n-1` drawn from the key (like
# `jax.random.permutation`, but cheaper for large `n`). Without a key the
# examples are read in order, as the lecture reads its validation set. The
# last batch is smaller when the batch size does not divide `n`.


# %%
def data_iter(X, y, batch_size, key=None):
    """Minibatches (X_batch, y_batch) of one epoch: shuffled by key, in order without one."""
    ### BEGIN SOLUTION
    n = X.shape[0]
    order = jnp.arange(n) if key is None else jaxlin.shuffle.permutation(key, n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield X[idx], y[idx]
    ### END SOLUTION


batch_size = 32
key_epoch0 = jax.random.fold_in(key_shuffle, 0)  # the shuffling key of epoch 0
X, y = next(data_iter(X_train, y_train, batch_size, key_epoch0))
print("X shape:", X.shape, "\ny shape:", y.shape)

# %% [markdown]
# `jax.random.fold_in(key, i)` derives the key of item `i` (here: epoch `i`)
# from a key, so every epoch is shuffled differently and each shuffle can be
# reproduced. The feature batch has shape (batch size, number of features),
# the label batch (batch size, 1). Iterating further gives new batches until
# every example has been used exactly once: one **epoch**. `jaxlin.minibatches`
# is this iterator:

# %%
ours = list(data_iter(X_train, y_train, batch_size, key_epoch0))
library = list(jaxlin.minibatches(X_train, y_train, batch_size, key=key_epoch0))
print(f"{len(ours)} batches, the last of {ours[-1][0].shape[0]} examples")
check_same("one epoch of minibatches", ours, library)

# %% [markdown]
# This iterator is simple but slow for large data: Python gathers every batch
# and hands it to the model separately. The lecture then switches to
# PyTorch's `DataLoader`. JAX has no data loader, and for data that fits in
# the device's memory it does not need one: a shuffle is an array of indices,
# and a whole epoch of batches is that array reshaped to `(steps, batch_size)`,
# which a compiled program can read on the device without Python in between.
# `jaxlin.fit` does exactly that (below).
#
# ## Defining the model
#
# We need parameters before SGD can optimize them: weights drawn from a normal
# distribution with mean 0 and standard deviation `sigma = 0.01`, and a bias
# of 0. The lecture stores them as attributes with `requires_grad=True`; here
# they are a plain dictionary (a **pytree**: JAX can differentiate with respect
# to any nesting of dictionaries, lists and tuples of arrays, so nothing needs
# to be marked).


# %%
def init_params(key, num_inputs, sigma=0.01):
    """w ~ N(0, sigma^2) of shape (d, 1), b = 0 of shape (1,)."""
    ### BEGIN SOLUTION
    return {"w": sigma * jax.random.normal(key, (num_inputs, 1)), "b": jnp.zeros(1)}
    ### END SOLUTION


params = init_params(key_init, 2)
print(jax.tree.map(jnp.shape, params))
check_same("init_params", params, jaxlin.init_params(key_init, 2))

# %% [markdown]
# The model multiplies the features $X$ by the weights $\mathbf{w}$ and adds
# the offset $b$ to each example. $X\mathbf{w}$ has one entry per example and
# `b` one entry in all, so broadcasting adds `b` to every row. The lecture's
# `forward` method becomes a function of the parameters and the data: the
# parameters are an argument, not `self`.


# %%
def linreg(params, X):
    """The linear model X @ w + b: (n, d) -> (n, 1)."""
    ### BEGIN SOLUTION
    return X @ params["w"] + params["b"]
    ### END SOLUTION


y_hat = linreg(params, X)
print("y_hat shape:", y_hat.shape)
check_same("linreg", y_hat, jaxlin.linreg(params, X))

# %% [markdown]
# ## Defining the loss function
#
# Updating the model needs the gradient of the loss, so we define the loss
# first: the squared loss $\frac{1}{2}(\hat{y} - y)^2$, averaged over the
# batch. As in the lecture, the true `y` is reshaped to the shape of `y_hat`
# first, so that labels of shape `(n,)` and `(n, 1)` give the same value (the
# exercises in `03_exercises` show what goes wrong without it). `loss_fn`
# composes the model and the loss: it is the function we differentiate.


# %%
def squared_loss(y_hat, y):
    """Mean over the batch of (y_hat - y)^2 / 2."""
    ### BEGIN SOLUTION
    return jnp.mean((y_hat - y.reshape(y_hat.shape)) ** 2 / 2)
    ### END SOLUTION


def loss_fn(params, X, y):
    """The loss of the model's predictions on a batch, as a function of the params."""
    ### BEGIN SOLUTION
    return squared_loss(linreg(params, X), y)
    ### END SOLUTION


print("loss:", loss_fn(params, X, y))
check_same("squared_loss", squared_loss(y_hat, y), jaxlin.squared_loss(y_hat, y))
check_same("loss_fn", loss_fn(params, X, y), jaxlin.loss_fn(params, X, y))

# %% [markdown]
# ## Defining the optimization algorithm
#
# At each step we take one minibatch, compute the gradient of the loss with
# respect to the parameters, and move the parameters a small step (the
# learning rate $\eta$) against it. Because the loss is a mean over the batch,
# the learning rate does not need adjusting for the batch size.
#
# The lecture's `SGD` class updates `param -= lr * param.grad` in place and
# needs `zero_grad`, because PyTorch accumulates gradients in `param.grad`. In
# JAX, `jax.grad(loss_fn)` is a new function that returns the gradient as a
# pytree shaped like `params`; nothing is stored, so there is nothing to
# reset. The update returns **new** parameters and leaves the old ones as they
# were. `jax.tree.map` applies the update to every leaf (`w` and `b`) at once.


# %%
def sgd(params, grads, lr):
    """One SGD update of every parameter: param - lr * grad."""
    ### BEGIN SOLUTION
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)
    ### END SOLUTION


grads = jax.grad(loss_fn)(params, X, y)
new_params = sgd(params, grads, 0.03)
print("grads:", jax.tree.map(jnp.ravel, grads))
print("old b:", params["b"], " new b:", new_params["b"])
check_same("jax.grad of our loss", grads, jax.grad(jaxlin.loss_fn)(params, X, y))
check_same("sgd", new_params, jaxlin.sgd(params, grads, 0.03))

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
# One step of it, the lecture's `training_step` + `backward` + `optim.step`, is
# a pure function `(params, X, y, lr) -> (new params, loss)`.
# `jax.value_and_grad` gives the loss and its gradient in one pass.
#
# We wrap the step in **`jax.jit`**. The first call *traces* the Python
# function: it runs it once with placeholder arrays that have only a shape and
# a dtype, records the operations, and hands them to the XLA compiler, which
# turns them into one program for the device. Later calls with the same shapes
# run that compiled program directly, without running the Python code again.
# A step then costs one call instead of one Python dispatch per operation.


# %%
@jax.jit
def train_step(params, X, y, lr):
    """One minibatch SGD step: (params, X, y, lr) -> (new params, loss before the step)."""
    ### BEGIN SOLUTION
    loss, grads = jax.value_and_grad(loss_fn)(params, X, y)
    return sgd(params, grads, lr), loss
    ### END SOLUTION


params_1, loss_1 = train_step(params, X, y, 0.03)
print("loss before the step:", loss_1)
print("loss after the step: ", loss_fn(params_1, X, y))
check_same("train_step", train_step(params, X, y, 0.03), jaxlin.train_step(params, X, y, 0.03))

# %% [markdown]
# In each epoch we pass once through the training set, then measure the loss
# on the validation set. The number of epochs and the learning rate are
# hyperparameters, here 3 and 0.03; setting them takes some trial and error.
# (In general we would use three splits: training, validation to choose
# hyperparameters, and a test set kept for the final evaluation.) The loop is
# a function of everything it uses, the shuffling key included, and returns
# the trained parameters.


# %%
def train(params, train_data, val_data, lr, num_epochs, batch_size, key):
    """The training loop: epoch e shuffled by fold_in(key, e); prints each validation loss."""
    ### BEGIN SOLUTION
    (X_train, y_train), (X_val, y_val) = train_data, val_data
    for epoch in range(num_epochs):
        for X, y in data_iter(X_train, y_train, batch_size, jax.random.fold_in(key, epoch)):
            params, _ = train_step(params, X, y, lr)
        print(f"epoch {epoch + 1}: val loss {float(loss_fn(params, X_val, y_val)):.4f}")
    return params
    ### END SOLUTION


lr, num_epochs = 0.03, 3
params_ours = train(
    init_params(key_init, 2), (X_train, y_train), (X_val, y_val), lr, num_epochs, batch_size,
    key_shuffle,
)  # fmt: skip

# %% [markdown]
# That is the whole lecture. `jaxlin.fit` is this loop with its arguments
# checked and a `History` of every loss returned. It can run the same steps
# in several ways, called **engines**. `engine="step"` is exactly our loop: a
# jitted step called from Python, batch after batch.

# %%
params0 = jaxlin.init_params(key_init, 2)
fit_args = dict(lr=0.03, max_epochs=3, batch_size=32, key=key_shuffle)
params_step, _ = jaxlin.fit(params0, data.train, data.val, engine="step", **fit_args)
check_same("our training loop vs fit(engine='step')", params_ours, params_step)

# %% [markdown]
# The default engine, `"scan"`, takes the same steps on the same batches but
# moves the loops into the compiled program. **`jax.lax.scan(f, carry, xs)`**
# is a loop written as a function: it calls `f(carry, x)` for each slice `x`
# of `xs`, passing the new `carry` (here: the parameters) from one call to the
# next, and stacks what each call returns (here: the losses). Inside `jax.jit`
# the whole loop becomes one compiled program, so no Python runs between
# steps: without a callback, the shuffle, the batches, every step and the
# validation loss of all three epochs are one call. With the `callback` below
# it is one compiled call per epoch (the callback runs on the host between
# them, with that epoch's results), which is how we report progress without
# reading anything back from the device at every step.


# %%
def report(end):
    print(
        f"epoch {end.epoch + 1}: last train loss {end.train_loss[-1]:.4f}, "
        f"val loss {end.val_loss:.4f}"
    )


params, history = jaxlin.fit(params0, data.train, data.val, callback=report, **fit_args)
check_same("fit(engine='step') vs fit(engine='scan')", params_step, params)

# %% [markdown]
# The lecture's `ProgressBoard` draws the curves while training runs; here we
# draw them afterwards from the returned `History`: the loss of every training
# batch (before its update) and the validation loss after each epoch.

# %%
jaxlin.plot_history(history, title="linear regression, lr 0.03, batch 32")
plt.show()

# %% [markdown]
# Where did the parameters go? `jaxlin.trajectory` runs the same compiled
# steps and records the parameters after every one of them (one call, read
# once at the end). On the contours of the loss, SGD walks from the small
# random start near the origin towards the least-squares solution (the star),
# each minibatch nudging it in a slightly different direction.
# `04_jit_exploration` compares the paths of other batch sizes and learning
# rates.

# %%
path = jaxlin.trajectory(params0, data.train, **fit_args)
print("recorded steps:", path.shape[0] - 1, "- rows [w1, w2, b]; the last:", path[-1])
check_same("last recorded point vs fit", path[-1], jnp.append(params["w"], params["b"]))
jaxlin.plot.plot_trajectory({"batch 32, lr 0.03": path}, data.train, title="SGD path, 3 epochs")
plt.show()

# %% [markdown]
# Because we made the dataset ourselves, we know the true parameters and can
# compare them with the learned ones.

# %%
w_err, b_err = jaxlin.estimation_error(params, data.w, data.b)
val_floor = 0.01**2 / 2  # the loss of the true parameters: the label noise alone
print(f"error in estimating w: {w_err[0]:+.3f}, {w_err[1]:+.3f}")
print(f"error in estimating b: {float(b_err):+.3f}")
ratio = history.val_loss[-1] / val_floor
print(f"validation loss {history.val_loss[-1]:.2e}: {ratio:.0f} times the noise floor {val_floor}")

params_10, history_10 = jaxlin.fit(params0, data.train, data.val, **(fit_args | {"max_epochs": 10}))
largest_10 = jnp.max(jnp.abs(jnp.append(*jaxlin.estimation_error(params_10, data.w, data.b))))
print(f"10 epochs: largest error {float(largest_10):.1e}, val loss {history_10.val_loss[-1]:.2e}")

# %% [markdown]
# After 3 epochs the estimates are close but not accurate: each is off by a
# few percent of its value. Training has not finished: the validation loss is
# still far above the floor that the label noise sets,
# $0.01^2 / 2 = 5 \times 10^{-5}$ (the loss of the true parameters
# themselves), and the training curve above is still falling.
# With 10 epochs the loss reaches that floor and the errors shrink to the size
# the noise allows. In general we should not expect to recover the parameters
# exactly: what we usually care about is parameters that predict accurately,
# and on hard problems SGD often finds good predictors that are far from any
# "true" parameters.
#
# ## Summary
#
# We wrote linear regression in a few lines per piece, using only arrays and
# automatic differentiation, and checked that `jaxlin`'s functions of the same
# names compute exactly this. In the functional version every piece is a pure
# function: data from a key, parameters as a pytree, gradients as returned
# values, updates that return new parameters, and a training loop that JAX
# compiles into one program.
#
# Where to go next:
#
# - `02_objects_to_functions`: each object-oriented piece of the lecture
#   (`save_hyperparameters`, the global random generator, `zero_grad`) next to
#   its functional counterpart; what goes wrong when a jitted function is not
#   pure; timing a Python loop against `lax.scan`; many models at once with
#   `jax.vmap`, and per-example gradients.
# - `03_exercises`: the lecture's exercises answered in code (the last batch,
#   data that does not fit in memory, initialisation, Ohm's and Planck's laws,
#   second derivatives, learning rates, robust losses, shuffling).
# - `04_jit_exploration`: compile time against run time for each engine, what
#   makes `jax.jit` compile again, and how the batch size and the learning rate
#   shape the loss curve and SGD's path.

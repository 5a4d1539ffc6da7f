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
# # From objects to functions
#
# The d2l lecture is object-oriented: a `DataModule`, a `Module` and a
# `Trainer` hold state in attributes and change it in place, and methods are
# attached to classes after the fact. JAX asks for the opposite: **pure
# functions** that take all their inputs as arguments and return all their
# outputs. This notebook puts each object-oriented piece of the lecture next to
# its functional counterpart in `jaxlin`, and says what the change buys.
#
# PyTorch is not needed here: where the lecture's code relies on its object
# machinery, a few lines of plain Python imitate it.

# %%
# %matplotlib inline
import functools
import inspect
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxlin

key = jax.random.key(0)
key_data, key_init, key_shuffle, key_demo = jax.random.split(key, 4)
data = jaxlin.synthetic_splits(key_data)  # the lecture's 1000 + 1000 examples
X_train, y_train = data.train

# %% [markdown]
# ## 1. `save_hyperparameters` and `add_to_class` versus plain functions and closures
#
# The lecture's classes call `self.save_hyperparameters()`, which inspects the
# caller's frame and copies every `__init__` argument into an attribute, and
# they grow methods later with the decorator `@d2l.add_to_class(Cls)`. Here is
# the essence of both (d2l's versions do the same with more care):


# %%
class HyperParameters:
    def save_hyperparameters(self):
        """Copy the caller's arguments into attributes (d2l inspects the frame too)."""
        frame = inspect.currentframe().f_back
        for name, value in inspect.getargvalues(frame).locals.items():
            if name != "self" and not name.startswith("_"):
                setattr(self, name, value)


def add_to_class(cls):
    """Attach the decorated function to ``cls`` as a method."""

    def wrapper(fn):
        setattr(cls, fn.__name__, fn)

    return wrapper


class LinearRegressionScratch(HyperParameters):
    def __init__(self, num_inputs, lr, sigma=0.01):
        self.save_hyperparameters()
        self.w = np.random.normal(0, sigma, (num_inputs, 1))  # noqa: NPY002 (global RNG, on purpose)
        self.b = np.zeros(1)


@add_to_class(LinearRegressionScratch)
def forward(self, X):
    return X @ self.w + self.b


model = LinearRegressionScratch(2, lr=0.03)
print("attributes:", sorted(vars(model)))
print("forward:", model.forward(np.ones((1, 2))))

# %% [markdown]
# What the model computes now depends on hidden state: which attributes exist
# and which methods were attached, in what order cells were run. That is
# convenient in a notebook and hard for a compiler.
#
# In the functional version a hyperparameter is just an argument, and the
# state the object held (`w`, `b`) is a value that goes in and comes out:

# %%
params = jaxlin.init_params(key_init, num_inputs=2, sigma=0.01)  # was __init__
y_hat = jaxlin.linreg(params, jnp.ones((1, 2)))  # was model.forward(X)
print(inspect.signature(jaxlin.linreg))
print("linreg:", y_hat)

# %% [markdown]
# When a hyperparameter should be fixed once and then forgotten, as
# `self.lr` is, a **closure** (or `functools.partial`) captures it. The result
# is again a plain function, which `jax.jit` can compile; the captured value
# becomes a constant of the compiled program.


# %%
def make_update(lr):
    """An SGD update with the learning rate built in: ``update(params, X, y)``."""

    def update(params, X, y):
        grads = jax.grad(jaxlin.loss_fn)(params, X, y)
        return jaxlin.sgd(params, grads, lr)

    return update


update = jax.jit(make_update(lr=0.03))
same_update = jax.jit(functools.partial(jaxlin.train_step, lr=0.03))
Xb, yb = X_train[:32], y_train[:32]
print(
    "closure and partial agree:",
    bool(jnp.allclose(update(params, Xb, yb)["w"], same_update(params, Xb, yb)[0]["w"])),
)

# %% [markdown]
# ## 2. A global random number generator versus explicit keys
#
# `torch.randn` (like `np.random.normal` above) draws from one global generator
# whose hidden state advances at every call. Two identical calls give different
# numbers, and the numbers a function gets depend on everything that ran
# before it.

# %%
np.random.seed(0)  # noqa: NPY002 -- the legacy global RNG is the point here
print("global RNG, call 1:", np.random.normal(size=3))  # noqa: NPY002
print("global RNG, call 2:", np.random.normal(size=3))  # noqa: NPY002

# %% [markdown]
# A JAX random function has no hidden state: it takes a **key**, and the same
# key always gives the same numbers. That makes results reproducible, but it
# also means that *re-using a key repeats the "random" numbers*:

# %%
a = jax.random.normal(key_demo, (3,))
b = jax.random.normal(key_demo, (3,))  # a bug: the same key again
print("key re-used:", a, b)
print("same numbers:", bool(jnp.array_equal(a, b)))

# %% [markdown]
# The fix is to derive a fresh key for every use. `jax.random.split` makes
# several independent keys from one; `jax.random.fold_in(key, i)` derives the
# key for item `i` (an epoch, a step, a model) without keeping any state, which
# is how `jaxlin` shuffles epoch `e` with `fold_in(key, e)`.

# %%
k1, k2 = jax.random.split(key_demo)
print("split:   ", jax.random.normal(k1, (3,)), jax.random.normal(k2, (3,)))
for epoch in range(3):
    print(f"fold_in {epoch}:", jax.random.normal(jax.random.fold_in(key_demo, epoch), (3,)))
print(
    "epoch 0 again gives the same numbers:",
    bool(
        jnp.array_equal(
            jax.random.normal(jaxlin.shuffle.epoch_key(key_demo, 0), (3,)),
            jax.random.normal(jax.random.fold_in(key_demo, 0), (3,)),
        )
    ),
)
same_key = jnp.array_equal(
    jax.random.key_data(k1), jax.random.key_data(jax.random.fold_in(key_demo, 0))
)
print("split's first key is fold_in(key, 0):", bool(same_key))

# %% [markdown]
# Both functions hash the parent key with a counter, so a child made by one can
# equal a child made by the other: the last line says whether `split`'s first
# key and `fold_in(key, 0)` coincide with this JAX. That is not a re-used key
# within one scheme, but it is a reason to derive all the children of a key
# with **one** scheme: use `split` once at the top (data, init, shuffle), then
# `fold_in` on the shuffle key for its epochs, as `jaxlin` does.

# %% [markdown]
# ## 3. `zero_grad` and `param -= lr * grad` versus returned values
#
# PyTorch's `backward()` *adds* the new gradient to `param.grad`, so the
# lecture's `SGD` needs `zero_grad` before every backward pass, and `step`
# changes the parameters in place. Here is that behaviour in a few lines, and
# the bug it invites: forget `zero_grad` and the second step uses the sum of
# two gradients.


# %%
class Param:
    def __init__(self, value):
        self.value, self.grad = np.array(value, dtype=float), None


def backward(p, X, y):
    """Accumulate d(loss)/dw of the loss 0.5 * mean((X w - y)^2) into p.grad, like torch."""
    g = X.T @ (X @ p.value - y) / len(y)
    p.grad = g if p.grad is None else p.grad + g


Xn, yn = np.asarray(Xb), np.asarray(yb)
p = Param(np.zeros((2, 1)))
backward(p, Xn, yn)
first = p.grad.copy()
backward(p, Xn, yn)  # no zero_grad in between
print("first grad:   ", first.ravel())
print("without zero_grad, second step sees:", p.grad.ravel())
p.value -= 0.03 * p.grad  # in place: the old value is gone

# %% [markdown]
# In JAX, `jax.grad` returns the gradient as a fresh value each call; nothing
# is stored, so there is nothing to zero. `jaxlin.sgd` returns a **new** params
# pytree and leaves the old one untouched. JAX arrays cannot be changed in
# place at all; `x.at[i].set(v)` returns a modified copy.

# %%
grads = jax.grad(jaxlin.loss_fn)(params, Xb, yb)
again = jax.grad(jaxlin.loss_fn)(params, Xb, yb)
print("grad twice, same value:", bool(jnp.array_equal(grads["w"], again["w"])))
new_params = jaxlin.sgd(params, grads, 0.03)
print("old w:", params["w"].ravel(), " new w:", new_params["w"].ravel())
try:
    params["w"][0, 0] = 1.0
except TypeError as err:
    print("in-place update refused:", type(err).__name__)
print(".at[].set copy:", params["w"].at[0, 0].set(1.0).ravel(), "original:", params["w"].ravel())

# %% [markdown]
# Because the step is a pure function of `(params, X, y, lr)`, it can be
# compiled, differentiated, vectorised, and replayed exactly: the same inputs
# always give the same new parameters.
#
# ## 4. A Python loop versus `jax.jit` and `lax.scan`
#
# The lecture's `fit_epoch` is a Python loop that, at every step, calls the
# model, the loss, `backward` and `step`: each operation is dispatched from
# Python one at a time. Three versions of one epoch (1000 examples, batches of
# 32, in order):
#
# 1. eager: the unjitted step in a Python loop;
# 2. `jaxlin.train_step`: the same step compiled with `jax.jit`, still in a Python loop;
# 3. `lax.scan`: the whole loop traced once and compiled into a single program.
#
# To time only the training, the batches are cut beforehand (indexing `Xs[i]`
# inside the loop would add one more dispatched operation per step), and
# every version is warmed up first (its compilation waited for with
# `jax.block_until_ready`), then timed several times; we keep the median.
# JAX dispatches work asynchronously: a call returns before the device has
# finished, so a timer must wait for the result, or it measures only the
# dispatch.

# %%
steps = X_train.shape[0] // 32
Xs = X_train[: steps * 32].reshape(steps, 32, 2)
ys = y_train[: steps * 32].reshape(steps, 32, 1)
batches = list(zip(list(Xs), list(ys), strict=True))  # sliced once, before any timing
lr = jnp.float32(0.03)


def eager_step(params, X, y, lr):
    loss, grads = jax.value_and_grad(jaxlin.loss_fn)(params, X, y)
    return jaxlin.sgd(params, grads, lr), loss


def loop_epoch(step, params):
    for X, y in batches:
        params, _ = step(params, X, y, lr)
    return params


@jax.jit
def scan_epoch(params, Xs, ys, lr):
    def body(params, batch):
        return jaxlin.train_step(params, *batch, lr)

    return jax.lax.scan(body, params, (Xs, ys))


def timed(fn, *args, repeats=5):
    """Median wall time of ``fn(*args)`` over ``repeats`` calls, after a warm-up call."""
    jax.block_until_ready(fn(*args))  # compile and warm up, and wait for it
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


times = {
    "eager loop": timed(loop_epoch, eager_step, params, repeats=3),
    "jit step in a loop": timed(loop_epoch, jaxlin.train_step, params),
    "lax.scan epoch": timed(scan_epoch, params, Xs, ys, lr),
}
previous = None
for name, t in times.items():
    faster = "" if previous is None else f"  ({previous / t:.0f}x faster than the row above)"
    print(f"{name:20s} {1e3 * t:8.2f} ms per epoch{faster}")
    previous = t
p_loop = loop_epoch(jaxlin.train_step, params)
p_scan, _ = scan_epoch(params, Xs, ys, lr)
print("same parameters:", bool(jnp.allclose(p_loop["w"], p_scan["w"], atol=1e-6)))

# %% [markdown]
# The ratios printed above depend on the machine and move from run to run,
# but the order does not: the eager loop dispatches every operation of every
# step from Python; the jitted step dispatches one compiled call per step;
# the scan dispatches one call per epoch. Each row is faster than the one
# above it, because on a problem this small the dispatch, not the
# arithmetic, is most of the cost of a step.
#
# `jaxlin.fit(engine="scan")` goes one step further: the shuffle, the batch
# gather and the validation loss are inside the compiled program too, and
# without a callback all epochs are a single call. The notebook
# `04_jit_exploration` separates compile time from run time.
#
# ## 5. Why pure: what `jax.jit` does to an impure function
#
# `jax.jit` runs the Python function **once**, while tracing, with abstract
# arrays, and from then on runs only the compiled program it recorded. So
# anything the function does besides computing its result from its
# arguments happens at trace time, not at every call. Three classic
# surprises, each with its fix.
#
# **A `print` runs only while tracing**, and shows a tracer, not a value.
# `jax.debug.print` is compiled into the program and prints at every call.


# %%
@jax.jit
def noisy_square(x):
    print("print:", x)  # Python: runs once, while tracing
    jax.debug.print("jax.debug.print: {}", x)  # in the program: runs at every call
    return x * x


for value in (1.0, 2.0, 3.0):
    noisy_square(jnp.float32(value))
jax.effects_barrier()  # wait for the debug prints of the calls above

# %% [markdown]
# **A global is frozen into the program.** Its value at trace time becomes a
# constant; changing the global later changes nothing, as long as the
# arguments' shapes stay the same (the cached program is reused). Pass it as
# an argument instead: then each call uses the value it is given.

# %%
scale = 2.0


@jax.jit
def scaled(x):
    return scale * x  # reads the global once, while tracing


@jax.jit
def scaled_pure(x, scale):
    return scale * x


print("global 2.0:", scaled(jnp.float32(1.0)))
scale = 3.0
print("global set to 3.0, still:", scaled(jnp.float32(1.0)))
print("as an argument:", scaled_pure(jnp.float32(1.0), 3.0))

# %% [markdown]
# **A Python `if` on a traced value fails.** While tracing, `x > 0` is an
# abstract boolean with no value yet, so Python cannot choose a branch. Either
# compute both sides and select (`jnp.where`), or let the program branch with
# `lax.cond`, which compiles both branches and picks one at run time.

# %%
try:

    @jax.jit
    def relu_python_if(x):
        if x > 0:
            return x
        return jnp.zeros_like(x)

    relu_python_if(jnp.float32(-1.0))
except jax.errors.TracerBoolConversionError as err:
    print("Python if on a traced value:", type(err).__name__)


@jax.jit
def relu_cond(x):
    return jax.lax.cond(x > 0, lambda x: x, jnp.zeros_like, x)


print("lax.cond:", relu_cond(jnp.float32(-1.0)), relu_cond(jnp.float32(2.0)))
print("jnp.where:", jax.jit(lambda x: jnp.where(x > 0, x, 0.0))(jnp.float32(2.0)))

# %% [markdown]
# The same rules explain the rest of `jaxlin`'s design: the learning rate is
# an argument, not a global; the random key is an argument, not hidden state;
# and a Python `if` is used only on values fixed at trace time (shapes, the
# batch size, `gradient_clip_val is None`), never on array values.
#
# ## 6. `jax.vmap`: many models at once
#
# A pure training function can be vectorised. `jaxlin.make_train(config)`
# returns the whole run of a `TrainConfig` as a pure function,
# `train(params, data, val, key, lr)`, the program behind `fit`'s scan engine;
# `jax.vmap` over its parameters, shuffling key and learning rate (the
# `in_axes` below: `0` for those, `None` for the data that all models share)
# turns it into a function that trains a whole batch of models, each with its
# own initialisation, shuffle and learning rate, in one compiled call. Here:
# 16 learning rates, 3 epochs.

# %%
num_models = 16
lrs = jnp.logspace(-3, 0, num_models, dtype=jnp.float32)
init_keys = jax.random.split(key_init, num_models)
shuffle_keys = jax.random.split(key_shuffle, num_models)
params_batch = jax.vmap(lambda k: jaxlin.init_params(k, 2))(init_keys)

train = jaxlin.make_train(jaxlin.TrainConfig(batch_size=32, max_epochs=3))
train_many = jax.jit(jax.vmap(train, in_axes=(0, None, None, 0, 0)))
trained, (losses, val_losses) = train_many(
    params_batch, (X_train, y_train), data.val, shuffle_keys, lrs
)
print(f"{num_models} models trained at once; losses {losses.shape}, val {val_losses.shape}")
print("w of the model with lr=1.0:", trained["w"][-1].ravel())

# %%
fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
for epoch in range(3):
    ax.plot(lrs, val_losses[:, epoch], "o-", label=f"after epoch {epoch + 1}")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("learning rate")
ax.set_ylabel("validation loss")
ax.set_title(f"{num_models} models trained in one vmapped call")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# Each model is the model `fit` would train alone with the same key and
# learning rate (to float rounding); check one:

# %%
i = 8
alone, _ = jaxlin.fit(
    jax.tree.map(lambda x: x[i], params_batch),
    data.train,
    data.val,
    lr=float(lrs[i]),
    max_epochs=3,
    batch_size=32,
    key=shuffle_keys[i],
)
print("lr", float(lrs[i]), "vmapped w:", trained["w"][i].ravel(), " fit alone:", alone["w"].ravel())
difference = float(jnp.max(jnp.abs(trained["w"][i] - alone["w"])))
assert difference < 1e-5
print(f"largest difference: {difference:.1e}")

# %% [markdown]
# ## 7. Per-example gradients: `jax.vmap(jax.grad(...))`
#
# `jax.grad(loss_fn)` gives the gradient of the *mean* loss over a batch. Some
# methods need the gradient of each example on its own: clipping each
# example's gradient before averaging (differentially private SGD), spotting
# the examples that pull hardest, or measuring how noisy a minibatch gradient
# is. In PyTorch that takes a loop over the batch or special hooks; in JAX it
# is two transformations composed: `jax.grad` of the loss of **one** example,
# and `jax.vmap` to map it over the batch (`in_axes=(None, 0, 0)`: the params
# are shared, `X` and `y` are mapped along their first axis).


# %%
def example_loss(params, x, y):
    """The loss of a single example: x of shape (d,), y of shape (1,)."""
    return jaxlin.loss_fn(params, x[None, :], y[None, :])


per_example = jax.jit(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0)))
grads_each = per_example(params, Xb, yb)
print("per-example gradients:", jax.tree.map(jnp.shape, grads_each))

batch_grad = jax.grad(jaxlin.loss_fn)(params, Xb, yb)
mean_of_each = jax.tree.map(lambda g: g.mean(axis=0), grads_each)
print(
    "their mean is the batch gradient:",
    all(jax.tree.leaves(jax.tree.map(jnp.allclose, mean_of_each, batch_grad))),
)
norms = jnp.sqrt(sum(jnp.sum(g.reshape(32, -1) ** 2, axis=1) for g in jax.tree.leaves(grads_each)))
print(f"gradient norms over the batch: min {norms.min():.2f}, max {norms.max():.2f}")

# %% [markdown]
# ## 8. What `jax.jit` sees: the jaxpr of the train step
#
# `jax.jit` does not run the Python code of a step; it *traces* it once with
# abstract arrays (only shapes and dtypes) and records the operations as a
# **jaxpr**, the program XLA compiles. `jax.make_jaxpr` shows it. Read it top
# to bottom: the forward pass `X @ w + b` (`dot_general`, then `add` of the
# bias after a `broadcast_in_dim`), the loss (`sub`, `integer_pow`,
# `reduce_sum`, `div`), the backward pass that `jax.grad` wrote out (`mul`,
# `dot_general` again for the gradient of `w`, a `transpose`, `reduce_sum` for
# the gradient of `b`), and the update (`mul` by the learning rate, `sub`). No
# objects, no hidden state: arrays in, arrays out.

# %%
print(jax.make_jaxpr(jaxlin.train_step)(params, Xb, yb, 0.03).pretty_print(use_color=False))

# %% [markdown]
# The step has no clipping code at all: `train_step` only builds it when it is
# given a `gradient_clip_val`. With one, the program grows by the global norm
# (`square`, `sqrt`) and the choice of whether to scale (`gt`, `and`, and a
# `select_n`, which is what `jnp.where` becomes). The names of the primitives
# in each program:


# %%
def primitives(jaxpr):
    """The names of the primitives in a jaxpr, including those of nested programs."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None:
                names |= primitives(getattr(inner, "jaxpr", inner))
    return names


plain = primitives(jax.make_jaxpr(jaxlin.train_step)(params, Xb, yb, 0.03).jaxpr)
clipped = primitives(jax.make_jaxpr(jaxlin.train_step)(params, Xb, yb, 0.03, 1.0).jaxpr)
print("without clipping:", sorted(plain - {"jit"}))
print("clipping adds:   ", sorted(clipped - plain))
assert {"dot_general", "integer_pow", "reduce_sum"} <= plain and "select_n" not in plain
assert {"sqrt", "select_n"} <= clipped - plain

# %% [markdown]
# ## Summary
#
# | lecture (objects) | jaxlin (functions) | why |
# |---|---|---|
# | `save_hyperparameters` | arguments, closures, `partial` | inputs are in the signature |
# | `add_to_class` | plain module-level functions | no order-dependent class surgery |
# | global RNG (`torch.randn`) | keys, `split`, `fold_in` | reproducible; never re-use a key |
# | `zero_grad`, `param.grad` | `jax.grad` returns the gradient | nothing accumulates |
# | `param -= lr * grad` | `sgd` returns new params | old values stay valid; steps can be replayed |
# | Python training loop | `jax.jit`, `lax.scan` | one compiled program, no per-step dispatch |
# | `print`, globals, `if` in a step | `jax.debug.print`, arguments, `lax.cond` | jit traces once |
# | one model per run | `jax.vmap` | many models in one call |
# | a loop over examples | `jax.vmap(jax.grad(...))` | per-example gradients in one call |

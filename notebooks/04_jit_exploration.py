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
# # Exploring `jax.jit`
#
# `jaxlin.fit` has four engines that take the same SGD steps on the same
# batches, run in four ways:
#
# - `"eager"`: the lecture's Python loop, every operation dispatched on its own;
# - `"step"`: the same loop calling a `jax.jit`-compiled train step;
# - `"scan"` (the default): each epoch (shuffle, batches, steps, validation)
#   is a `lax.scan` inside one compiled program;
# - `"affine"`: compiled like `"scan"`, but an epoch's steps are composed as
#   affine maps in a parallel prefix (for a few features only).
#
# We time them on the lecture's problem and on a larger one, with the time
# spent **compiling** shown apart from the time spent **running**; then we look
# at what makes a jitted function compile again, and at how the batch size and
# the learning rate shape the loss curve and the path SGD takes.
#
# Set `JAXLIN_NB_SMALL=1` to shrink the larger problem (the test suite does).

# %%
# %matplotlib inline
import contextlib
import io
import logging
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxlin
from jaxlin.plot import plot_history

SMALL = os.environ.get("JAXLIN_NB_SMALL", "0") == "1"
LARGE_N = 20_000 if SMALL else 100_000  # training examples of the larger problem
EAGER_STEPS = 10 if SMALL else 20  # the eager engine is timed on this many steps only

print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
print(f"larger problem: {LARGE_N:,} examples" + (" (JAXLIN_NB_SMALL=1)" if SMALL else ""))

# %% [markdown]
# ## Compile time versus run time
#
# JAX reports every XLA compilation through `jax.monitoring`; the context
# manager below adds up their durations. The first call of a jitted function
# traces and compiles it and then runs; later calls with the same shapes and
# types reuse the compiled program and only run.

# %%
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compile_clock():
    """Yields [number of compilations, seconds spent compiling] inside the block."""
    stats = [0, 0.0]

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            stats[0] += 1
            stats[1] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield stats
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def measure(run, repeats=3):
    """The first call of ``run()`` (compile + run), then the median of ``repeats`` more."""
    with compile_clock() as stats:
        start = time.perf_counter()
        jax.block_until_ready(run())
        first = time.perf_counter() - start
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        samples.append(time.perf_counter() - start)
    return {"first": first, "compiles": stats[0], "compile": stats[1], "run": np.median(samples)}


key_data, key_init, key_shuffle = jax.random.split(jax.random.key(0), 3)
seed = jaxlin.synthetic_splits(key_data)  # 1000 + 1000 examples
large = jaxlin.synthetic_splits(key_data, num_train=LARGE_N, num_val=10_000)
params0 = jaxlin.init_params(key_init, 2)


def run_fit(data, engine, num_train=None, epochs=1):
    X, y = data.train
    if num_train is not None:
        X, y = X[:num_train], y[:num_train]

    def run():
        params, _ = jaxlin.fit(
            params0, (X, y), data.val, lr=0.03, max_epochs=epochs, batch_size=32,
            key=key_shuffle, engine=engine,
        )  # fmt: skip
        return params

    return run


# %% [markdown]
# On the lecture's problem: one epoch of 1000 examples in batches of 32 (32
# steps, the last one of 8 examples).

# %%
ENGINES = ("eager", "step", "scan", "affine")
rows = []
for engine in ENGINES:
    repeats = 1 if engine == "eager" else 5  # eager: slow, and its spread is small beside it
    rows.append(("lecture (1,000)", engine, measure(run_fit(seed, engine), repeats), 1.0))

# %% [markdown]
# On the larger problem a whole eager epoch would take far longer than the
# other engines' (the estimate printed below says how long), so it runs only
# `EAGER_STEPS` steps and its time per epoch is an **estimate**: the time of
# those steps scaled to a whole epoch (every step does the same work,
# whatever the size of the data). It is labelled as such below. The other
# engines run the whole epoch.

# %%
steps_large = -(-LARGE_N // 32)
m = measure(run_fit(large, "eager", num_train=EAGER_STEPS * 32), repeats=1)
rows.append((f"larger ({LARGE_N:,})", "eager", m, steps_large / EAGER_STEPS))
for engine in ("step", "scan", "affine"):
    rows.append((f"larger ({LARGE_N:,})", engine, measure(run_fit(large, engine)), 1.0))

print(
    f"{'problem':18s} {'engine':6s} {'first call':>10s} {'compiles':>8s} {'compile':>9s} "
    f"{'run/epoch':>10s} {'per step':>9s}"
)
for problem, engine, m, scale in rows:
    steps = 32 if problem.startswith("lecture") else steps_large
    run = m["run"] * scale
    note = f"  estimate: {EAGER_STEPS} steps timed, x{scale:.0f}" if scale != 1.0 else ""
    print(
        f"{problem:18s} {engine:6s} {m['first']:9.3f}s {m['compiles']:8d} {m['compile']:8.3f}s "
        f"{run:9.4f}s {1e6 * run / steps:7.1f}µs{note}"
    )

# %%
fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
labels = [f"{p.split()[0]}\n{e}" + ("\n(estimate)" if s != 1.0 else "") for p, e, _, s in rows]
compile_s = [m["compile"] for _, _, m, _ in rows]
run_s = [m["run"] * s for _, _, m, s in rows]
x = np.arange(len(rows))
ax.bar(x - 0.2, compile_s, 0.4, label="compile (first call)")
bars = ax.bar(x + 0.2, run_s, 0.4, label="run, one epoch")
for bar, (_, _, _, scale) in zip(bars, rows, strict=True):
    if scale != 1.0:
        bar.set_hatch("//")
        bar.set_alpha(0.6)
        bar.set_label(f"run, one epoch: estimate from {EAGER_STEPS} steps")
ax.set_xticks(x, labels)
ax.set_yscale("log")
ax.set_xlabel("problem and engine")
ax.set_ylabel("seconds")
ax.set_title("compile time versus run time")
ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
plt.show()

# %% [markdown]
# What the numbers show (they vary with the machine, but not their order):
#
# - **eager** compiles too: every primitive (`dot_general`, `sub`, ...) is
#   compiled once per shape into a tiny program, hence dozens of small
#   compilations. After that each step still pays Python dispatch for every
#   operation, so it is by far the slowest per step.
# - **step** compiles one program per batch shape (the full batches and the
#   smaller last one; a new data size also compiles the data loader's
#   shuffle) and then pays a few dispatches per step: the batch gather of the
#   Python data loader and the step.
# - **scan** and **affine** compile the whole run once. On the lecture's
#   problem compiling costs far more than running an epoch (orders of
#   magnitude), so for small problems the compile time is what you wait for.
#   On the larger problem the table shows compiling still costing many
#   epochs; the compiled engines pay it once, and from then on their cost per
#   step is the lowest because nothing goes back to Python between steps, so
#   the longer the run, the more their per-step cost is what matters.
#
# ## What triggers a recompile
#
# `jax.jit` caches compiled programs by the *abstract* signature of the
# arguments: shapes, dtypes, weak types and the values of static arguments.
# Any change there means a new trace and a new compilation. We count them
# around calls of a freshly jitted train step (a new `jax.jit` has an empty
# cache, so its first call compiles), with all inputs made beforehand.
#
# The step is `jaxlin.train.step`, from `jaxlin/train.py`: one minibatch SGD
# step as a pure function `(params, X, y, lr) -> (new params, loss)`, the
# loss and its gradient from `jax.value_and_grad`, then the update
# `w - lr * grad`. It is not jitted itself. `jaxlin.train_step`, which the
# lecture's loop calls, checks its arguments and runs a jitted copy of it
# whose cache every caller shares, so it may have compiled already; wrapping
# `jaxlin.train.step` in a new `jax.jit` gives a cache that starts empty.

# %%
X, y = seed.train
Xb, yb = X[:32], y[:32]
X_last, y_last = X[992:], y[992:]  # the last batch: 8 examples
lr_a, lr_b = jnp.float32(0.03), jnp.float32(0.1)
fresh_step = jax.jit(lambda params, X, y, lr: jaxlin.train.step(params, X, y, lr))
counts = {}


def recompiles(label, fn):
    with compile_clock() as stats:
        jax.block_until_ready(fn())
    counts[label] = stats[0]
    print(f"{label:45s} recompiles: {stats[0]}")


recompiles("first call: lr a float32 array", lambda: fresh_step(params0, Xb, yb, lr_a))
recompiles("same shapes, same lr", lambda: fresh_step(params0, Xb, yb, lr_a))
recompiles("same shapes, another lr (a traced argument)", lambda: fresh_step(params0, Xb, yb, lr_b))
recompiles("a new shape (the last batch of 8)", lambda: fresh_step(params0, X_last, y_last, lr_a))
recompiles("that shape again", lambda: fresh_step(params0, X_last, y_last, lr_a))
recompiles("lr as a Python float (weak type)", lambda: fresh_step(params0, Xb, yb, 0.03))
recompiles("another Python float", lambda: fresh_step(params0, Xb, yb, 0.05))
assert counts["first call: lr a float32 array"] >= 1
assert counts["same shapes, another lr (a traced argument)"] == 0
assert counts["a new shape (the last batch of 8)"] >= 1 and counts["that shape again"] == 0
assert counts["lr as a Python float (weak type)"] >= 1 and counts["another Python float"] == 0

# %% [markdown]
# A traced learning rate can change freely. A new batch shape compiles once
# and is then cached. A Python float is a *weakly typed* scalar, a different
# abstract type from a `float32` array, so switching from one to the other
# compiles once more, and different Python floats then share that program.
#
# A Python scalar that is **static** (marked in `static_argnames`, or captured
# by a closure that is jitted anew) is part of the cache key: every new value
# compiles again. This is the classic mistake when sweeping a hyperparameter:


# %%
def step_with_lr(lr):
    """A closure over a Python lr, jitted anew for each value: one compile per value."""

    def step(params, X, y):
        grads = jax.grad(jaxlin.loss_fn)(params, X, y)
        return jaxlin.sgd(params, grads, lr)

    return jax.jit(step)


static_step = jax.jit(
    lambda params, X, y, lr: jaxlin.sgd(params, jax.grad(jaxlin.loss_fn)(params, X, y), lr),
    static_argnames="lr",
)
for lr in (0.01, 0.02, 0.03):
    recompiles(f"closure jitted anew, lr={lr}", lambda lr=lr: step_with_lr(lr)(params0, Xb, yb))
for lr in (0.01, 0.02, 0.01):
    recompiles(f"static_argnames lr={lr}", lambda lr=lr: static_step(params0, Xb, yb, lr=lr))

# %% [markdown]
# The static `lr=0.01` compiled once, and its second use found the program in
# the cache; each closure compiled anew.
#
# **How to see it.** Besides counting with `jax.monitoring`, JAX can log every
# compilation (`jax.log_compiles()`), and `jax_explain_cache_misses` says *why*
# the cache missed: which argument changed, and how. Both write to JAX's log
# (the `logging` module, which a notebook shows on stderr); here we capture the
# log and print it.


# %%
@contextlib.contextmanager
def jax_log():
    """Collects what JAX logs inside the block into a string buffer."""
    buffer, logger = io.StringIO(), logging.getLogger("jax")
    handler = logging.StreamHandler(buffer)
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


X_odd, y_odd = X[:16], y[:16]
with jax_log() as log, jax.log_compiles():
    jaxlin.train_step(params0, X_odd, y_odd, lr_a)  # a new shape: logged
print("log_compiles:\n ", "\n  ".join(log.getvalue().strip().splitlines()[:3]))
jax.config.update("jax_explain_cache_misses", True)
try:
    with jax_log() as log:
        jaxlin.train_step(params0, X_odd, y_odd, lr_a.astype(jnp.bfloat16))  # a new dtype
finally:
    jax.config.update("jax_explain_cache_misses", False)
print("explain_cache_misses:\n ", "\n  ".join(log.getvalue().strip().splitlines()[:8]))

# %% [markdown]
# `fit`'s scan engine is written so that nothing recompiles between epochs or
# between calls with new values: `lr` and the clip norm are traced, the shuffle
# key is an argument, and the epoch's shapes never change. Only the batch size,
# the number of epochs per call, `shuffle`, and the shapes of the data (and
# whether there is validation data) are static.
#
# The program of the three calls below is already compiled: the timing cell
# of the lecture's problem (under "Compile time versus run time") ran `fit`
# with the same data, batch size, number of epochs and engine (`scan`) at
# `lr=0.03`, and `fit` keeps its compiled programs. So
# even the first of the three, at a learning rate never used before,
# compiles nothing. The last call changes a static argument (two epochs per
# call instead of one) and compiles a program of its own.

# %%
for lr in (0.01, 0.03, 0.1):
    with compile_clock() as stats:
        jaxlin.fit(params0, seed.train, seed.val, lr=lr, max_epochs=1, key=key_shuffle)
    print(f"fit(lr={lr}) recompiles: {stats[0]}")
with compile_clock() as stats:
    jaxlin.fit(params0, seed.train, seed.val, lr=0.01, max_epochs=2, key=key_shuffle)
print(f"fit(lr=0.01, max_epochs=2) recompiles: {stats[0]}")

# %% [markdown]
# ## Batch size and learning rate
#
# On the lecture's problem, 3 epochs. The batch size is static (it fixes the
# shapes), so each value compiles once; the learning rate is traced.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
for batch_size in (8, 32, 256):
    _, h = jaxlin.fit(
        params0, seed.train, seed.val, lr=0.03, max_epochs=3, batch_size=batch_size, key=key_shuffle
    )
    steps = h.train_loss.shape[1]
    loss = h.train_loss.ravel()
    axes[0].plot(np.arange(1, loss.size + 1) / steps, loss, lw=1, label=f"batch {batch_size}")
    axes[1].plot(np.arange(1, loss.size + 1), loss, lw=1, label=f"batch {batch_size}")
axes[0].set_xlabel("epoch")
axes[1].set_xlabel("SGD step")
axes[1].set_xscale("log")
for ax in axes:
    ax.set_yscale("log")
    ax.set_ylabel("training loss (per batch)")
    ax.legend()
axes[0].set_title("batch size, per epoch (lr 0.03)")
axes[1].set_title("batch size, per step (lr 0.03)")
plt.show()

# %% [markdown]
# Per **epoch**, small batches win: an epoch of batch 8 is 125 updates, of
# batch 256 only 4, and each update moves the parameters by about the same
# amount (the loss is a mean, so the gradient does not grow with the batch).
# Per **step**, the curves nearly coincide: a larger batch gives a less noisy
# gradient (batch 256's curve is the smoothest) but not a larger step. On a
# parallel device a step of 256 costs about as much as a step of 8, which is
# why large batches pay off there, usually with a larger learning rate.

# %%
fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
val_by_lr = {}
for lr in (0.003, 0.03, 0.3, 1.5):
    _, h = jaxlin.fit(params0, seed.train, seed.val, lr=lr, max_epochs=3, key=key_shuffle)
    val_by_lr[lr] = h.val_loss
    ax.plot(
        np.arange(1, h.train_loss.size + 1) / h.train_loss.shape[1],
        h.train_loss.ravel(),
        lw=1,
        label=f"lr {lr}",
    )
ax.axhline(0.01**2 / 2, color="k", ls=":", lw=1, label="noise floor")
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel("training loss (per batch)")
ax.set_title("learning rate (batch 32)")
ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
plt.show()
for lr in (0.3, 1.5):
    print(f"lr {lr}: validation loss after each epoch", np.array2string(val_by_lr[lr], precision=2))

# %% [markdown]
# A small learning rate descends slowly (0.003 barely moves in 3 epochs);
# 0.3 reaches the noise floor within the first epoch. 1.5 gets there fast
# too, but it is close to the stability limit (about $2/\lambda_{\max}$ of
# the loss's Hessian $\tilde{X}^\top\tilde{X}/n$, here about 2): every step
# overshoots a little, so each minibatch's noise is amplified rather than
# averaged out. Its training loss is noisier, and its validation loss (printed
# above) does not settle: it moves from epoch to epoch, mostly above the floor
# where 0.3's stays. All these runs reuse one compiled program. The last one,
# with its validation curve:

# %%
_, h = jaxlin.fit(params0, seed.train, seed.val, lr=1.5, max_epochs=3, key=key_shuffle)
plot_history(h, title="lr 1.5, batch 32")
plt.show()

# %% [markdown]
# ## The path SGD takes
#
# `jaxlin.trajectory` records the parameters after every step, inside the
# compiled run (one call; the learning rate is traced, so the runs below that
# share a batch size and a number of epochs share a program). With two features we can draw the path
# of $(w_1, w_2)$ on the contours of the loss (with $b$ at its best value for
# each $w$). Each panel starts from the same small random parameters.

# %%
RUNS = [
    ("full batch, lr 0.1: smooth", {"batch_size": 1000, "lr": 0.1, "max_epochs": 30}),
    ("batch 32, lr 0.03: the lecture", {"batch_size": 32, "lr": 0.03, "max_epochs": 3}),
    ("batch 1, lr 0.03: noisy", {"batch_size": 1, "lr": 0.03, "max_epochs": 1}),
    ("full batch, lr 1.0", {"batch_size": 1000, "lr": 1.0, "max_epochs": 30}),
    ("full batch, lr 1.8: oscillating", {"batch_size": 1000, "lr": 1.8, "max_epochs": 30}),
    ("full batch, lr 2.1: diverging", {"batch_size": 1000, "lr": 2.1, "max_epochs": 30}),
]
fig, axes = plt.subplots(2, 3, figsize=(12, 7.6), layout="constrained")
for ax, (title, run) in zip(axes.ravel(), RUNS, strict=True):
    path = jaxlin.trajectory(params0, seed.train, key=key_shuffle, **run)
    label = f"{path.shape[0] - 1} steps"
    jaxlin.plot.plot_trajectory({label: path}, seed.train, ax, title=title)
plt.show()

# %% [markdown]
# The contours are nearly circles because the two features are independent
# with unit variance: the Hessian is close to the identity, so the gradient
# points almost straight at the solution, and every path runs along that line.
#
# - **Full batch, small lr**: the exact gradient, so the path is smooth, with
#   steps that shrink as the slope flattens.
# - **Batch 32** (the lecture) wobbles a little: each minibatch's gradient is
#   an estimate of the full one. **Batch 1** wobbles most, and keeps
#   wandering around the solution instead of stopping there.
# - **lr 1.0 with the full batch** lands next to the solution in one step:
#   with a Hessian close to the identity, a step of size 1 is almost Newton's
#   method.
# - **lr 1.8**: each step overshoots to the other side of the solution, and
#   the path zig-zags in, shrinking slowly. **lr 2.1** is beyond the
#   stability limit $2 / \lambda_{\max}$: every overshoot is larger than the
#   last, and the path leaves the picture.

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
# # Exercises of d2l sections 3.3 and 3.4, answered with jaxlin
#
# Each exercise is answered in runnable form, with the answer in words next to
# the evidence. Section 3.3 is about the synthetic data and the data loader,
# section 3.4 about the model, the loss and training.

# %%
# %matplotlib inline
import functools
import itertools
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.flatten_util import ravel_pytree

import jaxlin
from jaxlin.plot import plot_history
from jaxlin.stream import ORDERS, ShardReader, epoch_blocks, fit_stream, generate_shards

key = jax.random.key(0)
key_data, key_init, key_shuffle, key_more = jax.random.split(key, 4)
data = jaxlin.synthetic_splits(key_data)  # the lecture's problem: 1000 + 1000 examples
X_train, y_train = data.train
params0 = jaxlin.init_params(key_init, num_inputs=2)

# %% [markdown]
# ## 3.3.1 and 3.4.7: the batch size does not divide the number of examples
#
# *What happens if the number of examples cannot be divided by the batch size?
# What happens to the data iterator at the end of an epoch?*
#
# With 1000 examples and a batch size of 64, an epoch is 15 full batches and a
# **last batch** of the remaining 40 examples.

# %%
sizes = [Xb.shape[0] for Xb, _ in jaxlin.minibatches(X_train, y_train, 64, key=key_shuffle)]
print("batch sizes:", sizes)
print(f"last batch: {sizes[-1]} examples; all {sum(sizes)} examples used once")
_, history = jaxlin.fit(params0, data.train, lr=0.03, max_epochs=2, batch_size=64, key=key_shuffle)
print("history.train_loss shape (epochs, steps):", history.train_loss.shape)

# %% [markdown]
# The iterator simply yields a smaller last batch, and `jaxlin.fit` takes a
# real SGD step on it. Because the loss is a *mean*, that step is not smaller,
# only noisier (its gradient averages 40 examples instead of 64). Every example
# is still used exactly once per epoch. Two practical consequences: a jitted step
# compiles once more for the new shape (see `04_jit_exploration`), and a very
# small last batch (say 1 example) gives one very noisy step per epoch.
#
# To drop the last batch instead, PyTorch's `DataLoader` takes
# `drop_last=True`. `jaxlin` has no such flag; the equivalent is to cut each
# epoch's *shuffled* order to a multiple of the batch size, so that different
# examples are left out in different epochs:

# %%
n, batch_size = X_train.shape[0], 64
order = jaxlin.shuffle.permutation(jaxlin.shuffle.epoch_key(key_shuffle, 0), n)
kept = order[: (n // batch_size) * batch_size].reshape(-1, batch_size)
print("drop_last batches:", kept.shape, "- left out this epoch:", n - kept.size, "examples")

# %% [markdown]
# ## 3.3.2: data that do not fit in memory
#
# *What if both the number of examples and the size of `w` are large? What
# happens if we cannot hold all data in memory? How would you shuffle data
# held on disk, without needing too many random reads or writes?* Three
# answers, each run below on a dataset small enough to take seconds:
#
# 1. **Not in memory:** keep the data in files and read one **block** of
#    minibatches at a time, so that memory holds a block, not the dataset.
# 2. **Shuffling on disk:** a permutation that can be evaluated at any
#    position on its own, so no array of all `n` indices is built or sorted;
#    and, to avoid a random read per example, shuffled **runs** of
#    consecutive examples instead of single ones (`order="runs"`).
# 3. **A large `w`:** the size of one example grows with `d`, which changes
#    what a block, a chunk and a read cost.
#
# `jaxlin.shuffle.permute_indices` is such a keyed bijection (a Feistel
# network): the index at position `i` of a shuffle of a billion rows costs a
# few hashes and no memory for the other positions, so each block can compute
# just its own rows and read them.

# %%
n_huge = 10**9
positions = jnp.arange(8)
print("first 8 rows to read:", jaxlin.shuffle.permute_indices(key_shuffle, positions, n_huge))

# %% [markdown]
# `jaxlin.stream` puts this together. `generate_shards` writes a dataset to a
# folder as `.npy` files (shards) plus a manifest, a chunk at a time, so it
# never holds the whole dataset either. `ShardReader` reads rows from it: up
# to its budget (`budget_bytes`, 1 GiB by default, and at most a quarter of
# the machine's memory) it keeps the data in memory once read, and above it
# it reads every block's rows from the files. Our dataset is 150,000 rows in
# 4 shards, far below 1 GiB, so we give the reader a budget of 0 bytes: it is
# then not resident, and every row below comes from the files, as it would
# for data larger than memory. An epoch is read as `fit_stream` reads it,
# in blocks of 2,048 minibatches (65,536 rows) of `fit`'s shuffle
# (`epoch_blocks`), and each block is trained with the lecture's loop,
# `train_epoch`, in the block's order.

# %%
disk_folder = tempfile.TemporaryDirectory()  # removed at the end of this section
on_disk = generate_shards(key_more, disk_folder.name, num_examples=150_000, shards=4)
print(f"{on_disk.num_examples:,} rows in {len(on_disk.shards)} shards, {on_disk.dtype} on disk")
reader = ShardReader(on_disk, budget_bytes=0)
print("the reader holds the data in memory:", reader.resident)
from_files = params0
for idx in epoch_blocks(on_disk, key_shuffle, epoch=0, batch_size=32, block_batches=2048):
    X_block, y_block = reader.read(idx.ravel())  # rows in the shuffled order, from the files
    from_files, _ = jaxlin.train_epoch(from_files, X_block, y_block, 0.03, batch_size=idx.shape[1])
    print(f"block of {idx.shape[0]} batches of {idx.shape[1]}: read {X_block.shape[0]:,} rows")
reader.close()

# %% [markdown]
# The last block is the short batch of the lecture's epoch, alone. The same
# epoch with `fit_stream` (which keeps this small dataset in memory), and with
# `fit` on the same rows loaded into memory, take the same batches, so all
# three should end at the same parameters:

# %%
streamed, stream_history = fit_stream(
    params0, disk_folder.name, data.val, lr=0.03, max_epochs=1, batch_size=32, key=key_shuffle
)
# Only to check the answer: this small dataset does fit in memory.
X_disk = np.concatenate([np.load(shard.X) for shard in on_disk.shards])
y_disk = np.concatenate([np.load(shard.y) for shard in on_disk.shards])
in_memory, _ = jaxlin.fit(
    params0, (X_disk, y_disk), data.val, lr=0.03, max_epochs=1, batch_size=32, key=key_shuffle
)
for name, p in [("read from the files by hand", from_files), ("streamed by fit_stream", streamed)]:
    gap = max(float(jnp.max(jnp.abs(p[k] - in_memory[k]))) for k in ("w", "b"))
    print(f"{name}: largest difference from fit on the same data in memory: {gap:.1e}")
print(f"validation loss after one epoch: {stream_history.val_loss[-1]:.2e}")

# %% [markdown]
# In `fit`'s exact order, a block's rows are spread over the whole dataset:
# reading them from the files costs about one random read per row. With
# `order="runs"` (`fit_stream(..., order="runs")`, `jaxlin train --order
# runs`) the shuffle is `jaxlin.shuffle.permute_runs`: runs of 64 consecutive
# rows are shuffled, and a block of 1,024 runs is read across them, so each
# minibatch still draws its examples from different runs. Below, the number of
# separate stretches of consecutive rows that the first block of each order
# touches on disk, which is the number of reads it needs, and the result of
# an epoch in each order:

# %%
for order in ORDERS:
    first_block = next(epoch_blocks(on_disk, key_shuffle, 0, 32, 2048, order=order))
    rows = np.sort(first_block.ravel())
    stretches = 1 + np.count_nonzero(np.diff(rows) != 1)
    p, h = fit_stream(
        params0, disk_folder.name, data.val, lr=0.03, max_epochs=1, batch_size=32,
        key=key_shuffle, order=order,
    )  # fmt: skip
    w_err, b_err = jaxlin.estimation_error(p, data.w, data.b)
    print(
        f"order={order!r}: {rows.size:,} rows of the first block in {stretches:,} stretches; "
        f"after one epoch, val loss {h.val_loss[-1]:.2e}, |error in w| "
        f"{float(jnp.linalg.norm(w_err)):.1e}"
    )

# %% [markdown]
# The runs order reads the same number of rows in a small fraction of the
# stretches (at most one per run; neighbouring runs merge), and the model it
# trains is as good here: a coarser shuffle, but one whose minibatches still
# mix many parts of the file. Shuffling **writes** nothing in either order:
# the permutation is computed, never stored or applied to the files.
#
# Finally, a large `w`. One example is `d + 1` numbers, so the size of the
# dataset and of each read grow with `d` as well as with `n`:


# %%
def size(num_bytes):
    """A number of bytes in the largest unit that keeps it at or above 1."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if num_bytes < 1024 or unit == "PiB":
            return f"{num_bytes:.3g} {unit}"
        num_bytes /= 1024


for d in (2, 10_000, 1_000_000):
    row_bytes = 4 * (d + 1)  # float32: x and y
    print(
        f"d = {d:>9,}: one example {size(row_bytes):>9}, a minibatch of 32 "
        f"{size(32 * row_bytes):>9}, a billion examples {size(10**9 * row_bytes):>9}, "
        f"w {size(4 * d):>9}"
    )
try:
    generate_shards(key_more, f"{disk_folder.name}/huge", num_examples=10**9, d=1_000_000)
except ValueError as err:
    print("generate_shards refuses before writing:", err)
disk_folder.cleanup()

# %% [markdown]
# `w` itself stays small next to the data (at most megabytes, while a billion
# examples of the wider rows are terabytes to petabytes), so the model and its gradient fit in
# memory long after the data do not. What a large `d` changes is the size of
# everything counted in rows: a minibatch, a block of minibatches, and a chunk
# of `generate_shards` hold `d + 1` numbers per row, so blocks must be chosen
# in bytes (`block_batches` smaller, for `fit_stream`), and generating costs
# `n * d` multiply-adds for `X @ w`. It also changes what a random read costs:
# an example of a wide dataset is one long contiguous read (megabytes at the
# largest `d` above), so reading examples in a random order is no longer many
# small reads; the runs order matters most when rows are short, as in the
# lecture's `d = 2`.
#
# The refusal above is the same point: `generate_shards` checks what it
# needs against the machine's memory and the free disk space before it writes
# anything, and at `d = 1,000,000` its default chunk of 65,536 rows is by
# itself far more than memory holds; a chunk, like a block, has to be chosen
# in bytes.

# %% [markdown]
# ## 3.3.3 and 3.3.4: a generator of new data, and one that repeats itself
#
# *Implement a data generator that produces new data on the fly, every time
# the iterator is called.* In JAX "new random numbers" means "a new key". The
# generator below derives the key of batch `i` with `fold_in(key, i)`, so it
# never re-uses one; it is an endless stream, and training on it never sees the
# same example twice (so the training loss is itself an unbiased estimate of the
# test loss).


# %%
def fresh_batches(key, batch_size, w=jaxlin.TRUE_W, b=jaxlin.TRUE_B):
    """Endless minibatches of brand-new synthetic data: batch i from fold_in(key, i)."""
    for i in itertools.count():
        yield jaxlin.synthetic_data(jax.random.fold_in(key, i), w, b, batch_size)


params = params0
for Xb, yb in itertools.islice(fresh_batches(key_more, 32), 200):
    params, loss = jaxlin.train_step(params, Xb, yb, 0.03)
w_err, b_err = jaxlin.estimation_error(params, data.w, data.b)
print(f"after 200 fresh batches: loss {loss:.2e}, error in w {w_err}, error in b {b_err:.2e}")
first = [np.asarray(Xb[0]) for Xb, _ in itertools.islice(fresh_batches(key_more, 32), 3)]
print("first example of batches 0, 1, 2:", first)

# %% [markdown]
# *How would you design a random data generator that generates the same data
# each time it is called?* Give it a fixed key. With a global RNG this needs a
# reseed before every call; with explicit keys it is the default: the data are
# a pure function of the key.


# %%
def same_data(num_examples=1000):
    """The same synthetic data on every call: the key is fixed."""
    return jaxlin.synthetic_data(jax.random.key(42), jaxlin.TRUE_W, jaxlin.TRUE_B, num_examples)


(Xa, ya), (Xb, yb) = same_data(), same_data()
print("two calls, identical data:", bool(jnp.array_equal(Xa, Xb) and jnp.array_equal(ya, yb)))

# %% [markdown]
# ## 3.4.1: initialising the weights to zero, or with variance 1000
#
# *Would the algorithm still work with zero weights? With variance 1000 instead
# of 0.01?*

# %%
inits = {"sigma = 0.01 (lecture)": 0.01, "zeros": 0.0, "variance 1000": 1000**0.5}
fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
for label, sigma in inits.items():
    p0 = jaxlin.init_params(key_init, 2, sigma=sigma)
    p, h = jaxlin.fit(p0, data.train, data.val, lr=0.03, max_epochs=10, key=key_shuffle)
    start = float(jaxlin.loss_fn(p0, *data.val))
    print(
        f"{label:24s} initial w {np.round(np.ravel(p0['w']), 2) + 0.0}, initial val loss "
        f"{start:.3g}; after 3 / 10 epochs: {h.val_loss[2]:.2e} / {h.val_loss[-1]:.2e}"
    )
    ax.plot(np.arange(1, 11), h.val_loss, "o-", label=label)
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel("validation loss")
ax.set_title("initialisation")
ax.legend()
plt.show()

# %% [markdown]
# **Zero initialisation works** for linear regression (its curve lies on top
# of the lecture's: `sigma = 0.01` is already almost zero): the loss is convex, and
# the gradient with respect to `w` is $X^\top(\hat{y} - y)/n$, which is not zero
# at `w = 0`, so nothing is stuck. (It fails in networks with hidden layers,
# where zero weights make all hidden units identical with identical gradients:
# the symmetry is never broken.) **Variance 1000 still converges**, because the
# problem is convex and the learning rate is small enough, but it starts far
# from the solution: its weights have a standard deviation of $\sqrt{1000}
# \approx 32$ instead of 0.01 (the printed initial `w`), so its initial loss,
# printed beside them, is far above the others'. SGD shrinks the error by a
# roughly constant factor per epoch, so a larger initial error needs more
# epochs: compare the printed losses after 3 and after 10 epochs, and the
# curves. A large initialisation only hurts; in deep networks it can also make
# activations and gradients explode.
#
# ## 3.4.2: Ohm's law with automatic differentiation
#
# *You are Georg Simon Ohm: can you use autodiff to learn the parameters of a
# model relating voltage and current?* Yes. We "measure" the voltage across a
# 47 Ω resistor for 200 currents between 0 and 1 A, with 0.1 V of measurement
# noise, and fit $V = R\,I + V_0$ with `jaxlin.fit` (which differentiates the
# loss with `jax.grad`). The fitted offset $V_0$ should come out near 0 if Ohm's
# law holds.

# %%
key_i, key_v = jax.random.split(key_more)
current = jax.random.uniform(key_i, (200, 1))  # amperes
voltage = 47.0 * current + 0.1 * jax.random.normal(key_v, (200, 1))  # volts
p, _ = jaxlin.fit(
    jaxlin.init_params(key_init, 1),
    (current, voltage),
    lr=0.3,
    max_epochs=50,
    batch_size=20,
    key=key_shuffle,
)
A = jnp.hstack([current, jnp.ones_like(current)])
(R_ls, V0_ls), *_ = jnp.linalg.lstsq(A, voltage.ravel())
print(f"SGD with autodiff: R = {p['w'][0, 0]:.3f} ohm, V0 = {p['b'][0]:+.3f} V")
print(f"least squares:     R = {R_ls:.3f} ohm, V0 = {V0_ls:+.3f} V")

# %% [markdown]
# Autodiff recovers the resistance (and a negligible offset) as well as the
# closed-form least-squares solution does. Nothing in `jax.grad` is specific to
# this model: Ohm only has to write down the loss.
#
# ## 3.4.3: Planck's law
#
# *Can you use Planck's law to determine the temperature of an object from its
# spectral energy density?*
#
# $$B(\lambda, T) = \frac{2hc^2}{\lambda^5}\left(\exp\frac{hc}{\lambda k T} - 1\right)^{-1}.$$
#
# Yes: the model is non-linear in $T$, but gradient descent only needs its
# derivative, which `jax.grad` provides. Two practical points. In SI units $B$
# is of order $10^{13}$, so a squared loss on $B$ itself has gradients so large
# that no sensible learning rate works; we fit $\log B$ instead, which also
# weighs all wavelengths equally. And we measure $T$ in thousands of kelvin so
# that the parameter is of order 1. We "measure" a 5800 K black body (the Sun)
# at 50 wavelengths from 0.3 to 3 µm with 2 % noise, and start from 3000 K.

# %%
HC_OVER_K = 14387.77  # hc / k in µm·K
TWO_HC2 = 2 * 6.62607015e-34 * 299792458.0**2 * 1e24  # 2hc^2 in W m^-2 sr^-1 µm^4 (λ in µm)


def log_planck(wavelength_um, temperature_k):
    """log B(λ, T), with B per metre of wavelength and λ in µm."""
    x = HC_OVER_K / (wavelength_um * temperature_k)
    return jnp.log(TWO_HC2) - 5 * jnp.log(wavelength_um) - jnp.log(jnp.expm1(x)) + jnp.log(1e6)


wavelengths = jnp.linspace(0.3, 3.0, 50)
log_b = log_planck(wavelengths, 5800.0) + 0.02 * jax.random.normal(key_more, (50,))


def planck_loss(t_kilo):
    return jnp.mean((log_planck(wavelengths, 1000 * t_kilo) - log_b) ** 2) / 2


@jax.jit
def fit_temperature(t_kilo, lr):
    def step(t, _):
        loss, grad = jax.value_and_grad(planck_loss)(t)
        return t - lr * grad, (t, loss)

    return jax.lax.scan(step, t_kilo, length=200)


t_fit, (t_path, loss_path) = fit_temperature(3.0, 1.0)
print(f"fitted temperature: {1000 * t_fit:.0f} K (true 5800 K)")


def raw_loss(t):
    return jnp.mean((jnp.exp(log_planck(wavelengths, 1000 * t)) - jnp.exp(log_b)) ** 2) / 2


raw_grad = jax.jit(jax.grad(raw_loss))(3.0)
print(f"for comparison, the gradient of a squared loss on B itself at 3000 K: {raw_grad:.1e}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
ax1.plot(wavelengths, jnp.exp(log_b), ".", label="measured")
ax1.plot(wavelengths, jnp.exp(log_planck(wavelengths, 1000 * t_fit)), label="fit")
ax1.set_xlabel("wavelength (µm)")
ax1.set_ylabel("spectral radiance B (W m$^{-2}$ sr$^{-1}$ m$^{-1}$)")
ax1.legend()
ax1.set_title(f"spectrum of a 5800 K black body, fitted T = {1000 * t_fit:.0f} K")
ax2.plot(1000 * t_path, ".-", ms=3)
ax2.axhline(5800, color="k", ls=":", label="true T")
ax2.set_xlabel("gradient step")
ax2.set_ylabel("temperature (K)")
ax2.set_title("the estimate of T, step by step (from 3000 K)")
ax2.legend()
plt.show()

# %% [markdown]
# The first step overshoots, from 3000 K to well above the true temperature:
# at 3000 K the model's spectrum is far too faint in the visible and the loss
# is steep in $T$, so a step of the learning rate times that slope is large.
# Near the answer the slope flattens, and the steps shrink to nothing; a
# smaller learning rate would avoid the overshoot and take more steps.
#
# ## 3.4.4: second derivatives of the loss
#
# *What problems might you encounter computing second derivatives of the loss,
# and how would you fix them?*
#
# In PyTorch: `backward()` frees the graph and stores only numbers in
# `param.grad`, so a second derivative needs `create_graph=True`, and
# gradients accumulate into `.grad` unless zeroed. In JAX `jax.grad` returns a
# function that can be differentiated again (`jax.hessian` is
# `jacfwd(jacrev(f))`), so composing works out of the box. The problems that
# remain are mathematical and about size:
#
# - the Hessian has $p^2$ entries for $p$ parameters: fine here ($p = 3$), but
#   impossible for large models. The fix is Hessian-vector products
#   (`jax.jvp` of `jax.grad`), which cost about two gradients and never form
#   the matrix;
# - for the squared loss of a linear model the Hessian is the constant
#   $\tilde{X}^\top \tilde{X} / n$ ($\tilde{X}$ is $X$ with a column of ones),
#   so it carries no information about where we are; for the absolute-value
#   loss it is zero wherever it is defined and undefined at a zero residual,
#   so second-order methods get nothing useful from it.

# %%
Xb, yb = X_train[:256], y_train[:256]
flat0, unravel = ravel_pytree(params0)  # (b, w1, w2) as one vector


def flat_loss(flat, loss=jaxlin.squared_loss):
    return loss(jaxlin.linreg(unravel(flat), Xb), yb)


hessian = jax.jit(jax.hessian(flat_loss))(flat0)
X_tilde = jnp.hstack([jnp.ones((256, 1)), Xb])  # the order of ravel_pytree: b, then w
print("jax.hessian:\n", hessian)
print("X~ᵀX~ / n equals it:", bool(jnp.allclose(hessian, X_tilde.T @ X_tilde / 256, atol=1e-5)))
v = jnp.array([1.0, 0.0, 0.0])
hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(flat_loss), (x,), (v,))[1])(flat0, v)
print("Hessian-vector product without the matrix:", hvp)


def abs_loss(y_hat, y):
    """Mean absolute error (d2l uses .sum(); the mean keeps lr independent of batch size)."""
    return jnp.mean(jnp.abs(y_hat - y.reshape(y_hat.shape)))


abs_hessian = jax.jit(jax.hessian(functools.partial(flat_loss, loss=abs_loss)))
print("Hessian of the absolute loss:\n", abs_hessian(flat0))

# %% [markdown]
# ## 3.4.5: why does the loss reshape `y`?
#
# `y_hat = linreg(params, X)` has shape `(n, 1)`. If the labels arrive with
# shape `(n,)`, then `y_hat - y` **broadcasts** to an `(n, n)` matrix of every
# prediction minus every label, and the "loss" is silently something else
# entirely. `jaxlin.squared_loss` reshapes `y` to `y_hat.shape` first, as the
# lecture does. JAX can also turn such broadcasts into errors
# (`jax.numpy_rank_promotion("raise")`, which the jaxlin tests switch on).
#
# The difference shows best at **trained** parameters, where the right loss is
# tiny: the wrong one compares every prediction with every label, so it stays
# near the spread of the labels themselves, whatever the parameters.

# %%
params_trained, _ = jaxlin.fit(params0, data.train, max_epochs=10, key=key_shuffle)
y_hat = jaxlin.linreg(params_trained, Xb)
y_flat = yb.ravel()  # labels of shape (n,)
wrong = (y_hat - y_flat) ** 2 / 2
print("y_hat", y_hat.shape, "- y", y_flat.shape, "->", wrong.shape)
print(
    f"at trained parameters: without reshape {wrong.mean():.3g}, "
    f"with reshape {jaxlin.squared_loss(y_hat, y_flat):.3g}; variance of the labels "
    f"{float(jnp.var(y_flat)):.3g}"
)
with jax.numpy_rank_promotion("raise"):
    try:
        y_hat - y_flat
    except ValueError as err:
        print("with rank promotion off:", str(err).splitlines()[0][:90], "...")

# %% [markdown]
# The right loss is at the noise floor, $0.01^2/2 = 5 \times 10^{-5}$; the
# broadcast one averages $(\hat y_i - y_j)^2 / 2$ over every *pair* of
# examples, which for $\hat y \approx y$ is the variance of the labels (printed
# beside it): orders of magnitude larger, and its gradient would pull every
# prediction towards the mean label. At the near-zero initial parameters the two would look alike
# (both are about the labels' spread), which is why this bug hides so well.
#
# ## 3.4.6: learning rates and epochs
#
# *How quickly does the loss drop for different learning rates? Can you reduce
# the error by training for more epochs?* The learning rate is a traced
# argument of the compiled run, so trying many of them compiles once.

# %%
lrs = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 2.5]
fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
for lr in lrs:
    try:
        _, h = jaxlin.fit(params0, data.train, data.val, lr=lr, max_epochs=10, key=key_shuffle)
    except jaxlin.TrainingDiverged as err:
        print(f"lr={lr}: {err}")
        continue
    ax.plot(np.arange(1, 11), h.val_loss, "o-", ms=3, label=f"lr={lr}")
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel("validation loss")
ax.axhline(0.01**2 / 2, color="k", ls=":", lw=1, label="noise floor")
ax.set_title("learning-rate sweep (batch 32)")
ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
plt.show()

# %% [markdown]
# The validation loss falls geometrically, faster for larger learning rates,
# until it reaches the noise floor $0.01^2/2 = 5 \times 10^{-5}$ (the noise we
# put in the labels): at 0.01 and below even ten epochs are far from enough,
# 0.03 needs about seven, 0.1 two, 0.3 to 1 a single epoch, and too large a
# rate (here 2.5)
# makes the steps overshoot and the loss diverge, which `fit` reports as
# `TrainingDiverged`.
#
# More epochs: at the lecture's `lr = 0.03` we record the estimation error after
# every epoch with `fit`'s callback.

# %%
errors = []


def record(end):
    w_err, b_err = jaxlin.estimation_error(end.params, data.w, data.b)
    errors.append((float(jnp.linalg.norm(w_err)), abs(float(b_err)), end.val_loss))


jaxlin.fit(params0, data.train, data.val, lr=0.03, max_epochs=20, key=key_shuffle, callback=record)
errors = np.array(errors)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
epochs = np.arange(1, 21)
ax1.plot(epochs, errors[:, 0], "o-", label="|error in w|")
ax1.plot(epochs, errors[:, 1], "s-", label="|error in b|")
ax1.axhline(0.01 / 1000**0.5, color="k", ls=":", lw=1, label="noise / sqrt(n)")
ax1.set_ylabel("estimation error")
ax1.set_title("parameter errors, lr 0.03")
ax2.plot(epochs, errors[:, 2], "^-", color="C2", label="validation loss")
ax2.axhline(0.01**2 / 2, color="k", ls=":", lw=1, label="noise floor")
ax2.set_ylabel("validation loss")
ax2.set_title("validation loss, lr 0.03")
for ax in (ax1, ax2):
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.legend()
plt.show()
print(f"|error in w| after 3 epochs {errors[2, 0]:.1e}, after 20 epochs {errors[-1, 0]:.1e}")

# %% [markdown]
# Yes: more epochs reduce the error, geometrically at first, until it reaches
# the level set by the noise: about $0.01/\sqrt{1000} \approx 3 \times 10^{-4}$
# for the parameters, $5 \times 10^{-5}$ for the loss. From there on, more
# epochs only make the parameters wander around the optimum, because each step
# is taken on a noisy minibatch with a constant learning rate.
#
# ## 3.4.8: an absolute-value loss, an outlier, and a hybrid
#
# *Try the absolute value loss. What happens for regular data, and if you set
# `y[5] = 10000`? Can you combine the best of squared and absolute loss?*
#
# `jaxlin.fit` trains the squared loss only, so we build a small compiled
# trainer from jaxlin's pieces (`linreg`, `sgd`, `permutation`) that takes the
# loss as an argument. It also records `b` after every step. The loss is picked
# by a *traced* index with `lax.switch`, so one compiled program serves all
# three losses (a static loss function would compile three times). Like `fit`
# (3.3.1 above), it takes a real step on each epoch's short last batch, here
# the 8 examples left after 31 batches of 32; so with the squared loss it takes
# `fit`'s steps, and the first line it prints compares the two.


# %%
def huber_loss(y_hat, y, delta=1.0):
    """Squared near zero, absolute (slope delta) beyond |r| = delta: bounded gradients."""
    r = jnp.abs(y_hat - y.reshape(y_hat.shape))
    return jnp.mean(jnp.where(r <= delta, r**2 / 2, delta * (r - delta / 2)))


LOSSES = {"squared": jaxlin.squared_loss, "absolute": abs_loss, "huber": huber_loss}


@functools.partial(jax.jit, static_argnames=("epochs", "batch_size"))
def train_with_loss(params, X, y, lr, key, loss_index, *, epochs, batch_size=32):
    """Minibatch SGD on LOSSES[loss_index]; returns params and the b of every step."""
    n = X.shape[0]
    steps = n // batch_size

    def loss(y_hat, y):
        return jax.lax.switch(loss_index, list(LOSSES.values()), y_hat, y)

    def step(params, idx):
        grads = jax.grad(lambda p: loss(jaxlin.linreg(p, X[idx]), y[idx]))(params)
        params = jaxlin.sgd(params, grads, lr)
        return params, params["b"][0]

    def epoch(params, e):
        order = jaxlin.shuffle.permutation(jaxlin.shuffle.epoch_key(key, e), n)
        full = order[: steps * batch_size].reshape(steps, batch_size)
        params, b_path = jax.lax.scan(step, params, full)
        if n % batch_size:  # the short last batch is a real step, as in fit
            params, b_last = step(params, order[steps * batch_size :])
            b_path = jnp.append(b_path, b_last)
        return params, b_path

    params, b_path = jax.lax.scan(epoch, params, jnp.arange(epochs))
    return params, b_path.ravel()


by_fit, _ = jaxlin.fit(params0, data.train, lr=0.03, max_epochs=20, batch_size=32, key=key_shuffle)
by_hand, _ = train_with_loss(params0, X_train, y_train, 0.03, key_shuffle, 0, epochs=20)
gap = max(float(jnp.max(jnp.abs(by_hand[k] - by_fit[k]))) for k in ("w", "b"))
print(f"squared loss, 20 epochs: largest difference from jaxlin.fit {gap:.1e}")
y_outlier = y_train.at[5].set(10000.0)
paths = {}
print(f"{'loss':9s} {'labels':8s} {'|error in w|':>13s} {'error in b':>11s}")
for index, name in enumerate(LOSSES):
    for labels, y in [("clean", y_train), ("outlier", y_outlier)]:
        p, paths[name, labels] = train_with_loss(
            params0, X_train, y, 0.03, key_shuffle, index, epochs=20
        )
        w_err, b_err = jaxlin.estimation_error(p, data.w, data.b)
        print(f"{name:9s} {labels:8s} {float(jnp.linalg.norm(w_err)):13.2e} {float(b_err):+11.2e}")
low, high = (float(f(jnp.asarray(paths["squared", "outlier"]))) for f in (jnp.min, jnp.max))
print(f"the squared loss's b with the outlier ranges over [{low:.3g}, {high:.3g}]")
jumps = jnp.diff(jnp.asarray(paths["squared", "outlier"]))
print(
    f"its largest one-step jump in b: {float(jnp.max(jnp.abs(jumps))):.3g} (lr * 10000 / 32 = 9.4)"
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained", sharey=True)
for ax, labels in zip(axes, ["clean", "outlier"], strict=True):
    for name, style in zip(LOSSES, [{}, {"lw": 3, "alpha": 0.5}, {"ls": "--"}], strict=True):
        ax.plot(np.asarray(paths[name, labels]), **{"lw": 1, "label": name, **style})
    ax.axhline(4.2, color="k", ls=":", label="true b")
    ax.set_xlabel("SGD step")
    ax.set_title(f"{labels} labels" + (" (y[5] = 10000)" if labels == "outlier" else ""))
axes[0].set_ylabel("learned b (window [-5, 15]; see the printed range)")
axes[0].set_ylim(-5, 15)
axes[1].legend()
plt.show()

# %% [markdown]
# (The absolute loss is drawn wide and pale because Huber's dashed curve lies
# on it for the first few hundred steps: while every residual is larger than
# `delta = 1`, both losses step by the learning rate times the sign of the
# residual, so their paths are the same until the fit gets close.)
#
# - **Regular data.** All three losses find the parameters. The squared loss
#   converges fastest and most precisely: its gradient shrinks with the residual,
#   so steps get smaller near the optimum (Huber, squared near zero, ends up
#   just as precise after a slower start). The absolute loss's gradient has
#   the same size everywhere (the sign of the residual), so it moves at most
#   `lr` per step towards the answer and then keeps jittering around it at a
#   distance of order `lr`.
# - **One outlier, `y[5] = 10000`.** Each time the batch holding example 5
#   comes round, the squared loss gets a gradient of about
#   $10000/32 \approx 300$, so `b` jumps by about $0.03 \times 300 \approx 9$ in one
#   step (the largest jump printed above), and the jumps of successive epochs
#   pile up before the clean batches pull `b` back (the printed range); the
#   estimate is wrecked (the spikes in the right panel, once per epoch) and the
#   final error is large. The absolute loss does not notice the outlier's *size* at all: it
#   only sees the sign of the residual, so the outlier counts like any label
#   that lies above the line, one sign among 32, and the result is as good as
#   on clean data. This is the median-versus-mean difference.
# - **The hybrid.** The Huber loss is quadratic for residuals below `delta` and
#   linear above, so its gradient is the residual, clipped to `±delta`. Near
#   the optimum it behaves like the squared loss (precise), and an outlier's
#   pull is bounded like the absolute loss's (robust). Clipping the gradient
#   (`jaxlin.optim.clip_by_global_norm`, `fit(gradient_clip_val=...)`) is the other
#   cheap fix the hint points at: it bounds the *step* rather than each example's
#   contribution.
#
# ## 3.4.9: why reshuffle, and an adversarial ordering
#
# *Why do we need to reshuffle the dataset? Can you design a maliciously ordered
# dataset that breaks the optimization otherwise?*
#
# SGD assumes each minibatch is a random sample, so that its gradient is an
# unbiased estimate of the full gradient. An adversary who controls the order
# can break that. Take noisier labels (noise 1.0 instead of 0.01) and sort the
# examples by their noise, so each epoch *ends* with the examples whose labels
# are furthest above the line. Without shuffling, every epoch finishes with a
# run of steps that all pull `b` upwards, and training stops right there.

# %%
X_noisy, y_noisy = jaxlin.synthetic_data(key_more, jaxlin.TRUE_W, jaxlin.TRUE_B, 1000, noise=1.0)
residual = (y_noisy - X_noisy @ data.w.reshape(-1, 1) - data.b).ravel()
sorted_order = jnp.argsort(residual)  # the adversarial ordering
adversarial = (X_noisy[sorted_order], y_noisy[sorted_order])

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained", sharey=True)
for ax, shuffle in zip(axes, [False, True], strict=True):
    p, h = jaxlin.fit(
        params0, adversarial, data.val, lr=0.1, max_epochs=10, key=key_shuffle, shuffle=shuffle
    )
    _, b_err = jaxlin.estimation_error(p, data.w, data.b)
    print(
        f"adversarial order, shuffle={shuffle}: learned b = {float(p['b'][0]):.3f}, "
        f"error in b = {float(b_err):+.3f} (error^2 / 2 = {float(b_err) ** 2 / 2:.3g}); "
        f"final losses: val {h.val_loss[-1]:.3g}, train (last epoch's mean) "
        f"{h.train_loss[-1].mean():.3g}"
    )
    plot_history(h, ax=ax, title=f"adversarial order, shuffle={shuffle}")
plt.show()

# %% [markdown]
# The training labels carry noise of standard deviation 1.0, so even the true
# parameters have a training loss of about $1^2 / 2 = 0.5$, while the
# validation set is the lecture's, with noise 0.01: its loss measures almost
# only the error in the parameters. Reshuffled (right), that error is small
# and the validation loss lies far below the training loss. In order (left),
# the validation loss is not small: it is about $\text{error}_b^2 / 2$, the
# error in the bias alone (both printed above), while the training loss swings
# within each epoch.
#
# In order, the learned bias is off by about one noise standard deviation,
# because the last few steps of each epoch (the memory of SGD at `lr = 0.1`
# is about 10 steps) saw only the largest positive noise; the training loss
# shows the same saw-tooth every epoch. Reshuffled, the error is an order of
# magnitude smaller. Reshuffling **every** epoch, rather than once, also keeps
# the batches of different epochs different, so no fixed sequence of batches
# (and no fixed last batch) can bias the end point. With `jaxlin` the fresh
# order of epoch `e` is `permutation(fold_in(key, e), n)`.

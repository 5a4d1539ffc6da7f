"""Training: the jitted train step, the compiled epoch, and ``fit``.

The seed's ``Trainer.fit_epoch`` loops over a data loader, calls ``backward``
and ``optim.step`` on objects that change in place. Here one step is the pure
function ``(params, X, y) -> (new params, loss)`` built from ``jax.value_and_grad``,
and ``fit`` runs it with one of three engines that give the same result:

* ``"scan"`` (default): every epoch is one ``lax.scan`` over its minibatches
  inside one ``jax.jit``; the shuffle, the batch gather, the steps and the
  validation loss all run on the device, with no host round trip per step.
* ``"step"``: the jitted step in a Python loop over ``minibatches``.
* ``"eager"``: the same loop without ``jit``, op by op, as in the lecture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxlin import checks, compiler
from jaxlin.affine import affine_epoch
from jaxlin.data import minibatches
from jaxlin.model import Params, loss_fn
from jaxlin.optim import clip_by_global_norm, sgd
from jaxlin.shuffle import epoch_key, padded_permutation

ENGINES = ("scan", "affine", "step", "eager")


class History(NamedTuple):
    """What ``fit`` records, as numpy arrays (read once per epoch or run, never per step).

    ``train_loss``: ``(epochs run, steps_per_epoch)``, the batch loss of every step
    before that step's update (what ``value_and_grad`` returns).
    ``val_loss``: ``(epochs,)``, the mean loss on the whole validation set after
    each epoch, or ``None`` when ``fit`` had no validation data.
    """

    train_loss: np.ndarray
    val_loss: np.ndarray | None


class EpochEnd(NamedTuple):
    """What ``fit``'s callback receives after each epoch (host values, read once)."""

    epoch: int  # 0-based index of the epoch that just ended
    params: Params  # parameters after it
    train_loss: np.ndarray  # (steps_per_epoch,) batch losses of the epoch
    val_loss: float | None  # mean validation loss after it, None without val


class TrainingDiverged(FloatingPointError):
    """The training loss or the parameters stopped being finite."""


def _step(params: Params, X: jax.Array, y: jax.Array, lr: ArrayLike, clip: ArrayLike | None):
    """One minibatch SGD step: gradient, optional clipping, update; returns ``(params, loss)``.

    ``clip=None`` leaves clipping out of the program (no norm computed each step).
    """
    loss, grads = jax.value_and_grad(loss_fn)(params, X, y)
    if clip is not None:
        grads = clip_by_global_norm(grads, clip)
    return sgd(params, grads, lr), loss


_jitted_step = jax.jit(_step)


def train_step(
    params: Params,
    X: ArrayLike,
    y: ArrayLike,
    lr: ArrayLike,
    gradient_clip_val: ArrayLike | None = None,
) -> tuple[Params, jax.Array]:
    """The seed's ``training_step`` + ``backward`` + ``optim.step``, jitted: ``(params, loss)``.

    ``lr`` and ``gradient_clip_val`` are traced, so changing them does not
    recompile (``None``, no clipping, is a separate program); a new batch shape
    (the smaller last batch) compiles once more.
    Shapes and dtypes are checked (on the host, no device sync); values are not.
    """
    X, y = checks.dataset("batch", (X, y), checks.params(params), finite=False)
    checks.same_dtype(("batch X", X), ("params['w']", params["w"]))
    for name, value in (("lr", lr), ("gradient_clip_val", gradient_clip_val)):
        if value is not None and jnp.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    return _jitted_step(params, X, y, lr, gradient_clip_val)


def _epoch_batches(order: jax.Array, n: int, batch_size: int):
    """An epoch's order (length >= n) as full batches ``(k, B)`` and the rest ``(n - kB,)``."""
    full = n // batch_size
    return order[: full * batch_size].reshape(full, batch_size), order[full * batch_size : n]


PREGATHER_MAX_FEATURES = 16  # up to this d, gather the epoch's batches once, up front


def _scan_epoch(params, X, y, order, lr, clip, batch_size: int, constrain=None):
    """One epoch as a ``lax.scan`` of ``_step`` over its minibatches; ``(params, losses)``.

    For small ``d`` the epoch's rows are gathered in one go (a per-step gather
    of a few bytes costs more than the step); for wide rows each step gathers
    its own batch, which reads the data once instead of three times.
    """
    n, d = X.shape
    full, rest = _epoch_batches(order, n, batch_size)

    def take(idx):
        return X.at[idx].get(mode="promise_in_bounds"), y.at[idx].get(mode="promise_in_bounds")

    def step(p, Xb, yb):
        if constrain is not None:  # data parallelism: see jaxlin.parallel
            Xb, yb = constrain(Xb), constrain(yb)
        return _step(p, Xb, yb, lr, clip)

    if d <= PREGATHER_MAX_FEATURES:  # one flat gather, then batches: (k, B, d)
        Xs, ys = take(full.reshape(-1))
        batches = (Xs.reshape(*full.shape, d), ys.reshape(*full.shape, 1))
        params, losses = jax.lax.scan(lambda p, batch: step(p, *batch), params, batches)
    else:
        params, losses = jax.lax.scan(lambda p, idx: step(p, *take(idx)), params, full)
    if rest.shape[0]:  # the seed's smaller last batch: a real step of its own
        params, last = step(params, *take(rest))
        losses = jnp.concatenate([losses, last[None]])
    return params, losses


def run_epochs(
    params,
    X,
    y,
    val,
    key,
    first_epoch,
    lr,
    clip,
    *,
    batch_size,
    shuffle,
    num_epochs,
    affine=False,
    constrain=None,
):
    """``num_epochs`` epochs of minibatch SGD as one traceable function (the compiled engine).

    Pure and unjitted, so it can be wrapped in ``jax.jit`` or ``jax.vmap`` (over
    ``params``, ``key``, ``lr``...): ``fit`` and ``fit_data_parallel`` run
    exactly this (``sweep`` runs the same steps in its own layout).

    Args:
      params: ``{"w": (d, 1), "b": (1,)}``.
      X, y: ``(n, d)`` and ``(n, 1)`` training data.
      val: ``(X_val, y_val)`` or ``None``.
      key: shuffling key; epoch ``e`` uses ``fold_in(key, e)``.
      first_epoch: index of the first epoch (int or traced int).
      lr, clip: learning rate and gradient clip norm, traced; ``clip=None``
        compiles without clipping (a traced ``clip <= 0`` also means off).
      batch_size, shuffle, num_epochs: static.
      affine: static; run each epoch with ``jaxlin.affine.affine_epoch`` (the
        same steps in logarithmic depth; ``clip`` is then ignored: ``fit``
        refuses that combination).
      constrain: static, optional; applied to each gathered batch (``jaxlin.parallel``
        passes one that shards it over the devices).

    Returns:
      ``(params, (losses, val_losses))`` with ``losses: (num_epochs, ceil(n / B))``
      and ``val_losses: (num_epochs,)`` (NaN without ``val``).
    """
    n = X.shape[0]

    def epoch(params, e):
        if shuffle:
            order = padded_permutation(epoch_key(key, e), n)
        else:
            order = jnp.arange(n, dtype=jnp.int32)
        if affine:
            params, losses = affine_epoch(params, X, y, order, lr, batch_size)
        else:
            params, losses = _scan_epoch(params, X, y, order, lr, clip, batch_size, constrain)
        val_loss = loss_fn(params, *val) if val is not None else jnp.nan
        return params, (losses, val_loss)

    # A while loop from the traced ``first_epoch``, not a scan of static length:
    # XLA cannot count its trips, so it never inlines a one-epoch loop, and the
    # epoch compiles to the same code whether a program runs 1 epoch or 100.
    # That is what makes a run resumed at epoch k the uninterrupted run bit for bit.
    first = jnp.asarray(first_epoch, jnp.int32)
    steps = -(-n // batch_size)

    def body(state):
        e, params, losses, val_losses = state
        params, (loss, val_loss) = epoch(params, e)
        i = e - first
        losses = jax.lax.dynamic_update_index_in_dim(losses, loss.astype(losses.dtype), i, 0)
        val_losses = jax.lax.dynamic_update_index_in_dim(val_losses, val_loss, i, 0)
        return e + 1, params, losses, val_losses

    dtype = params["w"].dtype
    init = (first, params, jnp.zeros((num_epochs, steps), dtype), jnp.zeros((num_epochs,), dtype))
    _, params, losses, val_losses = jax.lax.while_loop(
        lambda state: state[0] < first + num_epochs, body, init
    )
    return params, (losses, val_losses)


_scan_epochs = compiler.jit(
    run_epochs, static_argnames=("batch_size", "shuffle", "num_epochs", "affine")
)


def _loop_epoch(params, X, y, val, key, epoch, lr, clip, *, batch_size, shuffle, step):
    """One epoch of ``step`` over the from-scratch ``minibatches`` iterator."""
    batches = minibatches(X, y, batch_size, key=epoch_key(key, epoch) if shuffle else None)
    losses = []
    for Xb, yb in batches:
        params, loss = step(params, Xb, yb, lr, clip)
        losses.append(loss)
    val_loss = loss_fn(params, *val) if val is not None else jnp.nan
    return params, (jnp.stack(losses)[None], jnp.asarray(val_loss)[None])


def _check_finite(params, losses: np.ndarray, first_epoch: int, lr: float) -> None:
    """Raise ``TrainingDiverged`` naming the first non-finite step (epoch and step 1-based)."""
    bad = ~np.isfinite(losses)
    params_ok = all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
    if not bad.any() and params_ok:
        return
    if bad.any():
        e, s = map(int, np.argwhere(bad)[0])
        where = (
            f"the training loss became {losses[e, s]} at epoch {first_epoch + e + 1}, step {s + 1}"
        )
    else:
        where = f"the parameters became non-finite in epoch {first_epoch + losses.shape[0]}"
    raise TrainingDiverged(
        f"training diverged: {where} (lr={lr}). Try a smaller lr or set gradient_clip_val."
    )


def fit(
    params: Params,
    train: tuple[ArrayLike, ArrayLike],
    val: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    lr: float = 0.03,
    max_epochs: int = 3,
    batch_size: int = 32,
    key: jax.Array | None = None,
    shuffle: bool = True,
    gradient_clip_val: float = 0.0,
    engine: str = "scan",
    callback: Callable[[EpochEnd], None] | None = None,
    start_epoch: int = 0,
) -> tuple[Params, History]:
    """Minibatch SGD on the squared loss: the seed's ``Trainer.fit``, as a function.

    Args:
      params: ``{"w": (d, 1), "b": (1,)}``, e.g. from ``init_params``; not modified.
      train: ``(X, y)`` with ``X: (n, d)``, ``y: (n,)`` or ``(n, 1)``.
      val: optional ``(X, y)``; its mean loss is recorded after every epoch.
      lr: learning rate, finite and > 0.
      max_epochs: number of passes over ``train``.
      batch_size: examples per step; the last batch of an epoch is smaller when
        it does not divide ``n``, as in the seed (a real step, not dropped).
      key: ``jax.random.key``; required when ``shuffle``. Epoch ``e`` reads the
        examples in the order ``permutation(fold_in(key, e), n)``.
      shuffle: ``False`` reads batches in order, to compare with any other code.
      gradient_clip_val: clip gradients to this global norm when > 0.
      engine: ``"scan"`` (compiled epochs), ``"affine"`` (compiled epochs whose
        steps are composed as affine maps in logarithmic depth: fastest for
        small ``d``, no clipping), ``"step"`` (jitted step in a Python loop) or
        ``"eager"`` (no jit). All give the same batches and result.
      callback: called after each epoch with an ``EpochEnd`` (progress,
        checkpoints): one compiled call and one host read per epoch, never per
        step. Without it (scan and affine engines) the whole run is one call.
      start_epoch: the first epoch to run (to resume): epochs ``start_epoch ..
        max_epochs - 1`` are run, with the same shuffles as in a full run.

    Returns:
      ``(params, history)``; see ``History``.

    Raises:
      ValueError, TypeError: bad arguments, before any training.
      TrainingDiverged: the loss or the parameters became non-finite; the
        message names the epoch and step.
    """
    num_inputs = checks.params(params)
    X, y = checks.dataset("train", train, num_inputs)
    if val is not None:
        val = checks.dataset("val", val, num_inputs)
    checks.same_dtype(
        ("train X", X),
        ("params['w']", params["w"]),
        ("params['b']", params["b"]),
        ("val X", None if val is None else val[0]),
    )
    lr = checks.finite_float("lr", lr, positive=True)
    max_epochs = checks.positive_int("max_epochs", max_epochs)
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, int):
        raise TypeError(f"start_epoch must be an int, got {start_epoch!r}")
    if not 0 <= start_epoch < max_epochs:
        raise ValueError(f"start_epoch must be in [0, max_epochs={max_epochs}), got {start_epoch}")
    batch_size = checks.batch_size(batch_size, X.shape[0])
    clip = checks.finite_float("gradient_clip_val", gradient_clip_val, nonnegative=True)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "affine" and clip > 0:
        raise ValueError(
            "engine='affine' cannot clip gradients (clipping is not an affine map): "
            "use engine='scan' with gradient_clip_val > 0"
        )
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False, got {shuffle!r}")
    if shuffle:
        if key is None:
            raise ValueError("key is required when shuffle=True: pass key=jax.random.key(seed)")
        key = checks.key("key", key)
    else:
        key = jax.random.key(0)  # unused: batches are read in order

    static = dict(batch_size=batch_size, shuffle=shuffle)
    # lr and clip go in as Python floats, not device arrays: jit takes them as
    # weakly typed scalars of the data's dtype at no cost, where making an array
    # costs a dispatch (~30 us).
    clip = clip if clip > 0 else None  # None: no clipping code
    compiled = engine in ("scan", "affine")
    if compiled:
        static["affine"] = engine == "affine"

        def run(params, epoch, num_epochs=1):
            return _scan_epochs(
                params, X, y, val, key, epoch, lr, clip, num_epochs=num_epochs, **static
            )

    else:
        step = _jitted_step if engine == "step" else _step

        def run(params, epoch):
            return _loop_epoch(params, X, y, val, key, epoch, lr, clip, step=step, **static)

    # Without a callback the compiled engines run the whole run as one call; with
    # one, one call per epoch (run_epochs compiles an epoch alike either way).
    if compiled and callback is None:
        params, (loss, val_loss) = run(params, start_epoch, max_epochs - start_epoch)
        losses, val_losses = [loss], [val_loss]
        epochs = ()
    else:
        losses, val_losses = [], []
        epochs = range(start_epoch, max_epochs)
    for epoch in epochs:
        params, (loss, val_loss) = run(params, epoch)
        losses.append(loss)
        val_losses.append(val_loss)
        if callback is not None:
            losses[-1], val_losses[-1] = np.asarray(loss), np.asarray(val_loss)
            _check_finite(params, losses[-1], epoch, lr)
            val_now = None if val is None else float(val_losses[-1][0])
            callback(EpochEnd(epoch, params, losses[-1][0], val_now))
    train_loss = np.concatenate([np.asarray(a) for a in losses])  # one host read, at the end
    _check_finite(params, train_loss, start_epoch, lr)
    val_loss = None if val is None else np.concatenate([np.asarray(a) for a in val_losses])
    history = History(train_loss, val_loss)
    return params, history

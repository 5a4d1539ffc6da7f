"""The compiled engine: whole epochs, and whole runs, of the lecture's SGD as one XLA program.

An epoch is one ``lax.scan`` of ``jaxlin.train.step`` over the epoch's
minibatches; the shuffle, the batch gather, the steps and the validation loss
all run on the device, with no host round trip per step. ``run_epochs`` runs
epochs ``first .. first + count - 1`` of a run (what ``fit`` calls), and
``make_train(config)`` gives the whole run as a pure function of
``(params, train, val, key, lr)`` that composes with ``jax.jit``, ``jax.vmap``
and ``jax.grad``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin.choices import COMPILED_ENGINES
from jaxlin.config import KEY_REQUIRED, TrainConfig
from jaxlin.data import split_batches
from jaxlin.engines import compiler
from jaxlin.engines.affine import affine_epoch
from jaxlin.model import Params, loss_fn
from jaxlin.shuffle import epoch_key, padded_permutation
from jaxlin.train import step

NARROW = 16  # up to this many features, the forward pass is a fused multiply-and-sum


def fused_loss(params: Params, X: jax.Array, y: jax.Array) -> jax.Array:
    """``loss_fn`` with ``X @ w`` written as ``sum(X * w^T)`` for narrow ``X``.

    The same arithmetic as ``jaxlin.model.linreg``; XLA fuses it with the rest
    of the step, where a matrix-multiply call for a ``(32, 2) @ (2, 1)`` product
    costs more than the product (``benchmarks/bench.py`` measures the engine).
    """
    if X.shape[-1] > NARROW:
        return loss_fn(params, X, y)
    y_hat = jnp.sum(X * params["w"].T, axis=-1, keepdims=True) + params["b"][None, :]
    return jnp.mean((y_hat - y) ** 2 / 2)


def scan_batches(update: Callable, params, rows, batch_size: int, take: Callable | None = None):
    """``update(params, take(batch))`` over ``rows`` in minibatches: ``(params, losses)``.

    ``rows`` is a pytree of arrays with a leading axis of ``n``: the rows
    themselves, or their indices with ``take`` gathering a batch's rows. The
    full batches run as one ``lax.scan``; the lecture's smaller last batch, if
    any, is one more step of its own. ``losses`` is ``(ceil(n / B),)``.
    """
    take = take or (lambda batch: batch)
    full = jax.tree.map(lambda a: split_batches(a, batch_size)[0], rows)
    rest = jax.tree.map(lambda a: split_batches(a, batch_size)[1], rows)
    params, losses = jax.lax.scan(lambda p, batch: update(p, take(batch)), params, full)
    if jax.tree.leaves(rest)[0].shape[0]:
        params, last = update(params, take(rest))
        losses = jnp.concatenate([losses, last[None]])
    return params, losses


PREGATHER_MAX_FEATURES = 16  # up to this d, the epoch's rows are gathered once, up front


def scan_epoch(params, X, y, order, lr, clip, batch_size: int, constrain=None):
    """One epoch of SGD reading ``X[order[:n]]`` in minibatches; ``(params, losses)``.

    For small ``d`` the epoch's rows are gathered in one go (a per-step gather
    of a few bytes costs more than the step); for wide rows each step gathers
    its own batch, which reads the data once instead of three times.
    ``constrain`` (optional) is applied to every batch: ``jaxlin.parallel``
    passes one that shards it over the devices.
    """
    n, d = X.shape

    def gather(idx):
        return X.at[idx].get(mode="promise_in_bounds"), y.at[idx].get(mode="promise_in_bounds")

    def update(p, batch):
        X_batch, y_batch = batch if constrain is None else jax.tree.map(constrain, batch)
        return step(p, X_batch, y_batch, lr, clip, loss=fused_loss)

    if d <= PREGATHER_MAX_FEATURES:
        return scan_batches(update, params, gather(order[:n]), batch_size)
    return scan_batches(update, params, order[:n], batch_size, take=gather)


def epoch_order(key, epoch, n: int, shuffle: bool) -> jax.Array:
    """The order epoch ``epoch`` reads its ``n`` examples in (length ``>= n``)."""
    if shuffle:
        return padded_permutation(epoch_key(key, epoch), n)
    return jnp.arange(n, dtype=jnp.int32)


def _epoch(params, X, y, val, key, e, lr, clip, batch_size, shuffle, affine, constrain):
    """Epoch ``e`` and the validation loss after it: ``(params, (losses, val_loss))``."""
    order = epoch_order(key, e, X.shape[0], shuffle)
    if affine:
        params, losses = affine_epoch(params, X, y, order, lr, batch_size)
    else:
        params, losses = scan_epoch(params, X, y, order, lr, clip, batch_size, constrain)
    val_loss = loss_fn(params, *val) if val is not None else jnp.nan
    return params, (losses, jnp.asarray(val_loss, losses.dtype))


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
    """Epochs ``first_epoch .. first_epoch + num_epochs - 1`` of a run, as one traceable function.

    Pure and unjitted (``fit`` and ``fit_data_parallel`` jit it). Epoch ``e``
    shuffles with ``fold_in(key, e)``, so a run resumed at epoch ``k`` is the
    run never interrupted.

    Args:
      params: ``{"w": (d, 1), "b": (1,)}``.
      X, y: ``(n, d)`` and ``(n, 1)`` training data; val: ``(X_val, y_val)`` or ``None``.
      key: shuffling key (unused without ``shuffle``).
      first_epoch: index of the first epoch (int or traced int).
      lr, clip: learning rate and gradient clip norm, traced; ``clip=None``
        compiles without clipping.
      batch_size, shuffle, num_epochs: static.
      affine: static; run each epoch with ``jaxlin.engines.affine.affine_epoch``.
      constrain: static, optional; applied to each gathered batch.

    Returns:
      ``(params, (losses, val_losses))`` with ``losses: (num_epochs, ceil(n / B))``
      and ``val_losses: (num_epochs,)`` (NaN without ``val``).
    """
    steps = -(-X.shape[0] // batch_size)
    first = jnp.asarray(first_epoch, jnp.int32)

    # A while loop from the traced first epoch, not a scan of static length:
    # XLA cannot count its trips and never inlines it, so an epoch compiles to
    # the same code whether the program runs 1 epoch or 100 (what makes a
    # resumed run the uninterrupted one bit for bit).
    def body(state):
        e, params, losses, val_losses = state
        params, (loss, val_loss) = _epoch(
            params, X, y, val, key, e, lr, clip, batch_size, shuffle, affine, constrain
        )
        i = e - first
        losses = jax.lax.dynamic_update_index_in_dim(losses, loss, i, 0)
        val_losses = jax.lax.dynamic_update_index_in_dim(val_losses, val_loss, i, 0)
        return e + 1, params, losses, val_losses

    dtype = params["w"].dtype
    init = (first, params, jnp.zeros((num_epochs, steps), dtype), jnp.zeros((num_epochs,), dtype))
    _, params, losses, val_losses = jax.lax.while_loop(
        lambda state: state[0] < first + num_epochs, body, init
    )
    return params, (losses, val_losses)


def make_train(config: TrainConfig) -> Callable:
    """The whole run of ``config`` as a pure function: ``train(params, data, val, key, lr=None)``.

    ``train`` returns ``(params, (losses, val_losses))`` as ``run_epochs`` does
    for epochs ``0 .. max_epochs - 1``. Nothing in it is static but the config
    and the shapes, so it composes: ``jax.jit(train)``, ``jax.vmap`` over keys,
    learning rates or data, and ``jax.grad`` of the final validation loss with
    respect to ``lr`` (the epochs are a ``lax.scan``, which reverse-mode
    differentiation needs). ``lr=None`` uses ``config.lr``. The config's
    engine must be a compiled one (``"scan"`` or ``"affine"``).

    Example:
      >>> import jax
      >>> import jaxlin
      >>> key_data, key_init, key = jax.random.split(jax.random.key(0), 3)
      >>> data = jaxlin.synthetic_splits(key_data)
      >>> params = jaxlin.init_params(key_init, 2)
      >>> train = jaxlin.make_train(jaxlin.TrainConfig(max_epochs=3))
      >>> def final_val(lr):
      ...     return train(params, data.train, data.val, key, lr)[1][1][-1]
      >>> grad = jax.grad(final_val)(0.03)  # d(final validation loss) / d(lr)
      >>> grad.shape, bool(grad < 0)  # a larger lr ends lower after 3 epochs
      ((), True)
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a jaxlin.TrainConfig, got {type(config).__name__}")
    if config.engine not in COMPILED_ENGINES:
        raise ValueError(
            f"make_train compiles the run: config.engine must be 'scan' or 'affine', "
            f"got {config.engine!r}"
        )

    def train(params, data, val=None, key=None, lr=None):
        """``config.max_epochs`` epochs of SGD on ``data = (X, y)``; ``(params, (losses, val))``."""
        X, y = data
        _check_shapes(config, params, X, y, val, key)
        y = y.reshape(-1, 1)
        if val is not None:
            val = (val[0], val[1].reshape(-1, 1))
        if key is None:
            if config.shuffle:
                raise ValueError(KEY_REQUIRED)
            key = jax.random.key(0)  # unused: batches are read in order
        lr = config.lr if lr is None else lr

        def epoch(params, e):
            return _epoch(
                params, X, y, val, key, e, lr, config.clip, config.batch_size,
                config.shuffle, config.engine == "affine", None,
            )  # fmt: skip

        return jax.lax.scan(epoch, params, jnp.arange(config.max_epochs))

    return train


def _check_shapes(config: TrainConfig, params, X, y, val, key) -> None:
    """What shapes and dtypes can tell, checked when ``train`` is traced (values are not
    known there): one line naming the argument, not an error from deep inside XLA."""
    canonical = jax.dtypes.canonicalize_dtype  # float64 is float32 without x64, as jit makes it
    dtype = getattr(X, "dtype", None)
    if getattr(X, "ndim", None) != 2 or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"data X must be a 2-D float32/float64 array, got "
            f"{getattr(X, 'ndim', '?')}-D {dtype or type(X).__name__}"
        )
    n, d = X.shape
    dtype = canonical(dtype)
    if getattr(y, "size", None) != n or canonical(y.dtype) != dtype:
        raise TypeError(
            f"data y must hold {n} {dtype} values (one per row of X), got shape "
            f"{getattr(y, 'shape', '?')} {getattr(y, 'dtype', type(y).__name__)}"
        )
    w, b = params.get("w") if isinstance(params, dict) else None, None
    if isinstance(params, dict):
        b = params.get("b")
    if getattr(w, "shape", None) != (d, 1) or getattr(b, "shape", None) != (1,):
        raise ValueError(
            f"params must be {{'w': ({d}, 1), 'b': (1,)}} for X with {d} features, got "
            f"w {getattr(w, 'shape', None)} and b {getattr(b, 'shape', None)}"
        )
    if canonical(w.dtype) != dtype or canonical(b.dtype) != dtype:
        raise TypeError(f"params must be {dtype} like X, got w {w.dtype} and b {b.dtype}")
    if config.batch_size > n:
        raise ValueError(
            f"batch_size must be <= the number of training examples ({n}), got {config.batch_size}"
        )
    if val is not None and (
        getattr(val[0], "shape", (None, None))[1:] != (d,) or canonical(val[0].dtype) != dtype
    ):
        raise ValueError(
            f"val X must be (m, {d}) {dtype} like X, got {getattr(val[0], 'shape', '?')} "
            f"{getattr(val[0], 'dtype', '?')}"
        )
    if key is not None and not jax.dtypes.issubdtype(
        getattr(key, "dtype", None), jax.dtypes.prng_key
    ):
        raise TypeError(
            f"key must be a jax.random.key(seed), got {getattr(key, 'dtype', type(key).__name__)}"
        )


def device_scalar(value: float | int, dtype) -> jax.Array:
    """``value`` as a 0-d ``dtype`` array on the default device, made once per value.

    A Python number passed to a compiled program is converted to a device
    array on every call; the drivers pass these instead (same values, same
    program for every lr). The last 256 values are kept.
    """
    return _device_scalar(value, np.dtype(dtype), jax.config.jax_enable_x64)


def epoch_scalar(epoch: int) -> jax.Array:
    """The index of a program's first epoch as an int32 device scalar.

    Only the latest few are kept: a run from epoch 0 finds its scalar made,
    and a run that calls its program once per epoch keeps no array per epoch.
    """
    return _epoch_scalar(epoch, jax.config.jax_enable_x64)


@functools.lru_cache(maxsize=4)
def _epoch_scalar(epoch: int, x64: bool) -> jax.Array:
    del x64  # a key: the arrays of one x64 mode are not reused in the other
    with jax.ensure_compile_time_eval():
        return jax.device_put(np.asarray(epoch, np.int32))


@functools.lru_cache(maxsize=256, typed=True)
def _device_scalar(value, dtype: np.dtype, x64: bool) -> jax.Array:
    del x64  # a key: without x64, a float64 request is made float32
    with jax.ensure_compile_time_eval():  # a concrete array even if called inside a trace
        return jax.device_put(np.asarray(value, dtype))


@functools.cache
def epochs_program(
    batch_size: int, shuffle: bool, num_epochs: int, affine: bool = False, constrain=None
) -> Callable:
    """``run_epochs`` for one static setting, compiled once per process and setting.

    Returns ``program(params, X, y, val, key, first_epoch, lr, clip) -> (params,
    record)``: ``record`` is the run's losses, validation losses and whether
    every training loss and parameter is finite, in one 1-D array that the
    host reads at once (``read_record`` takes it apart). What the host drivers
    call: the static settings are bound here, so a call is JAX's fast dispatch
    of array arguments.
    """

    def program(params, X, y, val, key, first_epoch, lr, clip):
        params, (losses, val_losses) = run_epochs(
            params, X, y, val, key, first_epoch, lr, clip, batch_size=batch_size,
            shuffle=shuffle, num_epochs=num_epochs, affine=affine, constrain=constrain,
        )  # fmt: skip
        checked = (losses, *jax.tree.leaves(params))
        finite = jnp.stack([jnp.isfinite(a).all() for a in checked]).all()
        record = (losses.reshape(-1), val_losses, finite.astype(losses.dtype)[None])
        return params, jnp.concatenate(record)

    store_as = () if constrain is not None else (batch_size, shuffle, num_epochs, affine)
    return compiler.jit(program, store_as=store_as).fast()


def read_record(record, num_epochs: int) -> tuple[tuple[np.ndarray, np.ndarray], bool]:
    """``((losses (num_epochs, steps), val_losses (num_epochs,)), finite)`` from a record.

    ``record`` is what an ``epochs_program`` returns beside the parameters; it
    is read from the device once, and the losses are views of that one copy.
    """
    record = np.asarray(record)
    steps = (record.size - 1) // num_epochs - 1
    end = num_epochs * steps
    losses = record[:end].reshape(num_epochs, steps)
    return (losses, record[end : end + num_epochs]), bool(record[-1])

"""The lecture's ``Trainer.fit`` as a function: checked arguments, an engine, the loop over epochs.

``fit`` is a host driver: it checks its arguments once, picks an engine and
runs ``run_loop``, the loop over epochs that every ``fit`` variant shares
(``fit_data_parallel``, ``fit_stream``): per-epoch callback, divergence check
with epoch and step, history. For a training run that is itself a pure JAX
function (to ``jax.jit``, ``jax.vmap`` or ``jax.grad`` through), use
``jaxlin.make_train``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxlin import checks
from jaxlin import config as configs
from jaxlin.choices import COMPILED_ENGINES
from jaxlin.config import TrainConfig
from jaxlin.engines.compiled import device_scalar, epoch_scalar, epochs_program, read_record
from jaxlin.model import Params, loss_fn
from jaxlin.shuffle import epoch_key
from jaxlin.train import train_epoch


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


def check_finite(params, losses: np.ndarray, first_epoch: int, lr: float) -> None:
    """Raise ``TrainingDiverged`` naming the first non-finite step (epoch and step 1-based).

    ``losses`` are epochs ``first_epoch ..``; a loss already non-finite at the
    very first step of training (epoch 1, step 1: no update yet) is blamed on
    the parameters or data, not the lr.
    """
    bad = ~np.isfinite(losses)
    params_ok = all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
    if not bad.any() and params_ok:
        return
    hint = "Try a smaller lr or set gradient_clip_val."
    if bad.any():
        e, s = map(int, np.argwhere(bad)[0])
        where = (
            f"the training loss became {losses[e, s]} at epoch {first_epoch + e + 1}, step {s + 1}"
        )
        if first_epoch + e == 0 and s == 0:  # before any update: no lr played a part
            where = f"the training loss was {losses[0, 0]} at the first step, before any update"
            hint = (
                "The initial parameters or the data are too large for their dtype (the lr "
                "plays no part yet): scale them down, or use float64."
            )
    else:
        where = f"the parameters became non-finite in epoch {first_epoch + losses.shape[0]}"
    raise TrainingDiverged(f"training diverged: {where} (lr={lr}). {hint}")


def run_loop(
    run: Callable,
    params: Params,
    *,
    first: int,
    stop: int,
    per_epoch: bool,
    lr: float,
    has_val: bool,
    callback: Callable[[EpochEnd], None] | None = None,
) -> tuple[Params, History]:
    """Epochs ``first .. stop - 1`` on the host: the loop every ``fit`` runs.

    ``run(params, epoch, count)`` trains ``count`` epochs from ``epoch`` and
    returns ``(params, (losses (count, steps), val_losses (count,)), finite)``:
    ``finite`` is a bool that says whether every loss and parameter is
    finite, or ``None`` to check them here. With ``per_epoch`` it is called
    once per epoch, and each epoch's losses are read, checked and handed to
    ``callback``; otherwise once for the whole run, read once at the end.
    """
    if not per_epoch:
        return read_run(run(params, first, stop - first), first, lr, has_val)
    losses = val_losses = None  # the history, filled row by row: no object kept per epoch
    for epoch in range(first, stop):
        params, (loss, val_loss), finite = run(params, epoch, 1)
        loss, val_loss = np.asarray(loss), np.asarray(val_loss)
        if losses is None:
            losses = np.empty((stop - first, loss.shape[1]), loss.dtype)
            val_losses = np.empty(stop - first, val_loss.dtype)
        losses[epoch - first] = loss[0]
        val_losses[epoch - first] = val_loss[0]
        if not finite:  # None: not known, checked here
            check_finite(params, loss, epoch, lr)
        if callback is not None:
            val_now = float(val_loss[0]) if has_val else None
            callback(EpochEnd(epoch, params, losses[epoch - first].copy(), val_now))
    return params, History(losses, val_losses if has_val else None)


def read_run(result: tuple, first: int, lr: float, has_val: bool) -> tuple[Params, History]:
    """``(params, history)`` from what a ``run`` of a whole run returned, checked."""
    params, (train_loss, val_loss), finite = result
    train_loss = np.asarray(train_loss)  # the run's losses, read once
    if not finite:  # None: not known, checked here
        check_finite(params, train_loss, first, lr)
    return params, History(train_loss, np.asarray(val_loss) if has_val else None)


def fit(
    params: Params,
    train: tuple[ArrayLike, ArrayLike],
    val: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    lr: float | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    key: jax.Array | None = None,
    shuffle: bool | None = None,
    gradient_clip_val: float | None = None,
    engine: str | None = None,
    callback: Callable[[EpochEnd], None] | None = None,
    start_epoch: int = 0,
    config: TrainConfig | None = None,
) -> tuple[Params, History]:
    """Minibatch SGD on the squared loss: the lecture's ``Trainer.fit``, as a function.

    Args:
      params: ``{"w": (d, 1), "b": (1,)}``, e.g. from ``init_params``; not modified.
      train: ``(X, y)`` with ``X: (n, d)``, ``y: (n,)`` or ``(n, 1)``.
      val: optional ``(X, y)``; its mean loss is recorded after every epoch.
      lr, max_epochs, batch_size, shuffle, gradient_clip_val, engine: the
        fields of ``TrainConfig`` (defaults: lr 0.03, 3 epochs, batch 32,
        shuffled, no clipping, the ``"scan"`` engine); ``lr`` may be a JAX scalar.
      key: ``jax.random.key``; required when shuffling. Epoch ``e`` reads the
        examples in the order ``permutation(fold_in(key, e), n)``.
      callback: called after each epoch with an ``EpochEnd`` (progress,
        checkpoints): one compiled call and one host read per epoch, never per
        step. Without it the compiled engines run the whole run as one call.
      start_epoch: the first epoch to run (to resume): epochs ``start_epoch ..
        max_epochs - 1`` are run, with the same shuffles as in a full run.
      config: a ``TrainConfig``; the keyword arguments above override its fields.

    Returns:
      ``(params, history)``; see ``History``.

    Raises:
      ValueError, TypeError: bad arguments, before any training.
      TrainingDiverged: the loss or the parameters became non-finite; the
        message names the epoch and step.
    """
    if checks.is_traced(lr):  # the arrays are checked with the data, below
        configs.refuse_traced("jaxlin.fit", lr)
    config = configs.make_config(
        config, lr=lr, max_epochs=max_epochs, batch_size=batch_size, shuffle=shuffle,
        gradient_clip_val=gradient_clip_val, engine=engine,
    )  # fmt: skip
    whole = callback is None and type(start_epoch) is int and not start_epoch
    kept = configs.prepared(params, train, val, key, config) if whole else None
    again = None if kept is None else kept.get(("fit", jax.config.jax_enable_x64))
    if again is not None:  # these arrays passed every check before, in this x64 mode
        return again(params, train, val, key)
    given = (params, train, val, key, config)  # as the memo knows them
    (X, y), val, _, key = configs.checked_run("jaxlin.fit", params, train, val, config, key)
    if type(start_epoch) is not int or start_epoch:  # 0 needs no check
        start_epoch = checks.nonnegative_int("start_epoch", start_epoch)
        if start_epoch >= config.max_epochs:
            raise ValueError(
                f"start_epoch must be in [0, max_epochs={config.max_epochs}), got {start_epoch}"
            )

    has_val = val is not None
    if config.engine in COMPILED_ENGINES:
        kept = configs.prepared(*given) if whole else None  # None: not remembered
        if kept is not None:
            kept["fit", jax.config.jax_enable_x64] = _whole_run(config, X.dtype, has_val)
        run = _compiled_run(config, X.dtype, X, y, val, key)
        if callback is None:  # the whole run: one compiled call, read once
            return read_run(run(params, start_epoch, config.max_epochs - start_epoch),
                            start_epoch, config.lr, has_val)  # fmt: skip
    else:

        def run(params, epoch, count):
            del count  # one epoch at a time
            params, losses = train_epoch(
                params, X, y, config.lr, batch_size=config.batch_size,
                key=None if key is None else epoch_key(key, epoch),
                gradient_clip_val=config.clip, jit=config.engine == "step",
            )  # fmt: skip
            val_loss = loss_fn(params, *val) if val is not None else jnp.nan
            return params, (losses[None], np.asarray([val_loss], losses.dtype)), None

    per_epoch = callback is not None or config.engine in ("step", "eager")
    return run_loop(
        run, params, first=start_epoch, stop=config.max_epochs, per_epoch=per_epoch,
        lr=config.lr, has_val=has_val, callback=callback,
    )  # fmt: skip


def _compiled_run(config: TrainConfig, dtype, X, y, val, key) -> Callable:
    """``run(params, epoch, count)`` for ``run_loop``: the config's compiled program."""
    key = configs.placeholder_key() if key is None else key  # unused without shuffling
    lr, clip = _rates(config, dtype)

    def run(params, epoch, count):
        program = _program(config, count)
        params, record = program(params, X, y, val, key, epoch_scalar(epoch), lr, clip)
        return params, *read_record(record, count)

    return run


def _whole_run(config: TrainConfig, dtype, has_val: bool) -> Callable:
    """``fit``'s whole run of ``config`` as ``again(params, train, val, key)``, for arrays
    that passed the checks: the program and its device scalars, bound once.

    Holds no array of the run and not ``config`` (``configs.prepared`` keeps it
    while they all live, the config among them).
    """
    program, count = _program(config, config.max_epochs), config.max_epochs
    lr, clip = _rates(config, dtype)
    first = epoch_scalar(0)
    unused = None if config.shuffle else configs.placeholder_key()
    lr_value = config.lr  # for a divergence's message

    def again(params, train, val, key):
        params, record = program(
            params, *train, val, key if unused is None else unused, first, lr, clip
        )
        return read_run((params, *read_record(record, count)), 0, lr_value, has_val)

    return again


def compile_ahead(
    config: TrainConfig, num_train: int, num_val: int, num_inputs: int, dtype, *, per_epoch: bool
) -> None:
    """Compile the program ``fit`` will run for data of these sizes, before the data exist.

    For a process that knows its whole run from the start (the command line
    compiles it in a second thread while the data are drawn): XLA compiles
    without holding Python's lock, and ``fit`` then finds the program compiled.
    ``per_epoch``: ``fit`` will be given a callback (one epoch per call).
    """
    shape = jax.ShapeDtypeStruct
    params = {"w": shape((num_inputs, 1), dtype), "b": shape((1,), dtype)}
    train = (shape((num_train, num_inputs), dtype), shape((num_train, 1), dtype))
    val = (shape((num_val, num_inputs), dtype), shape((num_val, 1), dtype))
    key = jax.eval_shape(jax.random.key, 0)  # a key's type: nothing computed
    first, rate = shape((), np.int32), shape((), dtype)
    count = 1 if per_epoch else config.max_epochs
    clip = None if config.clip is None else rate
    _program(config, count).lower(params, *train, val, key, first, rate, clip).compile()


def _program(config: TrainConfig, count: int) -> Callable:
    """The compiled program of ``count`` epochs of ``config`` (its engine compiled)."""
    return epochs_program(config.batch_size, config.shuffle, count, config.engine == "affine")


def _rates(config: TrainConfig, dtype) -> tuple:
    """``lr`` and the clip norm (or ``None``) as the program takes them: device scalars."""
    clip = config.clip
    return device_scalar(config.lr, dtype), None if clip is None else device_scalar(clip, dtype)

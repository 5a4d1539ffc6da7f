"""Many models at once: a grid of learning rates x seeds trained in one compiled call.

The lecture: setting hyperparameters "is tricky and requires some adjustment by
trial and error", and one should use three splits, one for training, one for
hyperparameter selection and one for the final evaluation. Here the trial and
error is one ``jax.jit`` of ``jax.vmap`` over ``jaxlin.train.run_epochs``, the
same traceable function ``fit`` runs, so every configuration's result is the
result ``fit`` gives for it (tested to 1e-6):

    init_key, shuffle_key = config_keys(key, seed)
    fit(init_params(init_key, d, sigma), train, val, lr=lr, key=shuffle_key, ...)

The grid is vmapped twice: over seeds (init and shuffle keys), then over
learning rates. Inside the inner vmap the key is not batched, so the shuffle
and the batch gather of a seed are computed once and shared by all its
learning rates (JAX's batching keeps unbatched values unbatched); only the
gradient steps run once per configuration. Every lr sees the same initial
parameters and batches for a given seed (common random numbers), so the
comparison between learning rates is not blurred by the draw.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxlin import checks
from jaxlin.model import Params, init_params, loss_fn
from jaxlin.train import TrainingDiverged, run_epochs


class SweepResult(NamedTuple):
    """What ``sweep`` returns: a grid of ``L`` learning rates x ``S`` seeds.

    Configuration ``(i, j)`` is ``lr = lrs[i]`` with ``seed = seeds[j]``; every
    array below is indexed ``[i, j, ...]``. Losses are numpy (read once).
    """

    lrs: np.ndarray  # (L,)
    seeds: np.ndarray  # (S,) ints
    params: Params  # {"w": (L, S, d, 1), "b": (L, S, 1)} after the last epoch
    train_loss: np.ndarray  # (L, S, epochs) mean batch loss per epoch, or (L, S, epochs, steps)
    val_loss: np.ndarray  # (L, S, epochs) validation loss after each epoch
    test_loss: np.ndarray | None  # (L, S) final test loss, None without a test split
    diverged: np.ndarray  # (L, S) bool: a loss or a parameter stopped being finite


class Summary(NamedTuple):
    """Per learning rate, over seeds: what the table prints and ``select`` compares."""

    lrs: np.ndarray  # (L,)
    val_mean: np.ndarray  # (L,) mean final val loss over seeds; NaN if any seed diverged
    val_std: np.ndarray  # (L,) its standard deviation over seeds (ddof=0); NaN likewise
    val_min: np.ndarray  # (L,) NaN likewise
    val_max: np.ndarray  # (L,)
    num_diverged: np.ndarray  # (L,) int: seeds that diverged at this lr


class Selection(NamedTuple):
    """The learning rate chosen by validation loss, and its test loss (looked at once)."""

    index: int  # into result.lrs
    lr: float
    val_loss: float  # mean over seeds of the final validation loss
    test_loss: float | None  # mean over seeds of the final test loss; None without test
    test_std: float | None


def config_keys(key: jax.Array, seed: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """The ``(init_key, shuffle_key)`` of one seed: ``split(fold_in(key, seed))``.

    Traceable (``seed`` may be a traced int), so ``sweep`` derives every seed's
    keys inside its compiled call; call it yourself to rerun a configuration
    with ``fit``.
    """
    init_key, shuffle_key = jax.random.split(jax.random.fold_in(key, seed))
    return init_key, shuffle_key


def _grid(
    seeds, lrs, clip, key, X, y, val, test, *, batch_size, shuffle, num_epochs, sigma, per_step
):
    """The compiled body: init, train and evaluate every (lr, seed); outputs ``(L, S, ...)``."""
    d = X.shape[1]

    def one_seed(seed):
        init_key, shuffle_key = config_keys(key, seed)
        params = init_params(init_key, d, sigma)
        params = jax.tree.map(lambda p: p.astype(X.dtype), params)

        def one_lr(lr):
            params_out, (losses, val_losses) = run_epochs(
                params,
                X,
                y,
                val,
                shuffle_key,
                0,
                lr,
                clip,
                batch_size=batch_size,
                shuffle=shuffle,
                num_epochs=num_epochs,
            )
            finite = jnp.isfinite(losses).all() & jnp.isfinite(val_losses[-1])
            for leaf in jax.tree.leaves(params_out):
                finite &= jnp.isfinite(leaf).all()
            train = losses if per_step else losses.mean(axis=1)
            test_loss = loss_fn(params_out, *test) if test is not None else None
            return params_out, train, val_losses, test_loss, ~finite

        return jax.vmap(one_lr)(lrs)  # the shuffle and gather above lr: shared

    return jax.vmap(one_seed, out_axes=1)(seeds)  # (L, S, ...)


_compiled_grid = jax.jit(
    _grid, static_argnames=("batch_size", "shuffle", "num_epochs", "sigma", "per_step")
)


def _check_lrs(lrs) -> np.ndarray:
    values = np.asarray(lrs, dtype=object).reshape(-1) if np.ndim(lrs) else None
    if values is None or values.size == 0:
        raise ValueError(f"lrs must be a non-empty sequence of learning rates, got {lrs!r:.80}")
    return np.array([checks.finite_float("lrs", v, positive=True) for v in values])


def _check_seeds(seeds) -> np.ndarray:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        return np.arange(checks.positive_int("seeds", seeds), dtype=np.uint32)
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, np.ndarray)):
        raise TypeError(f"seeds must be an int (a count) or a sequence of ints, got {seeds!r:.80}")
    values = list(np.asarray(seeds, dtype=object).reshape(-1))
    if not values:
        raise ValueError("seeds must not be empty")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < 2**32:
            raise ValueError(f"seeds must be ints in [0, 2**32), got {v!r}")
    if len(set(values)) != len(values):
        raise ValueError("seeds must be distinct")
    return np.array(values, dtype=np.uint32)


def sweep(
    train: tuple[ArrayLike, ArrayLike],
    val: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    lrs: Sequence[float] | ArrayLike,
    seeds: int | Sequence[int],
    key: jax.Array,
    max_epochs: int = 3,
    batch_size: int = 32,
    sigma: float = 0.01,
    gradient_clip_val: float = 0.0,
    shuffle: bool = True,
    per_step: bool = False,
) -> SweepResult:
    """Trains one linear model per (learning rate, seed), all in one compiled call.

    Configuration ``(lr, seed)`` is exactly

        init_key, shuffle_key = config_keys(key, seed)
        fit(init_params(init_key, d, sigma), train, val, lr=lr, key=shuffle_key,
            max_epochs=max_epochs, batch_size=batch_size, shuffle=shuffle,
            gradient_clip_val=gradient_clip_val)

    except that a diverging configuration does not raise: it is flagged in
    ``diverged`` (its NaNs stay in its own lane of the vmap, the others are
    unaffected) and ``select`` ignores it.

    Compilation: ``max_epochs``, ``batch_size``, ``sigma``, ``shuffle`` and
    ``per_step`` are static, and so are the shapes (number of learning rates,
    of seeds, of examples): a new value of any of them compiles a new program
    (seconds). The values of ``lrs``, ``seeds``, ``key``, the data and
    ``gradient_clip_val`` are traced: a second sweep with the same shapes
    reuses the compiled program.

    Memory: the scan inside ``run_epochs`` stacks every step's loss, so the
    compiled program holds ``L * S * max_epochs * steps`` floats whatever
    ``per_step`` says (16,384 configs x 3 epochs x 32 steps: 6 MB);
    ``per_step=False`` only returns their per-epoch means (``(L, S, epochs)``)
    instead of copying them all to the host. Per seed, one permutation of the
    ``n`` training examples per epoch (shared by its learning rates).

    Args:
      train, val: ``(X, y)`` pairs, ``X: (n, d)``, ``y: (n,)`` or ``(n, 1)``;
        ``val`` (required) is what learning rates are compared on.
      test: optional held-out ``(X, y)``; its loss is computed once per
        configuration after training, for the final report of ``select``.
      lrs: ``L >= 1`` learning rates, finite and > 0.
      seeds: a count ``S`` (seeds ``0 .. S-1``) or distinct ints in ``[0, 2**32)``.
      key: the root ``jax.random.key``; seed ``s`` uses ``config_keys(key, s)``.
      max_epochs, batch_size, gradient_clip_val, shuffle: as in ``fit``.
      sigma: std of the initial weights, as in ``init_params``.
      per_step: return every step's batch loss, ``(L, S, epochs, steps)``.

    Returns:
      A ``SweepResult`` with arrays indexed ``[lr index, seed index, ...]``.

    Raises:
      ValueError, TypeError: bad arguments (named), before any training.

    Example:
      >>> data = synthetic_splits(jax.random.key(0), num_test=1000)
      >>> result = sweep(data.train, data.val, data.test, lrs=[0.01, 0.03, 0.1],
      ...                seeds=4, key=jax.random.key(1))
      >>> result.val_loss.shape, select(result).lr
      ((3, 4, 3), 0.1)
    """
    X, y = checks.dataset("train", train)
    d = X.shape[1]
    val = checks.dataset("val", val, d)
    if test is not None:
        test = checks.dataset("test", test, d)
    lrs = _check_lrs(lrs)
    seeds = _check_seeds(seeds)
    key = checks.key("key", key)
    max_epochs = checks.positive_int("max_epochs", max_epochs)
    batch_size = checks.batch_size(batch_size, X.shape[0])
    sigma = checks.finite_float("sigma", sigma, nonnegative=True)
    clip = checks.finite_float("gradient_clip_val", gradient_clip_val, nonnegative=True)
    for name, flag in (("shuffle", shuffle), ("per_step", per_step)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    for name, pair in (("val", val), ("test", test)):
        if pair is not None and pair[0].dtype != X.dtype:
            raise TypeError(f"{name} X has dtype {pair[0].dtype} but train X has {X.dtype}")

    params, train_loss, val_loss, test_loss, diverged = _compiled_grid(
        jnp.asarray(seeds),
        jnp.asarray(lrs, X.dtype),
        jnp.asarray(clip, X.dtype) if clip > 0 else None,  # None: no clipping code
        key,
        X,
        y,
        val,
        test,
        batch_size=batch_size,
        shuffle=shuffle,
        num_epochs=max_epochs,
        sigma=sigma,
        per_step=per_step,
    )
    return SweepResult(
        lrs=lrs,
        seeds=seeds.astype(np.int64),
        params=params,
        train_loss=np.asarray(train_loss),
        val_loss=np.asarray(val_loss),
        test_loss=None if test_loss is None else np.asarray(test_loss),
        diverged=np.asarray(diverged),
    )


def summarize(result: SweepResult) -> Summary:
    """Final validation loss per learning rate over seeds; NaN where any seed diverged.

    A learning rate that diverges for one seed in eight is not a safe choice,
    so its statistics are NaN and ``select`` never picks it.
    """
    final = np.asarray(result.val_loss[..., -1], np.float64)  # (L, S)
    num_diverged = result.diverged.sum(axis=1)
    ok = num_diverged == 0
    safe = np.where(result.diverged, 0.0, final)  # no NaN arithmetic, no warnings
    stats = [safe.mean(1), safe.std(1), safe.min(1), safe.max(1)]
    return Summary(result.lrs, *(np.where(ok, s, np.nan) for s in stats), num_diverged)


def select(result: SweepResult) -> Selection:
    """The learning rate with the least mean final validation loss over seeds, and its test loss.

    Learning rates with a diverged seed are excluded. The test loss is read
    only for the chosen learning rate: the lecture's final evaluation.

    Raises:
      TrainingDiverged: every learning rate diverged for some seed.
    """
    summary = summarize(result)
    if np.isnan(summary.val_mean).all():
        raise TrainingDiverged(
            f"every learning rate diverged for at least one seed (smallest lr: "
            f"{result.lrs.min():g}). Try smaller learning rates or set gradient_clip_val."
        )
    i = int(np.nanargmin(summary.val_mean))
    test_mean = test_std = None
    if result.test_loss is not None:
        test = np.asarray(result.test_loss[i], np.float64)  # no float32 overflow in std
        test_mean, test_std = float(test.mean()), float(test.std())
    return Selection(i, float(result.lrs[i]), float(summary.val_mean[i]), test_mean, test_std)

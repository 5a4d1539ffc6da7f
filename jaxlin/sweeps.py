"""Many models at once: a grid of learning rates x seeds trained in one compiled call.

The lecture: setting hyperparameters "is tricky and requires some adjustment by
trial and error", and one should use three splits, one for training, one for
hyperparameter selection and one for the final evaluation. Here the trial and
error is one ``jax.jit`` call that trains every configuration side by side, and
every configuration's result is the result ``fit`` gives for it, to float rounding:

    init_key, shuffle_key = config_keys(key, seed)
    fit(init_params(init_key, d, sigma), train, val, lr=lr, key=shuffle_key, ...)

The grid is not ``jax.vmap`` over ``fit``'s epoch, though that gives the same
numbers: ``vmap`` puts the configurations first and XLA then vectorises each
step over the ``d = 2`` features. Here the configurations are the last axes of
every array (the "lane layout" of ``_grid``), one step of all of them is a
handful of fused loops over ``S * L`` contiguous lanes, and a sweep of
hundreds of configurations costs a few single fits (``benchmarks/bench_sweep.py``).
Each seed's shuffle and batch gather are computed once and shared by its
learning rates: every lr sees the same initial parameters and batches for a
given seed (common random numbers), so the comparison between learning rates
is not blurred by the draw.
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
from jaxlin import config as configs
from jaxlin.config import TrainConfig
from jaxlin.engines import compiler
from jaxlin.engines.compiled import NARROW, scan_batches
from jaxlin.model import Params, init_params
from jaxlin.shuffle import epoch_key, padded_permutation
from jaxlin.trainer import TrainingDiverged


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


def _lane_loss(params: Params, X: jax.Array, y: jax.Array) -> jax.Array:
    """Every configuration's batch loss at once, configurations in the last axes.

    ``params``: ``{"w": (d, *lanes), "b": lanes}``; ``X``: ``(B, d, *s)`` and ``y``:
    ``(B, *s)``, with ``s`` broadcastable to ``lanes`` (a seed's batch serves all its
    learning rates). Returns ``lanes``: ``loss_fn`` of each configuration, with the
    arithmetic of ``linreg`` and ``squared_loss``.
    """
    w, b = params["w"], params["b"]
    d = w.shape[0]
    if d <= NARROW:  # unrolled multiply-sum, as the engine's: every op runs along the lanes
        pred = sum(X[:, j] * w[j][None] for j in range(d)) + b[None]
    else:
        pred = jnp.sum(X * w[None], axis=1) + b[None]
    return jnp.mean((pred - y) ** 2 / 2, axis=0)


def _lane_step(params: Params, X, y, lr, clip):
    """One SGD step of every configuration: ``jaxlin.train.step``, in the lane layout.

    The configurations' losses are independent, so the gradient of their sum is
    each one's own gradient. ``lr``: shaped like the lanes; ``clip``: scalar or ``None``.
    """
    (_, losses), grads = jax.value_and_grad(
        lambda p: (lambda v: (v.sum(), v))(_lane_loss(p, X, y)), has_aux=True
    )(params)
    gw, gb = grads["w"], grads["b"]
    if clip is not None:  # clip_by_global_norm, per configuration
        norm = jnp.sqrt(jnp.sum(jnp.square(gw), axis=0) + jnp.square(gb))
        scale = jnp.where((clip > 0) & (norm > clip), clip / norm, 1.0).astype(gb.dtype)
        gw, gb = gw * scale[None], gb * scale
    return {"w": params["w"] - lr[None] * gw, "b": params["b"] - lr * gb}, losses


def _grid(
    seeds, lrs, clip, key, X, y, val, test, *, batch_size, shuffle, num_epochs, sigma, per_step
):
    """The compiled body: init, train and evaluate every (lr, seed); outputs ``(L, S, ...)``.

    Layout: the configurations are the last axes of every array, the "lanes":
    ``(S, L)``, or flat ``(S * L,)`` when there is one lr or one seed, or no
    shuffle (no per-seed data): XLA:CPU vectorises a size-1 axis poorly.
    Params are ``w: (d, *lanes)``, ``b: lanes``; a seed's batch, ``(B, d, S, 1)``,
    is broadcast over its learning rates inside the step. Each elementwise op of
    a step thus runs along contiguous lanes and XLA vectorises across
    configurations, where ``vmap`` (batch axis first) left it vectorising across
    the ``d = 2`` features.
    Each configuration's arithmetic is ``fit``'s, up to the order of sums.
    """
    n, d = X.shape
    B = batch_size
    S, L = seeds.shape[0], lrs.shape[0]
    lanes = (S, L) if shuffle and S > 1 and L > 1 else (S * L,)
    per_seed = (S, 1) if len(lanes) == 2 else (S,)  # a seed's value, broadcast over its lrs
    shared = (1,) * len(lanes)  # one value for every configuration

    init_keys, shuffle_keys = jax.vmap(lambda s: config_keys(key, s))(seeds)
    w0 = jax.vmap(lambda k: init_params(k, d, sigma)["w"][:, 0])(init_keys).astype(X.dtype)
    params = {
        "w": jnp.broadcast_to(w0.T[:, :, None], (d, S, L)).reshape(d, *lanes),
        "b": jnp.zeros(lanes, X.dtype),
    }
    lane_lrs = jnp.broadcast_to(lrs[None, :], (S, L)).reshape(lanes)

    def epoch(params, e):
        if shuffle:  # one permutation per seed, shared by its learning rates
            order = jax.vmap(lambda k: padded_permutation(epoch_key(k, e), n)[:n])(shuffle_keys)
            Xe = jnp.transpose(X[order], (1, 2, 0)).reshape(n, d, *per_seed)
            ye = y[:, 0][order].T.reshape(n, *per_seed)
        else:  # the same order for every configuration
            Xe, ye = X.reshape(n, d, *shared), y.reshape(n, *shared)
        update = lambda p, batch: _lane_step(p, *batch, lane_lrs, clip)  # noqa: E731
        params, losses = scan_batches(update, params, (Xe, ye), B)  # losses: (steps, *lanes)
        Xv, yv = val
        return params, (
            losses,
            _lane_loss(params, Xv.reshape(-1, d, *shared), yv.reshape(-1, *shared)),
        )

    params, (losses, val_losses) = jax.lax.scan(epoch, params, jnp.arange(num_epochs))

    def grid(a):  # (..., *lanes) -> (L, S, ...)
        a = a.reshape(*a.shape[: a.ndim - len(lanes)], S, L)
        return jnp.moveaxis(a, (-1, -2), (0, 1))

    losses, val_losses = grid(losses), grid(val_losses)  # (L, S, epochs, steps), (L, S, epochs)
    out = {"w": grid(params["w"])[..., None], "b": grid(params["b"])[..., None]}
    finite = jnp.isfinite(losses).all(axis=(2, 3)) & jnp.isfinite(val_losses[..., -1])
    for leaf in jax.tree.leaves(out):
        finite &= jnp.isfinite(leaf).all(axis=tuple(range(2, leaf.ndim)))
    test_loss = None
    if test is not None:
        Xt, yt = test
        test_loss = grid(_lane_loss(params, Xt.reshape(-1, d, *shared), yt.reshape(-1, *shared)))
    return out, losses if per_step else losses.mean(axis=-1), val_losses, test_loss, ~finite


_compiled_grid = compiler.jit(
    _grid, static_argnames=("batch_size", "shuffle", "num_epochs", "sigma", "per_step")
)


def grid_values(
    num_lrs: int,
    num_seeds: int,
    num_examples: int,
    num_features: int,
    *,
    max_epochs: int,
    batch_size: int,
) -> int:
    """How many floats the compiled grid holds at its peak besides its input data.

    Per configuration, every step's loss (``epochs * steps``, kept whatever
    ``per_step`` says) with the program's copies of it, the validation losses
    and parameters; per seed, an epoch's shuffled copy of the data with its
    permutation and the gather's temporaries. The constants are measured
    (peak RSS against grid size, for 1 and 6 learning rates, 1,000 and 4,000
    examples, 2 and 10 features) and round up what was seen.
    """
    steps = -(-num_examples // batch_size)
    per_config = 3 * max_epochs * (steps + 1) + num_features + 800
    per_seed = num_examples * (2 * num_features + 3) + 4600
    return num_lrs * num_seeds * per_config + num_seeds * per_seed


def check_grid_memory(
    num_lrs: int,
    num_seeds: int,
    num_examples: int,
    num_features: int,
    *,
    max_epochs: int,
    batch_size: int,
    dtype="float32",
) -> None:
    """Refuse a grid that cannot fit in this machine's memory, before anything is allocated.

    The message names the largest of the grid's factors (learning rates,
    seeds, epochs): the one to reduce.
    """
    factors = {"len(lrs)": num_lrs, "seeds": num_seeds, "max_epochs": max_epochs}
    name = max(factors, key=factors.get)
    count = grid_values(
        num_lrs, num_seeds, num_examples, num_features,
        max_epochs=max_epochs, batch_size=batch_size,
    )  # fmt: skip
    checks.fits_in_memory(name, factors[name], count, dtype)


def _check_lrs(lrs) -> np.ndarray:
    """``lrs`` as a 1-D float array: finite, > 0, not empty, not nested."""
    try:
        values = None if isinstance(lrs, (str, bytes)) else np.asarray(lrs, dtype=object)
    except ValueError:  # ragged nesting
        raise ValueError(f"lrs must be a 1-D sequence of learning rates, got {lrs!r:.80}") from None
    if values is None or values.ndim == 0 or values.size == 0:
        raise ValueError(f"lrs must be a non-empty sequence of learning rates, got {lrs!r:.80}")
    if values.ndim != 1 or any(np.ndim(v) for v in values):
        raise ValueError(f"lrs must be a 1-D sequence of learning rates, got {lrs!r:.80}")
    return np.array([checks.finite_float("lrs", v, positive=True) for v in values])


def _num_seeds(seeds) -> int:
    """How many seeds ``seeds`` names (a count, or a sequence of ints), checked for type."""
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        return checks.positive_int("seeds", seeds)
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, np.ndarray)):
        raise TypeError(f"seeds must be an int (a count) or a sequence of ints, got {seeds!r:.80}")
    return len(seeds)


def _check_seeds(seeds) -> np.ndarray:
    """The seeds as distinct uint32 values: ``0 .. seeds-1`` for a count."""
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        return np.arange(checks.positive_int("seeds", seeds), dtype=np.uint32)
    _num_seeds(seeds)
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
    max_epochs: int | None = None,
    batch_size: int | None = None,
    sigma: float = 0.01,
    gradient_clip_val: float | None = None,
    shuffle: bool | None = None,
    per_step: bool = False,
    config: TrainConfig | None = None,
) -> SweepResult:
    """Trains one linear model per (learning rate, seed), all in one compiled call.

    Configuration ``(lr, seed)`` is exactly

        init_key, shuffle_key = config_keys(key, seed)
        fit(init_params(init_key, d, sigma), train, val, lr=lr, key=shuffle_key,
            max_epochs=max_epochs, batch_size=batch_size, shuffle=shuffle,
            gradient_clip_val=gradient_clip_val)

    except that a diverging configuration does not raise: it is flagged in
    ``diverged`` (its NaNs stay in its own lane of the arrays, the others are
    unaffected) and ``select`` ignores it.

    Compilation: ``max_epochs``, ``batch_size``, ``sigma``, ``shuffle`` and
    ``per_step`` are static, and so are the shapes (number of learning rates,
    of seeds, of examples): a new value of any of them compiles a new program
    (seconds). The values of ``lrs``, ``seeds``, ``key``, the data and
    ``gradient_clip_val`` are traced: a second sweep with the same shapes
    reuses the compiled program.

    Memory: the compiled program stacks every step's loss, so it holds
    ``L * S * max_epochs * steps`` floats whatever ``per_step`` says;
    a grid that cannot fit in this machine's memory is refused before
    anything is allocated (``grid_values`` counts it);
    ``per_step=False`` only returns their per-epoch means (``(L, S, epochs)``)
    instead of copying them all to the host. Per seed, one permutation of the
    ``n`` training examples per epoch (shared by its learning rates), and
    the epoch's shuffled copy of the data, ``n * d`` floats per seed (``fit``
    gathers wide rows batch by batch instead).

    Args:
      train, val: ``(X, y)`` pairs, ``X: (n, d)``, ``y: (n,)`` or ``(n, 1)``;
        ``val`` (required) is what learning rates are compared on.
      test: optional held-out ``(X, y)``; its loss is computed once per
        configuration after training, for the final report of ``select``.
      lrs: ``L >= 1`` learning rates, finite and > 0, in a 1-D sequence or array.
      seeds: a count ``S`` (seeds ``0 .. S-1``) or distinct ints in ``[0, 2**32)``.
      key: the root ``jax.random.key``; seed ``s`` uses ``config_keys(key, s)``.
      max_epochs, batch_size, gradient_clip_val, shuffle, config: as in ``fit``
        (a ``TrainConfig``, whose fields these override). Its ``lr`` is
        replaced by ``lrs``; its engine must be ``"scan"``, the one a sweep
        runs (vectorised over the grid).
      sigma: std of the initial weights, as in ``init_params``.
      per_step: return every step's batch loss, ``(L, S, epochs, steps)``.

    Returns:
      A ``SweepResult`` with arrays indexed ``[lr index, seed index, ...]``.

    Raises:
      ValueError, TypeError: bad arguments (named), before any training.

    Example:
      >>> import jax
      >>> import jaxlin
      >>> data = jaxlin.synthetic_splits(jax.random.key(0), num_test=1000)
      >>> result = jaxlin.sweep(data.train, data.val, data.test, lrs=[0.01, 0.03, 0.1],
      ...                       seeds=4, key=jax.random.key(1))
      >>> result.val_loss.shape, jaxlin.sweeps.select(result).lr
      ((3, 4, 3), 0.1)
    """
    configs.refuse_traced("jaxlin.sweep", lrs)  # the arrays are checked with the data, below
    config = configs.make_config(
        config, max_epochs=max_epochs, batch_size=batch_size, shuffle=shuffle,
        gradient_clip_val=gradient_clip_val,
    )  # fmt: skip
    if config.engine != "scan":
        raise ValueError(
            f"engine={config.engine!r}: a sweep runs its own vectorised scan engine; "
            "use engine='scan'"
        )
    if val is None:
        raise ValueError("val is required: learning rates are compared on its loss")
    (X, y), val, test, key = configs.checked_run(
        "jaxlin.sweep", None, train, val, config, key, test=test, key_needed=True
    )
    lrs = _check_lrs(lrs)
    for lr in lrs:
        checks.representable("lrs", float(lr), X.dtype)
    check_grid_memory(
        lrs.size, max(_num_seeds(seeds), 1), X.shape[0], X.shape[1],
        max_epochs=config.max_epochs, batch_size=config.batch_size, dtype=X.dtype,
    )  # fmt: skip
    seeds = _check_seeds(seeds)
    sigma = checks.finite_float("sigma", sigma, nonnegative=True)
    per_step = checks.boolean("per_step", per_step)
    clip = config.clip

    params, train_loss, val_loss, test_loss, diverged = _compiled_grid(
        jnp.asarray(seeds),
        jnp.asarray(lrs, X.dtype),
        None if clip is None else jnp.asarray(clip, X.dtype),  # None: no clipping code
        key,
        X,
        y,
        val,
        test,
        batch_size=config.batch_size,
        shuffle=config.shuffle,
        num_epochs=config.max_epochs,
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

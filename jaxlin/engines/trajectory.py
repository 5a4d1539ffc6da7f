"""Every step's parameters of a run, recorded inside the compiled program.

``fit`` returns only the final parameters and the losses; to draw the path SGD
takes through parameter space we need the parameters after every step. A
Python loop with one host read per step would record them too, but slowly and
not from the program ``fit`` runs. Here the run is the compiled engine's own
epochs (``epoch_order``, ``scan_batches``, ``jaxlin.train.step``) with one
change: each step emits its new parameters instead of its loss, and
``lax.scan`` stacks them. One jitted call, one read at the end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxlin import config as configs
from jaxlin.config import TrainConfig
from jaxlin.engines import compiler
from jaxlin.engines.compiled import epoch_order, fused_loss, scan_batches
from jaxlin.model import Params
from jaxlin.train import step


def flatten(params: Params) -> jax.Array:
    """``{"w": (d, 1), "b": (1,)}`` as one vector ``[w_1, ..., w_d, b]``, shape ``(d + 1,)``."""
    return jnp.concatenate([params["w"].reshape(-1), params["b"].reshape(-1)])


def _record(params, X, y, key, lr, clip, *, batch_size: int, shuffle: bool, epochs: int):
    """``epochs`` epochs of the compiled engine's SGD; every step's flat params, stacked."""
    n = X.shape[0]

    def update(p, batch):
        p, _ = step(p, *batch, lr, clip, loss=fused_loss)  # the step fit's scan engine takes
        return p, flatten(p)

    def epoch(p, e):
        order = epoch_order(key, e, n, shuffle)[:n]
        return scan_batches(update, p, (X[order], y[order]), batch_size)

    _, path = jax.lax.scan(epoch, params, jnp.arange(epochs))  # (epochs, steps, d + 1)
    return jnp.concatenate([flatten(params)[None], path.reshape(-1, path.shape[-1])])


_jit_record = compiler.jit(_record, static_argnames=("batch_size", "shuffle", "epochs"))


def trajectory(
    params: Params,
    train: tuple[ArrayLike, ArrayLike],
    *,
    key: jax.Array | None = None,
    config: TrainConfig | None = None,
    **overrides,
) -> jax.Array:
    """The parameters after every SGD step of ``fit(params, train, key=key, config=config)``.

    Row 0 is ``params`` itself, row ``k`` the parameters after step ``k``, each
    as ``[w_1, ..., w_d, b]``. The last row is what ``fit`` returns for the same
    config and key (to float rounding): the same batches in the same order,
    the same step. The learning rate is traced, so runs that differ only in
    ``lr`` share one compiled program; the batch size and the number of epochs
    are static. Memory grows with the number of steps: it is for small
    problems, to look at.

    Args:
      params: ``{"w": (d, 1), "b": (1,)}``, the starting point.
      train: ``(X, y)`` with ``X: (n, d)``, ``y: (n,)`` or ``(n, 1)``.
      key: the shuffling key, as in ``fit`` (required when shuffling).
      config: a ``TrainConfig`` (the engine field is ignored: every engine
        takes the same steps); keyword ``overrides`` (``lr=...``,
        ``batch_size=...``) replace its fields.

    Returns:
      ``(max_epochs * ceil(n / batch_size) + 1, d + 1)`` array.

    Example:
      >>> import jax
      >>> import jaxlin
      >>> key_data, key_init, key = jax.random.split(jax.random.key(0), 3)
      >>> data = jaxlin.synthetic_splits(key_data)  # 1000 training examples
      >>> params = jaxlin.init_params(key_init, 2)
      >>> path = jaxlin.trajectory(params, data.train, key=key, lr=0.03, max_epochs=3)
      >>> path.shape  # 3 epochs of 32 steps, and the start
      (97, 3)
    """
    config = configs.make_config(config, **overrides)
    (X, y), _, _, key = configs.checked_run("jaxlin.trajectory", params, train, None, config, key)
    run_key = configs.placeholder_key() if key is None else key  # unused without shuffling
    return _jit_record(
        params, X, y, run_key, config.lr, config.clip,
        batch_size=config.batch_size, shuffle=config.shuffle, epochs=config.max_epochs,
    )  # fmt: skip

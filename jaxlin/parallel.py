"""Data parallelism on JAX's own machinery: a 1-D device mesh, sharded batches.

The compiled engine (``jaxlin.engines.run_epochs``) runs unchanged; the only
difference is where the arrays live:

* a mesh with one axis, ``"data"``, over the devices (all local devices, or
  every device of every process after ``initialize_distributed``);
* the training data and the parameters replicated on every device;
* each gathered minibatch constrained to ``P("data")``: device ``i`` gets rows
  ``i * B/D .. (i + 1) * B/D`` of the batch, computes its share of the
  gradient, and XLA inserts the all-reduce that sums the shares. SGD then
  updates the (replicated) parameters identically everywhere.

So the result is single-device training on the same key, up to the order of
floating-point sums (tested to 1e-5). ``batch_size`` must divide by the
number of devices (the error lists the sizes that do). The lecture's smaller last
batch (``n % batch_size`` examples) is sharded too when it divides, and is
otherwise computed whole on every device: one replicated step per epoch,
still correct.

Multi-host: call ``initialize_distributed()`` first in every process (it reads
``JAXLIN_COORDINATOR``, ``JAXLIN_NUM_PROCESSES``, ``JAXLIN_PROCESS_ID``); the
mesh then spans all processes' devices, and arrays are assembled from each
process's data with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

from jaxlin import checks
from jaxlin import config as configs
from jaxlin.config import TrainConfig
from jaxlin.engines.compiled import epochs_program, read_record
from jaxlin.model import Params
from jaxlin.trainer import EpochEnd, History, run_loop

DATA = "data"  # the mesh axis minibatches are split over


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """``jax.distributed.initialize`` from arguments or ``JAXLIN_*`` variables.

    Args:
      coordinator: ``"host:port"`` of process 0 (else ``$JAXLIN_COORDINATOR``).
      num_processes: number of processes (else ``$JAXLIN_NUM_PROCESSES``).
      process_id: this process, ``0 .. num_processes - 1`` (else ``$JAXLIN_PROCESS_ID``).

    Returns:
      ``True`` if JAX's distributed runtime was started, ``False`` when nothing
      was configured (a single process: nothing to do). Call it before any
      other JAX work.
    """
    env = os.environ
    coordinator = coordinator or env.get("JAXLIN_COORDINATOR")
    if coordinator is None:
        return False
    try:
        num_processes = int(num_processes or env["JAXLIN_NUM_PROCESSES"])
        process_id = int(process_id if process_id is not None else env["JAXLIN_PROCESS_ID"])
    except KeyError as err:
        raise ValueError(f"JAXLIN_COORDINATOR is set but {err.args[0]} is not") from None
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} not in [0, {num_processes})")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    return True


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh ``("data",)`` over the first ``num_devices`` devices (default: all).

    The axis is ``AxisType.Auto``: shardings are constraints that XLA's
    partitioner propagates (``jax.make_mesh`` alone now defaults to Explicit).
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    num_devices = checks.positive_int("num_devices", num_devices)
    if num_devices > len(devices):
        raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
    return jax.make_mesh(
        (num_devices,), (DATA,), axis_types=(AxisType.Auto,), devices=devices[:num_devices]
    )


def valid_batch_sizes(num_devices: int, near: int, count: int = 5) -> list[int]:
    """Batch sizes that split evenly over ``num_devices``, the ``count`` nearest to ``near``."""
    mid = near // num_devices
    sizes = [m * num_devices for m in range(max(1, mid - count), mid + count + 1)]
    return sorted(sorted(sizes, key=lambda m: abs(m - near))[:count])


@dataclasses.dataclass(frozen=True)
class ShardBatch:
    """``run_epochs``'s ``constrain`` hook: a batch's rows split over the ``data`` axis.

    Hashable (a static argument of ``jit``). A batch whose length does not
    divide by the axis size (a smaller last batch) is left to XLA, which
    computes it replicated.
    """

    sharding: NamedSharding

    def __call__(self, batch: jax.Array) -> jax.Array:
        if batch.shape[0] % self.sharding.mesh.shape[DATA]:
            return batch
        return jax.lax.with_sharding_constraint(batch, self.sharding)


def replicate(mesh: Mesh, tree):
    """Every leaf of ``tree`` (host arrays, equal in every process) on every device of ``mesh``."""
    sharding = NamedSharding(mesh, jax.P())
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree
    )


def fit_data_parallel(
    params: Params,
    train: tuple,
    val: tuple | None = None,
    *,
    mesh: Mesh | None = None,
    lr: float | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    key: jax.Array | None = None,
    shuffle: bool | None = None,
    gradient_clip_val: float | None = None,
    callback: Callable[[EpochEnd], None] | None = None,
    config: TrainConfig | None = None,
) -> tuple[Params, History]:
    """``jaxlin.fit`` (scan engine) run data-parallel over ``mesh``: the same result.

    Args:
      params, train, val, lr, max_epochs, batch_size, key, shuffle,
        gradient_clip_val, callback, config: as in ``jaxlin.fit``. In a
        multi-process run every process passes the same values (e.g. drawn
        from the same key).
      mesh: a mesh with a ``"data"`` axis; default ``data_mesh()`` (all devices).

    Returns:
      ``(params, history)`` as ``fit``; the parameters are replicated global
      arrays (``np.asarray`` reads them in any process).

    Raises:
      ValueError: ``batch_size`` does not divide by the number of devices (the
        message lists sizes that do), or any of ``fit``'s argument errors.

    Example:
      >>> import jax
      >>> import jaxlin
      >>> from jaxlin.parallel import data_mesh, fit_data_parallel
      >>> data = jaxlin.synthetic_splits(jax.random.key(0))
      >>> params = jaxlin.init_params(jax.random.key(1), 2)
      >>> mesh = data_mesh()                       # all local devices (one is enough)
      >>> params, hist = fit_data_parallel(params, data.train, mesh=mesh, batch_size=32,
      ...                                  key=jax.random.key(2))
      >>> hist.train_loss.shape  # 3 epochs of 32 batches
      (3, 32)
    """
    configs.refuse_traced("jaxlin.fit_data_parallel", lr)
    config = configs.make_config(
        config, lr=lr, max_epochs=max_epochs, batch_size=batch_size, shuffle=shuffle,
        gradient_clip_val=gradient_clip_val,
    )  # fmt: skip
    if config.engine != "scan":
        raise ValueError(f"fit_data_parallel runs the scan engine, got engine={config.engine!r}")
    mesh = data_mesh() if mesh is None else mesh
    if DATA not in mesh.shape or len(mesh.shape) != 1:
        raise ValueError(f"mesh must have one axis named {DATA!r}, got {dict(mesh.shape)}")
    num_devices = mesh.shape[DATA]
    if num_devices > 1 and mesh.devices.flat[0].platform == "cpu":  # host devices: their copies
        checks.training_memory("train", train, host_devices=num_devices)
    (X, y), val, _, key = configs.checked_run(
        "jaxlin.fit_data_parallel", params, train, val, config, key
    )
    if config.batch_size % num_devices:
        raise ValueError(
            f"batch_size={config.batch_size} does not split over {num_devices} devices; use a "
            f"multiple of {num_devices}, e.g. {valid_batch_sizes(num_devices, config.batch_size)}"
        )
    key = configs.placeholder_key() if key is None else key  # unused without shuffling

    params, X, y, val = replicate(mesh, (params, X, y, val))
    key = jax.random.wrap_key_data(replicate(mesh, jax.random.key_data(key)))
    clip = None if config.clip is None else np.asarray(config.clip, X.dtype)
    lr_a, clip_a = replicate(mesh, (np.asarray(config.lr, X.dtype), clip))
    constrain = ShardBatch(NamedSharding(mesh, jax.P(DATA)))

    def run(params, epoch, count):
        program = epochs_program(config.batch_size, config.shuffle, count, constrain=constrain)
        params, record = program(params, X, y, val, key, epoch, lr_a, clip_a)
        return params, *read_record(record, count)

    return run_loop(
        run, params, first=0, stop=config.max_epochs, per_epoch=callback is not None,
        lr=config.lr, has_val=val is not None, callback=callback,
    )  # fmt: skip

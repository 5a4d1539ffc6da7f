"""``fit_stream``: ``jaxlin.fit`` on a folder of shards, a block of minibatches at a time.

``fit_stream`` shuffles with the same keyed permutation of the whole index
space as ``jaxlin.fit`` (``permutation(fold_in(key, epoch), n)``), computed a
block at a time with ``permute_indices``: no ``n``-sized array is ever made.
A block is ``block_batches`` consecutive minibatches of that order. Its rows
are read sorted into contiguous memory (``jaxlin.stream.reader``), and each
minibatch is gathered from it on the device through the read's positions, so
the batches are those of ``fit`` on the same data and key, and so is the
result (to float rounding: the block programs are other XLA programs than
``fit``'s epoch). A background thread reads the next blocks while the device
trains on the current one; the training thread dispatches the index blocks
a few blocks ahead, since the device runs programs in the order they are
dispatched. Blocks go into a ring of buffers, reused once the steps that
read them are done. Every example is used exactly once per epoch. Up to
1 GiB the data is held in memory once read; above it, peak memory is the
``prefetch + 2`` buffers, not the data.

``fit``'s order costs a random read per row. With ``order="runs"`` the
shuffle is ``jaxlin.shuffle.permute_runs`` instead: shuffled runs of 64
consecutive examples, read across, so a block of 1,024 runs is 1,024
stretches of the files, each read at once (held in memory: one gather of
``(64, d)`` slabs per shard), and a minibatch draws from distinct runs (but
in the epoch's last block): a coarser shuffle than ``fit``'s, read faster
(``benchmarks/bench_stream.py``).
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import checks
from jaxlin import config as configs
from jaxlin.choices import ORDERS
from jaxlin.config import TrainConfig
from jaxlin.engines import compiler
from jaxlin.engines.compiled import fused_loss, scan_batches
from jaxlin.model import Params, loss_fn
from jaxlin.shuffle import epoch_key, permute_indices, permute_runs
from jaxlin.stream.format import Dataset, open_dataset
from jaxlin.stream.reader import ShardReader
from jaxlin.train import step
from jaxlin.trainer import EpochEnd, History, run_loop

RUN_LENGTH = 64  # examples per run of the "runs" order
RUNS_PER_BLOCK = 1024  # its blocks: 65,536 examples


def _full_run_block(n: int, block: tuple[int, int, int]) -> bool:
    """Whether a block of positions is exactly one block of ``RUNS_PER_BLOCK`` full runs.

    Position ``i * RUNS_PER_BLOCK + g`` of such a block is row ``i`` of its run
    ``g`` (``permute_runs``), so it can be read as whole runs.
    """
    start, k, b = block
    size = RUN_LENGTH * RUNS_PER_BLOCK
    full_blocks = n // RUN_LENGTH // RUNS_PER_BLOCK
    return k * b == size and start % size == 0 and start // size < full_blocks


@functools.partial(jax.jit, static_argnames=("size", "n", "order"))
def _positions_to_indices(key, start, *, size, n, order="exact"):
    """``order(key, n)[start : start + size]`` without the rest of it."""
    positions = start + jnp.arange(size, dtype=jnp.int32)
    if order == "runs":
        return permute_runs(key, positions, n, RUN_LENGTH, RUNS_PER_BLOCK)
    return permute_indices(key, positions, n)


def _epoch_plan(n: int, batch_size: int, block_batches: int) -> list[tuple[int, int, int]]:
    """An epoch's blocks: ``(first position, batches, batch size)``; the last small batch alone.

    The batches are those ``jaxlin.data.split_batches`` cuts an epoch into,
    grouped ``block_batches`` at a time.
    """
    full, rest = divmod(n, batch_size)
    plan = [
        (first * batch_size, min(block_batches, full - first), batch_size)
        for first in range(0, full, block_batches)
    ]
    return [*plan, (full * batch_size, 1, rest)] if rest else plan


def _block_indices(ekey, n: int, block: tuple[int, int, int], order: str):
    """A block's example indices ``(k, B)``: a device array (dispatched, not waited for)."""
    start, k, b = block
    if ekey is None:
        return np.arange(start, start + k * b, dtype=np.int64).reshape(k, b)
    return _positions_to_indices(ekey, start, size=k * b, n=n, order=order).reshape(k, b)


def epoch_blocks(
    data: Dataset,
    key: jax.Array | None,
    epoch: int,
    batch_size: int,
    block_batches: int,
    order: str = "exact",
) -> Iterator[np.ndarray]:
    """An epoch's example indices, one block at a time: ``(k, batch_size)`` or ``(1, rest)``.

    With ``order="exact"`` the concatenation of all blocks is
    ``permutation(fold_in(key, epoch), n)``: ``fit``'s order, a block at a time.
    With ``"runs"`` it is ``permute_runs`` of the same key (runs of
    ``RUN_LENGTH`` examples, blocks of ``RUNS_PER_BLOCK`` runs). Without a key,
    ``arange(n)``. The last full-batch block may hold fewer batches; the lecture's
    smaller last batch (``n % batch_size``) comes last, alone.
    """
    n = data.num_examples
    ekey = None if key is None else epoch_key(key, epoch)
    for block in _epoch_plan(n, batch_size, block_batches):
        yield np.asarray(_block_indices(ekey, n, block, order))


def _prefetch(make: Iterator, depth: int) -> Iterator:
    """Run ``make`` in a background thread, ``depth`` items ahead (double buffering: 1)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer left early

    def worker():
        try:
            for item in make:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)

    thread = threading.Thread(target=worker, daemon=True, name="jaxlin-prefetch")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


@compiler.jit
def _scan_block(params, X, y, where, lr, clip):
    """Minibatch SGD over a block read sorted; ``(params, (k,) losses)``.

    ``X: (m, d)``, ``y: (m, 1)`` are the block's rows sorted by index, and
    ``where: (k, B)`` its minibatches as positions in them (``read_sorted``):
    each step gathers its batch on the device, as ``fit`` gathers from ``X``.
    """

    def gather(w):
        return X.at[w].get(mode="promise_in_bounds"), y.at[w].get(mode="promise_in_bounds")

    def update(p, batch):
        return step(p, *batch, lr, clip, loss=fused_loss)

    return scan_batches(update, params, where.reshape(-1), where.shape[1], take=gather)


def fit_stream(
    params: Params,
    data: str | os.PathLike | Dataset,
    val: tuple | None = None,
    *,
    lr: float | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    key: jax.Array | None = None,
    shuffle: bool | None = None,
    gradient_clip_val: float | None = None,
    block_batches: int | None = None,
    prefetch: int = 2,
    callback: Callable[[EpochEnd], None] | None = None,
    order: str = "exact",
    config: TrainConfig | None = None,
) -> tuple[Params, History]:
    """``jaxlin.fit`` on a folder of shards, streamed: the same batches, ``fit``'s result.

    Args:
      params, val, lr, max_epochs, batch_size, key, shuffle, gradient_clip_val,
        callback, config: as in ``jaxlin.fit`` (``val`` is an in-memory ``(X, y)``;
        the engine is the compiled one).
      data: a folder (checked with ``open_dataset`` before any training) or a
        ``Dataset``. Each shard file is checked again before and after the
        reads of it, and reads are positional (no memory map): one truncated,
        replaced or rewritten during the run, even during a read, is a
        ``ValueError`` naming it. Rows are checked as they are read: a NaN or
        Inf (or, with x64 off, a float64 value beyond float32's range) is a
        ``ValueError`` naming the shard file and its row, not a divergence.
      block_batches: minibatches per block read from disk (default: about
        65,536 examples per block).
      prefetch: blocks read ahead by the background thread (>= 1).
      order: ``"exact"``: ``fit``'s permutation, so the result is ``fit``'s, to
        rounding (each row a random read); ``"runs"``:
        ``jaxlin.shuffle.permute_runs``, shuffled runs of 64 consecutive
        examples read across (a minibatch from distinct runs, but for the
        epoch's last block): a coarser shuffle, read faster.

    Returns:
      ``(params, history)`` as ``fit``.

    Example:
      >>> import jax
      >>> import jaxlin
      >>> from jaxlin.stream import fit_stream, generate_shards
      >>> dataset = generate_shards(jax.random.key(0), "data", 10_000, shards=4)
      >>> params, hist = fit_stream(jaxlin.init_params(jax.random.key(1), 2), "data",
      ...                           key=jax.random.key(2))
      >>> hist.train_loss.shape  # 3 epochs of 313 batches of 32 (the last one of 16)
      (3, 313)
    """
    if checks.is_traced(lr):  # the arrays are checked with the data, below
        configs.refuse_traced("jaxlin.fit_stream", lr)
    config = configs.make_config(
        config, lr=lr, max_epochs=max_epochs, batch_size=batch_size, shuffle=shuffle,
        gradient_clip_val=gradient_clip_val,
    )  # fmt: skip
    if not isinstance(data, (Dataset, str, os.PathLike)):
        raise TypeError(f"data must be a dataset folder or a Dataset, got {type(data).__name__}")
    if not isinstance(data, Dataset):
        data = open_dataset(data)
    if checks.params(params) != data.num_features:
        raise ValueError(
            f"{data.root}: {data.num_features} features but params['w'] expects "
            f"{checks.params(params)}"
        )
    _, val, _, key = configs.checked_run("jaxlin.fit_stream", params, data.spec(), val, config, key)
    batch_size = config.batch_size
    if block_batches is None:
        block_batches = max(1, (1 << 16) // batch_size)
    block_batches = checks.positive_int("block_batches", block_batches)
    prefetch = checks.positive_int("prefetch", prefetch)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    lr, clip_arg = config.lr, config.clip

    n = data.num_examples
    plan = _epoch_plan(n, batch_size, block_batches)
    rows = max(k * b for _, k, b in plan)  # the largest block (block_batches may exceed n)
    row_values = data.num_features + 1
    checks.fits_in_memory("block_batches", block_batches, rows * row_values, data.dtype)
    checks.fits_in_memory("prefetch", prefetch, (prefetch + 2) * rows * row_values, data.dtype)
    reader = ShardReader(data)
    # The device runs programs in the order they are dispatched, so an index
    # block asked for by the reader thread would wait behind every SGD block
    # already queued. This thread dispatches them instead, a few blocks ahead
    # of the steps that follow, and the reader only waits for its own.
    indices: queue.SimpleQueue = queue.SimpleQueue()
    upcoming = (
        (None if key is None else epoch_key(key, epoch), block)
        for epoch in range(config.max_epochs)
        for block in plan
    )

    def dispatch(count: int) -> None:
        for ekey, block in itertools.islice(upcoming, count):
            indices.put((block, _block_indices(ekey, n, block, order)))

    # Blocks are read into a ring of buffers, reused once the steps that read
    # them are done (``done`` gets each block's losses, in order): fresh
    # buffers would cost a page fault per 4 KiB, as much as reading the rows.
    ring = [reader.read_buffers(rows) for _ in range(prefetch + 2)]
    done: queue.SimpleQueue = queue.SimpleQueue()

    whole_runs = key is not None and order == "runs"  # unshuffled, the indices are in order

    def blocks():  # in the reader thread; None ends it
        for i in itertools.count():
            if i >= len(ring):  # wait until the steps on this buffer's last block are over
                if (used := done.get()) is None:
                    return
                used.block_until_ready()
            if (item := indices.get()) is None:
                return
            block, idx = item[0], np.asarray(item[1])
            if whole_runs and _full_run_block(n, block):  # RUNS_PER_BLOCK shuffled runs
                X, y, rank = reader.read_runs(
                    idx.reshape(-1)[:RUNS_PER_BLOCK], RUN_LENGTH, ring[i % len(ring)]
                )
                where = rank * RUN_LENGTH + np.arange(RUN_LENGTH)[:, None]  # position i * G + g
            else:
                X, y, where = reader.read_sorted(idx, ring[i % len(ring)])
            yield jax.device_put((X, y, where.reshape(idx.shape).astype(np.int32)))

    dispatch(prefetch + 2)
    read = _prefetch(blocks(), prefetch)  # across epochs: no refill at each epoch's start

    def run(params, epoch, count):  # one epoch: its blocks, then the validation loss
        del epoch, count
        epoch_losses = []
        for _ in plan:
            X, y, where = next(read)
            dispatch(1)
            params, block_losses = _scan_block(params, X, y, where, lr, clip_arg)
            done.put(block_losses)
            epoch_losses.append(block_losses)
        val_loss = loss_fn(params, *val) if val is not None else np.nan
        return params, (jnp.concatenate(epoch_losses)[None], np.asarray([val_loss])), None

    try:
        return run_loop(
            run, params, first=0, stop=config.max_epochs, per_epoch=True, lr=lr,
            has_val=val is not None, callback=callback,
        )  # fmt: skip
    finally:
        indices.put(None)  # a reader waiting for an index block or a buffer stops
        done.put(None)
        read.close()
        reader.close()

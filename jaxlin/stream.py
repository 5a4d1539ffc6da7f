"""Data on disk: ``.npy`` shards with a JSON manifest, read in shuffled blocks.

The lecture's iterator needs all data in memory; d2l asks how to shuffle data
that lives on disk. Here:

* ``generate_shards`` writes the synthetic problem as ``X-00000.npy``,
  ``y-00000.npy``, ... plus ``manifest.json``, a chunk at a time: memory is
  bounded by ``chunk``, and row ``r`` depends only on the key and ``chunk``
  (not on the number of shards), so the same key gives the same files.
* ``open_dataset`` checks the manifest against every shard's ``.npy`` header
  and size before any training: a truncated, corrupted or mismatched file is
  a ``ValueError`` that names it.
* ``fit_stream`` shuffles with the *same* keyed permutation of the whole index
  space as ``jaxlin.fit`` (``permutation(fold_in(key, epoch), n)``), computed
  a block at a time with ``permute_indices``: no ``n``-sized array is ever
  made. A block is ``block_batches`` consecutive minibatches of that order.
  Its rows are read sorted (each shard front to back, so the reads move
  forward through the file) into contiguous memory, and each minibatch is
  gathered from it on the device through the read's positions, so the
  batches are those of ``fit`` on the same data and key, and so is the result:
  bit for bit in the configurations tested, to float rounding in general (the
  block programs are other XLA programs than ``fit``'s epoch, and for some
  batch sizes a step's last bit rounds apart, as between ``fit``'s own engines).
  A background thread reads the next blocks while the device trains on the
  current one; the training thread dispatches the index blocks a few blocks
  ahead (the device runs programs in order: asked for by the reader, an index
  block would wait behind every queued SGD block). Blocks go into a ring of
  64-byte aligned buffers, reused once the steps that read them are done:
  ``jax.device_put`` takes them without a copy on the CPU, and no fresh page
  is faulted in per block.

Every example is used exactly once per epoch (a permutation; tested by
counting), and peak memory is the prefetch buffers (``prefetch + 2`` blocks),
not the data: once the dataset is larger than ``ShardReader``'s budget
(1 GiB), mapped shard pages are handed back to the kernel as soon as each
piece of a read is copied.

``fit``'s order costs a random read, and so a page fault (or at best a TLB
miss), per row. With ``order="runs"`` the shuffle is
``jaxlin.shuffle.permute_runs`` instead: shuffled runs of 64 consecutive
examples, read across, so a block of 1,024 runs is 1,024 stretches of the
files, read per shard as one gather of ``(64, d)`` slabs (a block straddles
two such blocks when the batch size does not divide 65,536, and is then read
row by row), and a minibatch draws from distinct runs (but in the epoch's
last block). A coarser shuffle than ``fit``'s, at 1.6-2.1x its streaming
throughput (``benchmarks/bench_stream.py``).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import checks, compiler
from jaxlin.data import SEED_B, SEED_W, synthetic_data
from jaxlin.model import Params, loss_fn
from jaxlin.shuffle import epoch_key, permute_indices, permute_runs
from jaxlin.train import EpochEnd, History, _check_finite, _step

MANIFEST = "manifest.json"
FORMAT = "jaxlin-shards/1"


class Shard(NamedTuple):
    """One shard: its two files and its number of rows."""

    X: Path
    y: Path
    num_examples: int


class Dataset(NamedTuple):
    """A checked folder of shards (from ``open_dataset``)."""

    root: Path
    shards: tuple[Shard, ...]
    num_examples: int
    num_features: int
    dtype: np.dtype
    w: np.ndarray | None  # the true parameters, when the manifest has them
    b: float | None

    @property
    def offsets(self) -> np.ndarray:
        """``(num_shards + 1,)`` first global row of each shard, then ``num_examples``."""
        return np.concatenate([[0], np.cumsum([s.num_examples for s in self.shards])])


# --------------------------------------------------------------------------- writing


def _split(n: int, parts: int) -> list[int]:
    """``n`` rows into ``parts`` near-equal counts (the first ones one larger)."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def generate_shards(
    key: jax.Array,
    out_dir: str | os.PathLike,
    num_examples: int,
    d: int = 2,
    shards: int = 1,
    w=None,
    b: float | None = None,
    noise: float = 0.01,
    chunk: int = 1 << 16,
    dtype=np.float32,
) -> Dataset:
    """Write ``y = X w + b + noise`` as ``.npy`` shards and a manifest; bounded memory.

    Args:
      key: ``jax.random.key``; chunk ``c`` (rows ``c * chunk ..``) is drawn
        from ``fold_in(key, c)``, so the files do not depend on ``shards``.
      out_dir: folder to write (created; existing shard files are replaced).
      num_examples: total rows ``n``.
      d: features. ``w`` defaults to the lecture's ``[2, -3.4]`` when ``d == 2``,
        else to ``N(0, 1)`` draws from the key; ``b`` to 4.2.
      shards: number of files per array (near-equal rows).
      chunk: rows generated at a time (memory: ``chunk * (d + 1)`` values).
      dtype: float32 or float64.

    Returns:
      the ``Dataset`` as ``open_dataset(out_dir)`` reads it.
    """
    key = checks.key("key", key)
    n = checks.positive_int("num_examples", num_examples)
    d = checks.positive_int("d", d)
    shards = checks.positive_int("shards", shards)
    chunk = checks.positive_int("chunk", chunk)
    dtype = np.dtype(dtype)
    if dtype not in checks.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if shards > n:
        raise ValueError(f"shards={shards} is more than num_examples={n}")
    key_w, key_data = jax.random.split(key)
    if w is None:
        w = SEED_W if d == 2 else np.asarray(jax.random.normal(key_w, (d,)))
    w = np.asarray(w, np.float64).reshape(-1)
    if w.shape != (d,):
        raise ValueError(f"w has {w.size} values but d={d}")
    b = SEED_B if b is None else checks.finite_float("b", b)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # no manifest until every shard is complete

    counts = _split(n, shards)
    names = [(f"X-{i:05d}.npy", f"y-{i:05d}.npy") for i in range(shards)]
    starts = np.concatenate([[0], np.cumsum(counts)])
    with jax.default_device(jax.devices("cpu")[0]):
        w_dev = jnp.asarray(w, dtype)
        for i, (x_name, y_name) in enumerate(names):
            X_mm = np.lib.format.open_memmap(out / x_name, "w+", dtype, (counts[i], d))
            y_mm = np.lib.format.open_memmap(out / y_name, "w+", dtype, (counts[i],))
            row = int(starts[i])
            while row < starts[i + 1]:  # the chunk holding `row`, clipped to this shard
                c = row // chunk
                lo, hi = c * chunk, min((c + 1) * chunk, n)
                Xc, yc = synthetic_data(jax.random.fold_in(key_data, c), w_dev, b, hi - lo, noise)
                take = slice(row - lo, min(hi, int(starts[i + 1])) - lo)
                rows = slice(row - int(starts[i]), row - int(starts[i]) + take.stop - take.start)
                X_mm[rows] = np.asarray(Xc)[take]
                y_mm[rows] = np.asarray(yc)[take, 0]
                row += take.stop - take.start
            X_mm.flush()
            y_mm.flush()
            del X_mm, y_mm
    manifest = {
        "format": FORMAT,
        "num_examples": n,
        "num_features": d,
        "dtype": dtype.name,
        "shards": [
            {"X": x, "y": y, "num_examples": c} for (x, y), c in zip(names, counts, strict=True)
        ],
        "w": w.tolist(),
        "b": b,
        "noise": noise,
        "chunk": chunk,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / MANIFEST)
    return open_dataset(out)


# --------------------------------------------------------------------------- checking


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, checking the file's size matches."""
    if not path.is_file():
        raise ValueError(f"{path}: missing shard file")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (ValueError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from None
    if fortran:
        raise ValueError(f"{path}: Fortran-ordered arrays are not supported; save C-ordered")
    expected = offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise ValueError(
            f"{path}: {size} bytes but its header ({shape}, {dtype}) needs {expected}: "
            f"{'truncated' if size < expected else 'trailing bytes'}"
        )
    return shape, dtype


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Read and check ``path/manifest.json`` and every shard's header and size.

    The manifest: ``{"num_examples": n, "num_features": d, "dtype": "float32",
    "shards": [{"X": "X-0.npy", "y": "y-0.npy", "num_examples": n0}, ...]}``
    (``w`` and ``b``, the true parameters, optional). ``X`` files are
    ``(rows, d)``, ``y`` files ``(rows,)`` or ``(rows, 1)``, all of ``dtype``.

    Raises:
      ValueError: naming the file, for anything that disagrees (missing or
        truncated file, wrong dtype or width, X and y lengths that differ, a
        manifest whose counts do not match the files).
    """
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ValueError(f"{mpath}: no manifest (write one, or use `jaxlin generate`)")
    try:
        m = json.loads(mpath.read_text())
        n, d = int(m["num_examples"]), int(m["num_features"])
        dtype = np.dtype(m["dtype"])
        entries = [(e["X"], e["y"], int(e["num_examples"])) for e in m["shards"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{mpath}: malformed manifest ({type(err).__name__}: {err})") from None
    if dtype not in checks.FLOAT_DTYPES:
        raise ValueError(f"{mpath}: dtype must be float32 or float64, got {dtype}")
    if not entries or n < 1 or d < 1:
        raise ValueError(f"{mpath}: needs num_examples >= 1, num_features >= 1 and shards")
    shards = []
    for x_name, y_name, count in entries:
        X_path, y_path = root / x_name, root / y_name
        (xs, xt), (ys, yt) = _npy_header(X_path), _npy_header(y_path)
        for p, t in ((X_path, xt), (y_path, yt)):
            if t != dtype:
                raise ValueError(f"{p}: dtype {t}, but the manifest says {dtype}")
        if len(xs) != 2 or xs[1] != d:
            raise ValueError(f"{X_path}: shape {xs}, expected (rows, {d})")
        if len(ys) not in (1, 2) or (len(ys) == 2 and ys[1] != 1):
            raise ValueError(f"{y_path}: shape {ys}, expected (rows,) or (rows, 1)")
        if xs[0] != ys[0]:
            raise ValueError(f"{y_path}: {ys[0]} rows but {X_path.name} has {xs[0]}")
        if xs[0] != count or count < 1:
            raise ValueError(f"{X_path}: {xs[0]} rows, but the manifest says {count}")
        shards.append(Shard(X_path, y_path, count))
    if sum(s.num_examples for s in shards) != n:
        total = sum(s.num_examples for s in shards)
        raise ValueError(f"{mpath}: num_examples is {n} but the shards hold {total}")
    w = np.asarray(m["w"], np.float64) if m.get("w") is not None else None
    b = float(m["b"]) if m.get("b") is not None else None
    return Dataset(root, tuple(shards), n, d, dtype, w, b)


# --------------------------------------------------------------------------- reading


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype, align: int = 64) -> np.ndarray:
    """``np.empty`` starting on an ``align``-byte boundary.

    JAX's CPU backend takes a 64-byte aligned array without copying it
    (``jax.device_put`` aliases it); numpy's own allocations are only 16-byte
    aligned, and copying a block of 65,536 rows of 100 features cost as much
    as training on it.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + align, np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip : skip + size].view(dtype).reshape(shape)


def _argsort(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, idx[order])`` for indices in ``[0, 2**31)``: one sort of packed int64 keys.

    Each key is ``index << 32 | position``: sorting the keys sorts the indices
    (ties by position, as a stable argsort) and carries the positions along,
    about 2x faster than ``np.argsort`` on a block of 65,536.
    """
    keys = np.sort((idx.astype(np.int64) << 32) | np.arange(idx.size, dtype=np.int64))
    return keys & 0xFFFFFFFF, keys >> 32


class ShardReader:
    """Reads rows from a dataset's shards through memory maps kept open between reads.

    A read is cut into pieces of sorted rows of one shard, copied by
    ``threads`` threads (``np.take`` releases the GIL), so the page faults of
    a random read (one per row, the cost of reading from the page cache
    through a mapping) are taken on every core at once.

    Pages of a file mapping count in the process's resident memory. While the
    dataset is at most ``budget_bytes`` they stay mapped (every page is read
    from the page cache once); above it, each piece returns its own page range
    to the kernel once copied (``madvise(MADV_DONTNEED)``: the pages stay in
    the page cache, but leave this process), and at the end of the read the
    touched shards' whole mappings are handed back too. A fault maps more than
    its page: fault-around, and on recent kernels the whole large folio of the
    page cache (on ext4 with Linux 6.18, one block's sparse rows mapped nearly
    all of a 7.5 GiB dataset). So a piece also ends at every ``piece_bytes``
    of the file: peak RSS stays near ``threads * piece_bytes`` above the
    buffers, whatever the kernel maps per fault.
    """

    def __init__(
        self,
        data: Dataset,
        budget_bytes: int = 1 << 30,
        threads: int | None = None,
        piece_rows: int = 1024,
        piece_bytes: int = 64 << 20,
    ):
        self.data = data
        self.X = [np.load(s.X, mmap_mode="r") for s in data.shards]
        self.y = [np.load(s.y, mmap_mode="r").reshape(-1) for s in data.shards]
        size = data.num_examples * (data.num_features + 1) * data.dtype.itemsize
        self.release_each_read = size > budget_bytes
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.piece_rows = checks.positive_int("piece_rows", piece_rows)
        self.piece_bytes = checks.positive_int("piece_bytes", piece_bytes)
        self._pool = None
        if self.release_each_read:  # less read-ahead and fault-around, where the kernel obliges
            for mm in self._maps(range(len(self.X))):
                mm.madvise(mmap.MADV_RANDOM)

    def read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``idx`` (global, any order) as ``X: (m, d)``, ``y: (m, 1)``, in ``idx``'s order."""
        X, y, where = self.read_sorted(idx)
        return X[where], y[where]

    def read_sorted(
        self, idx: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``idx`` in sorted order, and where each asked-for row landed.

        Returns ``X: (m, d)``, ``y: (m, 1)`` and ``where: (m,)`` int32 with
        ``X[where[i]]`` the row ``idx[i]``. Sorted, each shard is read front to
        back into contiguous memory, a gather with no scatter; putting the rows
        back in ``idx``'s order is left to ``where`` (``fit_stream`` gathers each
        minibatch with it on the device). ``X`` and ``y`` are 64-byte aligned,
        so ``jax.device_put`` on the CPU takes them without a copy. ``out``:
        buffers ``(X, y)`` of at least ``m`` rows to fill (from ``read_buffers``)
        instead of new ones, whose first pages each cost a page fault.
        """
        idx = np.asarray(idx, np.int64).reshape(-1)
        m = idx.size
        order, sidx = _argsort(idx)
        if m and (sidx[0] < 0 or sidx[-1] >= self.data.num_examples):
            bad = sidx[0] if sidx[0] < 0 else sidx[-1]
            raise IndexError(f"idx: row {bad} is outside [0, {self.data.num_examples})")
        where = np.empty(m, np.int32)
        where[order] = np.arange(m, dtype=np.int32)
        offsets = self.data.offsets
        bounds = np.searchsorted(sidx, offsets)
        X, y = out if out is not None else self.read_buffers(m)
        X, y = X[:m], y[:m]

        def copy(piece):  # rows sidx[lo:hi], all in shard s, into X[lo:hi]
            s, lo, hi = piece
            local = sidx[lo:hi] - offsets[s]
            np.take(self.X[s], local, axis=0, out=X[lo:hi])
            np.take(self.y[s], local, out=y[lo:hi, 0])
            if self.release_each_read:
                self._release_rows(s, local[0], local[-1])

        pieces = [
            piece
            for s in range(len(self.data.shards))
            for piece in self._pieces(s, sidx, bounds, offsets)
        ]
        self._run(pieces, copy)
        if self.release_each_read:  # what fault-around mapped between and around pieces
            self.release([s for s in range(len(self.data.shards)) if bounds[s + 1] > bounds[s]])
        return X, y, where

    def _pieces(self, s: int, sidx, bounds, offsets) -> list[tuple[int, int, int]]:
        """Shard ``s``'s part of a sorted read as ``(s, lo, hi)`` pieces of ``sidx``.

        ``bounds``: where each shard starts in ``sidx``; ``offsets``: the
        dataset's (a property that builds its array on each access). When
        pages are handed back after each piece: at most ``piece_rows`` rows
        each, within one ``piece_bytes`` window of the file. Otherwise one per
        thread (at least ``piece_rows`` rows): fewer, larger copies.
        """
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        if hi == lo:
            return []
        if self.release_each_read:
            cuts = set(range(lo, hi, self.piece_rows))
            window = max(1, self.piece_bytes // self.X[s].strides[0])
            first, last = sidx[lo] - offsets[s], sidx[hi - 1] - offsets[s]
            edges = np.arange((first // window + 1) * window, last + 1, window)
            cuts.update(np.searchsorted(sidx, edges + offsets[s]).tolist())
        else:  # pieces only share the work out: one per thread
            cuts = set(range(lo, hi, max(self.piece_rows, -(-(hi - lo) // self.threads))))
        cuts = sorted(cuts)
        return [(s, a, b) for a, b in zip(cuts, [*cuts[1:], hi], strict=True)]

    def read_runs(
        self, starts: np.ndarray, length: int, out: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``length`` consecutive rows from each of ``starts``, sorted by start.

        Returns ``X: (r * length, d)``, ``y: (r * length, 1)`` and ``rank: (r,)``
        with rows ``starts[j] .. starts[j] + length - 1`` at ``X[rank[j] * length:]``.
        ``order="runs"`` reads its blocks so: a shard's runs are one gather of
        ``(length, d)`` slabs (a view of the shard cut into runs), not 65,536
        single rows, and no sort of them; a run across a shard's end (or, when
        pages are handed back, every run) is copied on its own.
        """
        starts = np.asarray(starts, np.int64).reshape(-1)
        length = checks.positive_int("length", length)
        if starts.size and (starts.min() < 0 or starts.max() + length > self.data.num_examples):
            raise IndexError(
                f"starts: runs of {length} rows from {starts.min()} to {starts.max()} "
                f"do not fit in [0, {self.data.num_examples})"
            )
        order = np.argsort(starts)
        rank = np.empty(starts.size, np.int64)
        rank[order] = np.arange(starts.size)
        first = starts[order]
        m = starts.size * length
        X, y = out if out is not None else self.read_buffers(m)
        X, y = X[:m], y[:m]
        offsets = self.data.offsets
        shard = np.searchsorted(offsets, first, side="right") - 1
        alone = np.ones(starts.size, bool)  # runs copied one by one
        if not self.release_each_read:
            inside = first + length <= offsets[shard + 1]
            for s in np.unique(shard[inside]).tolist():
                js = np.flatnonzero(inside & (shard == s))  # consecutive: sorted by start
                local = first[js] - offsets[s]
                phase = local[0] % length
                if js[-1] - js[0] + 1 != js.size or np.any(local % length != phase):
                    continue
                slabs = (self.data.shards[s].num_examples - phase) // length
                lo, hi = js[0] * length, (js[-1] + 1) * length
                ids = (local - phase) // length
                X_s = self.X[s][phase : phase + slabs * length]
                y_s = self.y[s][phase : phase + slabs * length]
                np.take(
                    X_s.reshape(slabs, length, -1),
                    ids,
                    axis=0,
                    out=X[lo:hi].reshape(js.size, length, -1),
                )
                np.take(
                    y_s.reshape(slabs, length),
                    ids,
                    axis=0,
                    out=y[lo:hi, 0].reshape(js.size, length),
                )
                alone[js] = False
        bounds = offsets.tolist()
        for j in np.flatnonzero(alone).tolist():
            row, at, left = int(first[j]), j * length, length
            s = int(shard[j])
            while left:  # a run may go on into the next shard(s)
                a = row - bounds[s]
                take = min(left, bounds[s + 1] - row)
                X[at : at + take] = self.X[s][a : a + take]
                y[at : at + take, 0] = self.y[s][a : a + take]
                if self.release_each_read:
                    self._release_rows(s, a, a + take - 1)
                row, at, left, s = row + take, at + take, left - take, s + 1
        if self.release_each_read:  # what the faults mapped beyond each run
            self.release()
        return X, y, rank

    def _run(self, pieces: list, copy: Callable) -> None:
        """``copy(piece)`` for every piece, on the reader's threads; a piece's error is raised."""
        if self.threads > 1 and len(pieces) > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="jaxlin-read")
            list(self._pool.map(copy, pieces))  # list(): re-raises a piece's error here
        else:
            for piece in pieces:
                copy(piece)

    def read_buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Empty 64-byte aligned ``X: (rows, d)``, ``y: (rows, 1)`` for ``read_sorted``."""
        return (
            _aligned_empty((rows, self.data.num_features), self.data.dtype),
            _aligned_empty((rows, 1), self.data.dtype),
        )

    def _release_rows(self, s: int, first: int, last: int) -> None:
        """Hand back the pages of shard ``s``'s rows ``first..last`` (X and y) to the kernel."""
        for a, row_bytes in ((self.X[s], self.X[s].strides[0]), (self.y[s], self.y[s].strides[0])):
            mm = getattr(a, "_mmap", None) or getattr(a.base, "_mmap", None)
            if mm is None:
                continue
            base = a.offset % mmap.ALLOCATIONGRANULARITY  # numpy maps from a granule boundary
            start, stop = base + first * row_bytes, base + (last + 1) * row_bytes
            start -= start % mmap.PAGESIZE
            mm.madvise(mmap.MADV_DONTNEED, start, min(stop, len(mm)) - start)

    def _maps(self, shards):
        for s in shards:
            for a in (self.X[s], self.y[s]):
                mm = getattr(a, "_mmap", None) or getattr(a.base, "_mmap", None)
                if mm is not None:
                    yield mm

    def release(self, shards=None) -> None:
        """Drop the mapped pages of ``shards`` (default all) from this process."""
        for mm in self._maps(range(len(self.X)) if shards is None else shards):
            mm.madvise(mmap.MADV_DONTNEED)  # the page cache keeps them

    def close(self) -> None:
        """Stop the copying threads (reads after this run on the calling thread)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self.threads = 1


def read_rows(data: Dataset, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` (global, any order) as ``X: (m, d)``, ``y: (m, 1)``, in ``idx``'s order."""
    return ShardReader(data, threads=1).read(idx)


ORDERS = ("exact", "runs")  # fit's permutation, or permute_runs (reads in runs)
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
    """An epoch's blocks: ``(first position, batches, batch size)``; the last small batch alone."""
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
    ``arange(n)``. The last full-batch block may hold fewer batches; the seed's
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

    def step(p, w):
        Xb, yb = X.at[w].get(mode="promise_in_bounds"), y.at[w].get(mode="promise_in_bounds")
        return _step(p, Xb, yb, lr, clip)

    return jax.lax.scan(step, params, where)


def fit_stream(
    params: Params,
    data: str | os.PathLike | Dataset,
    val: tuple | None = None,
    *,
    lr: float = 0.03,
    max_epochs: int = 3,
    batch_size: int = 32,
    key: jax.Array | None = None,
    shuffle: bool = True,
    gradient_clip_val: float = 0.0,
    block_batches: int | None = None,
    prefetch: int = 2,
    callback: Callable[[EpochEnd], None] | None = None,
    order: str = "exact",
) -> tuple[Params, History]:
    """``jaxlin.fit`` on a folder of shards, streamed: the same batches, ``fit``'s result.

    Args:
      params, val, lr, max_epochs, batch_size, key, shuffle, gradient_clip_val,
        callback: as in ``jaxlin.fit`` (``val`` is an in-memory ``(X, y)``).
      data: a folder (checked with ``open_dataset`` before any training) or a
        ``Dataset``.
      block_batches: minibatches per block read from disk (default: about
        65,536 examples per block).
      prefetch: blocks read ahead by the background thread (>= 1).
      order: ``"exact"``: ``fit``'s permutation, so the result is ``fit``'s, to
        rounding (each row a random read); ``"runs"``:
        ``jaxlin.shuffle.permute_runs``, shuffled runs of 64 consecutive
        examples read across (a minibatch from distinct runs, but for the
        epoch's last block), 1.6-2.1x the throughput of ``"exact"`` in
        ``benchmarks/bench_stream.py``, a different (coarser) shuffle.

    Returns:
      ``(params, history)`` as ``fit``.

    Example:
      >>> generate_shards(jax.random.key(0), "data", 100_000, shards=4)
      >>> params, hist = fit_stream(init_params(jax.random.key(1), 2), "data",
      ...                           key=jax.random.key(2))
    """
    if not isinstance(data, Dataset):
        data = open_dataset(data)
    num_inputs = checks.params(params)
    if num_inputs != data.num_features:
        raise ValueError(
            f"{data.root}: {data.num_features} features but params['w'] expects {num_inputs}"
        )
    if val is not None:
        val = checks.dataset("val", val, num_inputs)
    lr = checks.finite_float("lr", lr, positive=True)
    max_epochs = checks.positive_int("max_epochs", max_epochs)
    batch_size = checks.positive_int("batch_size", batch_size)
    if batch_size > data.num_examples:
        raise ValueError(f"batch_size must be <= the number of examples ({data.num_examples})")
    clip = checks.finite_float("gradient_clip_val", gradient_clip_val, nonnegative=True)
    if block_batches is None:
        block_batches = max(1, (1 << 16) // batch_size)
    block_batches = checks.positive_int("block_batches", block_batches)
    prefetch = checks.positive_int("prefetch", prefetch)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if shuffle:
        if key is None:
            raise ValueError("key is required when shuffle=True: pass key=jax.random.key(seed)")
        key = checks.key("key", key)
    else:
        key = None
    params = jax.tree.map(lambda p: jnp.asarray(p, data.dtype), params)
    clip_arg = clip if clip > 0 else None  # as fit: no clipping code when it is off

    n = data.num_examples
    plan = _epoch_plan(n, batch_size, block_batches)
    reader = ShardReader(data)
    # The device runs programs in the order they are dispatched, so an index
    # block asked for by the reader thread would wait behind every SGD block
    # already queued. This thread dispatches them instead, a few blocks ahead
    # of the steps that follow, and the reader only waits for its own.
    indices: queue.SimpleQueue = queue.SimpleQueue()
    upcoming = (
        (None if key is None else epoch_key(key, epoch), block)
        for epoch in range(max_epochs)
        for block in plan
    )

    def dispatch(count: int) -> None:
        for ekey, block in itertools.islice(upcoming, count):
            indices.put((block, _block_indices(ekey, n, block, order)))

    # Blocks are read into a ring of buffers, reused once the steps that read
    # them are done (``done`` gets each block's losses, in order): fresh
    # buffers would cost a page fault per 4 KiB, as much as reading the rows.
    rows = max(k * b for _, k, b in plan)  # the largest block (block_batches may exceed n)
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
    losses, val_losses = [], []
    try:
        for epoch in range(max_epochs):
            epoch_losses = []
            for _ in plan:
                X, y, where = next(read)
                dispatch(1)
                params, block_losses = _scan_block(params, X, y, where, lr, clip_arg)
                done.put(block_losses)
                epoch_losses.append(block_losses)
            losses.append(np.asarray(jnp.concatenate(epoch_losses))[None])
            val_losses.append(np.float64(loss_fn(params, *val)) if val is not None else np.nan)
            _check_finite(params, losses[-1], epoch, lr)
            if callback is not None:
                val_now = None if val is None else float(val_losses[-1])
                callback(EpochEnd(epoch, params, losses[-1][0], val_now))
    finally:
        indices.put(None)  # a reader waiting for an index block or a buffer stops
        done.put(None)
        read.close()
        reader.close()
    history = History(np.concatenate(losses), None if val is None else np.asarray(val_losses))
    return params, history

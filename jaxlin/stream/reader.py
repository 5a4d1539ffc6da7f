"""Reading rows of a sharded dataset: positional reads or a resident copy, into aligned buffers.

A dataset up to the reader's budget is read into memory once, each shard by
the first read that needs it; its rows are then gathered from there. A
larger one is read from the files on every read, by positional reads
(``pread``) of the spans of nearby rows a read needs, so the process's memory
stays near its buffers, not the data. Either way rows land in 64-byte
aligned buffers: ``jax.device_put`` takes those without a copy on the CPU.

No file is memory-mapped: a mapped file truncated by another process ends
the reader with SIGBUS on its next page, while a positional read of a file
cut short comes back short. So a shard file is checked when the reader is
made (``jaxlin.stream.format.check_shard_file``), again before every read
that touches it (``check_unchanged``, ``open_unchanged``) and, read from the
files, after it (``check_open``); a truncation that cuts the rows being read
fails the read itself. Each is a ``ValueError`` naming the file, as is an
``OSError`` of the disk. Each row is checked as it is read (a resident shard: once,
when it is loaded): a NaN or Inf (or, training in float32, a float64 value
beyond float32's range) is a ``ValueError`` naming the file and the row.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from jaxlin import checks
from jaxlin.stream.format import (
    Dataset,
    ShardFile,
    check_open,
    check_shard_file,
    check_unchanged,
    open_unchanged,
)


def _seek_read(fd: int, size: int, offset: int) -> bytes:
    """``os.pread`` where the platform has none (Windows): not safe across threads."""
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


_pread = getattr(os, "pread", _seek_read)
_POSITIONAL_READS = hasattr(os, "pread")  # reads of one descriptor from several threads


def _read_at(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from byte ``offset``; the number of bytes read (0 at the end)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = _pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def _read_into(fd: int, file: ShardFile, first: int, out: np.ndarray) -> None:
    """Fill ``out`` (C-contiguous, whole rows) with ``file``'s rows from ``first`` on.

    Positional reads, repeated until ``out`` is full (one read returns at most
    about 2 GiB); a file that ends first is a ``ValueError`` naming it. A
    memory map would end the process with SIGBUS instead.
    """
    if out.size == 0:
        return
    view = memoryview(out).cast("B")
    start, done = file.offset + first * file.row_bytes, 0
    while done < len(view):
        with _named(file):
            got = _read_at(fd, view[done:], start + done)
        if got <= 0:
            raise ValueError(
                f"{file.path}: ended before the rows being read: truncated while the dataset "
                "is being read"
            )
        done += got


@contextlib.contextmanager
def _named(file: ShardFile):
    """An ``OSError`` while reading ``file`` (a failing disk: EIO) as a ``ValueError`` naming it."""
    try:
        yield
    except OSError as err:
        raise ValueError(f"{file.path}: cannot be read ({err.strerror})") from None


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype, align: int = 64) -> np.ndarray:
    """``np.empty`` starting on an ``align``-byte boundary.

    JAX's CPU backend takes a 64-byte aligned array without copying it
    (``jax.device_put`` aliases it); numpy's own allocations are only 16-byte
    aligned, and copying a wide block costs about as much as training on it.
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
    faster than ``np.argsort`` on a block.
    """
    keys = np.sort((idx.astype(np.int64) << 32) | np.arange(idx.size, dtype=np.int64))
    return keys & 0xFFFFFFFF, keys >> 32


def gather(fd: int, file: ShardFile, rows: np.ndarray, out: np.ndarray, gap_bytes: int) -> None:
    """``out[k]`` = row ``rows[k]`` of ``file`` (``rows`` sorted), by positional reads.

    Neighbouring rows at most ``gap_bytes`` apart are read as one span (a
    read costs about as much as copying a few KiB): one ``pread`` per span,
    joined, then the rows are taken from there. Consecutive rows are read
    straight into ``out``.
    """
    step = np.diff(rows)
    if (step == 1).all():  # consecutive, distinct
        _read_into(fd, file, int(rows[0]), out)
        return
    cut = np.flatnonzero((step - 1) * file.row_bytes > gap_bytes) + 1
    first = rows[np.r_[0, cut]]
    last = rows[np.r_[cut - 1, rows.size - 1]]
    sizes = (last - first + 1) * file.row_bytes
    offsets = file.offset + first * file.row_bytes
    with _named(file):
        buf = b"".join(map(_pread, itertools.repeat(fd), sizes.tolist(), offsets.tolist()))
    if len(buf) != sizes.sum():  # a read came back short: at the file's end, or over 2 GiB
        buf = bytearray(int(sizes.sum()))
        at = np.cumsum(sizes) - sizes
        for a, r, size in zip(at.tolist(), first.tolist(), sizes.tolist(), strict=True):
            _read_into(fd, file, r, np.frombuffer(memoryview(buf)[a : a + size], np.uint8))
    span = np.repeat(np.arange(first.size), np.diff(np.r_[0, cut, rows.size]))
    start = np.cumsum(last - first + 1) - (last - first + 1)  # each span's first row in buf
    pos = rows - first[span] + start[span]
    spans = np.frombuffer(buf, out.dtype).reshape(-1, *out.shape[1:])
    np.take(spans, pos, axis=0, out=out)


class ShardReader:
    """Reads rows from a dataset's shards, held in memory or read from the files each time.

    Up to ``budget_bytes`` of data (and at most a quarter of the machine's
    memory) the reader is *resident*: each shard is read into memory when a
    read first touches it, its values checked once, and rows are gathered
    from there by ``threads`` threads (``np.take`` releases the GIL). Above
    it, each read is cut into pieces of sorted rows of one shard, at most
    ``piece_rows`` rows within one ``piece_bytes`` window of the file, read
    by positional reads (``gather``), so memory stays near the buffers
    whatever the size of the data.
    """

    def __init__(
        self,
        data: Dataset,
        budget_bytes: int = 1 << 30,
        threads: int | None = None,
        piece_rows: int = 1024,
        piece_bytes: int = 64 << 20,
        check_values: bool = True,
        gap_bytes: int = 8 << 10,
    ):
        self.threads = threads or min(4, os.cpu_count() or 1)
        if not _POSITIONAL_READS:  # reads move the descriptor's offset: one thread
            self.threads = 1
        self.piece_rows = checks.positive_int("piece_rows", piece_rows)
        self.piece_bytes = checks.positive_int("piece_bytes", piece_bytes)
        self.gap_bytes = checks.nonnegative_int("gap_bytes", gap_bytes)
        self.data = data
        d, dtype = data.num_features, data.dtype
        self.files = [
            (
                check_shard_file(s.X, dtype, d, s.num_examples),
                check_shard_file(s.y, dtype, None, s.num_examples),
            )
            for s in data.shards
        ]
        size = data.num_examples * (d + 1) * data.dtype.itemsize
        self.resident = size <= min(budget_bytes, checks.memory_bytes() // 4)
        self._loaded: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(self.files)
        # Values as training sees them: float64 data becomes float32 unless x64 is on.
        self.trained_dtype = np.dtype(data.spec()[0].dtype)
        self._limit = float(np.finfo(self.trained_dtype).max) if check_values else None
        self._pool = None

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
        if m and (idx.min() < 0 or idx.max() >= self.data.num_examples):
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise IndexError(f"idx: row {bad} is outside [0, {self.data.num_examples})")
        order, sidx = _argsort(idx)
        where = np.empty(m, np.int32)
        where[order] = np.arange(m, dtype=np.int32)
        offsets = self.data.offsets
        bounds = np.searchsorted(sidx, offsets)
        touched = [s for s in range(len(self.files)) if bounds[s + 1] > bounds[s]]
        X, y = self._buffers(out, m)
        if self.resident:
            self._ready(touched)

        def copy(piece):  # rows sidx[lo:hi], all in shard s, into X[lo:hi]
            s, lo, hi = piece
            local = sidx[lo:hi] - offsets[s]
            if self.resident:
                np.take(self._loaded[s][0], local, axis=0, out=X[lo:hi])
                np.take(self._loaded[s][1], local, out=y[lo:hi, 0])
                return
            with self._shard_files(s) as (fx, fy):
                gather(fx, self.files[s][0], local, X[lo:hi], self.gap_bytes)
                gather(fy, self.files[s][1], local, y[lo:hi, 0], self.gap_bytes)
            self._check_values(s, X[lo:hi], y[lo:hi], lambda k: local[k])

        self._run([p for s in touched for p in self._pieces(s, sidx, bounds, offsets)], copy)
        return X, y, where

    def _pieces(self, s: int, sidx, bounds, offsets) -> list[tuple[int, int, int]]:
        """Shard ``s``'s part of a sorted read as ``(s, lo, hi)`` pieces of ``sidx``.

        ``bounds``: where each shard starts in ``sidx``; ``offsets``: the
        dataset's (a property that builds its array on each access). Read from
        the files: at most ``piece_rows`` rows each, within one ``piece_bytes``
        window of the file (a piece holds its spans, twice while they are joined). Resident:
        one per thread (at least ``piece_rows`` rows): fewer, larger copies.
        """
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        if hi == lo:
            return []
        if not self.resident:
            cuts = set(range(lo, hi, self.piece_rows))
            window = max(1, self.piece_bytes // self.files[s][0].row_bytes)
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
        ``order="runs"`` reads its blocks so, with no sort of their rows. From
        the files, each run is one read straight into the buffers. Resident, a
        shard's runs are one gather of ``(length, d)`` slabs (a view of the
        shard cut into runs), not 65,536 single rows; a run across a shard's
        end is copied on its own.
        """
        starts = np.asarray(starts, np.int64).reshape(-1)
        length = checks.positive_int("length", length)
        if starts.size and (starts.min() < 0 or starts.max() > self.data.num_examples - length):
            raise IndexError(
                f"starts: runs of {length} rows from {starts.min()} to {starts.max()} "
                f"do not fit in [0, {self.data.num_examples})"
            )
        order = np.argsort(starts)
        rank = np.empty(starts.size, np.int64)
        rank[order] = np.arange(starts.size)
        first = starts[order]
        m = starts.size * length
        X, y = self._buffers(out, m)
        offsets = self.data.offsets
        shard = np.searchsorted(offsets, first, side="right") - 1
        alone = np.ones(starts.size, bool)  # runs copied one by one
        ready = set(np.unique(shard).tolist()) if self.resident else set()
        if self.resident:
            self._ready(ready)
            alone = self._read_slabs(first, length, shard, X, y)
        parts: dict[int, list[tuple[int, int, int]]] = {}  # shard: (its row, rows, at in X)
        bounds = offsets.tolist()
        for j in np.flatnonzero(alone).tolist():
            row, at, left, s = int(first[j]), j * length, length, int(shard[j])
            while left:  # a run may go on into the next shard(s)
                take = min(left, bounds[s + 1] - row)
                parts.setdefault(s, []).append((row - bounds[s], take, at))
                row, at, left, s = row + take, at + take, left - take, s + 1
        if self.resident:
            self._ready(set(parts) - ready)  # shards that runs go on into
        for s, shard_parts in parts.items():  # a shard at a time: two files open at most
            if self.resident:
                for a, take, at in shard_parts:
                    X[at : at + take] = self._loaded[s][0][a : a + take]
                    y[at : at + take, 0] = self._loaded[s][1][a : a + take]
                continue
            with self._shard_files(s) as (fx, fy):
                for a, take, at in shard_parts:
                    _read_into(fx, self.files[s][0], a, X[at : at + take])
                    _read_into(fy, self.files[s][1], a, y[at : at + take, 0])
            for a, take, at in shard_parts:
                rows = slice(at, at + take)
                self._check_values(s, X[rows], y[rows], lambda k, a=a: a + k)
        return X, y, rank

    def _read_slabs(self, first, length: int, shard, X, y) -> np.ndarray:
        """Resident: each shard's runs inside it and at one phase of ``length``, as one gather.

        ``first``: the runs' starts, sorted; ``shard``: the shard of each.
        Returns which runs are left to copy one by one.
        """
        offsets = self.data.offsets
        alone = np.ones(first.size, bool)
        inside = first + length <= offsets[shard + 1]
        for s in np.unique(shard[inside]).tolist():
            js = np.flatnonzero(inside & (shard == s))  # consecutive: sorted by start
            local = first[js] - offsets[s]
            phase = local[0] % length
            if np.any(local % length != phase):
                continue
            slabs = (self.files[s][0].rows - phase) // length
            lo, hi = js[0] * length, (js[-1] + 1) * length
            ids = (local - phase) // length
            X_s, y_s = (a[phase : phase + slabs * length] for a in self._loaded[s])
            np.take(
                X_s.reshape(slabs, length, -1), ids, axis=0,
                out=X[lo:hi].reshape(js.size, length, -1),
            )  # fmt: skip
            np.take(
                y_s.reshape(slabs, length), ids, axis=0, out=y[lo:hi, 0].reshape(js.size, length)
            )
            alone[js] = False
        return alone

    def _ready(self, shards) -> None:
        """Resident: load ``shards`` not yet in memory; refuse those whose files changed since."""
        for s in shards:
            if self._loaded[s] is None:
                self._load(s)
            else:
                for file in self.files[s]:
                    check_unchanged(file.path, file.ident)

    @contextlib.contextmanager
    def _shard_files(self, s: int):
        """Shard ``s``'s ``X`` and ``y`` files, opened if unchanged and checked again after.

        Gives the two descriptors. After the reads, a file that changed while
        it was read (rewritten, or cut beyond the rows read) is refused.
        """
        with contextlib.ExitStack() as stack:
            fds = []
            for file in self.files[s]:
                fd = open_unchanged(file)
                stack.callback(os.close, fd)
                fds.append(fd)
            yield tuple(fds)
            for fd, file in zip(fds, self.files[s], strict=True):
                check_open(fd, file)

    def _load(self, s: int) -> None:
        """Read shard ``s`` into memory and check its values once."""
        dtype = self.data.dtype
        loaded = [
            _aligned_empty((f.rows, f.row_bytes // dtype.itemsize), dtype) for f in self.files[s]
        ]
        with self._shard_files(s) as fds:
            for fd, file, a in zip(fds, self.files[s], loaded, strict=True):
                _read_into(fd, file, 0, a)
        X, y = loaded[0], loaded[1].reshape(-1)
        self._check_values(s, X, y[:, None], lambda k: k)
        self._loaded[s] = (X, y)

    def _check_values(self, s: int, X: np.ndarray, y: np.ndarray, row_of: Callable) -> None:
        """Refuse NaN, Inf, or values the trained dtype cannot hold, in rows just read.

        ``X``, ``y``: rows copied from shard ``s``; ``row_of(k)``: the shard's
        row that ``X[k]`` came from. Two reductions over rows in cache; the
        search for the row only runs when one fails.
        """
        if self._limit is None or not len(X):
            return
        limit = self._limit
        for a, path in ((X, self.data.shards[s].X), (y, self.data.shards[s].y)):
            if a.min() >= -limit and a.max() <= limit:  # False for NaN
                continue
            k = int(np.flatnonzero(~(np.abs(a) <= limit).all(axis=1))[0])
            if np.isfinite(a[k]).all():
                what = f"a value beyond {self.trained_dtype}'s range (jax_enable_x64 is off)"
            else:
                what = "NaN or Inf"
            raise ValueError(
                f"{path}: row {int(row_of(k))} holds {what}; training needs finite data"
            )

    def _run(self, pieces: list, copy: Callable) -> None:
        """``copy(piece)`` for every piece, on the reader's threads; the first error is raised.

        Every piece is over before this returns or raises, even on an error or
        Ctrl-C: none may go on writing into the caller's buffers afterwards.
        """
        if self.threads > 1 and len(pieces) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="jaxlin-read")
            futures = []
            try:  # submit can fail part-way (Ctrl-C, no thread): wait for what started
                for piece in pieces:
                    futures.append(self._pool.submit(copy, piece))
                wait(futures)
            finally:
                for f in futures:
                    f.cancel()
                wait(futures)
            for f in futures:
                f.result()  # the first piece's error, if any
        else:
            for piece in pieces:
                copy(piece)

    def _buffers(self, out, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``m`` rows of ``out`` (checked), or new buffers of ``m`` rows."""
        if out is None:
            return self.read_buffers(m)
        X, y = out
        d = self.data.num_features
        if X.shape[1:] != (d,) or y.shape[1:] != (1,) or min(len(X), len(y)) < m:
            raise ValueError(
                f"out: buffers of at least {m} rows, (m, {d}) and (m, 1), from read_buffers; "
                f"got {X.shape} and {y.shape}"
            )
        return X[:m], y[:m]

    def read_buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Empty 64-byte aligned ``X: (rows, d)``, ``y: (rows, 1)`` for ``read_sorted``."""
        return (
            _aligned_empty((rows, self.data.num_features), self.data.dtype),
            _aligned_empty((rows, 1), self.data.dtype),
        )

    def close(self) -> None:
        """Stop the copying threads (reads after this run on the calling thread)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self.threads = 1


def read_rows(data: Dataset, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` (global, any order) as ``X: (m, d)``, ``y: (m, 1)``, in ``idx``'s order.

    Only the rows asked for are read (the dataset is not loaded).
    """
    return ShardReader(data, budget_bytes=0, threads=1).read(idx)

"""Reading rows of a sharded dataset: memory maps, threads, aligned buffers, pages handed back.

A read is cut into pieces of sorted rows of one shard, copied by a few
threads at once (``np.take`` releases the GIL), into 64-byte aligned buffers:
``jax.device_put`` takes those without a copy on the CPU. Once the dataset is
larger than the reader's budget, the mapped pages of each piece are handed
back to the kernel as soon as it is copied, so the process's memory stays
near the buffers, not the data.

Each shard file is checked when mapped (``jaxlin.stream.format.map_shard``)
and again before every read that touches it (``check_unchanged``): a file
truncated, replaced or rewritten under a running job is a ``ValueError``
naming it, not a SIGBUS from a page past the file's end (only a truncation
during the copy itself still reaches the mapping). Each row read is checked
as it is copied: a NaN or Inf (or, training in float32, a float64 value
beyond float32's range) is a ``ValueError`` naming the file and the row.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable

import numpy as np

from jaxlin import checks
from jaxlin.stream.format import Dataset, check_unchanged, map_shard


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
    page cache, so a block's sparse rows can map most of a large dataset. So a
    piece also ends at every ``piece_bytes``
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
        check_values: bool = True,
    ):
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.piece_rows = checks.positive_int("piece_rows", piece_rows)
        self.piece_bytes = checks.positive_int("piece_bytes", piece_bytes)
        self.data = data
        self.X, self.y, self._ids = [], [], []
        for s in data.shards:
            X, x_id = map_shard(s.X, data.dtype, data.num_features, s.num_examples)
            y, y_id = map_shard(s.y, data.dtype, None, s.num_examples)
            self.X.append(X)
            self.y.append(y)
            self._ids.append((x_id, y_id))
        size = data.num_examples * (data.num_features + 1) * data.dtype.itemsize
        self.release_each_read = size > budget_bytes
        # Values as training sees them: float64 data becomes float32 unless x64 is on.
        self.trained_dtype = np.dtype(data.spec()[0].dtype)
        self._limit = float(np.finfo(self.trained_dtype).max) if check_values else None
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
        touched = [s for s in range(len(self.data.shards)) if bounds[s + 1] > bounds[s]]
        self.check_files(touched)
        X, y = out if out is not None else self.read_buffers(m)
        X, y = X[:m], y[:m]

        def copy(piece):  # rows sidx[lo:hi], all in shard s, into X[lo:hi]
            s, lo, hi = piece
            local = sidx[lo:hi] - offsets[s]
            np.take(self.X[s], local, axis=0, out=X[lo:hi])
            np.take(self.y[s], local, out=y[lo:hi, 0])
            self._check_values(s, X[lo:hi], y[lo:hi], lambda k: local[k])
            if self.release_each_read:
                self._release_rows(s, local[0], local[-1])

        pieces = [
            piece
            for s in range(len(self.data.shards))
            for piece in self._pieces(s, sidx, bounds, offsets)
        ]
        self._run(pieces, copy)
        if self.release_each_read:  # what fault-around mapped between and around pieces
            self.release(touched)
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
        if starts.size:  # every shard from the first run's to the last run's end
            last = int(np.searchsorted(offsets, first[-1] + length - 1, side="right")) - 1
            self.check_files(range(int(shard[0]), last + 1))
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
                self._check_values(
                    s,
                    X[lo:hi],
                    y[lo:hi],
                    lambda k, js=js, s=s: first[js[0] + k // length] - offsets[s] + k % length,
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
                self._check_values(s, X[at : at + take], y[at : at + take], lambda k, a=a: a + k)
                if self.release_each_read:
                    self._release_rows(s, a, a + take - 1)
                row, at, left, s = row + take, at + take, left - take, s + 1
        if self.release_each_read:  # what the faults mapped beyond each run
            self.release()
        return X, y, rank

    def check_files(self, shards) -> None:
        """Refuse to read ``shards`` whose files are not the ones mapped (truncated, replaced)."""
        for s in shards:
            shard = self.data.shards[s]
            check_unchanged(shard.X, self._ids[s][0])
            check_unchanged(shard.y, self._ids[s][1])

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

"""Data on disk: ``.npy`` shards with a JSON manifest, written safely and read checked.

* ``generate_shards`` writes the synthetic problem as ``X-00000.npy``,
  ``y-00000.npy``, ... plus ``manifest.json``, a chunk at a time: memory is
  bounded by ``chunk``, and row ``r`` depends only on the key and ``chunk``
  (not on the number of shards), so the same key gives the same files. Every
  argument is checked before the disk is touched; the dataset is written into
  a temporary folder beside ``out_dir`` and renamed into place only once
  complete, so a refused or interrupted run leaves what was there intact.
* ``open_dataset`` checks the manifest (keys, types, counts, ``w``'s length)
  and every shard's ``.npy`` header, dtype, shape and size before any
  training. Shard names are plain file names inside the dataset folder.
  Anything wrong is one ``ValueError`` line that names the file, and never
  quotes the file's contents.
* ``check_shard_file``, ``check_unchanged``, ``open_unchanged`` and
  ``check_open`` are what the reader uses: a shard file checked once, then
  looked at (or opened) before each read only if it is still the version
  checked (not truncated, replaced or rewritten), and looked at again after.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import checks
from jaxlin.data import TRUE_B, TRUE_W, synthetic_data
from jaxlin.files import fsync_folder, locked, remove_if_abandoned

MANIFEST = "manifest.json"
FORMAT = "jaxlin-shards/1"
MAX_ROWS = 2**31 - 1  # fit_stream and the reader index rows with int32
MANIFEST_MAX_BYTES = 64 << 20  # far above any real manifest; a larger file is not read
SHARD_NAME = re.compile(r"[Xy]-\d{5,}\.npy")  # the names generate_shards writes


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
    w: np.ndarray | None  # the true parameters, when the manifest has them: (num_features,)
    b: float | None

    def spec(self) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of ``(X, y)`` as training sees them: ``(n, d)``, ``(n, 1)``."""
        dtype = jax.dtypes.canonicalize_dtype(self.dtype)  # float32 unless x64 is on
        n, d = self.num_examples, self.num_features
        return jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((n, 1), dtype)

    @property
    def offsets(self) -> np.ndarray:
        """``(num_shards + 1,)`` first global row of each shard, then ``num_examples``."""
        return np.concatenate([[0], np.cumsum([s.num_examples for s in self.shards])])


class FileId(NamedTuple):
    """What identifies a file's version: device, inode, size, modification and change times.

    The change time (``ctime``) moves with every write and cannot be set back:
    a file rewritten in place with its size and modification time restored
    (``rsync --inplace -t``) is still told apart.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        """The identity of a ``stat`` result."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# --------------------------------------------------------------------------- reading files


def _open_regular(path: Path, what: str):
    """``path`` opened for reading, with its ``stat``; a ``ValueError`` unless a regular file.

    ``O_NONBLOCK``: a FIFO in a shard's place is refused instead of blocking.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing {what}") from None
    except PermissionError:
        raise ValueError(f"{path}: the {what} cannot be read (permission denied)") from None
    except OSError as err:
        raise ValueError(f"{path}: the {what} cannot be opened ({err.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError(f"{path}: the {what} is not a regular file")
    return os.fdopen(fd, "rb"), st


def _dtype_name(t: np.dtype) -> str:
    """A header's dtype in words, without quoting arbitrary field names from the file."""
    if t.fields is not None or t.subdtype is not None or t.kind not in "biufc":
        return "a non-numeric dtype"
    return t.name if t.isnative else f"{t.str} (byte-swapped)"


def _read_npy_header(f, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of the ``.npy`` file open as ``f``."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file (its first bytes are not a .npy header)")
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"{path}: .npy format version {version[0]}.{version[1]} is not supported")
    read = np.lib.format.read_array_header_1_0
    if version == (2, 0):
        read = np.lib.format.read_array_header_2_0
    try:
        shape, fortran, dtype = read(f)
    except Exception:  # untrusted bytes: numpy's message would quote them
        raise ValueError(f"{path}: malformed .npy header") from None
    if fortran:
        raise ValueError(f"{path}: Fortran-ordered arrays are not supported; save C-ordered")
    if any(s < 0 for s in shape):
        raise ValueError(f"{path}: malformed .npy header (negative shape)")
    return tuple(shape), dtype, f.tell()


def _checked_npy(path: Path, dtype: np.dtype, width: int | None):
    """Open and check a shard file; returns ``(file, rows, shape, offset, FileId)``.

    ``width``: ``d`` for an ``X`` file ``(rows, d)``; ``None`` for a ``y`` file,
    ``(rows,)`` or ``(rows, 1)``. The file's size must be exactly what its
    header needs.
    """
    f, st = _open_regular(path, "shard file")
    try:
        shape, t, offset = _read_npy_header(f, path)
        if t != dtype:
            raise ValueError(f"{path}: dtype {_dtype_name(t)}, but the manifest says {dtype}")
        if width is not None and (len(shape) != 2 or shape[1] != width):
            raise ValueError(f"{path}: shape {shape}, expected (rows, {width})")
        if width is None and (len(shape) not in (1, 2) or shape[1:] not in ((), (1,))):
            raise ValueError(f"{path}: shape {shape}, expected (rows,) or (rows, 1)")
        expected = offset + math.prod(shape) * t.itemsize
        if st.st_size != expected:
            raise ValueError(
                f"{path}: {st.st_size} bytes but its header ({shape}, {dtype}) needs {expected}: "
                f"{'truncated' if st.st_size < expected else 'trailing bytes'}"
            )
    except BaseException:
        f.close()
        raise
    return f, shape[0], shape, offset, FileId.of(st)


class ShardFile(NamedTuple):
    """A checked shard file: where its rows start, their size, and the version checked."""

    path: Path
    offset: int  # the byte where row 0 starts (after the .npy header)
    row_bytes: int
    rows: int
    ident: FileId


def check_shard_file(path: Path, dtype: np.dtype, width: int | None, rows: int) -> ShardFile:
    """Check a shard file (header, dtype, shape, size) and say where its rows are.

    ``width``: ``d`` for an ``X`` file ``(rows, d)``; ``None`` for a ``y`` file.
    ``rows`` is what the dataset said when it was opened.
    """
    f, found, _, offset, ident = _checked_npy(path, dtype, width)
    f.close()
    if found != rows:
        raise ValueError(f"{path}: {found} rows, but {rows} when the dataset was opened")
    return ShardFile(path, offset, (width or 1) * np.dtype(dtype).itemsize, rows, ident)


def _same_version(path: Path, now: FileId, ident: FileId) -> None:
    """Refuse a file whose identity ``now`` is not the ``ident`` it had when checked."""
    if now == ident:
        return
    if (now.device, now.inode) != (ident.device, ident.inode):
        raise ValueError(f"{path}: replaced by another file while the dataset is being read")
    if now.size != ident.size:
        raise ValueError(
            f"{path}: {now.size} bytes, {ident.size} when opened: truncated or extended "
            "while the dataset is being read"
        )
    raise ValueError(f"{path}: modified while the dataset is being read")


def check_unchanged(path: Path, ident: FileId) -> None:
    """Refuse to go on reading ``path`` unless it is still the file checked as ``ident``.

    One replaced or rewritten would mix two datasets: checked before each read.
    """
    try:
        now = FileId.of(os.stat(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: removed while the dataset is being read") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be looked at ({err.strerror})") from None
    _same_version(path, now, ident)


def open_unchanged(file: ShardFile) -> int:
    """A read-only file descriptor on ``file.path``, if it is still the version checked.

    The identity is taken from the open descriptor (``fstat``), so what is
    read is the file compared. ``O_NONBLOCK``: a FIFO put in its place does
    not block the open.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(file.path, flags)
    except FileNotFoundError:
        raise ValueError(f"{file.path}: removed while the dataset is being read") from None
    except OSError as err:
        raise ValueError(f"{file.path}: cannot be opened ({err.strerror})") from None
    try:
        check_open(fd, file)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_open(fd: int, file: ShardFile) -> None:
    """Refuse an open ``file`` whose size, time or inode are no longer the version checked.

    Called after a read too: a file rewritten or cut while it was being read
    is refused, not trained on.
    """
    try:
        now = FileId.of(os.fstat(fd))
    except OSError as err:
        raise ValueError(f"{file.path}: cannot be looked at ({err.strerror})") from None
    _same_version(file.path, now, file.ident)


def _read_manifest(mpath: Path) -> dict:
    """The manifest's JSON object; a ``ValueError`` naming it for anything else."""
    f, st = _open_regular(mpath, "manifest")
    with f:
        if st.st_size > MANIFEST_MAX_BYTES:
            raise ValueError(
                f"{mpath}: {st.st_size} bytes, more than a manifest's {MANIFEST_MAX_BYTES}"
            )
        raw = f.read(MANIFEST_MAX_BYTES + 1)

    def no_constants(name):
        raise ValueError("NaN or Infinity")

    try:
        m = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except UnicodeDecodeError:
        raise ValueError(f"{mpath}: not UTF-8 text, so not a JSON manifest") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{mpath}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    except ValueError:
        raise ValueError(f"{mpath}: holds NaN or Infinity, which JSON does not allow") from None
    except RecursionError:
        raise ValueError(f"{mpath}: not a manifest (JSON nested too deeply)") from None
    if not isinstance(m, dict):
        raise ValueError(f"{mpath}: the manifest must be a JSON object")
    return m


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_field(mpath: Path, where: str, value, lo: int = 1, hi: int | None = None) -> int:
    """A manifest integer in ``[lo, hi]``; the error names the field, not its raw value."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{mpath}: {where} must be an integer")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{mpath}: {where} must be {bound}, got {value}")
    return value


def _shard_name(mpath: Path, where: str, name) -> str:
    """A shard's file name from the manifest: a plain name of a file inside the folder."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..", MANIFEST)
        or any(sep in name for sep in ("/", "\\", "\0", os.sep, os.altsep or "/"))
        or len(name.encode("utf-8", "surrogatepass")) > 255
    ):
        raise ValueError(
            f"{mpath}: {where} must be the plain name of a file in the dataset folder "
            f"(no path separators, no '..', not {MANIFEST})"
        )
    return name


def _check_manifest(mpath: Path, m: dict):
    """The manifest's fields, checked: ``(n, d, dtype, [(X, y, rows)], w, b)``."""
    for k in ("num_examples", "num_features", "dtype", "shards"):
        if k not in m:
            raise ValueError(f"{mpath}: malformed manifest (missing key {k!r})")
    if m.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{mpath}: format must be {FORMAT!r}")
    n = _int_field(mpath, "num_examples", m["num_examples"], 1, MAX_ROWS)
    d = _int_field(mpath, "num_features", m["num_features"], 1)
    if m["dtype"] not in ("float32", "float64"):
        raise ValueError(f'{mpath}: dtype must be "float32" or "float64"')
    dtype = np.dtype(m["dtype"])
    if not isinstance(m["shards"], list) or not m["shards"]:
        raise ValueError(f"{mpath}: shards must be a non-empty list")
    entries, seen = [], set()
    for i, e in enumerate(m["shards"]):
        if not isinstance(e, dict) or not {"X", "y", "num_examples"} <= set(e):
            raise ValueError(f"{mpath}: shards[{i}] must be an object with X, y and num_examples")
        names = [_shard_name(mpath, f"shards[{i}].{k}", e[k]) for k in ("X", "y")]
        for k, name in zip(("X", "y"), names, strict=True):
            if name in seen:
                raise ValueError(f"{mpath}: shards[{i}].{k} names a file another entry names")
            seen.add(name)
        count = _int_field(mpath, f"shards[{i}].num_examples", e["num_examples"], 1, MAX_ROWS)
        entries.append((*names, count))
    w = m.get("w")
    if w is not None:
        if not isinstance(w, list) or not all(_is_number(v) for v in w):
            raise ValueError(f"{mpath}: w must be a list of numbers")
        if len(w) != d:
            raise ValueError(f"{mpath}: w has {len(w)} values but num_features is {d}")
        w = np.asarray(w, np.float64)
        if not np.isfinite(w).all():
            raise ValueError(f"{mpath}: w must be finite")
    b = m.get("b")
    if b is not None and (not _is_number(b) or not math.isfinite(b)):
        raise ValueError(f"{mpath}: b must be a finite number")
    for k in ("noise", "chunk"):  # written by generate_shards; informative only
        if m.get(k) is not None and (not _is_number(m[k]) or not math.isfinite(m[k])):
            raise ValueError(f"{mpath}: {k} must be a finite number")
    return n, d, dtype, entries, w, (None if b is None else float(b))


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Read and check ``path/manifest.json`` and every shard's header and size.

    The manifest: ``{"num_examples": n, "num_features": d, "dtype": "float32",
    "shards": [{"X": "X-0.npy", "y": "y-0.npy", "num_examples": n0}, ...]}``
    (``w`` and ``b``, the true parameters, optional; ``w`` has ``d`` values).
    Shard names are plain file names in ``path`` (a link must not lead out of
    it). ``X`` files are ``(rows, d)``, ``y`` files ``(rows,)`` or
    ``(rows, 1)``, all of ``dtype``, C-ordered, ``.npy`` format 1.0 or 2.0.

    Raises:
      ValueError: one line naming the file, for anything that disagrees
        (missing, unreadable or truncated file, a malformed manifest, a name
        outside the folder, wrong dtype or width, X and y lengths that differ,
        counts that do not match the files).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a dataset folder's path, got {type(path).__name__}")
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (a dataset is a folder with {MANIFEST})")
    mpath = root / MANIFEST
    if not mpath.exists():
        raise ValueError(f"{mpath}: no manifest (write one, or use `jaxlin generate`)")
    n, d, dtype, entries, w, b = _check_manifest(mpath, _read_manifest(mpath))
    real_root = root.resolve()
    shards = []
    for i, (x_name, y_name, count) in enumerate(entries):
        for k, name in (("X", x_name), ("y", y_name)):
            if (root / name).resolve().parent != real_root:
                raise ValueError(f"{mpath}: shards[{i}].{k} is a link leading out of {root}")
        X_path, y_path = root / x_name, root / y_name
        fx, x_rows, *_ = _checked_npy(X_path, dtype, d)
        fx.close()
        fy, y_rows, *_ = _checked_npy(y_path, dtype, None)
        fy.close()
        if x_rows != y_rows:
            raise ValueError(f"{y_path}: {y_rows} rows but {X_path.name} has {x_rows}")
        if x_rows != count:
            raise ValueError(f"{X_path}: {x_rows} rows, but the manifest says {count}")
        shards.append(Shard(X_path, y_path, count))
    total = sum(s.num_examples for s in shards)
    if total != n:
        raise ValueError(f"{mpath}: num_examples is {n} but the shards hold {total}")
    return Dataset(root, tuple(shards), n, d, dtype, w, b)


# --------------------------------------------------------------------------- writing


def _split(n: int, parts: int) -> list[int]:
    """``n`` rows into ``parts`` near-equal counts (the first ones one larger)."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def _true_w(w, d: int | None) -> tuple[np.ndarray | None, int]:
    """``w`` as finite float64 ``(d,)`` (or ``None``) and ``d``; they must agree."""
    if w is None:
        return None, (2 if d is None else checks.positive_int("d", d))
    if d is not None:
        d = checks.positive_int("d", d)
    host = np.asarray(w) if isinstance(w, (list, tuple, np.ndarray, jax.Array)) else None
    if host is None or host.dtype.kind not in "iuf":
        raise TypeError(f"w must be a 1-D sequence of numbers, got {type(w).__name__}")
    if host.ndim != 1 or host.size == 0:
        raise ValueError(f"w must be 1-D with at least one value, got shape {host.shape}")
    host = host.astype(np.float64)
    if not np.isfinite(host).all():
        bad = int(np.flatnonzero(~np.isfinite(host))[0])
        raise ValueError(f"w must be finite, got NaN or Inf at index {bad}")
    if d is not None and d != host.size:
        raise ValueError(f"w has {host.size} values but d={d}; they must agree")
    return host, host.size


def _dataset_files(folder: Path, entries: list[str]) -> set[str]:
    """Which of ``entries`` (a folder's names) belong to the dataset in it.

    The manifest, the shard files it names (when it can be read) and files
    named as ``generate_shards`` names shards.
    """
    ours = {MANIFEST, MANIFEST + ".tmp"}
    try:
        m = _read_manifest(folder / MANIFEST)
        ours |= {e[k] for e in m["shards"] for k in ("X", "y") if isinstance(e[k], str)}
    except (ValueError, KeyError, TypeError):  # unreadable: the name patterns decide
        pass
    return {
        e for e in entries if (e in ours or SHARD_NAME.fullmatch(e)) and not (folder / e).is_dir()
    }


def _check_out_dir(out: Path, target: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that cannot be written, or that holds what would be lost."""
    if target.parent == target:
        raise ValueError(f"out_dir {out}: cannot replace a file system's root")
    if target.exists() and not target.is_dir():
        raise ValueError(f"out_dir {out}: exists and is not a folder")
    if target.is_dir():
        entries = os.listdir(target)
        ours = _dataset_files(target, entries)
        foreign = sorted(set(entries) - ours)
        if foreign:
            raise ValueError(
                f"out_dir {out}: holds files that are not a jaxlin dataset's "
                f"({foreign[0]!r:.60}{' ...' if len(foreign) > 1 else ''}); "
                "give a new or empty folder"
            )
        if ours and not overwrite:
            raise ValueError(f"out_dir {out}: holds a dataset; pass overwrite=True to replace it")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"out_dir {out}: cannot write in {parent}")


def _check_sizes(out: Path, target: Path, n: int, d: int, chunk: int, dtype: np.dtype) -> None:
    """Refuse what cannot fit: a row or a chunk in memory, the dataset on the disk.

    Measured at the peak (RSS against ``d`` and ``chunk``): about five copies
    of a chunk (the draws, the labels, the host's copies, the file's buffer)
    and 168 bytes per feature for ``w`` (its draw, its host copies and the
    program that draws with it); ``d`` alone can be too large for one row.
    """
    for name, value, rows in (("d", d, 1), ("chunk", chunk, min(chunk, n))):
        held = 5 * rows * (d + 1) * dtype.itemsize + 168 * d
        checks.fits_in_memory(name, value, held, np.uint8)
    need = n * (d + 1) * dtype.itemsize
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if need > free:
        raise ValueError(
            f"out_dir {out}: the dataset needs {checks.size_text(need)} on disk, "
            f"but {parent} has {checks.size_text(free)} free"
        )


def _write_shards(
    folder: Path, key_data, w: np.ndarray, b: float, noise: float, counts: list[int],
    chunk: int, dtype: np.dtype, progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, str]]:  # fmt: skip
    """Write the shard files into ``folder``, each in order, a chunk at a time.

    Chunk ``c`` (rows ``c * chunk ..``) is drawn from ``fold_in(key_data, c)``;
    a chunk across a shard boundary is drawn once and split. ``progress(rows, n)``
    is called after each piece written.
    """
    n, d = sum(counts), w.size
    names = [(f"X-{i:05d}.npy", f"y-{i:05d}.npy") for i in range(len(counts))]
    descr = np.lib.format.dtype_to_descr(dtype)
    row, drawn = 0, (None, None, None)
    with jax.default_device(jax.devices("cpu")[0]):
        w_dev = jnp.asarray(w, jax.dtypes.canonicalize_dtype(dtype))
        for (x_name, y_name), count in zip(names, counts, strict=True):
            with open(folder / x_name, "xb") as fx, open(folder / y_name, "xb") as fy:
                for f, shape in ((fx, (count, d)), (fy, (count,))):
                    header = {"descr": descr, "fortran_order": False, "shape": shape}
                    np.lib.format.write_array_header_1_0(f, header)
                end = row + count
                while row < end:  # the chunk holding `row`, clipped to this shard
                    c = row // chunk
                    lo, hi = c * chunk, min((c + 1) * chunk, n)
                    if drawn[0] != c:
                        Xc, yc = synthetic_data(jax.random.fold_in(key_data, c), w_dev, b, hi - lo,
                                                noise)  # fmt: skip
                        drawn = (c, np.asarray(Xc, dtype), np.asarray(yc, dtype).reshape(-1))
                    take = slice(row - lo, min(hi, end) - lo)
                    fx.write(np.ascontiguousarray(drawn[1][take]))
                    fy.write(np.ascontiguousarray(drawn[2][take]))
                    row += take.stop - take.start
                    if progress is not None:
                        progress(row, n)
                for f in (fx, fy):
                    f.flush()
                    os.fsync(f.fileno())
    return names


NEW_INFIX = ".jaxlin-new-"  # ".NAME.jaxlin-new-XXXXXXXX": a dataset being written beside NAME
OLD_INFIX = ".jaxlin-old-"  # ".NAME.jaxlin-old-XXXXXXXX": NAME's old dataset, set aside by a swap
DEL_INFIX = ".jaxlin-del-"  # ".NAME.jaxlin-del-XXXXXXXX": the old dataset once the new one is in


def _remove_leftovers(target: Path) -> None:
    """Finish what killed ``generate_shards`` runs into ``target`` left, and only that.

    A new dataset's folder (its run died while writing it) is removed. An old
    dataset set aside (its run died while swapping the new one in) is whole:
    it is put back as ``target`` if the new one never arrived, else its
    dataset files are removed, as the swap would have. An old dataset being
    deleted (its run died after the swap) has its remaining dataset files
    removed. Each is touched only when no live run holds its lock.
    """
    if not target.parent.is_dir():
        return
    name = re.escape(target.name)
    infixes = "|".join(map(re.escape, (NEW_INFIX, OLD_INFIX, DEL_INFIX)))
    marker = re.compile(rf"\.{name}({infixes})[0-9a-f]{{8}}")
    with os.scandir(target.parent) as entries:
        found = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
    for entry, is_dir in found:
        match, path = marker.fullmatch(entry), str(target.parent / entry)
        if not is_dir or match is None:
            continue
        if match[1] == NEW_INFIX:
            remove_if_abandoned(path, lambda p: shutil.rmtree(p, ignore_errors=True))
        elif match[1] == OLD_INFIX:
            remove_if_abandoned(path, lambda p: _finish_swap(Path(p), target))
        else:
            remove_if_abandoned(path, lambda p: _remove_old(Path(p)))


def _finish_swap(old: Path, target: Path) -> None:
    """A killed swap's old dataset: back in place if ``target`` is gone, else removed."""
    if not os.path.lexists(target):
        os.rename(old, target)
        fsync_folder(target.parent)
    else:
        _remove_old(old)


def _remove_old(old: Path) -> None:
    """Delete a replaced dataset's files, then its folder if nothing else is in it (a
    file someone added to the old folder stays there: nothing is lost)."""
    entries = os.listdir(old)
    mine = _dataset_files(old, entries)
    for name in mine:
        (old / name).unlink()
    if len(entries) == len(mine):
        old.rmdir()


def _swap_in(new: Path, target: Path) -> None:
    """Rename the complete ``new`` folder to ``target``; an old ``target`` is removed after.

    The old folder is renamed aside first (and back, if the second rename
    fails), then, once the new one is in, renamed again to be deleted; it is
    locked throughout, and a run killed in between leaves it for the next run
    to finish (``_remove_leftovers``): whole, or partly deleted, by its name.
    """
    if not target.exists():
        os.rename(new, target)
        fsync_folder(target.parent)
        return
    os.chmod(new, stat.S_IMODE(target.stat().st_mode))
    token = secrets.token_hex(4)
    old = target.parent / f".{target.name}{OLD_INFIX}{token}"
    with locked(target):  # the lock is the folder's: it moves with it to `old`
        os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(old, target)
            raise
        fsync_folder(target.parent)
        gone = target.parent / f".{target.name}{DEL_INFIX}{token}"
        os.rename(old, gone)  # the new dataset is in: the old one is only to be deleted
        _remove_old(gone)


def generate_shards(
    key: jax.Array,
    out_dir: str | os.PathLike,
    num_examples: int,
    d: int | None = None,
    shards: int = 1,
    w=None,
    b: float | None = None,
    noise: float = 0.01,
    chunk: int = 1 << 16,
    dtype=np.float32,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Write ``y = X w + b + noise`` as ``.npy`` shards and a manifest; bounded memory.

    Every argument is checked first (sizes against the machine's memory and
    the disk's free space too); nothing is written if one is refused. The
    dataset is written into a temporary folder beside ``out_dir`` and renamed
    to ``out_dir`` once complete: an error or an interrupt leaves ``out_dir``
    as it was, and no file of an old dataset is left beside the new one.

    Args:
      key: ``jax.random.key``; chunk ``c`` (rows ``c * chunk ..``) is drawn
        from ``fold_in(key, c)``, so the files do not depend on ``shards``.
      out_dir: folder to write: new, empty, or (with ``overwrite``) one that
        holds only a dataset. A folder with other files is refused.
      num_examples: total rows ``n`` (below ``2**31``: what ``fit_stream`` indexes).
      d: features; defaults to ``len(w)``, or 2 without ``w``; must agree with ``w``.
      shards: number of files per array (near-equal rows).
      w: true weights; default the lecture's ``[2, -3.4]`` when ``d == 2``,
        else ``N(0, 1)`` draws from the key. ``b``: true bias, default 4.2.
      noise: label noise standard deviation (>= 0).
      chunk: rows generated at a time (memory: about ``3 * chunk * (d + 1)`` values).
      dtype: float32 or float64.
      overwrite: replace a folder that already holds a dataset.
      progress: called as ``progress(rows_written, num_examples)`` as the
        rows are written (to report, or to stop: whatever it raises ends the
        generation and leaves ``out_dir`` as it was).

    Returns:
      the ``Dataset`` as ``open_dataset(out_dir)`` reads it.
    """
    key = checks.key("key", key)
    n = checks.positive_int("num_examples", num_examples)
    if n > MAX_ROWS:
        raise ValueError(f"num_examples must be <= {MAX_ROWS} (rows are indexed with int32)")
    w, d = _true_w(w, d)
    b = TRUE_B if b is None else checks.finite_float("b", b)
    noise = checks.finite_float("noise", noise, nonnegative=True)
    shards = checks.positive_int("shards", shards)
    if shards > n:
        raise ValueError(f"shards must be <= num_examples ({n}), got {shards}")
    chunk = checks.positive_int("chunk", chunk)
    try:
        ok = dtype is not None and np.dtype(dtype) in checks.FLOAT_DTYPES  # np.dtype(None): f64
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r:.40}")
    dtype = np.dtype(dtype)
    given_w = w if w is not None else TRUE_W if d == 2 else np.zeros(1)  # drawn: N(0, 1) each
    checks.labels_fit(given_w, b, noise, dtype)
    overwrite = checks.boolean("overwrite", overwrite)
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise TypeError(f"out_dir must be a folder's path, got {out_dir!r:.60}")
    out = Path(out_dir)
    target = Path(os.path.realpath(out))  # through links: the folder itself is replaced
    _check_sizes(out, target, n, d, chunk, dtype)
    _remove_leftovers(target)  # first: a killed swap may have set target's dataset aside
    _check_out_dir(out, target, overwrite)

    key_w, key_data = jax.random.split(key)
    if w is None:
        w = np.asarray(TRUE_W if d == 2 else jax.random.normal(key_w, (d,)), np.float64)
    counts = _split(n, shards)
    target.parent.mkdir(parents=True, exist_ok=True)
    new = target.parent / f".{target.name}{NEW_INFIX}{secrets.token_hex(4)}"
    os.mkdir(new)
    try:
        with locked(new):  # held while written: not a leftover to remove
            names = _write_shards(new, key_data, w, b, noise, counts, chunk, dtype, progress)
            manifest = {
                "format": FORMAT,
                "num_examples": n,
                "num_features": d,
                "dtype": dtype.name,
                "shards": [
                    {"X": x, "y": y, "num_examples": c}
                    for (x, y), c in zip(names, counts, strict=True)
                ],
                "w": w.tolist(),
                "b": b,
                "noise": noise,
                "chunk": chunk,
            }
            with open(new / MANIFEST, "x") as f:
                f.write(json.dumps(manifest, indent=1))
                f.flush()
                os.fsync(f.fileno())
            fsync_folder(new)
            _check_out_dir(out, target, overwrite)  # what is there is still only a dataset
            _swap_in(new, target)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return open_dataset(out)

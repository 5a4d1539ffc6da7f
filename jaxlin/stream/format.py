"""Data on disk: ``.npy`` shards with a JSON manifest, written and checked.

* ``generate_shards`` writes the synthetic problem as ``X-00000.npy``,
  ``y-00000.npy``, ... plus ``manifest.json``, a chunk at a time: memory is
  bounded by ``chunk``, and row ``r`` depends only on the key and ``chunk``
  (not on the number of shards), so the same key gives the same files.
* ``open_dataset`` checks the manifest against every shard's ``.npy`` header
  and size before any training: a truncated, corrupted or mismatched file is
  a ``ValueError`` that names it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import checks
from jaxlin.data import TRUE_B, TRUE_W, synthetic_data

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

    def spec(self) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of ``(X, y)`` as training sees them: ``(n, d)``, ``(n, 1)``."""
        dtype = jax.dtypes.canonicalize_dtype(self.dtype)  # float32 unless x64 is on
        n, d = self.num_examples, self.num_features
        return jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((n, 1), dtype)

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
        w = TRUE_W if d == 2 else np.asarray(jax.random.normal(key_w, (d,)))
    w = np.asarray(w, np.float64).reshape(-1)
    if w.shape != (d,):
        raise ValueError(f"w has {w.size} values but d={d}")
    b = TRUE_B if b is None else checks.finite_float("b", b)
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

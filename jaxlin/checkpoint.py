"""Checkpoints: save the state of a run after every epoch, resume it bit for bit.

The lecture trains three epochs in a second and never needs this; a long run
does. Everything a run needs to continue is small: the params, the shuffling
key, the index of the next epoch, the history so far and the config that says
which run it is. ``fit`` already continues a run exactly from ``start_epoch``
(epoch ``e`` shuffles with ``fold_in(key, e)``), so a checkpoint is just those
values on disk, and ``fit_with_checkpoints`` writes one from ``fit``'s
epoch-end callback.

Format (version 2): two files per folder.

- ``checkpoint.npz`` (``numpy.savez``, loaded with ``allow_pickle=False``):
  ``w``, ``b``, the key's data and a JSON ``meta`` entry with the format, the
  epoch counter, the config, and a pointer into the history: its file name,
  steps per epoch, dtype and the CRC-32 of its first ``epoch`` rows. It is
  small and replaced whole by one atomic rename.
- ``history.<id>.bin``: one row per epoch (the epoch's batch losses, then its
  validation loss), little-endian, appended once per epoch.

An epoch's save appends one row, then renames a new ``checkpoint.npz`` in
place, so the bytes written per epoch do not depend on how many epochs ran.
A crash between the two leaves rows past the checkpoint's epoch: reading
ignores them and resuming cuts them off. A run holds an advisory lock on its
folder (``flock``, where the OS has it); files a killed writer left behind
(temporary files, a history file no checkpoint points to) are removed by the
next save or load that finds the folder unlocked.

Reading checks the whole structure (arrays present, shapes, dtypes, finite
values, the format, the meta fields' types, the history's length and CRC
against the epoch counter); anything wrong is one ``ValueError`` line that
names the file and what is wrong, and never quotes the file's bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.typing import ArrayLike

from jaxlin import checks
from jaxlin import config as configs
from jaxlin.files import fsync_folder
from jaxlin.model import Params
from jaxlin.trainer import EpochEnd, History, fit

try:  # POSIX: an advisory lock tells a live writer from a killed one
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, cleaning is up to the writer
    fcntl = None

FILENAME = "checkpoint.npz"
FORMAT_VERSION = 2
HISTORY_PATTERN = re.compile(r"history\.[A-Za-z0-9_]{1,64}\.bin")  # names of history files
_TEMPORARY = re.compile(rf"\.{re.escape(FILENAME)}\..+\.tmp")  # atomic_write's files
_LOSS_DTYPES = ("float32", "float64")
_LOCK_WAIT_S = 2.0  # a reader holds the folder's lock for one read; a writer for its run

# meta's fields and their JSON types (bool is not an int here).
_META = {
    "format": int, "epoch": int, "config": dict, "key_impl": (str, type(None)), "has_val": bool,
    "history": str, "steps": int, "loss_dtype": str, "history_crc32": int,
}  # fmt: skip
# The config fields fit_with_checkpoints writes, and their JSON types.
_SETTINGS = {
    "lr": (int, float), "batch_size": int, "shuffle": bool, "gradient_clip_val": (int, float),
    "has_val": bool, "train_data": str,
}  # fmt: skip


class Checkpoint(NamedTuple):
    """The state of a run after ``epoch`` epochs: enough to continue it exactly."""

    params: Params  # after epoch ``epoch - 1``
    key: jax.Array | None  # the shuffling key of the whole run (None without shuffling)
    epoch: int  # the next epoch to run (= epochs done)
    history: History  # of epochs 0 .. epoch - 1
    config: dict[str, Any]  # JSON-able: which run this is


class _Log(NamedTuple):
    """Where a run's history lives: ``name`` in the folder, rows of ``steps`` losses (+ val)."""

    name: str
    steps: int
    dtype: str  # "float32" or "float64", stored little-endian
    has_val: bool

    @property
    def row_bytes(self) -> int:
        return (self.steps + self.has_val) * np.dtype(self.dtype).itemsize

    def encode(self, train_loss: np.ndarray, val_loss: np.ndarray | None) -> bytes:
        """Rows ``(k, steps)`` and ``(k,)`` as the file stores them."""
        rows = train_loss if val_loss is None else np.column_stack([train_loss, val_loss])
        return np.ascontiguousarray(rows, np.dtype(self.dtype).newbyteorder("<")).tobytes()


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` all or nothing: a temporary file in the same folder, then a rename.

    ``write(f)`` fills the temporary file; it is flushed and fsync'ed, renamed
    over ``path`` with ``os.replace`` (atomic on POSIX and Windows within one
    file system), and the folder is fsync'ed so the rename itself survives a
    power cut. If anything fails before the rename, ``path`` is untouched and
    the temporary file is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)
    return path


@contextlib.contextmanager
def _folder_lock(directory: Path, *, wait: bool):
    """Hold the folder's advisory lock; yields whether this process got it.

    A writer holds it for its whole run, a reader only while it reads; the
    kernel drops it when its holder dies, so a free lock means no live writer.
    """
    if fcntl is None:
        yield True
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        deadline = time.monotonic() + (_LOCK_WAIT_S if wait else 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    held = False
                    break
                time.sleep(0.02)
        yield held
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _writer(directory: Path):
    """The folder's lock for a writer, or a ValueError when another process holds it."""
    with _folder_lock(directory, wait=True) as held:
        if not held:
            raise ValueError(
                f"checkpoint_dir {directory}: another run is writing checkpoints there"
            )
        yield


def _remove_stale(directory: Path, *, keep: str | None, histories: bool) -> None:
    """Remove a killed writer's leftovers: temporary files and, with ``histories``, every
    history file but ``keep``.

    Called only with the folder's lock held, so no live writer owns these files.
    """
    for entry in os.scandir(directory):
        name = entry.name
        history = histories and HISTORY_PATTERN.fullmatch(name) and name != keep
        if (_TEMPORARY.fullmatch(name) or history) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _json_config(config) -> dict[str, Any]:
    """``config`` as it will read back from JSON (tuples become lists...), or a TypeError."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(config))
    except (TypeError, ValueError) as err:
        raise TypeError(f"config must be JSON-serialisable: {err}") from None


def _new_history(directory: Path) -> tuple[str, io.BufferedWriter]:
    """A new, empty history file with a unique name, open for appending."""
    fd, path = tempfile.mkstemp(dir=directory, prefix="history.", suffix=".bin")
    return Path(path).name, os.fdopen(fd, "ab")


def _append(f: io.BufferedWriter, data: bytes) -> None:
    """Append ``data`` and make it durable before the checkpoint that counts it is renamed."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _write_checkpoint(directory: Path, state: Checkpoint, log: _Log, crc: int) -> Path:
    """Rename a new ``checkpoint.npz`` into place: params, key and a pointer into ``log``."""
    meta = {
        "format": FORMAT_VERSION,
        "epoch": state.epoch,
        "config": state.config,
        "key_impl": None if state.key is None else str(jax.random.key_impl(state.key)),
        "has_val": log.has_val,
        "history": log.name,
        "steps": log.steps,
        "loss_dtype": log.dtype,
        "history_crc32": crc,
    }
    arrays = {
        "w": np.asarray(state.params["w"]),
        "b": np.asarray(state.params["b"]),
        "meta": np.array(json.dumps(meta)),
    }
    if state.key is not None:
        arrays["key"] = np.asarray(jax.random.key_data(state.key))
    return atomic_write(directory / FILENAME, lambda f: np.savez(f, **arrays))


def _checked_state(state) -> tuple[Checkpoint, _Log]:
    """``state`` with its fields checked (and the config as JSON reads it back), and its log."""
    if not isinstance(state, Checkpoint):
        raise TypeError(f"state must be a Checkpoint, got {type(state).__name__}")
    epoch = checks.nonnegative_int("state.epoch", state.epoch)
    config = _json_config(state.config)
    checks.params(state.params)
    key = None if state.key is None else checks.key("state.key", state.key)
    history = state.history
    if not isinstance(history, History):
        raise TypeError(f"state.history must be a jaxlin.History, got {type(history).__name__}")
    train = np.asarray(history.train_loss)
    if train.dtype.name not in _LOSS_DTYPES or train.ndim != 2:
        raise TypeError(
            f"state.history.train_loss must be a 2-D float32/float64 array, "
            f"got {train.ndim}-D {train.dtype}"
        )
    if train.shape[0] != epoch:
        raise ValueError(
            f"state.history.train_loss has {train.shape[0]} epochs but state.epoch is {epoch}"
        )
    val = None if history.val_loss is None else np.asarray(history.val_loss)
    if val is not None and (val.dtype != train.dtype or val.shape != (epoch,)):
        raise ValueError(
            f"state.history.val_loss must be ({epoch},) {train.dtype}, got {val.shape} {val.dtype}"
        )
    log = _Log("", train.shape[1], train.dtype.name, val is not None)
    return Checkpoint(state.params, key, epoch, History(train, val), config), log


def save_checkpoint(directory: str | os.PathLike, state: Checkpoint) -> Path:
    """Write ``state`` to ``directory`` (``checkpoint.npz`` and its history); returns the path.

    The folder is created if missing. Arrays are stored exactly (their dtype
    and bits), so a resumed run is bit-identical to one never interrupted.
    The history goes to a new file and ``checkpoint.npz`` is renamed over the
    old one last: a crash leaves the previous checkpoint whole.
    """
    state, log = _checked_state(state)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _refuse_folder_named_checkpoint(directory)
    with _writer(directory):
        name, f = _new_history(directory)
        try:
            with f:
                log = log._replace(name=name)
                data = log.encode(state.history.train_loss, state.history.val_loss)
                _append(f, data)
            path = _write_checkpoint(directory, state, log, zlib.crc32(data))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(directory / name)
            raise
        _remove_stale(directory, keep=name, histories=True)
    return path


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters (a config value read from a file)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(name: str) -> str:
    """A config field's name for a message: as is when it is a plain identifier."""
    return name if name.isidentifier() and len(name) <= 40 else _short(name)


def config_differences(saved: dict, requested: dict) -> list[str]:
    """Names of the fields where two configs differ (missing on one side counts)."""
    saved, requested = _json_config(saved), _json_config(requested)
    return sorted(k for k in saved.keys() | requested.keys() if saved.get(k) != requested.get(k))


def _json_kind(value: Any) -> str:
    """The JSON type of ``value``, in words (numbers are one kind)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "text", list: "a list", dict: "an object"}.get(type(value), "null")


def _type_problem(value: Any, types) -> str | None:
    """What is wrong with ``value``'s type (``types`` as for ``isinstance``; bool is no int)."""
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
    return f"is {_json_kind(value)}, expected {want}"


def _check_meta(meta: Any, requested: dict | None) -> str | None:
    """What is wrong with the ``meta`` entry, or ``None`` when its fields are usable."""
    if not isinstance(meta, dict):
        return f"meta is {_json_kind(meta)}, expected an object"
    if "format" in meta and meta["format"] != FORMAT_VERSION:
        found = meta["format"] if _type_problem(meta["format"], int) is None else "unknown"
        return f"format {_short(found)}, this jaxlin reads format {FORMAT_VERSION}"
    for field, types in _META.items():
        if field not in meta:
            return f"meta has no field {field!r}"
        problem = _type_problem(meta[field], types)
        if problem:
            return f"meta field {field!r} {problem}"
    if meta["epoch"] < 0 or meta["steps"] < (1 if meta["epoch"] else 0):
        return "meta's epoch counter or steps per epoch is out of range"
    if not 0 <= meta["history_crc32"] < 2**32:
        return "meta field 'history_crc32' is out of range"
    if not HISTORY_PATTERN.fullmatch(meta["history"]):
        return "meta field 'history' is not the name of a history file"
    if meta["loss_dtype"] not in _LOSS_DTYPES:
        return f"meta field 'loss_dtype' must be one of {_LOSS_DTYPES}"
    config = meta["config"]
    expected = {**_SETTINGS, **{k: type(v) for k, v in (requested or {}).items()}}
    for field, types in expected.items():
        if field in config and types is not type(None):
            types = (int, float) if types in (int, float) and field not in _SETTINGS else types
            problem = _type_problem(config[field], types)
            if problem:
                return f"config field {_field(field)} {problem}"
    return None


def _key_shape(impl: str) -> tuple[int, ...] | None:
    """The data shape of a key of implementation ``impl``, or ``None`` if JAX has no such one."""
    try:
        return tuple(jax.random.key_data(jax.random.key(0, impl=impl)).shape)
    except (ValueError, TypeError, KeyError):
        return None


def _check_arrays(data: dict[str, np.ndarray], meta: dict) -> str | None:
    """What is wrong with the params and key arrays, or ``None``."""
    w, b = data["w"], data["b"]
    if w.dtype.name not in _LOSS_DTYPES or w.ndim != 2 or w.shape[1] != 1 or w.shape[0] < 1:
        return f"array 'w' must be (d, 1) float32/float64, got {w.shape} {w.dtype}"
    if b.dtype != w.dtype or b.shape != (1,):
        return f"array 'b' must be (1,) {w.dtype}, got {b.shape} {b.dtype}"
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        return "params 'w' or 'b' hold NaN or Inf"
    if (meta["key_impl"] is None) != ("key" not in data):
        return "the key array and meta field 'key_impl' disagree"
    if meta["key_impl"] is not None:
        shape, key = _key_shape(meta["key_impl"]), data["key"]
        if shape is None:
            return "meta field 'key_impl' names no key implementation JAX has"
        if key.dtype != np.uint32 or key.shape != shape:
            return f"array 'key' must be {shape} uint32, got {key.shape} {key.dtype}"
    return None


def _read_archive(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``path``, checked to be the ones jaxlin writes; or a ``CheckpointError``."""
    with open(path, "rb") as f:  # our handle: closed even when numpy cannot parse the file
        try:
            archive = np.load(f, allow_pickle=False)
        except Exception:  # any failure to parse untrusted bytes: unreadable
            archive = None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise CheckpointError(
                f"{path} is not a readable jaxlin checkpoint: "
                "not an npz archive (empty, truncated or corrupt)"
            )
        with archive:
            return _archive_arrays(path, archive)


def _archive_arrays(path: Path, archive) -> dict[str, np.ndarray]:
    """Every array of an open npz archive, after checking its names."""
    unreadable = f"{path} is not a readable jaxlin checkpoint"
    names = set(archive.files)
    missing = sorted({"meta", "w", "b"} - names)
    if missing:
        raise CheckpointError(f"{unreadable}: array {missing[0]!r} is missing")
    if names - {"meta", "w", "b", "key"}:
        raise CheckpointError(f"{unreadable}: it holds arrays jaxlin does not write")
    data = {}
    for name in sorted(names):
        try:
            data[name] = archive[name]
        except Exception:  # a bad CRC, header or length: corrupt bytes
            raise CheckpointError(
                f"{unreadable}: array {name!r} is corrupt (truncated or altered)"
            ) from None
        if not isinstance(data[name], np.ndarray):
            raise CheckpointError(f"{unreadable}: entry {name!r} is not an array")
    return data


def _read_meta(path: Path, data: dict[str, np.ndarray], requested: dict | None) -> dict:
    """The checked ``meta`` entry of an archive."""
    entry = data["meta"]
    if entry.shape != () or entry.dtype.kind != "U":
        raise CheckpointError(f"{path} is not a valid jaxlin checkpoint: meta is not a string")
    try:
        meta = json.loads(str(entry[()]))
    except ValueError:
        raise CheckpointError(
            f"{path} is not a valid jaxlin checkpoint: meta is not JSON"
        ) from None
    problem = _check_meta(meta, requested) or _check_arrays(data, meta)
    if problem:
        raise CheckpointError(f"{path} is not a valid jaxlin checkpoint: {problem}")
    return meta


def _read_history(path: Path, log: _Log, epoch: int, crc: int) -> History:
    """The first ``epoch`` rows of the history file, checked against the checkpoint."""
    where = f"{path} is not a valid jaxlin checkpoint: its history file {log.name}"
    history_path = path.parent / log.name
    if not history_path.is_file():
        raise CheckpointError(f"{where} is missing")
    want = epoch * log.row_bytes
    with open(history_path, "rb") as f:
        data = f.read(want)
    if len(data) < want:
        raise CheckpointError(
            f"{where} holds {len(data) // log.row_bytes} epochs, the checkpoint counts {epoch}"
        )
    if zlib.crc32(data) != crc:
        raise CheckpointError(
            f"{where} does not match the checkpoint (corrupt, or the epoch counter was altered)"
        )
    rows = np.frombuffer(data, np.dtype(log.dtype).newbyteorder("<"))
    rows = rows.astype(log.dtype).reshape(epoch, log.steps + log.has_val)
    if not np.isfinite(rows).all():
        raise CheckpointError(f"{where} holds NaN or Inf losses")
    return History(rows[:, : log.steps].copy(), rows[:, log.steps].copy() if log.has_val else None)


def _refuse_folder_named_checkpoint(directory: Path) -> None:
    """A folder (or other non-file) where ``checkpoint.npz`` should be is an error, not a crash."""
    path = directory / FILENAME
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a file: a checkpoint is a file (remove or rename it)")


def _read(directory: Path, config: dict | None) -> tuple[Checkpoint, _Log, int]:
    """The checked checkpoint in ``directory``, its history log and the history's CRC-32."""
    path = directory / FILENAME
    _refuse_folder_named_checkpoint(directory)
    requested = None if config is None else _json_config(config)
    data = _read_archive(path)
    meta = _read_meta(path, data, requested)
    if requested is not None:
        diff = config_differences(meta["config"], requested)
        if diff:
            detail = ", ".join(
                f"{_field(k)}: saved {_short(meta['config'].get(k))}, "
                f"requested {_short(requested.get(k))}"
                for k in diff
            )
            raise ValueError(
                f"checkpoint {path} is from a different run; differing fields: {detail}"
            )
    log = _Log(meta["history"], meta["steps"], meta["loss_dtype"], meta["has_val"])
    history = _read_history(path, log, meta["epoch"], meta["history_crc32"])
    key = None
    if meta["key_impl"] is not None:
        key = jax.random.wrap_key_data(data["key"], impl=meta["key_impl"])
    params = {"w": jax.numpy.asarray(data["w"]), "b": jax.numpy.asarray(data["b"])}
    state = Checkpoint(params, key, meta["epoch"], history, meta["config"])
    return state, log, meta["history_crc32"]


def _require_checkpoint(directory: Path) -> None:
    """``FileNotFoundError`` when there is no checkpoint to read in ``directory``."""
    if not (directory / FILENAME).exists():
        raise FileNotFoundError(f"checkpoint_dir {directory}: no {FILENAME} to resume from")


def load_checkpoint(directory: str | os.PathLike, *, config: dict | None = None) -> Checkpoint:
    """Read and check ``directory/checkpoint.npz``; with ``config``, refuse one from another run.

    When no run holds the folder, a killed writer's leftovers are removed.

    Raises:
      FileNotFoundError: no checkpoint in ``directory``.
      ValueError: the checkpoint (or its history file) is unreadable, malformed
        or inconsistent, or its config differs from ``config``: one line that
        names the file and the problem (every differing field, for a config).
    """
    directory = Path(directory)
    if not directory.is_dir():
        _require_checkpoint(directory)
    with _folder_lock(directory, wait=False) as held:
        state, _, _ = _read_and_clean(directory, config, clean=held)
    return state


def _read_and_clean(
    directory: Path, config: dict | None, *, clean: bool
) -> tuple[Checkpoint, _Log, int]:
    """``_read``; with ``clean`` (the folder's lock held), remove what a killed writer left."""
    if clean:
        _remove_stale(directory, keep=None, histories=not (directory / FILENAME).exists())
    _require_checkpoint(directory)
    state, log, crc = _read(directory, config)
    if clean:
        _remove_stale(directory, keep=log.name, histories=True)
    return state, log, crc


def _fingerprint(X: jax.Array, y: jax.Array) -> str:
    """A short hash of the training data, so a checkpoint is not resumed on other data."""
    h = hashlib.sha256()
    for a in (X, y):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class _EpochWriter:
    """``fit``'s callback that saves each epoch: one history row appended, one small rename.

    What it writes per epoch does not depend on the epochs before it; the
    history returned to the caller is ``fit``'s own.
    """

    def __init__(self, directory: Path, key, config: dict, callback, resumed=None):
        """``resumed``: ``(log, epochs, crc)`` of the checkpoint a run continues, or ``None``."""
        self.directory, self.key, self.config, self.callback = directory, key, config, callback
        self.log, self.crc, self.file = None, 0, None
        if resumed is not None:  # cut the rows a crash left past the checkpoint, then append
            self.log, epochs, self.crc = resumed
            self.file = open(directory / self.log.name, "r+b")  # closed by close()
            self.file.truncate(epochs * self.log.row_bytes)
            self.file.seek(0, os.SEEK_END)

    def __call__(self, end: EpochEnd) -> None:
        """Append the epoch's row, rename a checkpoint that counts it, then run the callback."""
        train = np.asarray(end.train_loss)[None]
        val = None if end.val_loss is None else np.asarray([end.val_loss], train.dtype)
        fresh = self.log is None
        if fresh:
            name, self.file = _new_history(self.directory)
            self.log = _Log(name, train.shape[1], train.dtype.name, val is not None)
        if (train.shape[1], train.dtype.name) != (self.log.steps, self.log.dtype):
            raise ValueError(
                f"epoch {end.epoch}: {train.shape[1]} {train.dtype} losses, the history file "
                f"holds rows of {self.log.steps} {self.log.dtype}"
            )
        data = self.log.encode(train, val)
        _append(self.file, data)
        self.crc = zlib.crc32(data, self.crc)
        state = Checkpoint(end.params, self.key, end.epoch + 1, None, self.config)
        _write_checkpoint(self.directory, state, self.log, self.crc)
        if fresh:  # the folder's previous history (if any) is no longer pointed to
            _remove_stale(self.directory, keep=self.log.name, histories=True)
        if self.callback is not None:
            self.callback(end)

    def close(self) -> None:
        """Close the history file (what it holds is already durable)."""
        if self.file is not None:
            self.file.close()


def _concat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return None
    return np.concatenate([a, b]) if a.size else b


def fit_with_checkpoints(
    params: Params,
    train: tuple[ArrayLike, ArrayLike],
    val: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    checkpoint_dir: str | os.PathLike,
    resume: bool = False,
    config: dict | None = None,
    key: jax.Array | None = None,
    max_epochs: int | None = None,
    callback: Callable[[EpochEnd], None] | None = None,
    **fit_kwargs,
) -> tuple[Params, History]:
    """``fit``, writing a checkpoint after every epoch; ``resume=True`` continues from one.

    The checkpoint is written *before* ``callback`` runs, so a callback that
    raises (Ctrl-C, a time budget) leaves the epoch it just saw on disk.
    Resuming after epoch ``k`` gives the same final params and history, bit
    for bit, as a run that was never interrupted: the params, key and history
    come from the checkpoint and ``fit`` continues at ``start_epoch=k``. Each
    epoch appends its losses to the history file and replaces the small
    checkpoint file, so saving costs the same at epoch 1 as at epoch 1000.

    Args:
      params, train, val, max_epochs, callback, **fit_kwargs: as for ``fit``
        (``start_epoch`` is set from the checkpoint). On resume, ``params`` is
        only checked; the checkpoint's params are used.
      checkpoint_dir: folder of ``checkpoint.npz`` and its history file
        (created if missing); one run at a time writes to it.
      resume: continue from the checkpoint in ``checkpoint_dir`` (it must exist).
      config: extra JSON-able fields that identify the run (the CLI passes its
        flags). The training settings (``lr``, ``batch_size``, ...) and a hash
        of the training data are added; a checkpoint whose config differs is
        refused with the differing fields named. ``max_epochs`` is not part of
        it: a finished run can be resumed with more epochs.
      key: the shuffling key; on resume it may be omitted (the saved one is used).

    Raises:
      FileNotFoundError: ``resume`` and no checkpoint in ``checkpoint_dir``.
      ValueError, TypeError: bad arguments, a checkpoint of another run, an
        unreadable or inconsistent checkpoint, or a folder another run writes to.
    """
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if "start_epoch" in fit_kwargs:
        raise TypeError("start_epoch is set from the checkpoint; do not pass it")
    if checkpoint_dir is None or not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"checkpoint_dir must be a folder path, got {checkpoint_dir!r}")
    directory = Path(checkpoint_dir)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint_dir {directory}: exists and is not a folder")
    settings = {k: fit_kwargs.pop(k) for k in list(fit_kwargs) if k in configs.FIELDS}
    train_config = configs.make_config(None, max_epochs=max_epochs, **settings)
    max_epochs = train_config.max_epochs
    _, (X, y), val, _ = configs.training_data(params, train, val, train_config)
    full_config = {
        **_json_config({} if config is None else config),
        **train_config.settings(),
        "has_val": val is not None,
        "train_data": _fingerprint(X, y),
    }
    # Check everything (and fail early) with fit's own checks before touching the disk.
    if key is not None:
        key = checks.key("key", key)
    if resume:
        _require_checkpoint(directory)
    else:
        existing = directory
        while not existing.exists():  # the first folder that exists must be writable
            existing = existing.parent
        if not os.access(existing, os.W_OK):
            raise ValueError(f"checkpoint_dir {directory}: folder {existing} is not writable")
        _refuse_folder_named_checkpoint(directory)
        directory.mkdir(parents=True, exist_ok=True)

    with _writer(directory):
        resumed = None
        if resume:
            state, log, crc = _read_and_clean(directory, full_config, clean=True)
            key = _resume_key(directory, key, state.key)
            if state.params["w"].shape != params["w"].shape:
                raise ValueError(
                    f"checkpoint params['w'] has shape {state.params['w'].shape}, "
                    f"params['w'] has {params['w'].shape}"
                )
            params, start, history = state.params, state.epoch, state.history
            if start > max_epochs:
                raise ValueError(
                    f"max_epochs must be >= the {start} epochs the checkpoint has done, "
                    f"got {max_epochs}"
                )
            if start == max_epochs:  # already done: the saved result is the result
                return params, history
            resumed = (log, start, crc)
        else:
            start, history = 0, None
        writer = _EpochWriter(directory, key, full_config, callback, resumed)
        try:
            params, tail = fit(
                params,
                (X, y),
                val,
                key=key,
                config=train_config,
                callback=writer,
                start_epoch=start,
                **fit_kwargs,
            )
        finally:
            writer.close()
    if history is None:
        return params, tail
    return params, History(
        _concat(history.train_loss, tail.train_loss),
        None if val is None else _concat(history.val_loss, tail.val_loss),
    )


def _resume_key(directory: Path, key: jax.Array | None, saved: jax.Array | None):
    """The run's key on resume: the saved one; a different ``key`` passed is refused."""
    if key is not None and saved is not None:
        if not np.array_equal(jax.random.key_data(key), jax.random.key_data(saved)):
            raise ValueError(
                f"checkpoint {directory / FILENAME} is from a different run; differing fields: key"
            )
    return saved if saved is not None else key

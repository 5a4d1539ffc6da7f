"""Checkpoints: save the state of a run after every epoch, resume it bit for bit.

The lecture trains three epochs in a second and never needs this; a long run
does. Everything a run needs to continue is small: the params, the shuffling
key, the index of the next epoch, the history so far and the config that says
which run it is. ``fit`` already continues a run exactly from ``start_epoch``
(epoch ``e`` shuffles with ``fold_in(key, e)``), so a checkpoint is just those
values on disk, and ``fit_with_checkpoints`` writes one from ``fit``'s
epoch-end callback.

Format (version 3): two files per folder.

- ``checkpoint.npz`` (``numpy.savez``, loaded with ``allow_pickle=False``):
  ``w``, ``b``, the key's data and a JSON ``meta`` entry with the format, the
  epoch counter, the run's identity (``run``), and a pointer into the history:
  its file name, steps per epoch, dtype and the CRC-32 of its first ``epoch``
  rows. It is small and replaced whole by one atomic rename.
- ``history.<id>.bin``: the 16 bytes of ``HISTORY_MAGIC``, then one row per
  epoch (the epoch's batch losses, then its validation loss), little-endian,
  appended once per epoch.

An epoch's save appends one row, then renames a new ``checkpoint.npz`` in
place, so the bytes written per epoch do not depend on how many epochs ran.
A crash between the two leaves rows past the checkpoint's epoch: reading
ignores them and resuming cuts them off. A run holds an advisory lock on its
folder (``flock``, where the OS has it); files a killed writer left behind
(temporary files, a history file no checkpoint points to) are removed by the
next save or load that finds the folder unlocked. Only jaxlin's own files are
ever removed: a temporary file's name ends in ``.jaxlin-tmp``, and a history
file is one only when its name has the form ``history.<8 characters>.bin``
*and* its bytes begin with ``HISTORY_MAGIC``; any other file is left alone.

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
from jaxlin.config import TrainConfig
from jaxlin.files import atomic_write, temporary_pattern
from jaxlin.model import Params
from jaxlin.trainer import EpochEnd, History, fit

try:  # POSIX: an advisory lock tells a live writer from a killed one
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, cleaning is up to the writer
    fcntl = None

FILENAME = "checkpoint.npz"
FORMAT_VERSION = 3
HISTORY_PATTERN = re.compile(r"history\.[a-z0-9_]{8}\.bin")  # names of history files
HISTORY_MAGIC = b"jaxlin history\x00\x03"  # the first bytes of every history file
_TEMPORARY = temporary_pattern(FILENAME)  # atomic_write's files for the checkpoint
_LOSS_DTYPES = ("float32", "float64")
_MAX_ARRAY_BYTES = {"meta": 1 << 20, "b": 1 << 10, "key": 1 << 10}  # "w": the memory
_LOCK_WAIT_S = 2.0  # a reader holds the folder's lock for one read; a writer for its run

# meta's fields and their JSON types (bool is not an int here).
_META = {
    "format": int, "epoch": int, "run": dict, "key_impl": (str, type(None)), "has_val": bool,
    "history": str, "steps": int, "loss_dtype": str, "history_crc32": int,
}  # fmt: skip
# The run fields fit_with_checkpoints writes, and their JSON types.
_SETTINGS = {
    "lr": (int, float), "batch_size": int, "shuffle": bool, "gradient_clip_val": (int, float),
    "engine": str, "dtype": str, "has_val": bool, "train_data": str,
}  # fmt: skip


class Checkpoint(NamedTuple):
    """The state of a run after ``epoch`` epochs: enough to continue it exactly."""

    params: Params  # after epoch ``epoch - 1``
    key: jax.Array | None  # the shuffling key of the whole run (None without shuffling)
    epoch: int  # the next epoch to run (= epochs done)
    history: History  # of epochs 0 .. epoch - 1
    run: dict[str, Any]  # JSON-able: which run this is (its settings, data hash, ...)


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


def _is_history_file(path: str) -> bool:
    """Whether ``path`` begins with ``HISTORY_MAGIC`` (or with part of it: a writer killed
    between creating the file and writing its first bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(HISTORY_MAGIC))
    except OSError:
        return False
    return HISTORY_MAGIC.startswith(head)


def _remove_stale(directory: Path, *, keep: str | None, histories: bool) -> None:
    """Remove a killed writer's leftovers: temporary files and, with ``histories``, every
    history file but ``keep``.

    Called only with the folder's lock held, so no live writer owns these files.
    A file is removed only when both its name and its first bytes say jaxlin wrote it.
    """
    for entry in os.scandir(directory):
        name = entry.name
        if not entry.is_file(follow_symlinks=False):
            continue
        if _TEMPORARY.fullmatch(name) or (
            histories
            and name != keep
            and HISTORY_PATTERN.fullmatch(name)
            and _is_history_file(entry.path)
        ):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _json_run(run) -> dict[str, Any]:
    """``run`` as it will read back from JSON (tuples become lists...), or a TypeError."""
    if not isinstance(run, dict):
        raise TypeError(f"run must be a dict of JSON values, got {type(run).__name__}")
    try:  # NaN and Inf are refused: NaN != NaN, so such a run could never be resumed
        return json.loads(json.dumps(run, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"run must hold only finite JSON values: {err}") from None


def _new_history(directory: Path) -> tuple[str, io.BufferedWriter]:
    """A new history file with a unique name, holding only ``HISTORY_MAGIC``, open to append."""
    fd, path = tempfile.mkstemp(dir=directory, prefix="history.", suffix=".bin")
    os.close(fd)
    f = open(path, "ab")  # by name: its errors name the file
    f.write(HISTORY_MAGIC)
    return Path(path).name, f


def _append(f: io.BufferedWriter, data: bytes) -> None:
    """Append ``data`` and make it durable before the checkpoint that counts it is renamed.

    A failed write (a full disk) is an ``OSError`` that names the file.
    """
    try:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    except OSError as err:
        if err.errno is None or err.filename is not None:
            raise
        raise OSError(err.errno, f"cannot write {f.name}: {err.strerror}", f.name) from None


def _write_checkpoint(directory: Path, state: Checkpoint, log: _Log, crc: int) -> Path:
    """Rename a new ``checkpoint.npz`` into place: params, key and a pointer into ``log``."""
    meta = {
        "format": FORMAT_VERSION,
        "epoch": state.epoch,
        "run": state.run,
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
    run = _json_run(state.run)
    checks.params(state.params)
    if not all(np.isfinite(np.asarray(p)).all() for p in state.params.values()):
        raise ValueError("state.params hold NaN or Inf: such a checkpoint could not be resumed")
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
    if not (np.isfinite(train).all() and (val is None or np.isfinite(val).all())):
        raise ValueError(
            "state.history holds NaN or Inf losses: such a checkpoint could not be resumed"
        )
    log = _Log("", train.shape[1], train.dtype.name, val is not None)
    return Checkpoint(state.params, key, epoch, History(train, val), run), log


def save_checkpoint(directory: str | os.PathLike, state: Checkpoint) -> Path:
    """Write ``state`` to ``directory`` (``checkpoint.npz`` and its history); returns the path.

    The folder is created if missing. Arrays are stored exactly (their dtype
    and bits), so a resumed run is bit-identical to one never interrupted.
    The history goes to a new file and ``checkpoint.npz`` is renamed over the
    old one last: a crash leaves the previous checkpoint whole.
    """
    state, log = _checked_state(state)
    directory = _folder_path("directory", directory)
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


def run_differences(saved: dict, requested: dict) -> list[str]:
    """Names of the fields where two runs' identities differ (missing on one side counts)."""
    saved, requested = _json_run(saved), _json_run(requested)
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
    run = meta["run"]
    expected = {**_SETTINGS, **{k: type(v) for k, v in (requested or {}).items()}}
    for field, types in expected.items():
        if field in run and types is not type(None):
            types = (int, float) if types in (int, float) and field not in _SETTINGS else types
            problem = _type_problem(run[field], types)
            if problem:
                return f"run field {_field(field)} {problem}"
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
    for info in archive.zip.infolist():  # the sizes entries declare, before any is inflated
        name = info.filename.removesuffix(".npy")
        limit = _MAX_ARRAY_BYTES.get(name) or checks.memory_bytes()
        if info.file_size > limit:
            raise CheckpointError(
                f"{unreadable}: array {name!r} would take {checks.size_text(info.file_size)}, "
                f"more than a checkpoint's {name!r} can ({checks.size_text(limit)})"
            )
    data = {}
    for name in sorted(names):
        try:
            data[name] = archive[name]
        except ValueError as err:
            if "allow_pickle" not in str(err):
                raise CheckpointError(
                    f"{unreadable}: array {name!r} is corrupt (truncated or altered)"
                ) from None
            raise CheckpointError(  # never unpickled: that would run the file's code
                f"{unreadable}: array {name!r} holds pickled Python objects, which jaxlin "
                "never writes (not loaded)"
            ) from None
        except Exception:  # a bad CRC, header or length: corrupt bytes
            raise CheckpointError(
                f"{unreadable}: array {name!r} is corrupt (truncated or altered)"
            ) from None
        if not isinstance(data[name], np.ndarray):
            raise CheckpointError(f"{unreadable}: entry {name!r} is not an array")
    return data


def _refuse_constant(name: str):
    """``json.loads``' hook for ``NaN`` and ``Infinity``: not JSON, and never equal to itself."""
    raise ValueError(f"{name} is not a JSON value")


def _read_meta(path: Path, data: dict[str, np.ndarray], requested: dict | None) -> dict:
    """The checked ``meta`` entry of an archive."""
    entry = data["meta"]
    if entry.shape != () or entry.dtype.kind != "U":
        raise CheckpointError(f"{path} is not a valid jaxlin checkpoint: meta is not a string")
    try:  # strict JSON: no NaN or Infinity, and no nesting deeper than Python can parse
        meta = json.loads(str(entry[()]), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
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
    want = epoch * log.row_bytes  # bounded by the file's size before anything is read
    with open(history_path, "rb") as f:
        if f.read(len(HISTORY_MAGIC)) != HISTORY_MAGIC:
            raise CheckpointError(f"{where} does not begin as a jaxlin history file does")
        held = os.fstat(f.fileno()).st_size - len(HISTORY_MAGIC)
        if held < want:
            raise CheckpointError(
                f"{where} holds {held // max(log.row_bytes, 1)} epochs, "
                f"the checkpoint counts {epoch}"
            )
        data = f.read(want)
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


def _read(directory: Path, run: dict | None) -> tuple[Checkpoint, _Log, int]:
    """The checked checkpoint in ``directory``, its history log and the history's CRC-32."""
    path = directory / FILENAME
    _refuse_folder_named_checkpoint(directory)
    requested = None if run is None else _json_run(run)
    data = _read_archive(path)
    meta = _read_meta(path, data, requested)
    if requested is not None:
        diff = run_differences(meta["run"], requested)
        if diff:
            detail = ", ".join(
                f"{_field(k)}: saved {_short(meta['run'].get(k))}, "
                f"requested {_short(requested.get(k))}"
                for k in diff
            )
            raise ValueError(
                f"checkpoint {path} is from a different run, which this one would not continue "
                f"bit for bit; differing fields: {detail}"
            )
    log = _Log(meta["history"], meta["steps"], meta["loss_dtype"], meta["has_val"])
    history = _read_history(path, log, meta["epoch"], meta["history_crc32"])
    key = None
    if meta["key_impl"] is not None:
        key = jax.random.wrap_key_data(data["key"], impl=meta["key_impl"])
    params = {"w": jax.numpy.asarray(data["w"]), "b": jax.numpy.asarray(data["b"])}
    state = Checkpoint(params, key, meta["epoch"], history, meta["run"])
    return state, log, meta["history_crc32"]


def _require_checkpoint(directory: Path) -> None:
    """``FileNotFoundError`` when there is no checkpoint to read in ``directory``."""
    if not (directory / FILENAME).exists():
        raise FileNotFoundError(f"checkpoint_dir {directory}: no {FILENAME} to resume from")


def load_checkpoint(directory: str | os.PathLike, *, run: dict | None = None) -> Checkpoint:
    """Read and check ``directory/checkpoint.npz``; with ``run``, refuse one from another run.

    When no run holds the folder, a killed writer's leftovers are removed.

    Raises:
      FileNotFoundError: no checkpoint in ``directory``.
      ValueError: the checkpoint (or its history file) is unreadable, malformed
        or inconsistent, or its run differs from ``run``: one line that names
        the file and the problem (every differing field, for a run).
    """
    directory = _folder_path("directory", directory)
    if not directory.is_dir():
        _require_checkpoint(directory)
    with _folder_lock(directory, wait=False) as held:
        state, _, _ = _read_and_clean(directory, run, clean=held)
    return state


def _read_and_clean(
    directory: Path, run: dict | None, *, clean: bool
) -> tuple[Checkpoint, _Log, int]:
    """``_read``; with ``clean`` (the folder's lock held), remove what a killed writer left."""
    if clean:
        _remove_stale(directory, keep=None, histories=not (directory / FILENAME).exists())
    _require_checkpoint(directory)
    state, log, crc = _read(directory, run)
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

    def __init__(self, directory: Path, key, run: dict, callback, resumed=None):
        """``resumed``: ``(log, epochs, crc)`` of the checkpoint a run continues, or ``None``."""
        self.directory, self.key, self.run, self.callback = directory, key, run, callback
        self.log, self.crc, self.file = None, 0, None
        if resumed is not None:  # cut the rows a crash left past the checkpoint, then append
            self.log, epochs, self.crc = resumed
            self.file = open(directory / self.log.name, "r+b")  # closed by close()
            self.file.truncate(len(HISTORY_MAGIC) + epochs * self.log.row_bytes)
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
        state = Checkpoint(end.params, self.key, end.epoch + 1, None, self.run)
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
    run: dict | None = None,
    lr: float | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    key: jax.Array | None = None,
    shuffle: bool | None = None,
    gradient_clip_val: float | None = None,
    engine: str | None = None,
    callback: Callable[[EpochEnd], None] | None = None,
    config: TrainConfig | None = None,
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
      params, train, val, lr, max_epochs, batch_size, key, shuffle,
        gradient_clip_val, engine, callback, config: as for ``fit``. On resume,
        ``params`` is only checked (the checkpoint's params are used) and
        ``key`` may be omitted (the saved one is used).
      checkpoint_dir: folder of ``checkpoint.npz`` and its history file
        (created if missing); one run at a time writes to it.
      resume: continue from the checkpoint in ``checkpoint_dir`` (it must exist).
      run: extra JSON-able fields that identify the run (the CLI passes its
        flags). The training settings (``lr``, ``batch_size``, the engine...)
        and a hash of the training data (its values, shape and dtype) are
        added; a checkpoint of a run that differs is refused with the differing
        fields named. ``max_epochs`` is not part of it: a finished run can be
        resumed with more epochs.

    Raises:
      FileNotFoundError: ``resume`` and no checkpoint in ``checkpoint_dir``.
      ValueError, TypeError: bad arguments, a checkpoint of another run, an
        unreadable or inconsistent checkpoint, or a folder another run writes to.
    """
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    directory = _folder_path("checkpoint_dir", checkpoint_dir)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint_dir {directory}: exists and is not a folder")
    train_config = configs.make_config(
        config, lr=lr, max_epochs=max_epochs, batch_size=batch_size, shuffle=shuffle,
        gradient_clip_val=gradient_clip_val, engine=engine,
    )  # fmt: skip
    max_epochs = train_config.max_epochs
    needed = train_config.shuffle and not resume  # a resumed run's key is its checkpoint's
    (X, y), val, _, key = configs.checked_run(
        "jaxlin.fit_with_checkpoints", params, train, val, train_config, key, key_needed=needed
    )
    full_run = {
        **_json_run({} if run is None else run),
        **train_config.settings(),
        "dtype": X.dtype.name,
        "has_val": val is not None,
        "train_data": _fingerprint(X, y),
    }
    # Everything is checked (with fit's own checks) before the disk is touched.
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
            state, log, crc = _read_and_clean(directory, full_run, clean=True)
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
        writer = _EpochWriter(directory, key, full_run, callback, resumed)
        try:
            params, tail = fit(
                params, (X, y), val, key=key, config=train_config, callback=writer,
                start_epoch=start,
            )  # fmt: skip
        finally:
            writer.close()
    if history is None:
        return params, tail
    return params, History(
        _concat(history.train_loss, tail.train_loss),
        None if val is None else _concat(history.val_loss, tail.val_loss),
    )


def _folder_path(name: str, folder) -> Path:
    """``folder`` as a ``Path``; an empty name (which would mean the current folder) is refused."""
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"{name} must be a folder path, got {folder!r}")
    if os.fspath(folder) in ("", b""):
        raise ValueError(f"{name} is empty: give a folder (use '.' for the current folder)")
    return Path(folder)


def _resume_key(directory: Path, key: jax.Array | None, saved: jax.Array | None):
    """The run's key on resume: the saved one; a different ``key`` passed is refused."""
    if key is not None and saved is not None:
        if not np.array_equal(jax.random.key_data(key), jax.random.key_data(saved)):
            raise ValueError(
                f"checkpoint {directory / FILENAME} is from a different run; differing fields: key"
            )
    return saved if saved is not None else key

"""Checkpoints: save the state of a run after every epoch, resume it bit for bit.

The lecture trains three epochs in a second and never needs this; a long run
does. Everything a run needs to continue is small: the
params, the shuffling key, the index of the next epoch, the history so far and
the config that says which run it is. ``fit`` already continues a run exactly
from ``start_epoch`` (epoch ``e`` shuffles with ``fold_in(key, e)``), so a
checkpoint is just those values on disk, and ``fit_with_checkpoints`` is a thin
wrapper that writes one from ``fit``'s epoch-end callback.

Format: one ``checkpoint.npz`` per folder (``numpy.savez``, loaded with
``allow_pickle=False``) holding the arrays and, as a string entry, the JSON of
the config and the epoch counter. One file, so one atomic rename replaces the
whole state: a crash mid-write leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.typing import ArrayLike

from jaxlin import checks
from jaxlin import config as configs
from jaxlin.model import Params
from jaxlin.trainer import EpochEnd, History, fit

FILENAME = "checkpoint.npz"
FORMAT_VERSION = 1


class Checkpoint(NamedTuple):
    """The state of a run after ``epoch`` epochs: enough to continue it exactly."""

    params: Params  # after epoch ``epoch - 1``
    key: jax.Array | None  # the shuffling key of the whole run (None without shuffling)
    epoch: int  # the next epoch to run (= epochs done)
    history: History  # of epochs 0 .. epoch - 1
    config: dict[str, Any]  # JSON-able: which run this is


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
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _json_config(config) -> dict[str, Any]:
    """``config`` as it will read back from JSON (tuples become lists...), or a TypeError."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(config))
    except (TypeError, ValueError) as err:
        raise TypeError(f"config must be JSON-serialisable: {err}") from None


def save_checkpoint(directory: str | os.PathLike, state: Checkpoint) -> Path:
    """Write ``state`` to ``directory/checkpoint.npz`` atomically; returns the path.

    The folder is created if missing. Arrays are stored exactly (their dtype
    and bits), so a resumed run is bit-identical to one never interrupted.
    """
    if not isinstance(state, Checkpoint):
        raise TypeError(f"state must be a Checkpoint, got {type(state).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    epoch = checks.nonnegative_int("state.epoch", state.epoch)
    meta = {
        "format": FORMAT_VERSION,
        "epoch": epoch,
        "config": _json_config(state.config),
        "key_impl": None if state.key is None else str(jax.random.key_impl(state.key)),
        "has_val": state.history.val_loss is not None,
    }
    arrays = {
        "w": np.asarray(state.params["w"]),
        "b": np.asarray(state.params["b"]),
        "train_loss": np.asarray(state.history.train_loss),
        "meta": np.array(json.dumps(meta)),
    }
    if state.key is not None:
        arrays["key"] = np.asarray(jax.random.key_data(state.key))
    if state.history.val_loss is not None:
        arrays["val_loss"] = np.asarray(state.history.val_loss)
    return atomic_write(directory / FILENAME, lambda f: np.savez(f, **arrays))


def config_differences(saved: dict, requested: dict) -> list[str]:
    """Names of the fields where two configs differ (missing on one side counts)."""
    saved, requested = _json_config(saved), _json_config(requested)
    return sorted(k for k in saved.keys() | requested.keys() if saved.get(k) != requested.get(k))


def load_checkpoint(directory: str | os.PathLike, *, config: dict | None = None) -> Checkpoint:
    """Read ``directory/checkpoint.npz``; with ``config``, refuse one from another run.

    Raises:
      FileNotFoundError: no checkpoint in ``directory``.
      ValueError: the file is not a jaxlin checkpoint, or its config differs
        from ``config``; the message names every differing field.
    """
    path = Path(directory) / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_dir {directory}: no {FILENAME} to resume from")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data["meta"][()]))
        epoch = int(meta["epoch"])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a readable jaxlin checkpoint ({err})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} has format {meta.get('format')}, expected {FORMAT_VERSION}")
    if config is not None:
        diff = config_differences(meta["config"], config)
        if diff:
            detail = ", ".join(
                f"{k}: saved {meta['config'].get(k)!r}, requested {_json_config(config).get(k)!r}"
                for k in diff
            )
            raise ValueError(
                f"checkpoint {path} is from a different run; differing fields: {detail}"
            )
    key = None
    if "key" in data:
        key = jax.random.wrap_key_data(data["key"], impl=meta["key_impl"])
    history = History(data["train_loss"], data["val_loss"] if meta["has_val"] else None)
    params = {"w": jax.numpy.asarray(data["w"]), "b": jax.numpy.asarray(data["b"])}
    return Checkpoint(params, key, epoch, history, meta["config"])


def _fingerprint(X: jax.Array, y: jax.Array) -> str:
    """A short hash of the training data, so a checkpoint is not resumed on other data."""
    h = hashlib.sha256()
    for a in (X, y):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


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
    come from the checkpoint and ``fit`` continues at ``start_epoch=k``.

    Args:
      params, train, val, max_epochs, callback, **fit_kwargs: as for ``fit``
        (``start_epoch`` is set from the checkpoint). On resume, ``params`` is
        only checked; the checkpoint's params are used.
      checkpoint_dir: folder of ``checkpoint.npz`` (created if missing).
      resume: continue from the checkpoint in ``checkpoint_dir`` (it must exist).
      config: extra JSON-able fields that identify the run (the CLI passes its
        flags). The training settings (``lr``, ``batch_size``, ...) and a hash
        of the training data are added; a checkpoint whose config differs is
        refused with the differing fields named. ``max_epochs`` is not part of
        it: a finished run can be resumed with more epochs.
      key: the shuffling key; on resume it may be omitted (the saved one is used).

    Raises:
      FileNotFoundError: ``resume`` and no checkpoint in ``checkpoint_dir``.
      ValueError, TypeError: bad arguments or a checkpoint of another run.
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
        state = load_checkpoint(directory, config=full_config)
        if key is not None and state.key is not None:
            if not np.array_equal(jax.random.key_data(key), jax.random.key_data(state.key)):
                raise ValueError(
                    f"checkpoint {directory / FILENAME} is from a different run; "
                    "differing fields: key"
                )
        key = state.key if state.key is not None else key
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
    else:
        existing = directory
        while not existing.exists():  # the first folder that exists must be writable
            existing = existing.parent
        if not os.access(existing, os.W_OK):
            raise ValueError(f"checkpoint_dir {directory}: folder {existing} is not writable")
        start = 0
        losses = np.zeros((0, 0), np.asarray(X).dtype)
        history = History(losses, None if val is None else np.zeros((0,), losses.dtype))

    if start == max_epochs:  # already done: the saved result is the result
        return params, history

    done = [history]

    def save_then_call(end: EpochEnd) -> None:
        h = done[-1]
        val_now = None if end.val_loss is None else np.asarray([end.val_loss], h.train_loss.dtype)
        h = History(_concat(h.train_loss, end.train_loss[None]), _concat(h.val_loss, val_now))
        done.append(h)
        save_checkpoint(directory, Checkpoint(end.params, key, end.epoch + 1, h, full_config))
        if callback is not None:
            callback(end)

    params, tail = fit(
        params,
        (X, y),
        val,
        key=key,
        config=train_config,
        callback=save_then_call,
        start_epoch=start,
        **fit_kwargs,
    )
    history = History(
        _concat(history.train_loss, tail.train_loss),
        None if val is None else _concat(history.val_loss, tail.val_loss),
    )
    return params, history

"""Files written safely: all or nothing, and only jaxlin's own leftovers ever removed.

What the checkpoints, the on-disk datasets, the command line's ``--json`` and
the saved figures share: a file is written to a temporary file beside it and
renamed into place, so a reader, a full disk or a kill never sees half of it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

try:  # POSIX: a lock tells a live writer's temporary file from a killed one's
    import fcntl
except ImportError:  # pragma: no cover - Windows: leftovers are left alone
    fcntl = None

TEMPORARY_SUFFIX = ".jaxlin-tmp"  # every temporary file jaxlin writes ends in this


def fsync_folder(folder: Path) -> None:
    """Make a folder's new entries (files written, renames) durable, where the OS allows it.

    A file's own ``fsync`` keeps its bytes; a rename into place survives a
    power cut only once its folder is synced too.
    """
    if not hasattr(os, "O_DIRECTORY"):  # no folder descriptors here (Windows)
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_pattern(name: str) -> re.Pattern:
    """The names ``atomic_write`` gives its temporary files for a target called ``name``."""
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}{re.escape(TEMPORARY_SUFFIX)}")


def remove_if_abandoned(path: str, remove: Callable[[str], None]) -> None:
    """``remove(path)`` if no live process holds the lock on ``path`` (its writer died or
    finished), holding that lock meanwhile, so no writer can take it up in between."""
    if fcntl is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: a live writer's
        os.close(fd)
        return
    try:
        with contextlib.suppress(OSError):
            remove(path)
    finally:
        os.close(fd)


def remove_leftovers(path: Path) -> None:
    """Remove the temporary files killed writes to ``path`` left beside it, and only those.

    A temporary file is removed only when its name is one ``atomic_write``
    gives for ``path`` and no live writer holds it (each writer locks its own).
    """
    pattern = temporary_pattern(path.name)
    with contextlib.suppress(OSError), os.scandir(path.parent or ".") as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                remove_if_abandoned(entry.path, os.unlink)


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """Hold the lock on ``path`` (a file or folder) while the block runs: it is in use."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not os.path.samestat(os.fstat(fd), os.stat(path)):  # removed before it was locked
            raise FileNotFoundError(errno.ENOENT, "removed by another run", str(path))
        yield
    finally:
        os.close(fd)


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, with the permissions ``path`` has (or, for a
    new file, what the umask gives any new file: not ``mkstemp``'s owner-only)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        except FileExistsError:
            continue
        if fcntl is not None:  # held until closed: this file is not a leftover
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                taken = not os.path.samestat(os.fstat(fd), os.stat(tmp))
            except FileNotFoundError:
                taken = True
            if taken:  # another run removed it before it was locked: make another
                os.close(fd)
                continue
        if mode is not None:
            os.fchmod(fd, mode)
        return fd, str(tmp)
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` all or nothing: a temporary file in the same folder, then a rename.

    ``write(f)`` fills the temporary file; it is flushed and fsync'ed, renamed
    over ``path`` with ``os.replace`` (atomic on POSIX and Windows within one
    file system), and the folder is fsync'ed so the rename itself survives a
    power cut. If anything fails before the rename, ``path`` is untouched and
    the temporary file is removed; an ``OSError`` names ``path``. Temporary
    files that killed writes to ``path`` left behind are removed first.
    """
    path = Path(path)
    folder = path.parent
    remove_leftovers(path)
    try:
        fd, tmp = _temporary(path)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}", str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            raise OSError(err.errno, f"cannot write {path}: {err.strerror}", str(path)) from None
        raise
    fsync_folder(folder)
    return path

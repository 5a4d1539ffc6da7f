"""Files written safely: what the checkpoints and the on-disk datasets share."""

from __future__ import annotations

import os
from pathlib import Path


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

"""Durable file replacement: the one home of fsync-then-rename.

A reader (or a process restarted after a crash) sees either the old file or
the whole new one, never half of it: the bytes are fsynced before the rename,
and the directory is fsynced after it so the rename itself survives a power
cut. Used by the artifact store and the archive.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the names in ``path`` (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(temp: Path, target: Path) -> None:
    """Move a finished ``temp`` file (same filesystem) to ``target`` durably.

    Raises OSError as the filesystem does; ``temp`` is then left to the caller.
    """
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, target)
    fsync_dir(target.parent)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably (a temp file beside it, then :func:`commit_file`)."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        temp.write_bytes(data)
        commit_file(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise

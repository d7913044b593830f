"""Durable file replacement (the one home of fsync-then-rename) and private-file reading.

A reader (or a process restarted after a crash) sees either the old file or
the whole new one, never half of it: the bytes are fsynced before the rename,
and the directory is fsynced after it so the rename itself survives a power
cut. Used by the artifact store, the archive, key, token and credential files.

Secrets (tokens, private keys) are read by :func:`read_private` only: a regular
file, not a link, that only its owner can read or write, of bounded size.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from pathlib import Path


class PrivateFileError(ValueError):
    """A secret's file that must not be used; the message says what to do.

    ``exposed``: others may have read it, so the secret in it should be replaced too.
    """

    def __init__(self, message: str, exposed: bool = False) -> None:
        super().__init__(message)
        self.exposed = exposed


def read_private(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, a regular file only its owner can read or write, at most
    ``limit`` bytes; :class:`PrivateFileError` otherwise.

    The mode checked is that of the file opened (``O_NOFOLLOW`` and ``fstat``), never
    of a link's target or of a name that may be swapped between a check and the open.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise PrivateFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise PrivateFileError(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PrivateFileError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise PrivateFileError(
                f"{path} is readable or writable by others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); make it private with `chmod 600 {path}`",
                exposed=True,
            )
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise PrivateFileError(f"{path} is over {limit:,} bytes, larger than what it should hold")
    return data


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


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` durably with ``data`` that only its owner may read, from the moment
    the name exists (tokens, credentials): a 0600 temp file, then :func:`commit_file`."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        commit_file(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def create_exclusively(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` with ``data`` and ``mode`` unless it exists; False when it did.

    ``mode`` holds from the moment the name exists (a private key is never readable
    by others, not even briefly), and two processes racing to create it create it
    once: the loser gets False and reads the winner's file.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)  # unlike a rename, never replaces an existing name
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


STALE_TEMP_SECONDS = 3600.0  # a temp file untouched this long was left by a killed process


class TempFiles:
    """Temp files in one directory (an upload's staging, a store's ``tmp``), made on first
    use only, so a directory mounted read-only serves readers; the leftovers of a killed
    process are swept then, once per object.

    :meth:`create` raises OSError as the filesystem does; the caller removes the file.
    """

    def __init__(self, directory: Path, stale_after_s: float = STALE_TEMP_SECONDS) -> None:
        self.directory = directory
        self.stale_after_s = stale_after_s
        self._swept = False

    def create(self, prefix: str = "upload-") -> tempfile._TemporaryFileWrapper[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            remove_stale(self.directory, self.stale_after_s)
        return tempfile.NamedTemporaryFile(dir=self.directory, prefix=prefix, delete=False)


def remove_stale(directory: Path, older_than_s: float) -> None:
    """Remove the files in ``directory`` untouched for ``older_than_s``: the temp files a
    killed process left (an upload, a put) that no failure path got to remove."""
    cutoff = time.time() - older_than_s
    for path in directory.iterdir():
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()

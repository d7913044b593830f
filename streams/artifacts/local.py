"""The artifact store on a local (or mounted) directory: ``<root>/sha256/ab/<digest>``.

A put streams into a temp file in ``<root>/tmp`` (same filesystem), fsyncs it and
moves it into place only when the name is free, so a reader never sees half a file
and an object is never replaced. Temp files go on every failure path; those a killed
process left are swept on the first write. Readers (workers sharing the directory)
need read access only: ``tmp`` is made on first write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from streams.artifacts.store import (
    CHUNK,
    HashingReader,
    StoredObject,
    check_digest,
    copy_hashed,
    digest_of_key,
    key_for,
)
from streams.errors import ArtifactNotFound, ArtifactStoreUnavailable
from streams.files import fsync_dir

STALE_TEMP_SECONDS = 3600.0  # a temp file older than this was left by a killed process


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._swept = False

    @property
    def location(self) -> str:
        return str(self.root)

    def path_for(self, digest: str) -> Path:
        return self.root / key_for(digest)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ArtifactStoreUnavailable(
                errno.ENOTDIR,
                f"the artifact store {self.root} is not a directory; "
                "point MODELVC_ARTIFACTS at a directory (or s3://bucket/prefix)",
            )
        try:
            # Only what reading needs: a read-only directory is fine for workers.
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unavailable(exc, "cannot be created") from exc

    def has(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def put(self, stream: BinaryIO, digest: str) -> bool:
        target = self.path_for(digest)
        if target.exists():
            return False
        handle = self._temp_file()
        temp = Path(handle.name)
        try:
            reader = HashingReader(stream)
            try:
                # The stream's own faults (a client gone) pass through as they are.
                while data := reader.read(CHUNK):
                    try:
                        handle.write(data)
                    except OSError as exc:
                        raise self._unavailable(exc, "cannot take this file") from exc
                try:
                    handle.flush()
                    os.fsync(handle.fileno())
                except OSError as exc:
                    raise self._unavailable(exc, "cannot take this file") from exc
            finally:
                # After a failed write, closing flushes the refused bytes again and would
                # raise over the message above; after fsync there is nothing left to fail.
                with contextlib.suppress(OSError):
                    handle.close()
            reader.check(digest)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                # A link, unlike a rename, never replaces a name another put made meanwhile.
                os.link(temp, target)
            except FileExistsError:
                return False
            except OSError as exc:
                raise self._unavailable(exc, "cannot take this file") from exc
            with contextlib.suppress(OSError):
                fsync_dir(target.parent)
            return True
        finally:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)

    def get(self, digest: str, into: BinaryIO) -> int:
        path = self.path_for(digest)
        try:
            source = open(path, "rb")  # noqa: SIM115 (closed below, after the copy)
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no artifact {digest} in {self.root}") from exc
        except OSError as exc:
            raise self._unavailable(exc, "cannot be read") from exc
        with source:
            try:
                return copy_hashed(source, into, digest, str(self.root))
            except OSError as exc:
                if isinstance(exc, ArtifactStoreUnavailable):
                    raise
                raise self._unavailable(exc, "cannot be read") from exc

    def list(self) -> Iterator[StoredObject]:
        try:
            paths = sorted(self.root.glob("sha256/*/*"))
        except OSError as exc:
            raise self._unavailable(exc, "cannot be listed") from exc
        for path in paths:
            digest = digest_of_key(path.relative_to(self.root).as_posix())
            if digest is None:
                continue
            try:
                info = path.stat()
            except FileNotFoundError:
                continue  # deleted since the listing
            except OSError as exc:
                raise self._unavailable(exc, "cannot be listed") from exc
            yield StoredObject(digest, info.st_size, info.st_mtime)

    def delete(self, digest: str) -> None:
        check_digest(digest)
        try:
            self.path_for(digest).unlink(missing_ok=True)
        except OSError as exc:
            raise self._unavailable(exc, "cannot delete this object") from exc

    def _temp_file(self) -> tempfile._TemporaryFileWrapper[bytes]:
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            self._sweep()
            return tempfile.NamedTemporaryFile(dir=self._tmp, prefix="upload-", delete=False)
        except OSError as exc:
            raise self._unavailable(exc, "cannot take this file") from exc

    def _sweep(self) -> None:
        """Remove temp files a killed process left behind (once per store object)."""
        if self._swept:
            return
        self._swept = True
        cutoff = time.time() - STALE_TEMP_SECONDS
        for path in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()

    def _unavailable(self, exc: OSError, what: str) -> ArtifactStoreUnavailable:
        why = exc.strerror or str(exc)
        return ArtifactStoreUnavailable(
            exc.errno or errno.EIO,
            f"the artifact store {self.root} {what} ({why}); "
            "free space or make MODELVC_ARTIFACTS writable (or readable), then try again",
        )

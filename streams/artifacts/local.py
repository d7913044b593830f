"""The artifact store on a local (or mounted) directory: ``<root>/sha256/ab/<digest>``.

A put streams into a temp file in ``<root>/tmp`` (same filesystem), fsyncs it and
moves it into place only when the name is free, so a reader never sees half a file
and an object is never replaced. Temp files go on every failure path; those a killed
process left are swept on the first write. Readers (workers sharing the directory)
need read access only: ``tmp`` is made on first write.

Only what lies in the root's own directories is an object: a shard directory or an
entry that is a symbolic link is skipped by :meth:`LocalStore.list` and left alone by
:meth:`LocalStore.delete`, so ``artifacts gc`` never removes a file outside the root.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

from streams.artifacts.store import (
    CHUNK,
    HashingReader,
    StoredObject,
    copy_hashed,
    digest_of_key,
    key_for,
)
from streams.errors import ArtifactNotFound, ArtifactStoreUnavailable
from streams.files import TempFiles, fsync_dir

log = logging.getLogger("modelvc.artifacts")


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._temp = TempFiles(root / "tmp")

    @property
    def location(self) -> str:
        return str(self.root)

    def path_for(self, digest: str) -> Path:
        return self.root / key_for(digest)

    def check(self, writable: bool = False) -> None:
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
        if writable and not os.access(self.root, os.W_OK | os.X_OK):
            raise ArtifactStoreUnavailable(
                errno.EACCES,
                f"the artifact store {self.root} is not writable by this process; make it "
                "writable (chmod/chown, or mount it read-write) or point MODELVC_ARTIFACTS at "
                "a directory it may write",
            )

    def has(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def put(self, stream: BinaryIO, digest: str) -> bool:
        target = self.path_for(digest)
        if self._refresh(target):
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
            names = sorted(self._real_entries(self.root / "sha256", directories=True))
        except OSError as exc:
            raise self._unavailable(exc, "cannot be listed") from exc
        for shard in names:
            try:
                entries = sorted(self._real_entries(self.root / "sha256" / shard))
            except FileNotFoundError:
                continue  # removed since the listing
            except OSError as exc:
                raise self._unavailable(exc, "cannot be listed") from exc
            for name in entries:
                digest = digest_of_key(f"sha256/{shard}/{name}")
                if digest is None:
                    continue
                try:
                    info = (self.root / "sha256" / shard / name).lstat()
                except FileNotFoundError:
                    continue  # deleted since the listing
                except OSError as exc:
                    raise self._unavailable(exc, "cannot be listed") from exc
                yield StoredObject(digest, info.st_size, info.st_mtime)

    def delete(self, digest: str) -> None:
        path = self.path_for(digest)
        if not self._inside(path):
            # Someone linked it in from elsewhere: removing it might remove what is not ours.
            log.warning("not deleting %s: it is a symbolic link, not an object of the store", path)
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._unavailable(exc, "cannot delete this object") from exc

    def _real_entries(self, directory: Path, directories: bool = False) -> Iterator[str]:
        """The names in ``directory`` that are regular files (or directories), never links;
        nothing when ``directory`` is absent."""
        try:
            scan = os.scandir(directory)
        except FileNotFoundError:
            return
        with scan:
            for entry in scan:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False) if directories else entry.is_file():
                    yield entry.name

    def _inside(self, path: Path) -> bool:
        """Whether ``path`` (an object's path) reaches no link below the root."""
        for step in (path.parent.parent, path.parent, path):
            try:
                if stat.S_ISLNK(step.lstat().st_mode):
                    return False
            except FileNotFoundError:
                return True
            except OSError:
                return False
        return True

    def _refresh(self, target: Path) -> bool:
        """Whether ``target`` exists; if so its modified time becomes now (a re-upload makes
        the object new to ``artifacts gc``; its bytes are never touched)."""
        try:
            os.utime(target, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError:
            return target.exists()  # read-only: it still exists, just not refreshed
        return True

    def _temp_file(self) -> IO[bytes]:
        try:
            return self._temp.create()
        except OSError as exc:
            raise self._unavailable(exc, "cannot take this file") from exc

    def _unavailable(self, exc: OSError, what: str) -> ArtifactStoreUnavailable:
        why = exc.strerror or str(exc)
        return ArtifactStoreUnavailable(
            exc.errno or errno.EIO,
            f"the artifact store {self.root} {what} ({why}); "
            "free space or make MODELVC_ARTIFACTS writable (or readable), then try again",
        )

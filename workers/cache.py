"""A worker's local cache of artifacts by digest, bounded in bytes, least recently used out.

A worker far from the store (S3, or the streams API) loads a version once over
the network and afterwards from its own disk: a restart, or a switch back to a
version served before, costs a local read. Files are ``<root>/<digest>``, mode
0600 in a 0700 directory.

Nothing in the cache is trusted: :meth:`ArtifactCache.get` re-hashes what it reads
and deletes an entry that no longer matches its name (it is then fetched again).
Each use stamps the file's mtime, strictly increasing, so the least-recently-used
order lives on disk and is recovered at construction, after a restart.

Entries are written to a temp file in ``root`` and renamed into place, so a reader
never sees half a file. They are not fsynced: a cache is rebuilt from the store,
and an entry a power cut truncated fails its hash and is fetched again. Temp files
a killed process left are swept at construction.

The directory is one worker's: each bounds only the entries it knows, and sweeps
temp files at start, so two workers sharing one would evict and delete each
other's. An exclusive ``flock`` on ``<root>/.lock``, held for the cache's life
(released by the kernel when the process dies), makes a second one fail at start.
A directory others may read or write is made private when it is ours, refused
when another user owns it (they could swap entries between our hash and our read).

A read never holds more than ``max_entry_bytes`` (the model size limit): the
file's size is checked before it is read, and a larger entry is deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from streams.artifacts.store import check_digest
from streams.core.hashing import SHA256_HEX
from streams.errors import ArtifactStoreUnavailable
from streams.modelfile import MAX_MODEL_BYTES

TEMP_PREFIX = ".fill-"
LOCK_NAME = ".lock"


class ArtifactCache:
    def __init__(
        self, root: Path, max_bytes: int, *, max_entry_bytes: int = MAX_MODEL_BYTES
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"a cache of {max_bytes} bytes: set MODELVC_WORKER_CACHE_MB >= 0")
        self.root = root
        self.max_bytes = max_bytes
        # No entry is bigger than a model may be, nor than the whole cache.
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        # Loads run in executor threads, several at once: the index is shared.
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # digest -> size, oldest first
        self._last_ns = 0  # the newest stamp given: the next one is later, even within a tick
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            _make_private(root)
            # Before the sweep below: it deletes temp files, which are only ours once locked.
            self._lock_file = _lock(root)
        except ArtifactStoreUnavailable:
            raise
        except OSError as exc:
            raise _unavailable(root, exc) from exc
        try:
            self._recover()
        except OSError as exc:
            self.close()
            raise _unavailable(root, exc) from exc
        with self._lock:
            self._evict()

    def close(self) -> None:
        """Release the directory (another cache may then open it)."""
        self._lock_file.close()

    def __enter__(self) -> ArtifactCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._entries.values())

    def digests(self) -> list[str]:
        """The cached digests, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, digest: str) -> bytes | None:
        """The verified bytes of ``digest``, or None when it is not cached (or was damaged:
        the entry is then deleted)."""
        path = self.root / check_digest(digest)
        limit = self.max_entry_bytes
        try:
            with open(path, "rb") as handle:
                # An entry past the limit is not ours (we never keep one): not even read.
                too_big = os.fstat(handle.fileno()).st_size > limit
                data = b"" if too_big else handle.read(limit + 1)
        except FileNotFoundError:
            with self._lock:
                self._entries.pop(digest, None)
            return None
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc
        if too_big or len(data) > limit or hashlib.sha256(data).hexdigest() != digest:
            with self._lock:
                self._entries.pop(digest, None)
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            return None
        with self._lock:
            self._used(digest, len(data))
        return data

    def add(self, digest: str, data: bytes) -> None:
        """Keep ``data``, bytes the caller has verified hash to ``digest``."""
        target = self.root / check_digest(digest)
        if len(data) > self.max_entry_bytes:
            return  # it would evict everything and still not fit (or get refuses it)
        try:
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.root)  # mode 0600
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, target)
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc
        finally:
            temp.unlink(missing_ok=True)
        with self._lock:
            self._used(digest, len(data))
            self._evict()

    # -- bookkeeping: callers hold the lock (or are the constructor) ---------------
    def _recover(self) -> None:
        found: list[tuple[int, str, int]] = []
        for path in self.root.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                path.unlink(missing_ok=True)
            elif SHA256_HEX.fullmatch(path.name) and path.is_file():
                info = path.stat()
                found.append((info.st_mtime_ns, path.name, info.st_size))
        for mtime_ns, digest, size in sorted(found):
            self._entries[digest] = size
            self._last_ns = max(self._last_ns, mtime_ns)

    def _used(self, digest: str, size: int) -> None:
        """Make ``digest`` the most recently used, in memory and on disk."""
        self._entries[digest] = size
        self._entries.move_to_end(digest)
        self._last_ns = max(time.time_ns(), self._last_ns + 1000)
        with contextlib.suppress(OSError):  # the order only; the bytes are good
            os.utime(self.root / digest, ns=(self._last_ns, self._last_ns))

    def _evict(self) -> None:
        """Drop least recently used entries until the total fits."""
        total = sum(self._entries.values())
        while total > self.max_bytes and self._entries:
            digest, size = self._entries.popitem(last=False)
            with contextlib.suppress(OSError):
                (self.root / digest).unlink(missing_ok=True)
            total -= size


def _make_private(root: Path) -> None:
    """0700 for a directory of ours others may use; refused when another user owns it."""
    info = os.stat(root)
    if info.st_uid != os.getuid():
        raise ArtifactStoreUnavailable(
            errno.EPERM,
            f"the worker's artifact cache {root} belongs to another user (uid {info.st_uid}): "
            "set MODELVC_WORKER_CACHE to a directory of this worker's own",
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(root, 0o700)


def _lock(root: Path) -> BinaryIO:
    """The open ``.lock`` file, flocked; refused while another process holds it."""
    # Read-only is enough for flock, and opens on a read-only disk once the file exists.
    flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    opener = lambda path, _: os.open(path, flags, 0o600)  # noqa: E731
    # Not a `with`: the file stays open, and the lock held, for the cache's life.
    handle = open(root / LOCK_NAME, "rb", opener=opener)  # noqa: SIM115
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ArtifactStoreUnavailable(
            errno.EBUSY,
            f"the worker's artifact cache {root} is in use by another worker: give each worker "
            "its own MODELVC_WORKER_CACHE (a directory per worker)",
        ) from None
    except OSError:
        handle.close()
        raise
    return handle


def _unavailable(root: Path, exc: OSError) -> ArtifactStoreUnavailable:
    return ArtifactStoreUnavailable(
        exc.errno or 0,
        f"the worker's artifact cache {root} cannot be used ({exc.strerror or exc}); free "
        "space or make it writable, or set MODELVC_WORKER_CACHE to another directory",
    )

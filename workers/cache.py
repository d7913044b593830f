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
a killed process left are swept at construction (the directory is this worker's).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from streams.artifacts.store import ArtifactStore, check_digest, read
from streams.core.hashing import SHA256_HEX
from streams.errors import ArtifactStoreUnavailable
from streams.modelfile import MAX_MODEL_BYTES

TEMP_PREFIX = ".fill-"


class ArtifactCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"a cache of {max_bytes} bytes: set MODELVC_WORKER_CACHE_MB >= 0")
        self.root = root
        self.max_bytes = max_bytes
        # Loads run in executor threads, several at once: the index is shared.
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # digest -> size, oldest first
        self._last_ns = 0  # the newest stamp given: the next one is later, even within a tick
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._recover()
        except OSError as exc:
            raise _unavailable(root, exc) from exc
        with self._lock:
            self._evict()

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
        try:
            with open(path, "rb") as handle:
                data = handle.read(self.max_bytes + 1)
        except FileNotFoundError:
            with self._lock:
                self._entries.pop(digest, None)
            return None
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc
        if len(data) > self.max_bytes or hashlib.sha256(data).hexdigest() != digest:
            with self._lock:
                self._entries.pop(digest, None)
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            return None
        with self._lock:
            self._used(digest, len(data))
        return data

    def fill(self, digest: str, store: ArtifactStore, limit: int = MAX_MODEL_BYTES) -> bytes:
        """Fetch ``digest`` from ``store`` (verified, at most ``limit`` bytes), keep it, and
        return it. An artifact larger than the whole cache is returned but not kept."""
        data = read(store, check_digest(digest), limit)
        self.add(digest, data)
        return data

    def add(self, digest: str, data: bytes) -> None:
        """Keep ``data``, bytes the caller has verified hash to ``digest``."""
        target = self.root / check_digest(digest)
        if len(data) > self.max_bytes:
            return  # it would evict everything and still not fit
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


def _unavailable(root: Path, exc: OSError) -> ArtifactStoreUnavailable:
    return ArtifactStoreUnavailable(
        exc.errno or 0,
        f"the worker's artifact cache {root} cannot be used ({exc.strerror or exc}); free "
        "space or make it writable, or set MODELVC_WORKER_CACHE to another directory",
    )

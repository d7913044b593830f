"""The artifact store's interface, beside its two implementations (``local``, ``s3``).

A store keeps opaque blobs under their sha256: ``sha256/<first two hex>/<digest>``
below its root (a directory, or a bucket and prefix). It knows nothing of models:
what reaches :meth:`ArtifactStore.put` has already passed the upload checks
(:mod:`streams.artifacts.intake`). What it promises:

- **Content addresses.** ``put`` hashes the stream as it sends it and makes the
  object visible under its digest only if the bytes hash to it; otherwise nothing
  is visible (a failed or interrupted put leaves no object and no parts).
- **No overwrite.** An object that exists is never replaced (a conditional put, or
  a check first); ``put`` then answers False.
- **Verified reads.** ``get`` hashes what it streams and raises
  :class:`~streams.errors.ArtifactCorrupted` at the end when the bytes differ from
  the name: the caller writes into something it can discard (a temp file, a buffer).

A digest is the only user input that reaches a key or a path, and
:func:`check_digest` makes sure it is 64 lowercase hex. Faults of the store itself
(full disk, refused credentials, unreachable endpoint) raise
:class:`~streams.errors.ArtifactStoreUnavailable` with what to do next.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from streams.core.hashing import SHA256_HEX
from streams.errors import ArtifactCorrupted, ArtifactNotFound

CHUNK = 1 << 20  # bytes read or sent at a time: a 2 GB artifact never sits in memory


def check_digest(digest: str) -> str:
    """``digest`` when it is 64 lowercase hex; ArtifactNotFound (nothing else can be stored)."""
    if not SHA256_HEX.fullmatch(digest):
        raise ArtifactNotFound(f"{digest[:80]!r} is not a sha256 hex digest")
    return digest


def key_for(digest: str) -> str:
    """The object's key below the store's root: ``sha256/ab/abcd…``."""
    check_digest(digest)
    return f"sha256/{digest[:2]}/{digest}"


def digest_of_key(key: str) -> str | None:
    """The digest a key below the root names, or None for anything that is not an object
    (temp files, foreign keys, a name whose directory disagrees with it)."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "sha256":
        return None
    digest = parts[2]
    if not SHA256_HEX.fullmatch(digest) or parts[1] != digest[:2]:
        return None
    return digest


@dataclass(frozen=True)
class StoredObject:
    digest: str
    size: int
    modified: float  # seconds since the epoch (S3 LastModified, a file's mtime)


@runtime_checkable
class ArtifactStore(Protocol):
    """Put a stream, get by digest, has, list (and delete, for ``artifacts gc`` only)."""

    @property
    def location(self) -> str:
        """Where the store is, for messages: ``/path/to/artifacts`` or ``s3://bucket/prefix``."""
        ...

    def check(self, writable: bool = False) -> None:
        """Reach the store once (credentials, bucket, directory) at startup: raises
        ArtifactStoreUnavailable (ArtifactStoreRefused for credentials) saying what to fix,
        so a wrong setting fails the process's start rather than its first commit or load.
        ``writable``: also make sure this process may write (the streams app; readers such
        as workers need read access only). Bounded in time: a store that does not answer
        fails the check within seconds."""
        ...

    def has(self, digest: str) -> bool: ...

    def put(self, stream: BinaryIO, digest: str) -> bool:
        """Store what ``stream`` yields under ``digest``: True when stored, False when the
        object was already there (its bytes untouched, its modified time refreshed so
        ``artifacts gc`` sees it as new; the caller may verify it). ArtifactCorrupted when
        the bytes hash to something else; nothing is visible then, nor after any other
        failure."""
        ...

    def get(self, digest: str, into: BinaryIO) -> int:
        """Write the object's bytes into ``into`` (streaming); its size. ArtifactNotFound
        when absent; ArtifactCorrupted (after writing) when they no longer hash to it."""
        ...

    def list(self) -> Iterator[StoredObject]:
        """Every object under the root, in key order (anything else below it is skipped)."""
        ...

    def delete(self, digest: str) -> None:
        """Remove an object (absent is fine). Only ``modelvc artifacts gc`` calls this."""
        ...


def read(store: ArtifactStore, digest: str, limit: int) -> bytes:
    """The verified bytes of ``digest``, refused past ``limit`` (nothing above it is
    held in memory: a limit-sized buffer raises as soon as it overflows).

    ``limit`` is the most any upload may be, so a stored object above it was not put
    there by an upload: ArtifactCorrupted (the store's fault), not ArtifactTooLarge
    (which says the client sent too much).
    """
    buffer = _Bounded(limit, digest, store.location)
    store.get(digest, buffer)
    return buffer.getvalue()


def verify(store: ArtifactStore, digest: str) -> int:
    """Re-hash ``digest`` as it streams (never whole in memory): its size, or
    ArtifactCorrupted / ArtifactNotFound."""
    with open(os.devnull, "wb") as sink:
        return store.get(digest, sink)


class _Bounded(io.BytesIO):
    def __init__(self, limit: int, digest: str, where: str) -> None:
        super().__init__()
        self._limit = limit
        self._digest = digest
        self._where = where

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self._limit:
            raise ArtifactCorrupted(
                f"artifact {self._digest} in {self._where} is over {self._limit} bytes, more "
                "than any upload may be: it was altered (or MODELVC_MAX_MODEL_MB was lowered "
                "since it was uploaded). `modelvc artifacts verify` lists every damaged "
                "object; delete this one from the store, then upload the model again"
            )
        return super().write(data)


def copy_hashed(source: BinaryIO, into: BinaryIO, digest: str, where: str) -> int:
    """Copy ``source`` to ``into`` in chunks, then check it hashed to ``digest``; the size.

    ``where`` names the source in the ArtifactCorrupted message.
    """
    hasher = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        hasher.update(chunk)
        into.write(chunk)
        size += len(chunk)
    if hasher.hexdigest() != digest:
        raise ArtifactCorrupted(
            f"artifact {digest} in {where} hashes to {hasher.hexdigest()}: it was altered. "
            "`modelvc artifacts verify` lists every damaged object; delete this one from the "
            "store, then upload the model again"
        )
    return size


class HashingReader:
    """Reads a stream for a ``put``, hashing what it yields: the store compares the digest
    before the object becomes visible (:meth:`check`).

    ``read(n)`` returns ``n`` bytes unless the stream ends first (a socket or pipe may hand
    out less per call; S3 parts other than the last must be full).
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hasher = hashlib.sha256()
        self.size = 0

    def read(self, size: int) -> bytes:
        pieces: list[bytes] = []
        wanted = size
        while wanted > 0 and (piece := self._stream.read(wanted)):
            pieces.append(piece)
            wanted -= len(piece)
        data = b"".join(pieces)
        self._hasher.update(data)
        self.size += len(data)
        return data

    def check(self, digest: str) -> None:
        """ArtifactCorrupted unless everything read hashed to ``digest``."""
        actual = self._hasher.hexdigest()
        if actual != digest:
            raise ArtifactCorrupted(
                f"the bytes sent for artifact {digest} hash to {actual}; nothing was stored: "
                "upload the model file again"
            )

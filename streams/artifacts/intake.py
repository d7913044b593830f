"""What an upload goes through before any store holds it: bounds, a digest, validation.

An upload streams into a temporary file under a staging directory (inside a store
directory, or on this instance's own disk in front of S3), bounded as it arrives.
Nothing reaches the store that has not passed :func:`check_model`: the format told
by content, our own validator for it, then its native library (LightGBM, onnxruntime)
in a sandboxed child (:func:`streams.formats.check`). This process never loads a model
itself. The bytes that were checked name the digest :meth:`ArtifactStore.put` is given,
and the store makes the file visible under it only once the bytes it sends hash to it.

Temporary files are removed on every failure path: a write that fails (full or
read-only directory), a refused model, a client that goes away mid-upload
(cancellation). A full or unwritable staging directory raises
:class:`~streams.errors.ArtifactStoreUnavailable`, never a bare ``OSError``.
Leftovers of a killed process are swept on the next upload.

An upload of what the store already holds stores nothing new, but the object is read
back and verified: a damaged one (altered, truncated) is deleted and replaced by the
checked bytes, so uploading the model again really repairs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
from collections.abc import AsyncIterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from streams import formats
from streams.artifacts.store import ArtifactStore, verify
from streams.errors import (
    ArtifactCorrupted,
    ArtifactEmpty,
    ArtifactNotFound,
    ArtifactStoreUnavailable,
    ArtifactTooLarge,
    UploadsBusy,
    UploadStalled,
)
from streams.files import TempFiles
from streams.formats import Checked
from streams.modelfile import MAX_MODEL_BYTES
from streams.sandbox import Sandbox

__all__ = ["MAX_MODEL_BYTES", "Checked", "Intake", "Received", "check_model", "sha256_of"]

log = logging.getLogger("modelvc.artifacts")


@dataclass(frozen=True)
class Received:
    """An upload the store holds: ``stored`` is False when the object was already there
    (verified, and repaired if it was damaged)."""

    digest: str
    summary: Checked
    size: int
    stored: bool


def check_model(data: bytes, sandbox: Sandbox, max_bytes: int = MAX_MODEL_BYTES) -> Checked:
    """Tell the format, validate ``data`` with our code, then load and smoke-score it in
    ``sandbox``.

    Raises ArtifactRejected with the reason; no native library sees what our validator
    refuses. ``max_bytes`` is the deployment's model limit (MODELVC_MAX_MODEL_MB).
    """
    return formats.check(data, sandbox, max_bytes)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unavailable(staging: Path, exc: OSError) -> ArtifactStoreUnavailable:
    why = exc.strerror or str(exc)
    return ArtifactStoreUnavailable(
        exc.errno or 0,
        f"the upload staging directory {staging} cannot take this file ({why}); free space "
        "there or make it writable (it is MODELVC_ARTIFACTS/tmp, or MODELVC_DATA_DIR/uploads "
        "with an s3:// store), then upload again",
    )


def _discard(handle: IO[bytes]) -> None:
    """Close and remove a temp file; a second failure changes nothing."""
    with contextlib.suppress(OSError):
        handle.close()  # may fail again flushing what a full disk refused: it is closed anyway
    with contextlib.suppress(OSError):
        Path(handle.name).unlink(missing_ok=True)


class Intake:
    """Takes uploads into ``store``, bounded in size, time, number and checks at once."""

    def __init__(
        self,
        store: ArtifactStore,
        staging: Path,
        sandbox: Sandbox | None = None,
        max_bytes: int = MAX_MODEL_BYTES,
        max_uploads: int = 8,
        max_checks: int = 2,
        idle_timeout_s: float = 30.0,
    ) -> None:
        self.store = store
        self.staging = staging
        self.sandbox = sandbox if sandbox is not None else Sandbox()
        self.max_bytes = max_bytes
        # Each upload holds a connection and a temp file, and each check a parse (the
        # API's CPU) and a sandbox child (up to its memory limit): both are bounded, and
        # a client that stops sending is dropped.
        self.max_uploads = max_uploads
        self.idle_timeout_s = idle_timeout_s
        self._uploads = 0
        self._checks = asyncio.Semaphore(max_checks)
        self._checker = ThreadPoolExecutor(max_checks, thread_name_prefix="artifact-check")
        # Puts wait on the store (an S3 round trip, an fsync), not on the CPU: their own
        # threads, so a slow store never holds a check slot.
        self._storer = ThreadPoolExecutor(max_uploads, thread_name_prefix="artifact-put")
        self._temp = TempFiles(staging)

    def _temp_file(self) -> IO[bytes]:
        """A temporary file under ``staging``; the caller removes it (:func:`_discard`)."""
        try:
            return self._temp.create()
        except OSError as exc:
            raise _unavailable(self.staging, exc) from exc

    def _check(self, data: bytes) -> Checked:
        if len(data) > self.max_bytes:
            raise ArtifactTooLarge(f"artifacts are limited to {self.max_bytes} bytes")
        return check_model(data, self.sandbox, self.max_bytes)

    def _check_staged(self, temp: Path, expected: str | None) -> tuple[str, Checked]:
        """The staged upload's digest and summary (read once, bounded, then let go)."""
        try:
            with open(temp, "rb") as handle:
                data = handle.read(self.max_bytes + 1)
        except OSError as exc:
            raise _unavailable(self.staging, exc) from exc
        digest = sha256_of(data)
        if expected is not None and expected != digest:
            raise ArtifactCorrupted(
                f"upload hashes to {digest}, not the {expected} you sent; re-send the file"
            )
        return digest, self._check(data)

    def _store_staged(self, temp: Path, digest: str) -> bool:
        # The store makes the file visible only if it hashes to ``digest``, the hash of
        # the bytes that were checked: what is served under it is what passed.
        try:
            handle = open(temp, "rb")  # noqa: SIM115 (closed below, after a put that may raise)
        except OSError as exc:
            raise _unavailable(self.staging, exc) from exc
        with handle:
            return self._store(handle, digest)

    def _store(self, checked: BinaryIO, digest: str) -> bool:
        """Put ``checked`` (seekable; it hashes to ``digest``): whether it was stored.

        An object already there is verified and, when damaged, replaced by these bytes.
        """
        if self.store.put(checked, digest):
            return True
        try:
            verify(self.store, digest)
            return False
        except ArtifactNotFound:
            pass  # deleted since the put looked (artifacts gc): store it again
        except ArtifactCorrupted:
            log.warning(
                "artifact %s in %s was damaged; replacing it with the checked upload",
                digest,
                self.store.location,
            )
            self.store.delete(digest)
        checked.seek(0)
        if self.store.put(checked, digest):
            return True
        # Someone else stored it meanwhile, or the damaged copy could not be removed
        # (a link in a directory store): ArtifactCorrupted if it is still wrong.
        verify(self.store, digest)
        return False

    def put(self, data: bytes) -> Received:
        """Check and store ``data`` (tests, bench)."""
        digest = sha256_of(data)
        summary = self._check(data)
        stored = self._store(io.BytesIO(data), digest)
        return Received(digest, summary, len(data), stored)

    async def receive(self, chunks: AsyncIterable[bytes], expected: str | None = None) -> Received:
        """Stream an upload into a temp file, then check and store it.

        Raises ArtifactTooLarge past ``max_bytes`` (stopping the read there),
        ArtifactEmpty, ArtifactCorrupted (``expected`` differs), ArtifactRejected
        (not a model format modelvc knows, or not one its library loads safely),
        UploadStalled, UploadsBusy or ArtifactStoreUnavailable. The temp file is removed
        on each of those, on success, and on cancellation (a client gone).
        """
        if self._uploads >= self.max_uploads:
            raise UploadsBusy(
                f"{self._uploads} uploads are under way, the most this server takes at once; "
                "retry in a few seconds"
            )
        self._uploads += 1
        try:
            return await self._receive(chunks, expected)
        finally:
            self._uploads -= 1

    async def _receive(self, chunks: AsyncIterable[bytes], expected: str | None) -> Received:
        handle = self._temp_file()
        temp = Path(handle.name)
        try:
            size = await self._stream(chunks, handle)
            loop = asyncio.get_running_loop()
            async with self._checks:
                digest, summary = await loop.run_in_executor(
                    self._checker, self._check_staged, temp, expected
                )
            # Cancelled from here on, the put still ends in its thread: it stores the
            # checked bytes under their digest, or nothing.
            stored = await loop.run_in_executor(self._storer, self._store_staged, temp, digest)
            return Received(digest, summary, size, stored)
        finally:
            # Removed on every path; a thread still reading it keeps its open handle.
            _discard(handle)

    async def _stream(self, chunks: AsyncIterable[bytes], handle: IO[bytes]) -> int:
        """Write ``chunks`` to ``handle`` within the bounds, then close it: the size."""
        reading = aiter(chunks)
        size = 0
        while True:  # the client's faults (a reset) pass through as they are
            try:
                chunk = await asyncio.wait_for(anext(reading), self.idle_timeout_s)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UploadStalled(
                    f"the upload sent nothing for {self.idle_timeout_s:g} s; send it again"
                ) from None
            size += len(chunk)
            if size > self.max_bytes:
                raise ArtifactTooLarge(f"artifacts are limited to {self.max_bytes} bytes")
            try:
                handle.write(chunk)
            except OSError as exc:
                raise _unavailable(self.staging, exc) from exc
        try:
            handle.close()  # flushes: a full disk may only show here
        except OSError as exc:
            raise _unavailable(self.staging, exc) from exc
        if size == 0:
            raise ArtifactEmpty("the upload was empty; send the model file as the body")
        return size

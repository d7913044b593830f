"""Content-addressed artifact store: files named by their sha256.

Writes go to a temporary file, are fsynced and renamed into place, so a reader
never sees half a file and a repeated upload is a no-op. Every read re-hashes.
A digest is the only user input that reaches a path, and it must be 64 hex.

Nothing is stored that has not passed :func:`check_model`: our own parser
(:mod:`streams.modelfile`), then LightGBM in a sandboxed child
(:mod:`streams.sandbox`). This process never loads a model itself.

Temporary files are removed on every failure path: a write that fails (full
or read-only directory), a refused model, a client that goes away mid-upload
(cancellation). A full or unwritable directory raises
:class:`~streams.errors.ArtifactStoreUnavailable`, never a bare ``OSError``.
Leftovers of a killed process are swept on the next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import time
from collections.abc import AsyncIterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from streams import modelfile
from streams.core.hashing import SHA256_HEX
from streams.errors import (
    ArtifactCorrupted,
    ArtifactEmpty,
    ArtifactNotFound,
    ArtifactStoreUnavailable,
    ArtifactTooLarge,
    UploadsBusy,
    UploadStalled,
)
from streams.files import commit_file
from streams.modelfile import MAX_MODEL_BYTES, ModelSummary
from streams.sandbox import Sandbox

__all__ = ["MAX_MODEL_BYTES", "ArtifactStore", "ModelSummary", "check_model", "sha256_of"]

STALE_TEMP_SECONDS = 3600.0  # an upload older than this was abandoned by a killed process


def check_digest(digest: str) -> str:
    if not SHA256_HEX.fullmatch(digest):
        raise ArtifactNotFound(f"{digest[:80]!r} is not a sha256 hex digest")
    return digest


def check_model(data: bytes, sandbox: Sandbox) -> ModelSummary:
    """Parse ``data`` with our validator, then load and smoke-score it in ``sandbox``.

    Raises ArtifactRejected with the reason; LightGBM never sees what the parser refuses.
    """
    summary = modelfile.validate(data)
    sandbox.check(data, summary)
    return summary


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unavailable(root: Path, exc: OSError) -> ArtifactStoreUnavailable:
    why = exc.strerror or str(exc)
    return ArtifactStoreUnavailable(
        exc.errno or 0,
        f"the artifact store {root} cannot take this file ({why}); "
        "free space or make MODELVC_ARTIFACTS writable, then upload again",
    )


def _discard(handle: IO[bytes]) -> None:
    """Close and remove a temp file after a failure; a second failure changes nothing."""
    with contextlib.suppress(OSError):
        handle.close()  # may fail again flushing what a full disk refused: it is closed anyway
    with contextlib.suppress(OSError):
        Path(handle.name).unlink(missing_ok=True)


class ArtifactStore:
    def __init__(
        self,
        root: Path,
        sandbox: Sandbox | None = None,
        max_bytes: int = MAX_MODEL_BYTES,
        max_uploads: int = 8,
        max_checks: int = 2,
        idle_timeout_s: float = 30.0,
    ) -> None:
        self.root = root
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
        self._tmp = root / "tmp"
        self._swept = False

    def path_for(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def temp_file(self) -> IO[bytes]:
        """A temporary file inside the store (same filesystem, so the rename is atomic).

        The caller must unlink it if it fails before :meth:`commit_temp`;
        :meth:`receive` and :meth:`put` do all of that.
        """
        try:
            # Made on first write only, so readers (workers) can mount the store read-only.
            self._tmp.mkdir(parents=True, exist_ok=True)
            self._sweep()
            return tempfile.NamedTemporaryFile(dir=self._tmp, prefix="upload-", delete=False)
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc

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

    def commit_temp(self, temp_path: Path, expected: str | None = None) -> tuple[str, ModelSummary]:
        """Validate, hash-check and move a finished temporary file into place.

        The temporary file is gone afterwards, whatever happens.
        """
        try:
            try:
                size = temp_path.stat().st_size
                if size > self.max_bytes:
                    raise ArtifactTooLarge(f"artifacts are limited to {self.max_bytes} bytes")
                data = temp_path.read_bytes()
            except OSError as exc:
                raise _unavailable(self.root, exc) from exc
            digest = sha256_of(data)
            if expected is not None and expected != digest:
                raise ArtifactCorrupted(
                    f"upload hashes to {digest}, not the {expected} you sent; re-send the file"
                )
            summary = check_model(data, self.sandbox)
            target = self.path_for(digest)
            if not target.exists():
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    commit_file(temp_path, target)
                except OSError as exc:
                    raise _unavailable(self.root, exc) from exc
            return digest, summary
        finally:
            with contextlib.suppress(OSError):
                temp_path.unlink(missing_ok=True)

    async def receive(
        self, chunks: AsyncIterable[bytes], expected: str | None = None
    ) -> tuple[str, ModelSummary, int]:
        """Stream an upload into a temp file, then check and store it: (digest, summary, size).

        Raises ArtifactTooLarge past ``max_bytes`` (stopping the read there),
        ArtifactEmpty, ArtifactCorrupted (``expected`` differs), ArtifactRejected
        (not a model LightGBM loads safely) or ArtifactStoreUnavailable. The temp
        file is removed on each of those and on cancellation (a client gone).
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

    async def _receive(
        self, chunks: AsyncIterable[bytes], expected: str | None
    ) -> tuple[str, ModelSummary, int]:
        handle = self.temp_file()
        temp = Path(handle.name)
        reading = aiter(chunks)
        try:
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
                    raise _unavailable(self.root, exc) from exc
            try:
                handle.close()  # flushes: a full disk may only show here
            except OSError as exc:
                raise _unavailable(self.root, exc) from exc
            if size == 0:
                raise ArtifactEmpty("the upload was empty; send the model file as the body")
            loop = asyncio.get_running_loop()
            async with self._checks:
                # commit_temp removes the temp file itself, even if we are cancelled meanwhile.
                digest, summary = await loop.run_in_executor(
                    self._checker, self.commit_temp, temp, expected
                )
            return digest, summary, size
        except BaseException:
            _discard(handle)
            raise

    def put(self, data: bytes) -> tuple[str, ModelSummary]:
        handle = self.temp_file()
        try:
            handle.write(data)
            handle.close()
        except OSError as exc:
            _discard(handle)
            raise _unavailable(self.root, exc) from exc
        return self.commit_temp(Path(handle.name))

    def read(self, digest: str) -> bytes:
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no artifact {digest} in {self.root}") from exc
        if sha256_of(data) != digest:
            raise ArtifactCorrupted(f"artifact {digest} on disk no longer matches its digest")
        return data

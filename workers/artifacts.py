"""Fetch an artifact by digest, verify it, check it, load it with its format (cached).

Where the bytes come from, in order: the worker's local cache
(:mod:`workers.cache`, when it has one), the artifact store it reads directly
(S3, or a directory it shares), then the streams API. Bytes from the store or
the API are kept in the cache. The digest is checked on every fetch, whatever
the source: a worker never scores with a model whose bytes differ from what
the commit names.

The store is not trusted either: an object placed there by hand, under
a digest a commit names, went through no upload check. So before a native
library (LightGBM, onnxruntime) loads anything in this process, the bytes pass
the same two checks as an upload (the format's own validator, then the native
library in a sandboxed child, see :func:`streams.artifacts.check_model`), once per
digest: the verdict is cached, rejections too (a digest pins the bytes, so the
verdict cannot change, and a hostile model must not cost a sandbox run on every
retry). Then :func:`streams.formats.load` gives the version's
:class:`~streams.formats.base.Predictor`, whatever the format.

A model whose estimated memory for a full batch exceeds the worker's budget
is refused the same way.

Loads run in executor threads, several at once, and retry at the worker's pace:
one fetch per digest is in flight (a second load of it waits, then finds the
predictor or the cached bytes), and a digest whose fetch failed (not found,
altered, unreachable) is not fetched again before its backoff ends (1 s, doubling
to 60 s): a corrupt 64 MiB object is not downloaded every second.

The local cache is an optimisation: when its disk is full or read-only, a load
still returns the bytes it verified (a fault there is counted,
``modelvc_artifact_cache_errors_total``, and logged once in a while per kind).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

from streams import formats
from streams.artifacts import ArtifactStore, check_model
from streams.artifacts.store import check_digest, read
from streams.errors import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactRejected,
    ArtifactStoreUnavailable,
    SandboxUnavailable,
)
from streams.formats.base import Checked, Predictor
from streams.http_client import HttpClient, HttpError
from streams.modelfile import MAX_MODEL_BYTES
from streams.sandbox import Sandbox
from workers.cache import ArtifactCache
from workers.errors import ArtifactLoadFailed
from workers.metrics import CacheOperation, Metrics

log = logging.getLogger("modelvc.workers")

MAX_VERDICTS = 4096  # digests whose check result is remembered
MAX_FAILURES = 4096  # digests whose failed fetch is remembered (backoff)
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
CACHE_LOG_EVERY_S = 600.0  # one warning per kind of cache fault at most this often


@dataclass(frozen=True)
class _Failure:
    retry_at: float  # clock time before which the digest is not fetched again
    backoff_s: float  # the wait that led to retry_at; doubled by the next failure
    reason: str


@dataclass(frozen=True)
class LoadedModel:
    digest: str
    predictor: Predictor
    summary: Checked  # what the validator and the sandbox accepted

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        """The predictor's columns, in order: read per batch, computed once."""
        return self.summary.signature.names


@dataclass(frozen=True)
class MemoryBudget:
    """What one version may use: its model plus a full batch of ``rows``."""

    max_bytes: int
    rows: int


class ArtifactLoader:
    def __init__(
        self,
        store: ArtifactStore | None = None,
        url: str | None = None,
        *,
        cache: ArtifactCache | None = None,
        timeout: float = 10.0,
        sandbox: Sandbox | None = None,
        token: str | None = None,  # the API's bearer token; None: send none
        metrics: Metrics | None = None,  # where cache faults are counted; None: only logged
        max_bytes: int = MAX_MODEL_BYTES,  # the model size limit (MODELVC_MAX_MODEL_MB)
        clock: Callable[[], float] = time.monotonic,
    ):
        if store is None and url is None:
            raise ArtifactLoadFailed(
                "no artifact source: set MODELVC_ARTIFACTS (a store directory or "
                "s3://bucket/prefix) or MODELVC_URL (the streams API)"
            )
        self._store = store
        self._files = cache
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._clock = clock
        self._url = url.rstrip("/") if url else None
        # The API serves only stored (checked, bounded) artifacts; a larger answer is not one.
        self._http = (
            HttpClient(url, timeout=timeout, max_bytes=max_bytes, token=token) if url else None
        )
        self._sandbox = sandbox if sandbox is not None else Sandbox()
        self._cache: dict[str, LoadedModel] = {}
        self._verdicts: dict[str, Checked | str] = {}  # what was checked, or why it was refused
        # Shared by executor threads, under _guard: a lock per digest being loaded (and how
        # many hold or wait for it, so it goes with the last), failed fetches (LRU bounded),
        # when each kind of cache fault was last logged.
        self._guard = threading.Lock()
        self._flights: dict[str, tuple[threading.RLock, int]] = {}
        self._failures: OrderedDict[str, _Failure] = OrderedDict()
        self._cache_logged: dict[tuple[CacheOperation, int], float] = {}

    def fetch(self, digest: str) -> bytes:
        """The bytes of ``digest``, verified: from the cache, the store, or the API."""
        try:
            # A forged event may name anything: only a sha256 reaches a path, key or URL.
            check_digest(digest)
        except ArtifactNotFound as exc:
            raise ArtifactLoadFailed(str(exc)) from exc
        with self._one_at_a_time(digest):
            self._not_backing_off(digest)
            try:
                data = self._fetch(digest)
            except (ArtifactError, ArtifactStoreUnavailable, ArtifactLoadFailed) as exc:
                self._failed(digest, exc)
                if isinstance(exc, ArtifactLoadFailed):
                    raise
                raise ArtifactLoadFailed(str(exc)) from exc
            with self._guard:
                self._failures.pop(digest, None)
            return data

    def _fetch(self, digest: str) -> bytes:
        if (data := self._cached(digest)) is not None:
            return data
        if self._store is not None:
            try:
                data = read(self._store, digest, self._max_bytes)
            except ArtifactNotFound:
                if self._http is None:
                    raise
                data = self._from_api(digest)
        else:
            data = self._from_api(digest)
        self._keep(digest, data)
        return data

    # -- the local cache: a fault there costs speed, never a load ---------------------
    def _cached(self, digest: str) -> bytes | None:
        if self._files is None:
            return None
        try:
            return self._files.get(digest)
        except ArtifactStoreUnavailable as exc:
            self._cache_fault("read", exc)
            return None

    def _keep(self, digest: str, data: bytes) -> None:
        if self._files is None:
            return
        try:
            self._files.add(digest, data)
        except ArtifactStoreUnavailable as exc:
            self._cache_fault("write", exc)

    def _cache_fault(self, operation: CacheOperation, exc: OSError) -> None:
        if self._metrics is not None:
            self._metrics.cache_error(operation)
        kind = (operation, exc.errno or 0)
        now = self._clock()
        with self._guard:
            last = self._cache_logged.get(kind)
            due = last is None or now - last >= CACHE_LOG_EVERY_S
            if due:
                self._cache_logged[kind] = now  # kinds: 2 operations x errno values, bounded
        if due:
            log.warning(
                "artifact cache %s failed, loading without it (logged once per %.0f s): %s",
                operation,
                CACHE_LOG_EVERY_S,
                exc.strerror or exc,
            )

    # -- one fetch per digest at a time, and a backoff after a failed one -------------
    @contextlib.contextmanager
    def _one_at_a_time(self, digest: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._flights.get(digest, (threading.RLock(), 0))
            self._flights[digest] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._flights[digest]
                if users == 1:
                    del self._flights[digest]  # bounded by the loads in progress
                else:
                    self._flights[digest] = (lock, users - 1)

    def _not_backing_off(self, digest: str) -> None:
        with self._guard:
            failure = self._failures.get(digest)
        if failure is None:
            return
        wait = failure.retry_at - self._clock()
        if wait > 0:
            raise ArtifactLoadFailed(
                f"{failure.reason} (not fetched again for {wait:.0f} s more: a failed fetch "
                f"is retried after {FIRST_BACKOFF_S:.0f} s, then twice as long each time, up "
                f"to {MAX_BACKOFF_S:.0f} s)"
            )

    def _failed(self, digest: str, exc: Exception) -> None:
        with self._guard:
            previous = self._failures.pop(digest, None)
            backoff = (
                FIRST_BACKOFF_S if previous is None else min(previous.backoff_s * 2, MAX_BACKOFF_S)
            )
            self._failures[digest] = _Failure(self._clock() + backoff, backoff, str(exc))
            while len(self._failures) > MAX_FAILURES:
                self._failures.popitem(last=False)

    def _from_api(self, digest: str) -> bytes:
        if self._http is None:
            raise ArtifactNotFound(f"artifact {digest} is not in the store and no API is set")
        try:
            data = self._http.request("GET", f"/v1/artifacts/{digest}").body
        except HttpError as exc:
            raise ArtifactLoadFailed(f"cannot fetch artifact {digest}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise ArtifactLoadFailed(f"artifact {digest} from {self._url} fails its digest check")
        return data

    def check(self, digest: str, data: bytes) -> Checked:
        """Validator + sandbox for these (digest-verified) bytes, once per digest."""
        verdict = self._verdicts.get(digest)
        if verdict is None:
            try:
                verdict = check_model(data, self._sandbox, self._max_bytes)
            except SandboxUnavailable as exc:
                raise ArtifactLoadFailed(f"artifact {digest} cannot be checked yet: {exc}") from exc
            except ArtifactRejected as exc:
                verdict = str(exc)
            with self._guard:  # executor threads check other digests meanwhile
                while len(self._verdicts) >= MAX_VERDICTS:
                    del self._verdicts[next(iter(self._verdicts))]
                self._verdicts[digest] = verdict
        return _accepted(digest, verdict)

    def load(self, digest: str, budget: MemoryBudget | None = None) -> LoadedModel:
        # A second load of this digest waits for the first, then finds its predictor.
        with self._one_at_a_time(digest):
            return self._load(digest, budget)

    def _load(self, digest: str, budget: MemoryBudget | None) -> LoadedModel:
        cached = self._cache.get(digest)
        known = cached.summary if cached is not None else self._verdicts.get(digest)
        if known is not None:
            # Refused, or too big for the budget: known without fetching it again.
            _within(digest, _accepted(digest, known), budget)
        if cached is not None:
            return cached
        data = self.fetch(digest)
        summary = self.check(digest, data)
        _within(digest, summary, budget)
        try:
            predictor = formats.load(data, summary)
        except Exception as exc:  # the native library's own errors, whatever their type
            # Validated and smoke-scored in the sandbox, yet refused here: a library that
            # differs from the sandbox's, or memory. Retried at the worker's pace.
            raise ArtifactLoadFailed(
                f"artifact {digest} ({summary.format}) does not load: {exc!r:.500}"
            ) from exc
        loaded = LoadedModel(digest, predictor, summary)
        self._cache[digest] = loaded
        return loaded

    def forget_except(self, keep: set[str]) -> None:
        """Drop predictors no served version uses (bounded memory across many switches)."""
        for digest in list(self._cache):
            if digest not in keep:
                del self._cache[digest]


def _accepted(digest: str, verdict: Checked | str) -> Checked:
    if isinstance(verdict, str):
        raise ArtifactLoadFailed(f"artifact {digest} is refused: {verdict}")
    return verdict


def _within(digest: str, checked: Checked, budget: MemoryBudget | None) -> None:
    """ArtifactLoadFailed when scoring a full batch with this model would exceed ``budget``."""
    if budget is None:
        return
    need = checked.scoring_bytes(budget.rows)
    if need > budget.max_bytes:
        signature = checked.signature
        raise ArtifactLoadFailed(
            f"artifact {digest} ({checked.format}, {len(signature.inputs)} inputs, "
            f"{signature.outputs} outputs) needs about {need >> 20} MiB to score a batch of "
            f"{budget.rows} rows (the model about {checked.model_bytes >> 20} MiB, then "
            f"{checked.bytes_per_row} bytes a row), over this worker's "
            f"{budget.max_bytes >> 20} MiB; raise MODELVC_WORKER_MEMORY_MB "
            "or lower MODELVC_WORKER_MAX_BATCH"
        )

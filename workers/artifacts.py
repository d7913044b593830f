"""Fetch an artifact by digest, verify it, check it, load it as a LightGBM booster (cached).

Where the bytes come from, in order: the worker's local cache
(:mod:`workers.cache`, when it has one), the artifact store it reads directly
(S3, or a directory it shares), then the streams API. Bytes from the store or
the API are kept in the cache. The digest is checked on every fetch, whatever
the source: a worker never scores with a model whose bytes differ from what
the commit names.

The store is not trusted either: an object placed there by hand, under
a digest a commit names, went through no upload check. So before LightGBM
loads anything in this process, the bytes pass the same two checks as an
upload (our parser, then LightGBM in a sandboxed child, see
:func:`streams.artifacts.check_model`), once per digest: the verdict is cached,
rejections too (a digest pins the bytes, so the verdict cannot change, and a
hostile model must not cost a sandbox run on every retry).

A model whose estimated memory for a full batch exceeds the worker's budget
is refused the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import lightgbm

from streams.artifacts import ArtifactStore, check_model
from streams.artifacts.store import check_digest, read
from streams.errors import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactRejected,
    ArtifactStoreUnavailable,
    SandboxUnavailable,
)
from streams.http_client import HttpClient, HttpError
from streams.modelfile import MAX_MODEL_BYTES, ModelSummary
from streams.sandbox import Sandbox
from workers.cache import ArtifactCache
from workers.errors import ArtifactLoadFailed

MAX_VERDICTS = 4096  # digests whose check result is remembered


@dataclass(frozen=True)
class LoadedModel:
    digest: str
    booster: Any  # lightgbm.Booster (untyped library)
    feature_names: tuple[str, ...]
    summary: ModelSummary


@dataclass(frozen=True)
class MemoryBudget:
    """What one version may use: its trees plus a full batch of ``rows``."""

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
    ):
        if store is None and url is None:
            raise ArtifactLoadFailed(
                "no artifact source: set MODELVC_ARTIFACTS (a store directory or "
                "s3://bucket/prefix) or MODELVC_ARTIFACT_URL"
            )
        self._store = store
        self._files = cache
        self._url = url.rstrip("/") if url else None
        # The API serves only stored (checked, bounded) artifacts; a larger answer is not one.
        self._http = (
            HttpClient(url, timeout=timeout, max_bytes=MAX_MODEL_BYTES, token=token)
            if url
            else None
        )
        self._sandbox = sandbox if sandbox is not None else Sandbox()
        self._cache: dict[str, LoadedModel] = {}
        self._verdicts: dict[str, ModelSummary | str] = {}  # summary, or why it was refused

    def fetch(self, digest: str) -> bytes:
        """The bytes of ``digest``, verified: from the cache, the store, or the API."""
        cache = self._files
        try:
            # A forged event may name anything: only a sha256 reaches a path, key or URL.
            check_digest(digest)
            if cache is not None and (data := cache.get(digest)) is not None:
                return data
            if self._store is not None:
                try:
                    if cache is not None:
                        return cache.fill(digest, self._store)
                    return read(self._store, digest, MAX_MODEL_BYTES)
                except ArtifactNotFound:
                    if self._http is None:
                        raise
            data = self._from_api(digest)
            if cache is not None:
                cache.add(digest, data)
            return data
        except (ArtifactError, ArtifactStoreUnavailable) as exc:
            raise ArtifactLoadFailed(str(exc)) from exc

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

    def check(self, digest: str, data: bytes) -> ModelSummary:
        """Validator + sandbox for these (digest-verified) bytes, once per digest."""
        verdict = self._verdicts.get(digest)
        if verdict is None:
            try:
                verdict = check_model(data, self._sandbox)
            except SandboxUnavailable as exc:
                raise ArtifactLoadFailed(f"artifact {digest} cannot be checked yet: {exc}") from exc
            except ArtifactRejected as exc:
                verdict = str(exc)
            if len(self._verdicts) >= MAX_VERDICTS:
                del self._verdicts[next(iter(self._verdicts))]
            self._verdicts[digest] = verdict
        if isinstance(verdict, str):
            raise ArtifactLoadFailed(f"artifact {digest} is refused: {verdict}")
        return verdict

    def load(self, digest: str, budget: MemoryBudget | None = None) -> LoadedModel:
        cached = self._cache.get(digest)
        if cached is None:
            data = self.fetch(digest)
            summary = self.check(digest, data)
        else:
            summary = cached.summary
        if budget is not None:
            need = summary.scoring_bytes(budget.rows)
            if need > budget.max_bytes:
                raise ArtifactLoadFailed(
                    f"artifact {digest} needs about {need >> 20} MiB to score a batch of "
                    f"{budget.rows} rows ({summary.num_class} outputs, {summary.num_features} "
                    f"features, {summary.total_leaves} leaves), over this worker's "
                    f"{budget.max_bytes >> 20} MiB; raise MODELVC_WORKER_MEMORY_MB "
                    "or lower MODELVC_WORKER_MAX_BATCH"
                )
        if cached is not None:
            return cached
        try:
            booster = lightgbm.Booster(model_str=data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, lightgbm.basic.LightGBMError) as exc:
            raise ArtifactLoadFailed(f"artifact {digest} does not load: {exc}") from exc
        loaded = LoadedModel(digest, booster, tuple(booster.feature_name()), summary)
        self._cache[digest] = loaded
        return loaded

    def forget_except(self, keep: set[str]) -> None:
        """Drop boosters no served version uses (bounded memory across many switches)."""
        for digest in list(self._cache):
            if digest not in keep:
                del self._cache[digest]

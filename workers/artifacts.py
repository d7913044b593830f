"""Fetch an artifact by digest, verify it, load it as a LightGBM booster (cached).

The digest is checked on every fetch, whether the bytes come from a shared
store directory or from the streams API: a worker never scores with a model
whose bytes differ from what the commit names.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm

from streams.artifacts import ArtifactStore
from streams.errors import ArtifactError
from workers.errors import ArtifactLoadFailed


@dataclass(frozen=True)
class LoadedModel:
    digest: str
    booster: Any  # lightgbm.Booster (untyped library)
    feature_names: tuple[str, ...]


class ArtifactLoader:
    def __init__(self, root: Path | None = None, url: str | None = None, timeout: float = 10.0):
        if root is None and url is None:
            raise ArtifactLoadFailed(
                "no artifact source: set MODELVC_ARTIFACTS (a store directory) "
                "or MODELVC_ARTIFACT_URL"
            )
        self._store = ArtifactStore(root) if root is not None else None
        self._url = url.rstrip("/") if url else None
        self._timeout = timeout
        self._cache: dict[str, LoadedModel] = {}

    def fetch(self, digest: str) -> bytes:
        if self._store is not None and self._store.has(digest):
            try:
                return self._store.read(digest)  # re-hashes
            except ArtifactError as exc:
                raise ArtifactLoadFailed(str(exc)) from exc
        if self._url is None:
            raise ArtifactLoadFailed(f"artifact {digest} is not in the store directory")
        try:
            with urllib.request.urlopen(
                f"{self._url}/v1/artifacts/{digest}", timeout=self._timeout
            ) as response:
                data: bytes = response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ArtifactLoadFailed(f"cannot fetch artifact {digest}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise ArtifactLoadFailed(f"artifact {digest} from {self._url} fails its digest check")
        return data

    def load(self, digest: str) -> LoadedModel:
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        data = self.fetch(digest)
        try:
            booster = lightgbm.Booster(model_str=data.decode("utf-8"))
        except (UnicodeDecodeError, lightgbm.basic.LightGBMError) as exc:
            raise ArtifactLoadFailed(f"artifact {digest} does not load: {exc}") from exc
        loaded = LoadedModel(digest, booster, tuple(booster.feature_name()))
        self._cache[digest] = loaded
        return loaded

    def forget_except(self, keep: set[str]) -> None:
        """Drop boosters no served version uses (bounded memory across many switches)."""
        for digest in list(self._cache):
            if digest not in keep:
                del self._cache[digest]

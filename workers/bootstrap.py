"""Wiring in one place: build a worker's collaborators from its settings and inject them.

``python -m workers`` uses :func:`bootstrap`; tests and benchmarks pass their
own metrics, loader or an already folded version log instead of overwriting
internals.

The artifact store the worker reads directly is reached once here
(``open_checked_store``): wrong credentials, a missing bucket or an unreachable
endpoint raise :class:`~streams.errors.ArtifactStoreUnavailable` before the
worker consumes anything, not at its first load. So does a cache directory
another worker holds (:mod:`workers.cache`).
"""

from __future__ import annotations

from streams.artifacts import ArtifactStore, open_checked_store
from streams.core.fold import Fold
from streams.http_client import resolve_token
from streams.signing import SigningKey
from workers.artifacts import ArtifactLoader
from workers.cache import ArtifactCache
from workers.loop import Worker
from workers.metrics import Metrics
from workers.scorer import Scorer
from workers.settings import WorkerSettings
from workers.signing import Signer
from workers.versions import VersionTracker


def bootstrap(
    settings: WorkerSettings,
    *,
    metrics: Metrics | None = None,
    loader: ArtifactLoader | None = None,
    fold: Fold | None = None,
    signer: Signer | None = None,
) -> Worker:
    metrics = metrics if metrics is not None else Metrics()
    if loader is None:
        loader = open_loader(settings, metrics=metrics)
    if signer is None and settings.sign_predictions:
        signer = SigningKey.load_or_create(settings.worker_key_path)
    tracker = VersionTracker(settings, loader, metrics, fold)
    scorer = Scorer(tracker, metrics, settings.worker_id, signer=signer)
    return Worker(settings, tracker, scorer, metrics)


def open_loader(
    settings: WorkerSettings,
    store: ArtifactStore | None = None,
    *,
    metrics: Metrics | None = None,
) -> ArtifactLoader:
    """The loader ``settings`` describe: the store read directly (opened and checked here
    unless given), the API, and the local cache when artifacts come over the network;
    every read bounded by the model size limit (MODELVC_MAX_MODEL_MB)."""
    location = settings.artifact_store
    if store is None and location is not None:
        store = open_checked_store(location, settings.topics.s3_endpoint, writable=False)
    token = resolve_token(settings.token, settings.token_file, settings.admin_token_file)
    limit = settings.topics.max_model_bytes
    cache = (
        ArtifactCache(settings.cache_path, settings.cache_mb << 20, max_entry_bytes=limit)
        if settings.uses_cache
        else None
    )
    return ArtifactLoader(
        store, settings.artifact_url, cache=cache, token=token, metrics=metrics, max_bytes=limit
    )

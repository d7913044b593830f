"""Wiring in one place: build a worker's collaborators from its settings and inject them.

``python -m workers`` uses :func:`bootstrap`; tests and benchmarks pass their
own metrics, loader or an already folded version log instead of overwriting
internals.
"""

from __future__ import annotations

from streams.core.fold import Fold
from streams.http_client import resolve_token
from streams.signing import SigningKey
from workers.artifacts import ArtifactLoader
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
        token = resolve_token(settings.token, settings.token_file, settings.admin_token_file)
        loader = ArtifactLoader(settings.artifact_root, settings.artifact_url, token=token)
    if signer is None and settings.sign_predictions:
        signer = SigningKey.load_or_create(settings.worker_key_path)
    tracker = VersionTracker(settings, loader, metrics, fold)
    scorer = Scorer(tracker, metrics, settings.worker_id, signer=signer)
    return Worker(settings, tracker, scorer, metrics)

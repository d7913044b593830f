"""Wiring in one place: build a worker's collaborators from its settings and inject them.

``python -m workers`` uses :func:`bootstrap`; tests and benchmarks pass their
own metrics, loader or an already folded version log instead of overwriting
internals.
"""

from __future__ import annotations

from streams.core.fold import Fold
from workers.artifacts import ArtifactLoader
from workers.loop import Worker
from workers.metrics import Metrics
from workers.scorer import Scorer
from workers.settings import WorkerSettings
from workers.versions import VersionTracker


def bootstrap(
    settings: WorkerSettings,
    *,
    metrics: Metrics | None = None,
    loader: ArtifactLoader | None = None,
    fold: Fold | None = None,
) -> Worker:
    metrics = metrics if metrics is not None else Metrics()
    if loader is None:
        loader = ArtifactLoader(settings.artifact_root, settings.artifact_url)
    tracker = VersionTracker(settings, loader, metrics, fold)
    scorer = Scorer(tracker, metrics, settings.worker_id)
    return Worker(settings, tracker, scorer, metrics)

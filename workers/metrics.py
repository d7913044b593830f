"""A worker's Prometheus metrics, declared and exposed with ``prometheus_client``.

Each :class:`Metrics` has a registry of its own (never the process-wide default),
so several workers, or tests, in one process do not see each other's series.

Label values reach the registry through the methods below only, and each comes
from a bounded set: models and commits of versions this worker serves (at most
``MODELVC_WORKER_MAX_REFS`` at once), rejection reasons, dead-letter and transaction
outcomes, deliveries and artifact cache operations (fixed sets), partitions of the
features topic, arms (``""``, ``baseline``, ``candidate``, ``shadow``) and the rollouts
of served refs (one at a time per ref). A feature event's raw model or ref never becomes
a label before it resolved to a served version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal, cast

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "SIZE_BUCKETS", "Metrics", "sample_sum"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000)

# The library's own spelling of a bound (le="1.0"); it ships no annotation for it.
_le = cast(Callable[[float], str], floatToGoString)

PredictionPath = Literal["stream", "http"]
TransactionOutcome = Literal["committed", "aborted"]
CacheOperation = Literal["read", "write"]
ShadowStage = Literal["load", "refused", "predict", "send"]


class BatchHistogram(Collector):
    """A label-less histogram fed a whole batch of values in one numpy call.

    ``prometheus_client.Histogram`` has no observe-many: one ``observe`` per row
    costs about 3 µs (a bucket scan and a lock per call), about 8% of a core at
    26,000 predictions/s, where a ``bincount`` per batch costs under 0.1%.
    The library still renders and escapes the exposition (``collect``).
    Not locked: it is fed and collected on the worker's event-loop thread only.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # the last is +Inf
        self.total = 0.0

    def observe_many(self, values: np.ndarray) -> None:
        # side="left": a value equal to a bound counts in that bound's bucket (le is <=).
        slots = np.searchsorted(self.bounds, values, side="left")
        self.counts += np.bincount(slots, minlength=len(self.counts))
        self.total += float(values.sum())

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        cumulative = np.cumsum(self.counts).tolist()
        bounds = [_le(b) for b in self.bounds.tolist()] + ["+Inf"]
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], list(zip(bounds, cumulative, strict=True)), self.total)
        yield family


class Metrics:
    """Every metric a worker exposes at ``/metrics``, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._predictions = Counter(
            "modelvc_predictions",
            "Predictions made, by model, the commit that made them, path "
            "(stream: feature events; http: POST /v1/models/{model}/predict) and arm "
            "(baseline or candidate of a canary rollout, shadow for a shadow's score "
            "on modelvc.shadow-predictions, empty otherwise).",
            ("model", "commit", "path", "arm"),
            registry=r,
        )
        self._batch_size = Histogram(
            "modelvc_batch_size",
            "Feature events consumed in one batch.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self._predict_seconds = Histogram(
            "modelvc_predict_seconds",
            "Seconds LightGBM took to score one version's rows of a batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._end_to_end = BatchHistogram(
            "modelvc_end_to_end_seconds",
            "Seconds from a feature event's timestamp to its scoring.",
            LATENCY_BUCKETS,
        )
        r.register(self._end_to_end)
        self._dead_letters = Counter(
            "modelvc_dead_letters",
            "Feature events refused and sent to the dead-letter topic, by reason.",
            ("reason",),
            registry=r,
        )
        self._dead_letter_failures = Counter(
            "modelvc_dead_letter_failures",
            "Dead letters not sent whole: sent minimal, or only logged, by outcome.",
            ("outcome",),
            registry=r,
        )
        self._artifact_failures = Counter(
            "modelvc_artifact_failures",
            "Versions that would not load (unavailable, tampered or refused); "
            "the previous version keeps serving.",
            ("model",),
            registry=r,
        )
        self._artifact_cache_errors = Counter(
            "modelvc_artifact_cache_errors",
            "Faults of the worker's local artifact cache (disk full, read-only, gone), by "
            "operation (read, write); the load went on without it.",
            ("operation",),
            registry=r,
        )
        self._version_switches = Counter(
            "modelvc_version_switches",
            "Times a served ref moved to another commit.",
            ("model",),
            registry=r,
        )
        self._serving_info = Gauge(
            "modelvc_serving_info",
            "1 for each (model, ref) served and the commit it serves now.",
            ("model", "ref", "commit"),
            registry=r,
        )
        self._rollout_percent = Gauge(
            "modelvc_rollout_percent",
            "The share of entities (percent) a served ref's active canary rollout routes to "
            "its candidate, once the candidate is loaded.",
            ("model", "ref", "rollout", "candidate"),
            registry=r,
        )
        self._shadow_info = Gauge(
            "modelvc_shadow_info",
            "1 for each served ref whose alias has a shadow, and the shadow commit scoring "
            "beside it, once loaded.",
            ("model", "ref", "commit"),
            registry=r,
        )
        self._shadow_failures = Counter(
            "modelvc_shadow_failures",
            "Shadow work skipped, by model and stage: load (the shadow commit would not "
            "load), refused (rows the shadow could not score), predict (its scoring "
            "failed), send (no shadow-predictions topic; model empty). Serving goes on "
            "without it.",
            ("model", "stage"),
            registry=r,
        )
        self._consumer_lag = Gauge(
            "modelvc_consumer_lag",
            "Feature events not yet consumed, by assigned partition.",
            ("partition",),
            registry=r,
        )
        self._delivery_info = Gauge(
            "modelvc_delivery_info",
            "1 for the delivery this worker runs: exactly-once (one Kafka transaction per "
            "batch) or at-least-once (repeats keep their prediction ids).",
            ("delivery",),
            registry=r,
        )
        self._transactions = Counter(
            "modelvc_transactions",
            "Batch transactions of an exactly-once worker, by outcome (committed, aborted).",
            ("outcome",),
            registry=r,
        )
        self._commit_seconds = Histogram(
            "modelvc_commit_seconds",
            "Seconds to commit one batch once its sends are acknowledged (at-least-once: the "
            "offset commit; exactly-once: offsets into the transaction and its commit).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge(
            "modelvc_batches_in_flight",
            "Batches scored and sent whose acknowledgements are awaited (at most "
            "MODELVC_WORKER_MAX_IN_FLIGHT; exactly-once: the transaction being committed).",
            registry=r,
        )
        self._send_failures = Counter(
            "modelvc_send_failures",
            "Batches whose predictions or offsets could not be delivered: the worker went "
            "back to the first unacknowledged batch and scored from there again.",
            registry=r,
        )
        self._producer_restarts = Counter(
            "modelvc_producer_restarts",
            "Transactional producers replaced after a fatal error (fenced by a newer producer "
            "with this worker's transactional id, or timed out by the transaction coordinator).",
            registry=r,
        )

    # -- the worker's calls -----------------------------------------------------------
    def predicted(
        self, model: str, commit: str, path: PredictionPath, count: int = 1, arm: str = ""
    ) -> None:
        """``arm``: a served version's stamp (workers.scoring.Version), a bounded set."""
        self._predictions.labels(model, commit, path, arm).inc(count)

    def routes(
        self,
        rollouts: Iterable[tuple[str, str, str, str, int]],
        shadows: Iterable[tuple[str, str, str]],
    ) -> None:
        """The rollouts (model, ref, rollout id, candidate, percent) and shadows (model, ref,
        commit) of the refs served now; the series of any other go."""
        self._rollout_percent.clear()
        for model, ref, rollout_id, candidate, percent in rollouts:
            self._rollout_percent.labels(model, ref, rollout_id, candidate).set(percent)
        self._shadow_info.clear()
        for model, ref, commit in shadows:
            self._shadow_info.labels(model, ref, commit).set(1)

    def shadow_failed(self, model: str, stage: ShadowStage, count: int = 1) -> None:
        self._shadow_failures.labels(model, stage).inc(count)

    def batch(self, size: int) -> None:
        self._batch_size.observe(size)

    def predict_took(self, seconds: float) -> None:
        self._predict_seconds.observe(seconds)

    def end_to_end(self, seconds: np.ndarray) -> None:
        """One call per batch: every scored row's delay from its event time."""
        self._end_to_end.observe_many(seconds)

    def dead_letter(self, reason: str) -> None:
        self._dead_letters.labels(reason).inc()

    def dead_letter_failed(self, outcome: str) -> None:
        self._dead_letter_failures.labels(outcome).inc()

    def artifact_failed(self, model: str) -> None:
        self._artifact_failures.labels(model).inc()

    def cache_error(self, operation: CacheOperation) -> None:
        self._artifact_cache_errors.labels(operation).inc()

    def switched(self, model: str) -> None:
        self._version_switches.labels(model).inc()

    def serving(self, model: str, ref: str, commit: str) -> None:
        self._serving_info.labels(model, ref, commit).set(1)

    def not_serving(self, model: str, ref: str, commit: str) -> None:
        """Drop a series when its ref moved on (no-op when already gone)."""
        self._serving_info.remove(model, ref, commit)

    def delivery(self, delivery: str) -> None:
        """The delivery negotiated at startup (one series; set once per process)."""
        self._delivery_info.clear()
        self._delivery_info.labels(delivery).set(1)

    def transaction(self, outcome: TransactionOutcome) -> None:
        self._transactions.labels(outcome).inc()

    def commit_took(self, seconds: float) -> None:
        self._commit_seconds.observe(seconds)

    def in_flight(self, batches: int) -> None:
        self._in_flight.set(batches)

    def send_failed(self) -> None:
        self._send_failures.inc()

    def producer_restarted(self) -> None:
        self._producer_restarts.inc()

    def lag(self, by_partition: Mapping[int, int]) -> None:
        """The lag of the partitions assigned now; revoked ones disappear."""
        self._consumer_lag.clear()
        for partition, lag in by_partition.items():
            self._consumer_lag.labels(str(partition)).set(lag)

    # -- exposition -----------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition format, served with ``CONTENT_TYPE_LATEST``."""
        return generate_latest(self.registry)


def sample_sum(exposition: str, sample: str, **labels: str) -> float:
    """The sum of one sample over its series (those carrying ``labels``), parsed, not split.

    For readers of ``/metrics`` (tests, benchmarks): ``sample`` is the full sample
    name, e.g. ``modelvc_predictions_total`` or ``modelvc_batch_size_count``.
    """
    return sum(
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )

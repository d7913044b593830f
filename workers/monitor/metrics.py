"""The monitor's Prometheus metrics: the figures of each version's last closed window.

A registry of its own (as ``workers.metrics``). Label values come from closed windows:
models and commits that served predictions, bounded by :data:`MAX_VERSIONS` (the series
of the version not updated for longest go first), and feature names of a commit's
reference (at most its features, bounded by ``streams.core.monitoring.MAX_FEATURES``,
and only for the last :data:`MAX_PSI_VERSIONS` versions with one).
"""

from __future__ import annotations

from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from streams.core import monitoring
from streams.core.monitoring import Reference
from workers.monitor.windows import Closed

__all__ = ["CONTENT_TYPE_LATEST", "MonitorMetrics"]

MAX_VERSIONS = 1000
MAX_PSI_VERSIONS = 100
_VERSION = ("model", "commit", "arm", "shadow")
_FIGURES = ("logloss", "auc", "brier", "mae", "rmse", "coverage", "p50_ms", "p99_ms")


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._figures = {
            name: Gauge(
                f"modelvc_monitor_{name}",
                f"{name} of the version's last closed window (absent: nothing to compute)",
                _VERSION,
                registry=r,
            )
            for name in _FIGURES
        }
        self._psi = Gauge(
            "modelvc_monitor_psi",
            "population stability index of a feature in the version's last closed window",
            (*_VERSION, "feature"),
            registry=r,
        )
        self._counts = {
            name: Counter(f"modelvc_monitor_{name}", doc, ("model",), registry=r)
            for name, doc in (
                ("predictions", "predictions counted in closed windows"),
                ("joined", "predictions joined with a label"),
                ("early_labels", "labels that came before their prediction, then joined"),
                ("late_labels", "labels later than the horizon after their prediction"),
                ("unmatched_labels", "labels that joined nothing within the horizon"),
                ("dead_letters", "dead letters counted against a version"),
            )
        }
        self.bad_labels = Counter(
            "modelvc_monitor_bad_labels",
            "labels refused (sent to the dead-letter topic)",
            registry=r,
        )
        self.bad_predictions = Counter(
            "modelvc_monitor_bad_predictions",
            "prediction records skipped: not a valid prediction, or stamped in the future",
            registry=r,
        )
        self.windows = Counter(
            "modelvc_monitor_windows", "metric windows written to the metrics topic", registry=r
        )
        self.watermark = Gauge(
            "modelvc_monitor_watermark_ms", "the event time every source has reached", registry=r
        )
        self._versions: OrderedDict[tuple[str, ...], frozenset[str]] = OrderedDict()

    def closed(self, window: Closed, reference: Reference | None) -> None:
        """Count a closed window and show its figures as its version's latest."""
        stats = window.stats
        model = window.key.model[:128]
        for name, value in (
            ("predictions", stats.predictions),
            ("joined", stats.labeled),
            ("early_labels", stats.early_labels),
            ("late_labels", stats.late_labels),
            ("unmatched_labels", stats.unmatched_labels),
            ("dead_letters", stats.dead_letters),
        ):
            if value:
                self._counts[name].labels(model).inc(value)
        self.windows.inc()
        if not window.key.commit_id:
            return  # unmatched labels: no version to show figures of
        version = (model, window.key.commit_id, window.key.arm, str(window.key.shadow).lower())
        figures = monitoring.figures(stats, window.end_ms - window.start_ms, reference)
        for name, gauge in self._figures.items():
            figure = figures.get(name)
            if isinstance(figure, int | float):
                gauge.labels(*version).set(figure)
        psis = figures.get("psi")
        features = frozenset(psis) if isinstance(psis, dict) else frozenset()
        if isinstance(psis, dict):
            for feature, index in psis.items():
                self._psi.labels(*version, feature).set(index)
        self._versions[version] = features | self._versions.get(version, frozenset())
        self._versions.move_to_end(version)
        while len(self._versions) > MAX_VERSIONS:
            self._forget(*self._versions.popitem(last=False))
        with_psi = [v for v, f in self._versions.items() if f]
        for old in with_psi[:-MAX_PSI_VERSIONS]:
            for feature in self._versions[old]:
                self._psi.remove(*old, feature)
            self._versions[old] = frozenset()

    def _forget(self, version: tuple[str, ...], features: frozenset[str]) -> None:
        for gauge in self._figures.values():
            gauge.remove(*version)
        for feature in features:
            self._psi.remove(*version, feature)

    def render(self) -> bytes:
        return generate_latest(self.registry)

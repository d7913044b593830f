"""Counters, gauges and histograms rendered in the Prometheus text format.

Small on purpose (no extra dependency): label sets are tuples, values floats.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000)


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"


class Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += times
        self.total += value * times
        self.n += times

    def observe_many(self, values: Sequence[float]) -> None:
        """One call per batch instead of one per row (the hot path)."""
        import numpy as np

        array = np.asarray(values, dtype=np.float64)
        counts = np.bincount(
            np.searchsorted(self.buckets, array, side="left"), minlength=len(self.counts)
        )
        for i, c in enumerate(counts.tolist()):
            self.counts[i] += c
        self.total += float(array.sum())
        self.n += len(array)


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.histograms: dict[str, dict[Labels, Histogram]] = defaultdict(dict)
        self.help: dict[str, str] = {}

    def inc(self, name: str, labels: Labels = (), by: float = 1.0) -> None:
        self.counters[name][labels] += by

    def set(self, name: str, value: float, labels: Labels = ()) -> None:
        self.gauges[name][labels] = value

    def observe(
        self, name: str, value: float, buckets: Sequence[float], labels: Labels = (), times: int = 1
    ) -> None:
        hist = self.histograms[name].get(labels)
        if hist is None:
            hist = self.histograms[name][labels] = Histogram(buckets)
        hist.observe(value, times)

    def observe_many(
        self, name: str, values: Sequence[float], buckets: Sequence[float], labels: Labels = ()
    ) -> None:
        hist = self.histograms[name].get(labels)
        if hist is None:
            hist = self.histograms[name][labels] = Histogram(buckets)
        hist.observe_many(values)

    def counter(self, name: str, labels: Labels = ()) -> float:
        return self.counters[name].get(labels, 0.0)

    def render(self) -> str:
        lines: list[str] = []
        for name, series in sorted(self.counters.items()):
            lines.append(f"# TYPE {name} counter")
            lines += [f"{name}{_fmt(labels)} {value:g}" for labels, value in series.items()]
        for name, gauges in sorted(self.gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            lines += [f"{name}{_fmt(labels)} {value:g}" for labels, value in gauges.items()]
        for name, hists in sorted(self.histograms.items()):
            lines.append(f"# TYPE {name} histogram")
            for labels, hist in hists.items():
                cumulative = 0
                for bound, count in zip(hist.buckets, hist.counts, strict=False):
                    cumulative += count
                    le = (*labels, ("le", f"{bound:g}"))
                    lines.append(f"{name}_bucket{_fmt(le)} {cumulative}")
                lines.append(f"{name}_bucket{_fmt((*labels, ('le', '+Inf')))} {hist.n}")
                lines.append(f"{name}_sum{_fmt(labels)} {hist.total:g}")
                lines.append(f"{name}_count{_fmt(labels)} {hist.n}")
        return "\n".join(lines) + "\n"

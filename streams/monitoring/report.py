"""The monitor route's answer: each version's figures, cumulative and per window.

Figures come from the core (``monitoring.figures`` over merged ``Stats``); this only
picks the windows and lays them out as ``GET /v1/models/{m}/monitor`` returns them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from streams.core import monitoring
from streams.monitoring.controller import DEFAULT_WINDOW_MS
from streams.monitoring.windows import Version, WindowStore, finite

DEFAULT_LAST: Final = 10
# Windows per version in one answer: each carries its figures, PSI per feature included.
MAX_LAST: Final = 100


def monitor_report(
    store: WindowStore,
    model: str,
    last: int = DEFAULT_LAST,
    chosen: Callable[[Version], bool] = lambda version: True,
    references: Mapping[str, monitoring.Reference] | None = None,
) -> dict[str, Any]:
    """``model``'s versions (those ``chosen``) with their cumulative figures and their
    newest ``last`` windows' figures, oldest first; JSON-ready (no NaN). PSI is given for
    stats binned by one of ``references`` (by sha256)."""
    known = references or {}

    def figures(stats: monitoring.Stats, window_ms: int) -> monitoring.Figures:
        return monitoring.figures(stats, window_ms, known.get(stats.reference_sha256))

    window_ms = store.window_ms(model) or DEFAULT_WINDOW_MS
    versions = []
    for version, (stats, count) in store.cumulative(model).items():
        if not chosen(version):
            continue
        windows = [
            {
                "window_id": w.window_id,
                "start_ms": w.start_ms,
                "end_ms": w.end_ms,
                **figures(w.stats, w.window_ms),
            }
            for w in store.windows(model, version=version, last=last)
        ]
        versions.append(
            {
                **version.plain(),
                "windows_total": count,
                "cumulative": figures(stats, max(1, count) * window_ms),
                "windows": windows,
            }
        )
    return finite({"model": model, "window_ms": window_ms, "versions": versions})  # type: ignore[no-any-return]


def references_used(store: WindowStore, model: str) -> set[str]:
    """The references ``model``'s versions are binned by (their PSI needs them)."""
    return {
        stats.reference_sha256
        for stats, _ in store.cumulative(model).values()
        if stats.reference_sha256
    }

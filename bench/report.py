"""Print a benchmark table and write it as JSON under bench/results/."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(
    name: str, rows: list[tuple[str, Any, str, str]], extra: dict[str, Any] | None = None
) -> None:
    """rows: (metric, value, unit, target)."""
    width = max(len(r[0]) for r in rows)
    print(f"\n{name}")
    print(f"{'metric':<{width}}  {'value':>14}  {'unit':<10} target")
    for metric, value, unit, target in rows:
        if isinstance(value, float):
            shown = f"{value:,.2f}"
        else:
            shown = f"{value:,}" if isinstance(value, int) else str(value)
        print(f"{metric:<{width}}  {shown:>14}  {unit:<10} {target}")
    RESULTS.mkdir(exist_ok=True)
    record = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
        "results": {m: {"value": v, "unit": u, "target": t} for m, v, u, t in rows},
        **(extra or {}),
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"written to {path}")

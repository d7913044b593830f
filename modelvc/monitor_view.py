"""`modelvc monitor`: the figures of each version of a model as a table, for a terminal.

Input is the answer of ``GET /v1/models/{m}/monitor`` (already escaped by the caller:
refs and ids come from the log, which anyone with a Kafka client can write). Pure: the
CLI prints what :func:`table` returns, and redraws it under ``--watch``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelvc.render import short, when

# How a version is named in the first column: its ref, the commit, and what serves it.
_COLUMNS = ("VERSION", "SERVES", "COUNT", "COVERAGE", "QUALITY", "P50 MS", "P99 MS", "DEAD", "PSI")
NO_DATA = "-"


def _number(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return NO_DATA
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _percent(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return NO_DATA
    return f"{value * 100:.1f}%"


def quality(figures: Mapping[str, Any]) -> str:
    """Logloss and AUC for a binary model, MAE and RMSE otherwise, or why there is none."""
    if figures.get("logloss") is not None:
        return f"logloss {_number(figures['logloss'])} auc {_number(figures.get('auc'))}"
    if figures.get("mae") is not None:
        return f"mae {_number(figures['mae'])} rmse {_number(figures.get('rmse'))}"
    return "no labels yet"


def drift(figures: Mapping[str, Any]) -> str:
    """The largest PSI and its feature; PSI above 0.25 is the usual "act now" line."""
    psi = figures.get("psi")
    if not isinstance(psi, Mapping):
        return NO_DATA
    numbers = {
        str(k): v for k, v in psi.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if not numbers:
        return NO_DATA
    feature, worst = max(numbers.items(), key=lambda kv: (kv[1], kv[0]))
    flag = " !" if worst > 0.25 else ""
    return f"{worst:.3f} {feature[:24]}{flag}"


def serves(version: Mapping[str, Any]) -> str:
    """What the version is in the traffic: the shadow, an arm of a rollout, or the ref."""
    if version.get("shadow"):
        return "shadow"
    if version.get("rollout_id"):
        return f"{version.get('arm') or '?'} {version['rollout_id']}"
    return "all"


def _row(name: str, what: str, figures: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        name,
        what,
        _number(figures.get("count")),
        _percent(figures.get("coverage")),
        quality(figures),
        _number(figures.get("p50_ms"), 3),
        _number(figures.get("p99_ms"), 3),
        _percent(figures.get("dead_letter_rate")),
        drift(figures),
    )


def rows(answer: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row per version (its cumulative figures), then one per window asked (--last)."""
    out: list[tuple[str, ...]] = []
    for version in answer.get("versions") or []:
        name = f"{version.get('ref') or '?'}@{short(version.get('commit_id'))}"
        out.append(_row(name, serves(version), version.get("cumulative") or {}))
        for window in version.get("windows") or []:
            out.append(_row(f"  {when(window.get('start_ms'))}", "window", window))
    return out


def _layout(lines: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]


def table(answer: Mapping[str, Any]) -> str:
    """The whole view: a heading, then the table, or what to do when nothing is measured."""
    model = answer.get("model", "?")
    window_s = (answer.get("window_ms") or 0) / 1000
    heading = (
        f"model {model}: figures per version since it was first served; windows of {window_s:g} s"
    )
    found = rows(answer)
    if not found:
        return (
            f"{heading}\nno predictions of {model} measured yet: publish features "
            f"(modelvc -M {model} publish FILE) and labels (modelvc -M {model} publish-labels "
            "FILE); the monitor process must run (`modelvc up` starts one)"
        )
    return "\n".join([heading, *_layout([_COLUMNS, *found])])

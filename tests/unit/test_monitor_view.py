"""`modelvc monitor`'s table: one row per version, the figures that fit its model kind."""

from __future__ import annotations

from typing import Any

from modelvc import render
from modelvc.monitor_view import drift, quality, rows, serves, table

BASE = "a" * 64
CAND = "b" * 64


def figures(**changes: Any) -> dict[str, Any]:
    return {
        "count": 1200,
        "labeled": 900,
        "coverage": 0.75,
        "logloss": 0.3123456,
        "auc": 0.871,
        "mae": 0.2,
        "rmse": 0.4,
        "p50_ms": 1.25,
        "p99_ms": 9.5,
        "dead_letter_rate": 0.001,
        "psi": {"tenure": 0.03, "spend": 0.31},
    } | changes


def answer(*versions: dict[str, Any]) -> dict[str, Any]:
    return {"model": "churn", "window_ms": 60_000, "versions": list(versions)}


def version(commit: str = BASE, **changes: Any) -> dict[str, Any]:
    return {
        "ref": "production",
        "commit_id": commit,
        "rollout_id": "",
        "arm": "",
        "shadow": False,
        "cumulative": figures(),
        "windows": [],
    } | changes


def test_a_binary_model_shows_logloss_and_auc_a_regression_mae_and_rmse() -> None:
    assert quality(figures()) == "logloss 0.3123 auc 0.871"
    assert quality(figures(logloss=None, auc=None)) == "mae 0.2 rmse 0.4"
    assert quality(figures(logloss=None, mae=None)) == "no labels yet"


def test_drift_names_the_worst_feature_and_flags_it_above_a_quarter() -> None:
    assert drift(figures()) == "0.310 spend !"
    assert drift(figures(psi={"tenure": 0.03})) == "0.030 tenure"
    assert drift(figures(psi={})) == drift(figures(psi=None)) == "-"
    assert drift(figures(psi={"x": "junk", "y": True})) == "-"  # the log may say anything


def test_each_version_says_what_it_serves() -> None:
    assert serves(version()) == "all"
    assert serves(version(shadow=True)) == "shadow"
    assert serves(version(rollout_id="r1", arm="candidate")) == "candidate r1"


def test_the_table_has_a_row_per_version_and_per_window_asked() -> None:
    window = figures(count=10) | {"window_id": "w", "start_ms": 1_800_000_000_000, "end_ms": 0}
    shown = rows(
        answer(
            version(rollout_id="r1", arm="baseline", windows=[window]),
            version(CAND, rollout_id="r1", arm="candidate"),
        )
    )
    assert [r[:3] for r in shown] == [
        (f"production@{render.short(BASE)}", "baseline r1", "1,200"),
        (f"  {render.when(1_800_000_000_000)}", "window", "10"),
        (f"production@{render.short(CAND)}", "candidate r1", "1,200"),
    ]
    assert shown[0][3:] == (
        "75.0%",
        "logloss 0.3123 auc 0.871",
        "1.25",
        "9.5",
        "0.1%",
        "0.310 spend !",
    )
    text = table(answer(version()))
    lines = text.splitlines()
    assert lines[0].startswith("model churn:") and "windows of 60 s" in lines[0]
    assert lines[1].split() == [
        "VERSION",
        "SERVES",
        "COUNT",
        "COVERAGE",
        "QUALITY",
        "P50",
        "MS",
        "P99",
        "MS",
        "DEAD",
        "PSI",
    ]
    # Columns line up: every row starts its COUNT where the heading does.
    assert lines[2].index("1,200") == lines[1].index("COUNT")


def test_missing_figures_are_dashes_not_errors() -> None:
    empty = version(cumulative={"count": 0, "coverage": None, "psi": {}})
    (row,) = rows(answer(empty))
    assert row[2:] == ("0", "-", "no labels yet", "-", "-", "-", "-")
    assert rows({"model": "churn"}) == []


def test_nothing_measured_says_what_to_do() -> None:
    text = table(answer())
    assert "modelvc -M churn publish-labels FILE" in text
    assert "`modelvc up` starts one" in text

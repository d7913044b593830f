"""Feature files as users write them: CSV with a header, or JSON lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelvc.streaming import read_feature_file


def test_csv_columns_other_than_the_reserved_ones_are_features(tmp_path: Path) -> None:
    f = tmp_path / "f.csv"
    f.write_text("event_id,model,entity_key,event_time,tenure,spend\ne1,churn,c17,1000,3,\n")
    (event,) = read_feature_file(f)
    assert event["event_id"] == "e1" and event["model"] == "churn" and event["event_time"] == 1000
    assert event["features"] == {"tenure": 3.0, "spend": None}  # empty cell: missing


def test_json_lines_with_or_without_a_features_object(tmp_path: Path) -> None:
    f = tmp_path / "f.jsonl"
    f.write_text('{"features": {"a": 1}}\n\n{"a": 2, "ref": "exp", "plan": "gold"}\n')
    first, second = read_feature_file(f, model="churn")
    assert first["model"] == "churn" and first["features"] == {"a": 1} and first["event_id"]
    assert second["ref"] == "exp" and second["features"] == {"a": 2, "plan": "gold"}


def test_rows_without_a_model_and_bad_json_say_so(tmp_path: Path) -> None:
    f = tmp_path / "f.jsonl"
    f.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="modelvc -M NAME publish FILE"):
        list(read_feature_file(f))
    f.write_text("{oops\n")
    with pytest.raises(ValueError, match=":1: not JSON"):
        list(read_feature_file(f, model="m"))

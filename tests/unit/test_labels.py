"""Labels: the one validity rule, the wire schema, the topics, and reading a labels file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelvc.streaming import (
    MAX_LABEL_LINE,
    LabelError,
    label,
    label_key,
    read_label_file,
)
from schemas import SCHEMA_DIR
from streams.codec import LABELS
from streams.core.labels import MAX_ID_LENGTH, MAX_VALUES, validate_label
from streams.settings import LABELS_TOPIC, METRICS_TOPIC, SHADOW_PREDICTIONS_TOPIC, Settings

NOW = 1_800_000_000_000


def by_event(**changes: Any) -> dict[str, Any]:
    return {
        "label_id": "l-1",
        "model": "churn",
        "feature_event_id": "e-1",
        "entity_key": None,
        "event_time": None,
        "values": [1.0],
        "label_time": NOW,
    } | changes


def by_entity(**changes: Any) -> dict[str, Any]:
    return by_event(feature_event_id=None, entity_key="customer-17", event_time=NOW - 5) | changes


def test_a_label_answers_an_event_or_an_entity_at_a_time() -> None:
    assert validate_label(by_event()) is None
    assert validate_label(by_entity()) is None
    assert validate_label(by_event(values=[0.0] * MAX_VALUES)) is None


@pytest.mark.parametrize(
    ("record", "says"),
    [
        (by_event(entity_key="c", event_time=NOW), "not both"),
        (by_event(entity_key="c"), "not both"),
        (by_event(feature_event_id=None), "needs feature_event_id, or entity_key with event_time"),
        (by_entity(event_time=None), "needs feature_event_id, or entity_key with event_time"),
        (by_entity(entity_key=None), "needs feature_event_id, or entity_key with event_time"),
        (by_entity(event_time=-1), "event_time must be milliseconds"),
        (by_entity(event_time=True), "event_time must be milliseconds"),
        (by_event(values=[]), "a label holds 1 to 64"),
        (by_event(values=[1.0] * (MAX_VALUES + 1)), "a label holds 1 to 64"),
        (by_event(values="1"), "a label holds 1 to 64"),
        (by_event(values=[math.nan]), "must be a finite double"),
        (by_event(values=[1.0, math.inf]), "values[1]"),
        (by_event(values=[10**400]), "must be a finite double"),
        (by_event(values=[True]), "not a number"),
        (by_event(model="bad name"), "is not a model name"),
        (by_event(model="x\n"), "is not a model name"),
        (by_event(model=None), "is not a model name"),
        (by_event(label_id=""), "label_id must be a non-empty string"),
        (by_event(feature_event_id="e" * (MAX_ID_LENGTH + 1)), "at most 256"),
        (by_entity(entity_key=""), "entity_key must be a non-empty string"),
        (by_event(label_time=None), "label_time must be milliseconds"),
        (by_event(label_time=2**63), "label_time must be milliseconds"),
        # Control characters (Unicode Cc): escape sequences in logs, look-alike keys.
        (by_event(feature_event_id="\x01cust-1\x00123"), "feature_event_id"),
        (by_event(label_id="x\x1b[2J"), "label_id"),
        (by_entity(entity_key="k\x7f"), "entity_key"),
        (by_entity(entity_key="k\x85"), "control character"),
    ],
)
def test_an_invalid_label_is_refused_with_what_to_fix(record: dict[str, Any], says: str) -> None:
    problem = validate_label(record)
    assert problem is not None and says in problem


def test_printable_ids_beyond_ascii_are_labels() -> None:
    assert validate_label(by_event(feature_event_id="événement-1", label_id="ä b")) is None


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)


@given(
    model=names,
    key=names,
    values=st.lists(finite, min_size=1, max_size=MAX_VALUES),
    by_id=st.booleans(),
    at=st.integers(0, 2**62),
)
def test_every_valid_label_crosses_the_wire_unchanged_and_still_valid(
    model: str, key: str, values: list[float], by_id: bool, at: int
) -> None:
    where: dict[str, Any] = (
        {"feature_event_id": key} if by_id else {"entity_key": key, "event_time": at}
    )
    record = label(model, values, label_time=at, **where)
    decoded = LABELS.decode(LABELS.encode(record))
    assert decoded == record and validate_label(decoded) is None
    assert label_key(record) == key.encode()


def test_label_fills_in_the_id_and_the_time_and_refuses_what_the_monitor_would() -> None:
    made = label("churn", [1], feature_event_id="e-1")
    assert made["label_id"] and made["label_time"] > NOW - 10**12
    assert made["values"] == [1.0] and type(made["values"][0]) is float
    with pytest.raises(LabelError, match="not both"):
        label("churn", [1.0], feature_event_id="e-1", entity_key="c", event_time=1)


def test_the_schema_is_the_one_the_spec_names() -> None:
    schema = json.loads((SCHEMA_DIR / "label.avsc").read_text())
    assert f"{schema['namespace']}.{schema['name']}" == "modelvc.serving.Label"
    assert [f["name"] for f in schema["fields"]] == [
        "label_id",
        "model",
        "feature_event_id",
        "entity_key",
        "event_time",
        "values",
        "label_time",
    ]


def test_the_new_topics_are_namespaced_like_the_others() -> None:
    assert (LABELS_TOPIC, METRICS_TOPIC, SHADOW_PREDICTIONS_TOPIC) == (
        "modelvc.labels",
        "modelvc.metrics",
        "modelvc.shadow-predictions",
    )
    tenant = Settings(namespace="t1")
    assert (tenant.labels_topic, tenant.metrics_topic, tenant.shadow_predictions_topic) == (
        "t1.labels",
        "t1.metrics",
        "t1.shadow-predictions",
    )


# -- a labels file ---------------------------------------------------------------------
def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_csv_of_labels_by_event_or_by_entity(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "labels.csv",
        "feature_event_id,entity_key,event_time,value,label_time\n"
        "e-1,,,1,\n"
        ",customer-17,1799999999000,0,1800000000500\n",
    )
    first, second = read_label_file(path, "churn", now_ms=NOW)
    assert (first["feature_event_id"], first["values"], first["label_time"]) == ("e-1", [1.0], NOW)
    assert (second["entity_key"], second["event_time"]) == ("customer-17", 1799999999000)
    assert second["label_time"] == 1800000000500 and second["model"] == "churn"


def test_json_lines_take_values_or_numbered_columns_and_a_model_each(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "labels.jsonl",
        '{"feature_event_id": "e-1", "values": [0.5, 2]}\n'
        "\n"
        '{"model": "other", "feature_event_id": "e-2", "value_0": 1, "value_1": 3}\n',
    )
    first, second = read_label_file(path, "churn", now_ms=NOW)
    assert (first["model"], first["values"]) == ("churn", [0.5, 2.0])
    assert (second["model"], second["values"]) == ("other", [1.0, 3.0])


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        (
            "l.csv",
            "feature_event_id,value\ne-1,1\ne-2,yes\n",
            "l.csv:3: value 'yes' is not a number",
        ),
        ("l.csv", "feature_event_id,value\ne-1,nan\n", "l.csv:2: values[0] is nan"),
        ("l.csv", "feature_event_id\ne-1\n", "l.csv:2: it has no value"),
        ("l.csv", "entity_key,value\nc,1\n", "l.csv:2: a label needs feature_event_id"),
        ("l.csv", "entity_key,event_time,value\nc,soon,1\n", "event_time 'soon' is not"),
        ("l.csv", "feature_event_id,value\ne-1,1,2\n", "l.csv:2: more fields than the header"),
        ("l.jsonl", '{"feature_event_id": "e", "value": 1}\n[1]\n', "l.jsonl:2: not an object"),
        ("l.jsonl", "{not json\n", "l.jsonl:1: not JSON"),
        ("l.jsonl", '{"feature_event_id": "e", "values": 1}\n', "values must be a list"),
    ],
)
def test_a_bad_line_is_named_with_what_to_fix(
    tmp_path: Path, name: str, text: str, says: str
) -> None:
    with pytest.raises(LabelError) as raised:
        list(read_label_file(write(tmp_path, name, text), "churn", now_ms=NOW))
    assert says in str(raised.value)


def test_a_row_without_a_model_says_how_to_name_one(tmp_path: Path) -> None:
    path = write(tmp_path, "l.csv", "feature_event_id,value\ne-1,1\n")
    with pytest.raises(LabelError, match="modelvc -M NAME"):
        list(read_label_file(path, None, now_ms=NOW))


def test_an_overlong_json_line_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    line = json.dumps({"feature_event_id": "e", "value": 1, "pad": "x" * MAX_LABEL_LINE})
    with pytest.raises(LabelError, match=r"l\.jsonl:1: over 64 KiB"):
        list(read_label_file(write(tmp_path, "l.jsonl", line + "\n"), "churn", now_ms=NOW))

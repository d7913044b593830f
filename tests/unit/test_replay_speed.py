"""The replay's fast paths give exactly what the slow ones gave (issue 11).

``canonical`` calls json.dumps' C encoder built once instead of ``json.dumps``; an
archive segment written with today's schema is read without resolving it against
itself. Both must change nothing but the time: every hash and record stays the same.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.archive.format import SCHEMA, Record, decode_segment, encode_segment
from streams.core.hashing import canonical

PLAIN: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def dumps(value: object) -> bytes:
    """The canonical form as it was always written (schemas/CANONICAL.md)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


@settings(max_examples=300, deadline=None)
@given(PLAIN)
def test_canonical_is_byte_for_byte_json_dumps(value: object) -> None:
    assert canonical(value) == dumps(value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, {"x": [-math.inf]}])
def test_canonical_still_refuses_non_finite_numbers(bad: object) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        canonical(bad)
    assert canonical({"after": 1.5}) == b'{"after":1.5}'  # no state left behind


def test_canonical_still_refuses_what_json_cannot_write() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        canonical({"x": b"bytes"})


RECORDS = [
    Record("modelvc.events", 3, 7, 1_700_000_000_000, b"churn", b"\xc3\x01event"),
    Record("modelvc.events", 3, 8, 1_700_000_000_001, None, None),
]


def test_a_segment_of_todays_schema_reads_back_as_written() -> None:
    data = encode_segment("modelvc.events", RECORDS)
    assert list(decode_segment(io.BytesIO(data))) == RECORDS


def test_a_segment_of_another_writer_schema_is_resolved_against_ours() -> None:
    """A writer without ``key`` (which ours defaults to null): read alone, the records would
    lack it; resolved, they have the default."""
    older = {**SCHEMA, "fields": [f for f in SCHEMA["fields"] if f["name"] != "key"]}
    out = io.BytesIO()
    fastavro.writer(
        out,
        fastavro.parse_schema(older),
        [{k: v for k, v in r.__dict__.items() if k != "key"} for r in RECORDS],
    )
    prefix = b"junk before the container"
    handle = io.BytesIO(prefix + out.getvalue())
    handle.seek(len(prefix))  # read from where the handle stands, not from byte 0
    assert list(decode_segment(handle)) == [
        Record(r.topic, r.partition, r.offset, r.timestamp, None, r.value) for r in RECORDS
    ]

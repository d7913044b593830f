"""workers.scoring.PredictionEncoder writes exactly the bytes of PREDICTIONS.encode."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import PREDICTIONS
from workers.scoring import PredictionEncoder, Source, Version, prediction_record

LONGS = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=80)


@settings(max_examples=300, deadline=None)
@given(
    model=TEXT,
    ref=TEXT,
    commit=TEXT,
    digest=TEXT,
    worker=TEXT,
    event_id=TEXT,
    topic=TEXT,
    partition=st.integers(-(2**31), 2**31 - 1),
    offset=LONGS,
    event_time=LONGS,
    scored_at=LONGS,
    scores=st.lists(st.floats(allow_nan=False), max_size=5),
)
def test_the_bytes_are_the_codecs(**v: Any) -> None:
    version = Version(v["model"], v["ref"], v["commit"], v["digest"], None)  # type: ignore[arg-type]
    source = Source(v["topic"], v["partition"], v["offset"], 0)
    event = {"event_id": v["event_id"], "event_time": v["event_time"]}
    record = prediction_record(event, source, version, v["scores"], v["worker"], v["scored_at"])
    expected = PREDICTIONS.encode(record | {"key_id": "", "signature": b""})
    encoder = PredictionEncoder(version, v["worker"], v["scored_at"])
    got = encoder.encode(
        v["event_id"], v["topic"], v["partition"], v["offset"], v["event_time"], v["scores"]
    )
    assert got == expected
    assert PREDICTIONS.decode(got) == PREDICTIONS.decode(expected)

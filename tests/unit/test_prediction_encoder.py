"""workers.scoring.PredictionEncoder writes exactly the bytes of PREDICTIONS.encode."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import PREDICTIONS
from workers.scoring import (
    PredictionEncoder,
    Source,
    Version,
    prediction_id,
    prediction_record,
)

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
    entity_key=TEXT,
    # The stamps of a rollout's arm or a shadow, or none (the defaults), in any mix.
    rollout_id=st.sampled_from(["", "r0123456789a"]) | TEXT,
    arm=st.sampled_from(["", "baseline", "candidate"]) | TEXT,
    shadow=st.booleans(),
)
def test_the_bytes_are_the_codecs(**v: Any) -> None:
    version = Version(
        v["model"],
        v["ref"],
        v["commit"],
        v["digest"],
        None,  # type: ignore[arg-type]
        rollout_id=v["rollout_id"],
        arm=v["arm"],
        shadow=v["shadow"],
    )
    source = Source(v["topic"], v["partition"], v["offset"], 0)
    event = {
        "event_id": v["event_id"],
        "event_time": v["event_time"],
        "entity_key": v["entity_key"],
    }
    record = prediction_record(event, source, version, v["scores"], v["worker"], v["scored_at"])
    expected = PREDICTIONS.encode(record | {"key_id": "", "signature": b""})
    encoder = PredictionEncoder(version, v["worker"], v["scored_at"])
    got = encoder.encode(
        v["event_id"],
        v["topic"],
        v["partition"],
        v["offset"],
        v["event_time"],
        v["scores"],
        v["entity_key"],
    )
    assert got == expected
    decoded = PREDICTIONS.decode(got)
    assert decoded == PREDICTIONS.decode(expected)
    assert (decoded["entity_key"], decoded["rollout_id"], decoded["arm"], decoded["shadow"]) == (
        v["entity_key"],
        v["rollout_id"],
        v["arm"],
        v["shadow"],
    )
    assert decoded["prediction_id"] == prediction_id(v["event_id"], v["commit"], v["shadow"])


def test_a_shadow_prediction_has_its_own_id() -> None:
    """The spec's formula, spelled out: sha256(feature_event_id|commit_id|"shadow")."""
    served = prediction_id("ev-1", "c" * 64)
    shadow = prediction_id("ev-1", "c" * 64, shadow=True)
    assert served == hashlib.sha256(f"ev-1|{'c' * 64}".encode()).hexdigest()
    assert shadow == hashlib.sha256(f"ev-1|{'c' * 64}|shadow".encode()).hexdigest()

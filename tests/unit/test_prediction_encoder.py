"""workers.scoring.PredictionEncoder writes exactly the bytes of PREDICTIONS.encode."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import RELEASED_DIR
from streams.codec import PREDICTIONS
from streams.core.model_signature import DOUBLE, Feature, ModelSignature
from streams.formats.base import Checked
from workers.artifacts import LoadedModel
from workers.scoring import (
    PredictionEncoder,
    Source,
    Version,
    prediction_id,
    prediction_record,
)

LONGS = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=80)
# The prediction schema before the runtime stamp (issue 14), as released.
BEFORE_RUNTIME = "01277d2183765ab4"
SIGNATURE = ModelSignature("onnx", (Feature("x", DOUBLE),), 1)


@dataclass(frozen=True)
class Stamped:
    """A predictor stand-in: the encoder reads only its runtime."""

    runtime: str
    signature: ModelSignature = SIGNATURE

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        raise AssertionError("the encoder never scores")


def loaded(runtime: str) -> LoadedModel:
    return LoadedModel("d" * 64, Stamped(runtime), Checked("onnx", SIGNATURE, 0, 0))


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
    runtime=st.sampled_from(["lightgbm 4.6.0 threads=1"]) | TEXT,
)
def test_the_bytes_are_the_codecs(**v: Any) -> None:
    version = Version(
        v["model"],
        v["ref"],
        v["commit"],
        v["digest"],
        loaded(v["runtime"]),
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
    assert decoded["runtime"] == v["runtime"]
    assert decoded["prediction_id"] == prediction_id(v["event_id"], v["commit"], v["shadow"])
    # fastavro alone, with the schema as shipped, reads the hand-made bytes to the record.
    body = io.BytesIO(got[len(PREDICTIONS.header) :])
    plain = fastavro.schemaless_reader(body, fastavro.parse_schema(PREDICTIONS.schema), None)
    assert plain == record | {"key_id": "", "signature": b""}
    assert body.tell() == len(got) - len(PREDICTIONS.header)


@settings(max_examples=50, deadline=None)
@given(scores=st.lists(st.floats(allow_nan=False), max_size=3), entity_key=TEXT)
def test_a_prediction_written_before_the_runtime_reads_with_none(
    scores: list[float], entity_key: str
) -> None:
    """The previous writer schema (released) has no runtime: its records read as None, the
    default, so the signature of an old signed prediction still covers the same fields."""
    old_schema = json.loads((RELEASED_DIR / f"{BEFORE_RUNTIME}.avsc").read_text())
    assert "runtime" not in {f["name"] for f in old_schema["fields"]}
    version = Version("churn", "production", "c" * 64, "d" * 64, loaded("lightgbm 4.6.0"))
    event = {"event_id": "e1", "event_time": 5, "entity_key": entity_key}
    record = prediction_record(event, Source("t", 0, 1, 0), version, scores, "w1", 7)
    old = {k: v for k, v in record.items() if k != "runtime"} | {"key_id": "", "signature": b""}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(old_schema), old)
    data = PREDICTIONS.header[:2] + bytes.fromhex(BEFORE_RUNTIME) + out.getvalue()
    assert PREDICTIONS.decode(data) == old | {"runtime": None}


def test_a_shadow_prediction_has_its_own_id() -> None:
    """The spec's formula, spelled out: sha256(feature_event_id|commit_id|"shadow")."""
    served = prediction_id("ev-1", "c" * 64)
    shadow = prediction_id("ev-1", "c" * 64, shadow=True)
    assert served == hashlib.sha256(f"ev-1|{'c' * 64}".encode()).hexdigest()
    assert shadow == hashlib.sha256(f"ev-1|{'c' * 64}|shadow".encode()).hexdigest()

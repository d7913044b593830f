"""From decoded feature events to prediction records, one matrix per version.

Pure apart from the model's native library: no Kafka, no clock (``scored_at`` comes in).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from streams.codec import PREDICTIONS
from streams.core.rollout import BASELINE, CANDIDATE, Rollout, arm
from workers.artifacts import LoadedModel
from workers.errors import MissingFeature, NonFiniteValue, Rejected, WrongType

T = TypeVar("T")


@dataclass(frozen=True)
class Version:
    """The version a batch is scored by: what a ref resolved to, and its loaded model.

    ``rollout_id``/``arm`` and ``shadow`` are the stamps its predictions carry: the
    tracker makes a stamped copy for each arm of a rollout and for a shadow."""

    model: str
    ref: str  # the ref as requested, or the default ref it stood for
    commit_id: str
    artifact_sha256: str
    loaded: LoadedModel
    rollout_id: str = ""
    arm: str = ""  # rollout.BASELINE | rollout.CANDIDATE, "" without a rollout
    shadow: bool = False


@dataclass(frozen=True)
class Route:
    """How one (model, ref) is served now: by ``version`` alone, or split by an active
    rollout of its alias between ``baseline`` and ``candidate`` (both loaded, stamped), and
    also scored by ``shadow`` (stamped shadow) when the alias has one that loaded."""

    version: Version
    rollout: Rollout | None = None
    baseline: Version | None = None
    candidate: Version | None = None
    shadow: Version | None = None

    def split(
        self, items: Sequence[T], entity_key: Callable[[T], str]
    ) -> list[tuple[Version, Sequence[T]]]:
        """Each version that serves some of ``items``, with them (in their order).

        Without a rollout, one group and no hashing: routing costs nothing then. With one,
        ``rollout.arm`` per entity, the rule ``streams.core.refs.serving`` applies (it is
        asked once per batch which rollout), so an entity keeps its arm from batch to
        batch and worker to worker."""
        rollout, baseline, candidate = self.rollout, self.baseline, self.candidate
        if rollout is None or baseline is None or candidate is None:
            return [(self.version, items)]
        picked: dict[str, list[T]] = {BASELINE: [], CANDIDATE: []}
        for item in items:
            picked[arm(rollout, entity_key(item))].append(item)
        return [
            (version, part)
            for version, part in ((baseline, picked[BASELINE]), (candidate, picked[CANDIDATE]))
            if part
        ]


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def prediction_id(feature_event_id: str, commit_id: str, shadow: bool = False) -> str:
    """Deterministic: a redelivered event scored by the same version keeps its id; a shadow's
    score of it has another id (the same commit may serve one ref and shadow another)."""
    text = f"{feature_event_id}|{commit_id}|shadow" if shadow else f"{feature_event_id}|{commit_id}"
    return hashlib.sha256(text.encode()).hexdigest()


_FLOAT_MAX = int(np.finfo(np.float64).max)


def feature_row(features: Mapping[str, Any], names: Sequence[str]) -> list[float]:
    """The model's features in its training order, or the reason the event is refused."""
    try:
        row = [features[name] for name in names]
    except KeyError as exc:
        raise MissingFeature(f"feature {exc.args[0]!r} is missing") from None
    for name, value in zip(names, row, strict=True):
        if type(value) is float:
            continue  # the common case, checked for finiteness on the whole matrix
        if value is None:
            raise MissingFeature(f"feature {name!r} is null")
        if isinstance(value, bool) or not isinstance(value, int | float):
            # Quote at most 200 characters: the value may be megabytes (it is dead-lettered).
            raise WrongType(
                f"feature {name!r:.200} is {type(value).__name__} {value!r:.200}, not a number"
            )
        if isinstance(value, int) and not -_FLOAT_MAX < value < _FLOAT_MAX:
            # JSON (the predict endpoint) has integers of any size; a float64 does not.
            raise NonFiniteValue(f"feature {name!r:.200} is an integer too large for a float")
    return row


def check_finite(matrix: np.ndarray, names: Sequence[str]) -> list[Rejected | None]:
    """Per row: None when finite, else the rejection naming the first bad feature."""
    ok = np.isfinite(matrix).all(axis=1)
    if ok.all():
        return [None] * len(matrix)
    out: list[Rejected | None] = []
    for row, good in zip(matrix, ok, strict=True):
        if good:
            out.append(None)
            continue
        bad = next(i for i, v in enumerate(row) if not math.isfinite(v))
        out.append(NonFiniteValue(f"feature {names[bad]!r} is {row[bad]}"))
    return out


def predict(version: Version, matrix: np.ndarray) -> np.ndarray:
    """Scores as a 2-D float64 array (rows x outputs) for one batch, by the version's
    predictor (one thread: ``runtime`` says so, and a re-score repeats it)."""
    return version.loaded.predictor.predict(matrix)


def prediction_record(
    event: Mapping[str, Any],
    source: Source,
    version: Version,
    scores: Sequence[float],
    worker_id: str,
    scored_at: int,
) -> dict[str, Any]:
    return {
        "prediction_id": prediction_id(event["event_id"], version.commit_id, version.shadow),
        "feature_event_id": event["event_id"],
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "model": version.model,
        "requested_ref": version.ref,
        "commit_id": version.commit_id,
        "artifact_sha256": version.artifact_sha256,
        "scores": list(scores),
        "worker_id": worker_id,
        "event_time": event["event_time"],
        "scored_at": scored_at,
        "entity_key": event["entity_key"],
        "rollout_id": version.rollout_id,
        "arm": version.arm,
        "shadow": version.shadow,
        "runtime": version.loaded.predictor.runtime,
    }


# -- the prediction record's bytes, without a generic Avro writer --------------------
# fastavro's schemaless_writer costs about 4 µs a record (a third of the worker's work per
# event) for a record whose fields are mostly the same across a version's batch. Avro's
# binary encoding of it is fixed by the schema: the constant fields are encoded once per
# batch and the rest appended. Exactly the bytes PREDICTIONS.encode writes (a test checks
# them); the layout below is checked against schemas/prediction.avsc at import, so a
# schema change fails loudly here rather than writing a record the codec would not.
_LAYOUT = (
    ("prediction_id", "string"),
    ("feature_event_id", "string"),
    ("source_topic", "string"),
    ("source_partition", "int"),
    ("source_offset", "long"),
    ("model", "string"),
    ("requested_ref", "string"),
    ("commit_id", "string"),
    ("artifact_sha256", "string"),
    ("scores", {"type": "array", "items": "double"}),
    ("worker_id", "string"),
    ("event_time", "long"),
    ("scored_at", "long"),
    ("key_id", "string"),
    ("signature", "bytes"),
    ("entity_key", "string"),
    ("rollout_id", "string"),
    ("arm", "string"),
    ("shadow", "boolean"),
    ("runtime", ["null", "string"]),
)
if tuple((f["name"], f["type"]) for f in PREDICTIONS.schema["fields"]) != _LAYOUT:
    raise ImportError(
        "schemas/prediction.avsc changed: update workers.scoring.PredictionEncoder to it"
    )
_UNSIGNED = b"\x00\x00"  # key_id "" and signature b"": each a zero length


def _long(n: int) -> bytes:
    """Avro long/int: zigzag, then base-128 varint, least significant group first."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return _long(len(data)) + data


class PredictionEncoder:
    """Unsigned prediction records of one version and batch, as ``PREDICTIONS.encode``."""

    def __init__(self, version: Version, worker_id: str, scored_at: int) -> None:
        self.commit = version.commit_id
        self.shadow = version.shadow
        self.middle = b"".join(
            _string(v)
            for v in (version.model, version.ref, version.commit_id, version.artifact_sha256)
        )
        self.worker = _string(worker_id)
        self.tail = _long(scored_at) + _UNSIGNED
        # After entity_key: the rollout's stamps, the shadow flag (Avro boolean: one byte)
        # and the runtime that computed the scores.
        self.stamps = b"".join(
            (
                _string(version.rollout_id),
                _string(version.arm),
                bytes((version.shadow,)),
                b"\x02",  # union ["null", "string"]: branch 1 (zigzag 2), a string
                _string(version.loaded.predictor.runtime),
            )
        )
        self.topics: dict[str, bytes] = {}

    def encode(
        self,
        event_id: str,
        topic: str,
        partition: int,
        offset: int,
        event_time: int,
        scores: Sequence[float],
        entity_key: str = "",
    ) -> bytes:
        """The record ``prediction_record`` makes of these, unsigned, encoded."""
        encoded_topic = self.topics.get(topic)
        if encoded_topic is None:
            encoded_topic = self.topics[topic] = _string(topic)
        n = len(scores)
        return b"".join(
            (
                PREDICTIONS.header,
                _string(prediction_id(event_id, self.commit, self.shadow)),
                _string(event_id),
                encoded_topic,
                _long(partition),
                _long(offset),
                self.middle,
                _long(n) + struct.pack(f"<{n}d", *scores) + b"\x00" if n else b"\x00",
                self.worker,
                _long(event_time),
                self.tail,
                _string(entity_key),
                self.stamps,
            )
        )

"""Producer and subscriber helpers for the serving topics (synchronous, kafka-python).

Publish feature events::

    from modelvc.streaming import FeatureProducer
    with FeatureProducer("127.0.0.1:9092") as producer:
        producer.publish("churn", {"tenure": 3.0, "spend": 42.5}, entity_key="customer-17")

Typed, with the schema of the model's signature (``GET /v1/models/churn/feature-schema``,
``modelvc schema``): smaller, several times cheaper for a worker to decode, and checked
here: a row that lacks a feature or has a wrong type raises :class:`FeatureRowError`::

    answer = client.feature_schema("churn")  # modelvc.client.Client
    with FeatureProducer("127.0.0.1:9092", schema=answer["schema"]) as producer:
        producer.publish("churn", {"tenure": 3.0, "spend": 42.5})

Any Avro library can do the same: the message is C3 01, the 8-byte fingerprint the
answer gives, then the record written with the schema.

Read predictions::

    from modelvc.streaming import subscribe_predictions
    for p in subscribe_predictions("127.0.0.1:9092", model="churn", from_beginning=True):
        print(p["feature_event_id"], p["commit_id"], p["scores"])
"""

from __future__ import annotations

import csv
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from modelvc.client import Client
from streams.codec import FEATURES, PREDICTIONS, SingleObjectCodec
from streams.core.model_signature import feature_fields
from streams.errors import UndecodableMessage
from streams.kafka_access import KafkaAccess, as_access, negotiate_sync
from streams.settings import FEATURES_TOPIC, PREDICTIONS_TOPIC

log = logging.getLogger("modelvc.streaming")

RESERVED = ("event_id", "model", "ref", "entity_key", "event_time", "features")
# What publish says to do with a row the typed schema cannot carry.
UNTYPED_HINT = (
    "fix the row, or publish untyped (modelvc publish FILE --untyped) and the worker "
    "dead-letters what the model cannot score"
)
_LONG = 1 << 63


class FeatureRowError(ValueError):
    """Raised for a feature event a typed schema cannot carry (a feature missing, null or
    of the wrong type): nothing is sent in its place, never silently the map form."""


def feature_event(
    model: str,
    features: Mapping[str, Any],
    entity_key: str = "",
    ref: str | None = None,
    event_id: str | None = None,
    event_time: int | None = None,
) -> dict[str, Any]:
    """A FeatureEvent record; ids and times are filled in when not given."""
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "model": model,
        "ref": ref,
        "entity_key": entity_key,
        "event_time": int(time.time() * 1000) if event_time is None else int(event_time),
        "features": dict(features),
    }


def encode_feature_event(event: Mapping[str, Any]) -> bytes:
    return FEATURES.encode(event)


class TypedEncoder:
    """Encodes feature events with one typed schema (``feature_schema`` of a signature)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.codec = SingleObjectCodec(dict(schema))
        (features,) = [f for f in schema["fields"] if f["name"] == "features"]
        kinds = {str(f["name"]): f["type"] for f in features["type"]["fields"]}
        # (Avro field, feature, Avro type) in the schema's order.
        self.fields = [(a, name, kinds[a]) for a, name in feature_fields(schema).items()]

    def encode(self, event: Mapping[str, Any]) -> bytes:
        features = event["features"]
        typed = {
            field: _typed(event, name, kind, features.get(name))
            for field, name, kind in self.fields
        }
        return self.codec.encode({**event, "features": typed})


def _typed(event: Mapping[str, Any], name: str, kind: str, value: Any) -> float | int:
    """``value`` as the schema's Avro type, or the error naming the event and the feature."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        what = "missing or null" if value is None else f"a {type(value).__name__} ({value!r:.60})"
    elif kind == "double":
        try:
            return float(value)
        except OverflowError:
            what = "an integer too large for a double"
    elif isinstance(value, int) and -_LONG <= value < _LONG:
        return value
    elif isinstance(value, float) and value.is_integer() and -_LONG <= value < _LONG:
        return int(value)  # a CSV reads every number as a float: 3.0 is category 3
    else:
        what = f"{value!r:.60}, not a category code (an integer)"
    raise FeatureRowError(
        f"event {str(event.get('event_id'))[:64]!r}: feature {name!r:.200} is {what}; the "
        f"model's schema wants {'a number' if kind == 'double' else 'an integer'}; " + UNTYPED_HINT
    )


def decode_prediction(value: bytes) -> dict[str, Any]:
    """One prediction message -> dict (raises streams.errors.UndecodableMessage)."""
    return PREDICTIONS.decode(value)


Encode = Callable[[Mapping[str, Any]], bytes]


class FeatureProducer:
    """Sends feature events: typed with ``schema`` when given (the ``schema`` of a
    feature-schema answer), else in the map-of-union form any worker accepts."""

    def __init__(
        self,
        kafka: KafkaAccess | str,
        topic: str = FEATURES_TOPIC,
        linger_ms: int = 5,
        schema: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.encode: Encode = (
            TypedEncoder(schema).encode if schema is not None else encode_feature_event
        )
        access = negotiate_sync(as_access(kafka))
        self._producer = KafkaProducer(**access.producer(linger_ms=linger_ms))

    @classmethod
    def typed(
        cls,
        kafka: KafkaAccess | str,
        client: Client,
        model: str,
        ref: str | None = None,
        topic: str = FEATURES_TOPIC,
    ) -> FeatureProducer:
        """A producer typed with the schema the service gives for ``model`` at ``ref``."""
        return cls(kafka, topic, schema=client.feature_schema(model, ref)["schema"])

    def publish(
        self,
        model: str,
        features: Mapping[str, Any],
        entity_key: str = "",
        ref: str | None = None,
        event_id: str | None = None,
        event_time: int | None = None,
    ) -> str:
        """Send one feature event (asynchronously; ``flush`` or ``close`` waits); returns its id."""
        event = feature_event(model, features, entity_key, ref, event_id, event_time)
        return self.send(event)

    def send(self, event: Mapping[str, Any], encode: Encode | None = None) -> str:
        """Send ``event`` encoded by ``encode`` (default: this producer's form)."""
        self.send_encoded(event, (encode or self.encode)(event))
        return str(event["event_id"])

    def send_encoded(self, event: Mapping[str, Any], value: bytes) -> None:
        """Send ``value``, the encoding of ``event``, keyed by its entity (else its id)."""
        key = str(event.get("entity_key") or event["event_id"]).encode()
        self._producer.send(self.topic, key=key, value=value)

    def flush(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()

    def __enter__(self) -> FeatureProducer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def publish_features(
    kafka: KafkaAccess | str,
    events: Iterable[Mapping[str, Any]],
    topic: str = FEATURES_TOPIC,
    schema_of: Callable[[str, str | None], Mapping[str, Any]] | None = None,
) -> int:
    """Publish every event and wait for the broker to acknowledge them; returns the count.

    ``schema_of(model, ref)``: the typed schema for an event's model and ref (asked once
    per pair), e.g. ``lambda m, r: client.feature_schema(m, r)["schema"]``; without it,
    the map-of-union form. Every row is encoded before the first is sent, so a row the
    schema cannot carry (:class:`FeatureRowError`, naming it) publishes nothing."""
    encoders: dict[tuple[str, str | None], Encode] = {}
    encoded: list[tuple[Mapping[str, Any], bytes]] = []
    for number, event in enumerate(events, start=1):
        key = (str(event["model"]), event.get("ref"))
        if key not in encoders:
            encoders[key] = (
                TypedEncoder(schema_of(*key)).encode if schema_of else encode_feature_event
            )
        try:
            encoded.append((event, encoders[key](event)))
        except FeatureRowError as exc:
            raise FeatureRowError(f"row {number}: {exc}") from None
    with FeatureProducer(kafka, topic) as producer:
        for event, value in encoded:
            producer.send_encoded(event, value)
    return len(encoded)


def _number(text: str) -> float | None:
    return None if text.strip() == "" else float(text)


def read_feature_file(
    path: Path, model: str | None = None, ref: str | None = None
) -> Iterator[dict[str, Any]]:
    """Feature events from CSV (a header row; non-reserved columns are features) or JSON lines.

    A JSON line either has a ``features`` object or lists features beside the reserved keys.
    ``model``/``ref`` fill in what a row does not say.
    """

    def build(row: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
        name = row.get("model") or model
        if not name:
            raise ValueError(
                f"{path}: a row names no model; name one for all rows: modelvc -M NAME publish FILE"
            )
        return feature_event(
            str(name),
            features,
            str(row.get("entity_key") or ""),
            row.get("ref") or ref,
            row.get("event_id") or None,
            int(row["event_time"]) if row.get("event_time") not in (None, "") else None,
        )

    with open(path, newline="") as handle:
        if path.suffix.lower() == ".csv":
            for row in csv.DictReader(handle):
                features = {k: _number(v) for k, v in row.items() if k not in RESERVED}
                yield build(row, features)
            return
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            features = row.get("features") or {k: v for k, v in row.items() if k not in RESERVED}
            yield build(row, features)


def subscribe_predictions(
    kafka: KafkaAccess | str,
    model: str | None = None,
    topic: str = PREDICTIONS_TOPIC,
    from_beginning: bool = False,
    idle_timeout_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Decoded predictions as they arrive (optionally only one model's).

    Without ``from_beginning`` only predictions scored after the call are
    yielded (filtered on ``scored_at``, which is right on any broker even when
    its answer for "latest offset" is not). Reads ``read_committed``: a prediction of
    an exactly-once worker's aborted transaction is never seen.
    """
    started_ms = int(time.time() * 1000)
    consumer = KafkaConsumer(
        topic,
        **as_access(kafka).consumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            fetch_max_wait_ms=50,
            consumer_timeout_ms=int(idle_timeout_s * 1000) if idle_timeout_s else float("inf"),
        ),
    )
    try:
        for message in consumer:
            try:
                prediction = decode_prediction(message.value)
            except UndecodableMessage as exc:
                # Anyone who can write to the topic can write garbage: a reader skips it, says so.
                log.warning(
                    "skipping undecodable message at %s[%s]@%s: %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    exc,
                )
                continue
            if model is not None and prediction["model"] != model:
                continue
            if not from_beginning and prediction["scored_at"] < started_ms:
                continue
            yield prediction
    finally:
        consumer.close()

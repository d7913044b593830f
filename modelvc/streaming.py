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

Publish labels, the true values the monitor joins with predictions (by the feature
event's id, or by the entity's key and the event's time)::

    with FeatureProducer("127.0.0.1:9092") as producer:
        event_id = producer.publish("churn", {"tenure": 3.0}, entity_key="customer-17")
        producer.publish_label("churn", [1.0], feature_event_id=event_id)

Read predictions::

    from modelvc.streaming import subscribe_predictions
    for p in subscribe_predictions("127.0.0.1:9092", model="churn", from_beginning=True):
        print(p["feature_event_id"], p["commit_id"], p["scores"])
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from modelvc.client import Client
from streams.codec import FEATURES, LABELS, PREDICTIONS, SingleObjectCodec
from streams.core.labels import MAX_VALUES, validate_label
from streams.core.model_signature import feature_fields
from streams.errors import UndecodableMessage
from streams.kafka_access import KafkaAccess, as_access, negotiate_sync
from streams.settings import FEATURES_TOPIC, LABELS_TOPIC, PREDICTIONS_TOPIC

log = logging.getLogger("modelvc.streaming")

RESERVED = ("event_id", "model", "ref", "entity_key", "event_time", "features")
# What publish says to do with a row the typed schema cannot carry.
UNTYPED_HINT = (
    "fix the row, or publish untyped (modelvc publish FILE --untyped) and the worker "
    "dead-letters what the model cannot score"
)
_LONG = 1 << 63


class LabelError(ValueError):
    """Raised for a label :func:`streams.core.labels.validate_label` refuses: nothing is sent
    (the monitor would dead-letter it)."""


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


def label(
    model: str,
    values: Sequence[float],
    *,
    feature_event_id: str | None = None,
    entity_key: str | None = None,
    event_time: int | None = None,
    label_time: int | None = None,
    label_id: str | None = None,
) -> dict[str, Any]:
    """A valid Label record (ids and the label time filled in when not given), or
    :class:`LabelError` saying what to fix."""
    record: dict[str, Any] = {
        "label_id": label_id or str(uuid.uuid4()),
        "model": model,
        "feature_event_id": feature_event_id,
        "entity_key": entity_key,
        "event_time": event_time,
        "values": list(values) if isinstance(values, list | tuple) else values,
        "label_time": int(time.time() * 1000) if label_time is None else label_time,
    }
    problem = validate_label(record)
    if problem is not None:
        raise LabelError(problem)
    record["values"] = [float(v) for v in record["values"]]
    return record


def label_key(record: Mapping[str, Any]) -> bytes:
    """A label's Kafka key: the feature event it answers, else its entity."""
    return str(record["feature_event_id"] or record["entity_key"]).encode()


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
        labels_topic: str = LABELS_TOPIC,
    ) -> None:
        self.topic = topic
        self.labels_topic = labels_topic
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

    def publish_label(
        self,
        model: str,
        values: Sequence[float],
        *,
        feature_event_id: str | None = None,
        entity_key: str | None = None,
        event_time: int | None = None,
        label_time: int | None = None,
        label_id: str | None = None,
    ) -> str:
        """Send one label (asynchronously, like :meth:`publish`); returns its id.

        It answers the feature event ``feature_event_id``, or the event of ``entity_key``
        at ``event_time`` (ms); :class:`LabelError` for a label the monitor would refuse.
        """
        record = label(
            model,
            values,
            feature_event_id=feature_event_id,
            entity_key=entity_key,
            event_time=event_time,
            label_time=label_time,
            label_id=label_id,
        )
        self.send_label(record)
        return str(record["label_id"])

    def send_label(self, record: Mapping[str, Any]) -> None:
        """Send a Label record as it is (checked by :func:`label` or the caller)."""
        self._producer.send(self.labels_topic, key=label_key(record), value=LABELS.encode(record))

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


# A labels file is read whole before anything is sent (a bad row sends nothing): bounded.
MAX_LABEL_ROWS = 1_000_000
MAX_LABEL_LINE = 64 * 1024
LABEL_COLUMNS = "feature_event_id, or entity_key and event_time; value (or value_0, value_1, ...)"
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def publish_labels(
    kafka: KafkaAccess | str, labels: Iterable[Mapping[str, Any]], topic: str = LABELS_TOPIC
) -> int:
    """Send every (already checked) label and wait for the broker's acknowledgements."""
    count = 0
    with FeatureProducer(kafka, labels_topic=topic) as producer:
        for record in labels:
            producer.send_label(record)
            count += 1
    return count


def read_label_file(
    path: Path, model: str | None = None, now_ms: int | None = None
) -> Iterator[dict[str, Any]]:
    """Checked Label records from CSV (a header row) or JSON lines, or :class:`LabelError`
    naming the file, the line and what to fix.

    Columns (CSV) or keys (JSON): ``feature_event_id``, or ``entity_key`` and
    ``event_time`` (ms); ``value``, or ``value_0``, ``value_1``, ... (JSON also takes a
    ``values`` list); optional ``label_time`` (ms; default ``now_ms``), ``label_id`` and
    ``model`` (default ``model``). At most :data:`MAX_LABEL_ROWS` rows.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    with open(path, newline="") as handle:
        csv_file = path.suffix.lower() == ".csv"
        rows = _csv_rows(handle, path) if csv_file else _json_rows(handle, path)
        for count, (line, row) in enumerate(rows, start=1):
            where = f"{path}:{line}"
            if count > MAX_LABEL_ROWS:
                raise LabelError(
                    f"{where}: more than {MAX_LABEL_ROWS:,} labels in one file; split it"
                )
            try:
                yield _label_row(row, model, now)
            except LabelError as exc:
                raise LabelError(f"{where}: {exc}") from None


def _csv_rows(handle: Iterable[str], path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(handle)
    try:
        for row in reader:
            if None in row:
                raise LabelError(f"{path}:{reader.line_num}: more fields than the header")
            yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}
    except csv.Error as exc:
        raise LabelError(f"{path}:{reader.line_num}: not CSV ({exc})") from None


def _json_rows(handle: Iterable[str], path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(handle, start=1):
        where = f"{path}:{number}"
        if len(line) > MAX_LABEL_LINE:
            raise LabelError(f"{where}: over {MAX_LABEL_LINE // 1024} KiB; one label a line")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise LabelError(f"{where}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise LabelError(
                f"{where}: not an object; one JSON object a line, with {LABEL_COLUMNS}"
            )
        yield number, {k: v for k, v in row.items() if v is not None}


def _label_row(row: Mapping[str, Any], model: str | None, now_ms: int) -> dict[str, Any]:
    name = row.get("model") or model
    if not name:
        raise LabelError("it names no model; add a model column, or name one: modelvc -M NAME")
    return label(
        str(name),
        _row_values(row),
        feature_event_id=_text(row.get("feature_event_id")),
        entity_key=_text(row.get("entity_key")),
        event_time=_millis(row, "event_time"),
        label_time=_millis(row, "label_time") if "label_time" in row else now_ms,
        label_id=_text(row.get("label_id")),
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _millis(row: Mapping[str, Any], column: str) -> int | None:
    value = row.get(column)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    raise LabelError(f"{column} {str(value)[:40]!r} is not milliseconds since the epoch")


def _row_values(row: Mapping[str, Any]) -> list[Any]:
    if "values" in row:
        values = row["values"]
        if not isinstance(values, list):
            raise LabelError("values must be a list of numbers")
        return [_number_of(v, "values") for v in values]
    if "value" in row:
        return [_number_of(row["value"], "value")]
    numbered: list[Any] = []
    while f"value_{len(numbered)}" in row and len(numbered) <= MAX_VALUES:
        numbered.append(_number_of(row[f"value_{len(numbered)}"], f"value_{len(numbered)}"))
    if not numbered:
        raise LabelError(f"it has no value; give {LABEL_COLUMNS}")
    return numbered


def _number_of(value: Any, column: str) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise LabelError(f"{column} {value[:40]!r} is not a number") from None
    return value  # validate_label says what is wrong with any other type


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

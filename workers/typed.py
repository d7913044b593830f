"""Which writer schema a feature event names, and its decoding to the one event shape.

A feature event is Avro single-object encoded: magic ``C3 01``, the writer schema's
8-byte fingerprint, the body. Two forms are accepted:

- the map-of-union ``modelvc.serving.FeatureEvent`` (``streams.codec.FEATURES``, with
  every released writer of it): any producer, any features, typed loosely;
- a typed ``TypedFeatureEvent`` (``streams.core.model_signature.feature_schema``): one
  Avro field per feature of one model signature, about five times cheaper to decode.

The registry maps each fingerprint to its writer once (one dict lookup per event,
never a try-each-schema loop), filled from every signature the version log records
and every version a worker loads (``workers.versions``). Both forms decode to
``{"event_id", "model", "ref", "entity_key", "event_time", "features": {name: value}}``
with the model's own feature names, plus, for a typed event, the features its
schema carries, which the scorer checks against the served signature
(``model_signature.mismatch``) once per schema and version, not per event.
"""

from __future__ import annotations

import io
import shlex
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import fastavro

from streams.codec import FEATURES, HEADER_SIZE, MAGIC, SingleObjectCodec, fingerprint
from streams.core.model_signature import (
    DOUBLE,
    Feature,
    ModelSignature,
    feature_fields,
    feature_schema,
    typed_features,
)
from streams.core.refs import name_problem
from streams.errors import UndecodableMessage
from workers.errors import Undecodable

# Typed schemas one worker keeps: one per distinct signature in the log or loaded, so a
# log (or a model store) full of distinct signatures cannot grow a worker without bound;
# past it the oldest registered goes (a later event of it is learned again, see below).
MAX_SCHEMAS = 4096
# And the fields they hold, summed (a parsed field costs about 400 bytes): a committer of
# many wide signatures cannot grow every worker by gigabytes either.
MAX_FIELDS = 200_000
# Every feature event starts with this envelope (both forms): enough to name the model
# and ref of an event whose schema is unknown, to learn it or to say what to fetch.
_ENVELOPE = fastavro.parse_schema(
    {
        "type": "record",
        "name": "Envelope",
        "namespace": "modelvc.serving.prefix",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "model", "type": "string"},
            {"name": "ref", "type": ["null", "string"]},
        ],
    }
)


@dataclass(frozen=True)
class Writer:
    """One typed writer schema: parsed once, with how its fields map back to features."""

    parsed: Any  # fastavro's parsed schema (untyped library)
    renames: tuple[tuple[str, str], ...]  # (Avro field, feature) where the two differ
    carried: tuple[Feature, ...]
    # All features doubles (every numerical model): the body ends in exactly
    # 8 x len(carried) bytes, little-endian float64s in the carried order.
    doubles: struct.Struct | None = None


class Read(NamedTuple):
    """A decoded event. ``doubles``: its features as the raw little-endian float64s in
    ``carried`` order (``event["features"]`` is then None; :meth:`TypedRegistry.decode`
    fills it), so a batch's matrix is one ``numpy.frombuffer`` of them."""

    event: dict[str, Any]
    carried: tuple[Feature, ...] | None
    doubles: bytes | None


def fetch_hint(model: str | None, ref: str | None) -> str:
    """The command that prints the schema a producer should write, in the CLI's syntax.

    The names come off a topic: one the CLI would refuse is shown as a placeholder."""
    shown = model if model is not None and name_problem("model", model) is None else "MODEL"
    argv = ["modelvc", "schema", "-M", shown]
    if ref is not None:
        argv += ["--ref", ref if len(ref) <= 256 and ref.isprintable() else "REF"]
    return "fetch the current schema: " + shlex.join(argv)


class UnknownSchema(Undecodable):
    """Raised for a single-object event whose fingerprint no registered schema has."""

    def __init__(self, fp: bytes, model: str | None = None, ref: str | None = None) -> None:
        self.fingerprint = fp
        self.model = model
        self.ref = ref
        super().__init__(
            f"unknown feature schema fingerprint {fp.hex()} (not the map-of-union "
            f"FeatureEvent, nor the typed schema of any signature this worker knows); "
            f"{fetch_hint(model, ref)}"
        )


class TypedRegistry:
    """Fingerprint -> how to decode; filled by the version tracker, read by the scorer."""

    def __init__(
        self,
        map_codec: SingleObjectCodec = FEATURES,
        max_schemas: int = MAX_SCHEMAS,
        max_fields: int = MAX_FIELDS,
    ):
        self.map_codec = map_codec
        self.max_schemas = max_schemas
        self.max_fields = max_fields
        self._fields = 0
        self._typed: dict[bytes, Writer] = {}
        self._by_signature: dict[ModelSignature, bytes] = {}

    def __len__(self) -> int:
        return len(self._typed)

    def add(self, signature: ModelSignature) -> bytes:
        """Register the typed schema of ``signature`` (cheap when already known)."""
        known = self._by_signature.get(signature)
        if known is not None and known in self._typed:
            return known
        schema = feature_schema(signature)
        fp = fingerprint(schema)
        if fp not in self._typed:
            renames = tuple((a, f) for a, f in feature_fields(schema).items() if a != f)
            width = len(signature.inputs)
            while self._typed and (
                len(self._typed) >= self.max_schemas or self._fields + width > self.max_fields
            ):
                self._fields -= len(self._typed.pop(next(iter(self._typed))).carried)
            self._fields += width
            # What the schema itself says it carries: two signatures that differ only in
            # what Avro cannot tell apart (none today) would still be checked right.
            carried = typed_features(schema)
            doubles = (
                struct.Struct(f"<{len(carried)}d")
                if carried and all(f.type == DOUBLE for f in carried)
                else None
            )
            self._typed[fp] = Writer(fastavro.parse_schema(schema), renames, carried, doubles)
        while len(self._by_signature) >= self.max_schemas:
            self._by_signature.pop(next(iter(self._by_signature)))
        self._by_signature[signature] = fp
        return fp

    def knows(self, fp: bytes) -> bool:
        return fp in self._typed or fp in self.map_codec.writers

    def decode(self, data: bytes | None) -> tuple[dict[str, Any], tuple[Feature, ...] | None]:
        """The event and, for a typed one, the features its schema carries (None: map form).

        Raises :class:`Undecodable` (:class:`UnknownSchema` for an unknown fingerprint)."""
        event, carried, doubles = self.read(data)
        if doubles is not None and carried is not None:
            values = struct.unpack(f"<{len(carried)}d", doubles)
            event["features"] = {f.name: v for f, v in zip(carried, values, strict=True)}
        return event, carried

    def read(self, data: bytes | None) -> Read:
        """As :meth:`decode`, the features of an all-double typed event left as raw bytes."""
        if data is None or len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise Undecodable("not an Avro single-object encoded feature event (magic C3 01)")
        fp = data[2:HEADER_SIZE]
        writer = self._typed.get(fp)
        if writer is None:
            if fp not in self.map_codec.writers:
                raise UnknownSchema(fp, *envelope(data))
            try:
                return Read(self.map_codec.decode(data), None, None)
            except UndecodableMessage as exc:
                raise Undecodable(str(exc)) from None
        if writer.doubles is not None:
            size = writer.doubles.size
            head = _envelope_fast(data, len(data) - size)
            if head is not None:
                return Read(head, writer.carried, bytes(data[len(data) - size :]))
            # Anything unusual (corrupt, trailing bytes, odd UTF-8): fastavro below says why.
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            event: dict[str, Any] = fastavro.schemaless_reader(buf, writer.parsed, None)  # type: ignore[assignment]
        except Exception as exc:  # fastavro raises many types for corrupt bytes
            raise Undecodable(f"corrupt typed feature event body: {exc!r:.500}") from None
        if buf.tell() != len(data):
            raise Undecodable(f"{len(data) - buf.tell()} trailing bytes after the feature event")
        if writer.renames:
            features = event["features"]
            for field, name in writer.renames:
                features[name] = features.pop(field)
        return Read(event, writer.carried, None)


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro long (zigzag varint, at most 10 bytes) at ``pos``; IndexError past the end."""
    byte = data[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    value, shift = byte & 0x7F, 7
    for end in range(pos + 1, pos + 10):
        byte = data[end]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), end + 1
        shift += 7
    raise ValueError("varint longer than 10 bytes")


def _envelope_fast(data: bytes, end: int) -> dict[str, Any] | None:
    """The envelope of a typed event whose features start at ``end``, read without
    fastavro (a quarter of the cost); None unless it is well formed and ends exactly at
    ``end`` (the caller then decodes with fastavro, which explains what is wrong)."""
    try:
        texts: list[str | None] = []
        pos = HEADER_SIZE
        for field in range(4):  # event_id, model, ref (union null|string), entity_key
            if field == 2:
                branch, pos = _long(data, pos)
                if branch == 0:
                    texts.append(None)
                    continue
                if branch != 1:
                    return None
            size, pos = _long(data, pos)
            if size < 0 or pos + size > end:
                return None
            texts.append(data[pos : pos + size].decode("utf-8"))
            pos += size
        event_time, pos = _long(data, pos)
    except (IndexError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if pos != end or not -(2**63) <= event_time < 2**63:
        return None
    event_id, model, ref, entity_key = texts
    return {
        "event_id": event_id,
        "model": model,
        "ref": ref,
        "entity_key": entity_key,
        "event_time": event_time,
        "features": None,
    }


def envelope(data: bytes) -> tuple[str | None, str | None]:
    """(model, ref) of a feature event of any writer schema, (None, None) when unreadable."""
    buf = io.BytesIO(data)
    buf.seek(HEADER_SIZE)
    try:
        head: dict[str, Any] = fastavro.schemaless_reader(buf, _ENVELOPE, None)  # type: ignore[assignment]
    except Exception:  # hostile bytes: no names, just the fingerprint
        return None, None
    return head["model"], head["ref"]

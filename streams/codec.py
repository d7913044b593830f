"""Avro single-object encoding (magic C3 01 + CRC-64-AVRO fingerprint + body).

Every message names the exact schema that wrote it, so a reader years later
can find that writer schema and resolve it against its own (Avro schema
resolution). Every codec registers, when it is built, each writer schema ever
released for its record (``schemas/released``), so a compatible schema change
never strands earlier history. Schemas are parsed once, at import.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import fastavro
import fastavro.schema

from schemas import RELEASED_DIR, SCHEMA_DIR
from streams.core.commands import BODY_TYPES, Command
from streams.core.events import (
    PAYLOAD_TYPES,
    ModelEvent,
    commit_from_plain,
    plain_payload,
    signature_from_plain,
)
from streams.core.model_signature import ModelSignature
from streams.core.rollout import Policy
from streams.errors import UndecodableMessage

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10


def load_schema(*files: str, schema_dir: Path = SCHEMA_DIR) -> dict[str, Any]:
    """Parse the named ``.avsc`` files in order (dependencies first) into one schema."""
    loaded = fastavro.schema.load_schema_ordered([str(schema_dir / f) for f in files])
    return dict(loaded)  # type: ignore[arg-type]


def fingerprint(schema: Mapping[str, Any]) -> bytes:
    """CRC-64-AVRO of the parsing canonical form, as the 8 bytes single-object encoding uses."""
    canonical_form = fastavro.schema.to_parsing_canonical_form(schema)  # type: ignore[arg-type]
    return bytes.fromhex(fastavro.schema.fingerprint(canonical_form, "CRC-64-AVRO"))


def full_name(schema: Mapping[str, Any]) -> str:
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


@functools.cache
def released_writers(directory: Path = RELEASED_DIR) -> dict[str, list[dict[str, Any]]]:
    """Every released writer schema in ``directory``, by full record name (read once)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.avsc")):
        schema = json.loads(path.read_text())
        out.setdefault(full_name(schema), []).append(schema)
    return out


@dataclass
class SingleObjectCodec:
    """Encoder/decoder for one reader schema, accepting any registered writer schema."""

    schema: dict[str, Any]
    writers: dict[bytes, Any] = field(default_factory=dict)
    # Writers the reader only appends to (see appended_defaults), with how to fill in
    # what they lack (None: nothing, the writer only lacks union branches).
    prefixes: dict[bytes, Fill | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.parsed = fastavro.parse_schema(self.schema)
        self.fingerprint = fingerprint(self.schema)
        self.header = MAGIC + self.fingerprint
        self.name = str(self.schema["name"])
        self.writers.setdefault(self.fingerprint, self.parsed)
        self.bytes_defaults = bytes_defaults(self.schema)

    @classmethod
    def reading_released(
        cls, schema: dict[str, Any], released_dir: Path = RELEASED_DIR
    ) -> SingleObjectCodec:
        """The codec of ``schema`` that also reads every released writer of its record.

        Automatic on purpose: a schema change needs only its file in ``released_dir``.
        """
        codec = cls(schema)
        for writer in released_writers(released_dir).get(full_name(schema), []):
            codec.add_writer(writer)
        return codec

    def add_writer(self, schema: Mapping[str, Any]) -> bytes:
        """Accept messages written with an older (or newer) compatible schema."""
        fp = fingerprint(schema)
        if fp != self.fingerprint:  # the reader's own schema needs no resolution step
            self.writers[fp] = fastavro.parse_schema(dict(schema))
            appended = appended_defaults(schema, self.schema)
            if appended is not None:
                with contextlib.suppress(_NotAppended):  # else resolved by Avro's rules
                    self.prefixes[fp] = appended_fill(schema, appended)
        return fp

    def encode(self, record: Mapping[str, Any]) -> bytes:
        for name, default in self.bytes_defaults:
            if name not in record:
                # fastavro would write the JSON default, a str, and refuse it as bytes.
                record = {**record, name: default}
        out = io.BytesIO()
        out.write(self.header)
        fastavro.schemaless_writer(out, self.parsed, record)
        return out.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        if data is None or len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise UndecodableMessage(
                f"not Avro single-object encoded {self.name} (expected magic C3 01)"
            )
        key = bytes(data[2:HEADER_SIZE])
        writer = self.writers.get(key)
        if writer is None:
            raise UndecodableMessage(
                f"unknown schema fingerprint {key.hex()} for {self.name}; "
                "upgrade modelvc or register the writer schema"
            )
        resolve = writer is not self.parsed and key not in self.prefixes
        fill = None if resolve else self.prefixes.get(key)
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            record: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]
                buf,
                writer,
                self.parsed if resolve else None,
                return_record_name=True,
            )
            if fill is not None:
                fill(record)
        except Exception as exc:  # fastavro raises many types for corrupt bytes
            # At most 500 characters: some exceptions quote the bytes they choked on.
            raise UndecodableMessage(f"corrupt {self.name} body: {exc!r:.500}") from exc
        if buf.tell() != len(data):
            raise UndecodableMessage(
                f"{len(data) - buf.tell()} trailing bytes after the {self.name} record"
            )
        if resolve:
            # fastavro fills a field the writer lacked with its JSON default as written,
            # a str even for bytes; the Avro spec (and Apache Avro) make it bytes.
            for name, default in self.bytes_defaults:
                if isinstance(record.get(name), str):
                    record[name] = default
        return record


_SCALARS = (str, int, float, bool, type(None))


def _fillable(default: object) -> bool:
    """A default the fast path fills in: a scalar, or an empty array or map (``[]``,
    ``{}``: each record gets a new one, never one shared by every record)."""
    return isinstance(default, _SCALARS) or default == [] or default == {}


# Fills in, in place, what a record decoded by its writer schema alone lacks.
Fill = Callable[[Any], None]


def _pending(_: Any) -> None:
    """Stands for a record whose fill is still being built (a reference to it is a cycle)."""


class _NotAppended(Exception):
    """The writer is not the reader minus appended parts (or not in a form we fill)."""


def appended_defaults(
    writer: Mapping[str, Any], reader: Mapping[str, Any]
) -> dict[str, dict[str, object]] | None:
    """What ``writer`` lacks, when ``reader`` is it plus appended parts; else None.

    Appended parts: fields at the end of a record (each with a scalar default), at any
    depth, and branches at the end of a union. Then the writer's bytes mean the same
    under the reader with no resolution at all: decoded by the writer schema alone, plus
    these defaults (by record full name), they give what Avro schema resolution gives,
    at the speed of the current schema (fastavro resolves about twice as slowly), so a
    log written by the previous release replays as fast as one written today. Decided by
    comparing canonical forms: anything else (a renamed, reordered or retyped field) is
    resolved as Avro says.
    """
    appended: dict[str, dict[str, object]] = {}
    try:
        prefix = _strip(reader, writer, None, appended)
        same = fingerprint(prefix) == fingerprint(writer)
    except (_NotAppended, fastavro.schema.SchemaParseException, ValueError, TypeError, KeyError):
        return None  # the prefix is no schema (a dropped branch defined a name used later)
    return appended if same else None


def _full(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _strip(read: Any, written: Any, namespace: str | None, appended: dict[str, Any]) -> Any:
    """``read`` without what it appends to ``written``, noting each record's added defaults."""
    if isinstance(read, list) and isinstance(written, list):
        return [_strip(r, w, namespace, appended) for r, w in zip(read, written, strict=False)]
    if not (isinstance(read, dict) and isinstance(written, dict)):
        return read
    kind = read.get("type")
    if kind != written.get("type"):
        return read
    if kind in ("array", "map"):
        part = "items" if kind == "array" else "values"
        return {**read, part: _strip(read[part], written[part], namespace, appended)}
    if kind not in ("record", "error"):
        return read
    name = _full(str(read["name"]), read.get("namespace", namespace))
    inner = name.rpartition(".")[0] or None
    fields, written_fields = list(read["fields"]), list(written["fields"])
    extra = fields[len(written_fields) :]
    if len(fields) < len(written_fields) or any(
        "default" not in f or not _fillable(f["default"]) for f in extra
    ):
        raise _NotAppended(name)
    if extra:
        appended[name] = {str(f["name"]): default_value(f) for f in extra}
    return {
        **read,
        "fields": [
            {**r, "type": _strip(r["type"], w["type"], inner, appended)}
            for r, w in zip(fields, written_fields, strict=False)
        ],
    }


def appended_fill(
    writer: Mapping[str, Any], appended: Mapping[str, Mapping[str, object]]
) -> Fill | None:
    """How to complete, in place, a record ``writer`` decoded (``return_record_name``):
    each record named in ``appended`` gets its defaults, wherever it sits. None when there
    is nothing to add; raises _NotAppended when a default sits where this cannot reach it
    (then the reader resolves)."""
    return _fill(writer, None, appended, {})


def _fill(
    schema: Any,
    namespace: str | None,
    appended: Mapping[str, Mapping[str, object]],
    named: dict[str, Fill | None],
) -> Fill | None:
    if isinstance(schema, str):  # a primitive, or a named type defined earlier
        fill = named.get(_full(schema, namespace))
        if fill is _pending:
            raise _NotAppended(f"{schema} is recursive")
        return fill
    if isinstance(schema, list):
        branches: dict[str, Fill] = {}
        for branch in schema:
            fill = _fill(branch, namespace, appended, named)
            if fill is not None:
                # Only a record branch decodes as (name, datum), which says where it went.
                branches[_record_name(branch, namespace, named)] = fill
        return _union_fill(branches) if branches else None
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if isinstance(kind, dict | list):  # {"type": {...}}: the type itself, nested
        return _fill(kind, namespace, appended, named)
    if kind in ("array", "map"):
        inner = _fill(schema["items" if kind == "array" else "values"], namespace, appended, named)
        if inner is None:
            return None
        return _items_fill(inner) if kind == "array" else _values_fill(inner)
    if kind not in ("record", "error"):
        return None
    name = _full(str(schema["name"]), schema.get("namespace", namespace))
    named[name] = _pending
    scope = name.rpartition(".")[0] or None
    nested = [
        (str(f["name"]), fill)
        for f in schema["fields"]
        if (fill := _fill(f["type"], scope, appended, named)) is not None
    ]
    defaults = dict(appended.get(name, {}))
    named[name] = _record_fill(tuple(nested), defaults) if nested or defaults else None
    return named[name]


def _record_name(branch: Any, namespace: str | None, named: Mapping[str, Any]) -> str:
    if isinstance(branch, str) and _full(branch, namespace) in named:
        return _full(branch, namespace)
    if isinstance(branch, dict) and branch.get("type") in ("record", "error"):
        return _full(str(branch["name"]), branch.get("namespace", namespace))
    raise _NotAppended("a union branch other than a record needs defaults")


def _record_fill(nested: tuple[tuple[str, Fill], ...], defaults: dict[str, object]) -> Fill:
    scalars = {k: v for k, v in defaults.items() if not isinstance(v, list | dict)}
    containers = tuple((k, type(v)) for k, v in defaults.items() if isinstance(v, list | dict))

    def fill(record: Any) -> None:
        for name, inner in nested:
            inner(record[name])
        record.update(scalars)
        for name, empty in containers:
            record[name] = empty()

    return fill


def _union_fill(branches: Mapping[str, Fill]) -> Fill:
    def fill(datum: Any) -> None:
        if type(datum) is tuple:
            inner = branches.get(datum[0])
            if inner is not None:
                inner(datum[1])

    return fill


def _items_fill(inner: Fill) -> Fill:
    def fill(items: Any) -> None:
        for item in items:
            inner(item)

    return fill


def _values_fill(inner: Fill) -> Fill:
    def fill(values: Any) -> None:
        for value in values.values():
            inner(value)

    return fill


def default_value(spec: Mapping[str, Any]) -> object:
    """A field's default as Avro reads it: a bytes default is a JSON string whose code
    points 0-255 are the bytes (fastavro hands out the string itself)."""
    if spec["type"] == "bytes":
        return str(spec["default"]).encode("latin-1")
    return spec["default"]


def bytes_defaults(schema: Mapping[str, Any]) -> tuple[tuple[str, object], ...]:
    """The top-level ``bytes`` fields of a record that have a default, with it as bytes."""
    return tuple(
        (str(f["name"]), default_value(f))
        for f in schema["fields"]
        if f["type"] == "bytes" and "default" in f
    )


EVENT_SCHEMA_FILES: Sequence[str] = (
    "commit.avsc",
    "model_created.avsc",
    "committed.avsc",
    "branch_created.avsc",
    "branch_deleted.avsc",
    "merged.avsc",
    "rolled_back.avsc",
    "alias_moved.avsc",
    "token_issued.avsc",
    "token_revoked.avsc",
    "ref_protected.avsc",
    "ref_unprotected.avsc",
    "writer_key_added.avsc",
    "writer_key_retired.avsc",
    "shadow_started.avsc",
    "shadow_stopped.avsc",
    "rollout_started.avsc",
    "rollout_advanced.avsc",
    "rollout_aborted.avsc",
    "rollout_paused.avsc",
    "rollout_resumed.avsc",
    "model_event.avsc",
)

EVENTS = SingleObjectCodec.reading_released(load_schema(*EVENT_SCHEMA_FILES))
COMMANDS = SingleObjectCodec.reading_released(load_schema("command.avsc"))
REPLIES = SingleObjectCodec.reading_released(load_schema("command_reply.avsc"))
DEAD_LETTERS = SingleObjectCodec.reading_released(load_schema("dead_letter.avsc"))
FEATURES = SingleObjectCodec.reading_released(load_schema("feature_event.avsc"))
PREDICTIONS = SingleObjectCodec.reading_released(load_schema("prediction.avsc"))
LABELS = SingleObjectCodec.reading_released(load_schema("label.avsc"))
METRIC_WINDOWS = SingleObjectCodec.reading_released(load_schema("metric_window.avsc"))
# Every codec the service and the workers read and write with, for the release checks.
CODECS: Sequence[SingleObjectCodec] = (
    EVENTS,
    COMMANDS,
    REPLIES,
    DEAD_LETTERS,
    FEATURES,
    PREDICTIONS,
    LABELS,
    METRIC_WINDOWS,
)

# Twice the largest command the HTTP API accepts (a 256 KiB JSON body): a larger one was
# written straight to the commands topic, and its event might not fit on the broker.
MAX_COMMAND_BYTES = 512 * 1024

_EVENT_NS = "modelvc.events."
_COMMAND_NS = "modelvc.commands."
_PAYLOADS = {_EVENT_NS + t.__name__: t for t in PAYLOAD_TYPES}
_BODIES = {_COMMAND_NS + t.__name__: t for t in BODY_TYPES}
_ROLLOUT_STARTED = _EVENT_NS + "RolloutStarted"
_START_ROLLOUT = _COMMAND_NS + "StartRollout"


def event_to_record(event: ModelEvent) -> dict[str, Any]:
    return {
        "model": event.model,
        "seq": event.seq,
        "prev_hash": event.prev_hash,
        "command_id": event.command_id,
        "actor": event.actor,
        "at": event.at,
        "payload": (_EVENT_NS + event.type, plain_payload(event.payload)),
        "command_digest": event.command_digest,
        "key_id": event.key_id,
        "signature": event.signature,
    }


def event_from_record(record: Mapping[str, Any]) -> ModelEvent:
    name, fields = record["payload"]
    payload_type = _PAYLOADS[name]
    commit = fields.get("commit")
    if commit is not None:
        # The nullable commit of Merged arrives as (name, record) under return_record_name.
        fields = {
            **fields,
            "commit": commit_from_plain(commit[1] if isinstance(commit, tuple) else commit),
        }
    elif name == _ROLLOUT_STARTED:
        # An Avro array decodes as a list; the core's event holds the tuple decide made.
        fields = {**fields, "steps": tuple(fields["steps"])}
    return ModelEvent(
        model=record["model"],
        seq=record["seq"],
        prev_hash=record["prev_hash"],
        command_id=record["command_id"],
        actor=record["actor"],
        at=record["at"],
        payload=payload_type(**fields),
        command_digest=record.get("command_digest", ""),
        key_id=record.get("key_id", ""),
        signature=record.get("signature", b""),
    )


def encode_event(event: ModelEvent) -> bytes:
    return EVENTS.encode(event_to_record(event))


def decode_event(data: bytes) -> ModelEvent:
    record = EVENTS.decode(data)
    try:
        return event_from_record(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise UndecodableMessage(f"ModelEvent does not map onto the core: {exc!r:.500}") from exc


class ReplyTo(NamedTuple):
    """Where a command's answer goes: the waiting instance, and the submission it waits on.

    Replies route by ``request_id`` (fresh per submission), never by the command
    id: clients choose command ids, and one id may be in flight for two models.
    """

    instance: str
    request_id: str


def encode_command(command: Command, reply_to: str = "", request_id: str = "") -> bytes:
    body = dict(command.body.__dict__)
    for key in ("params", "metrics"):
        if key in body:
            body[key] = dict(body[key])
    signature = body.get("signature")
    if isinstance(signature, ModelSignature):
        body["signature"] = signature.plain()
    policy = body.get("policy")
    if isinstance(policy, Policy):
        body["policy"] = dict(policy.__dict__)  # fastavro writes a tuple and any Mapping
    return COMMANDS.encode(
        {
            "command_id": command.command_id,
            "model": command.model,
            "actor": command.actor,
            "at": command.at,
            "reply_to": reply_to,
            "request_id": request_id,
            "body": (_COMMAND_NS + type(command.body).__name__, body),
            "role": command.role,
            "key_id": command.key_id,
            "signature": command.signature,
        }
    )


def decode_command(data: bytes) -> tuple[Command, ReplyTo]:
    """The command and where its reply goes (empty fields for an older writer's command)."""
    if len(data) > MAX_COMMAND_BYTES:
        raise UndecodableMessage(
            f"a command of {len(data):,} bytes; the API never writes one over "
            f"{MAX_COMMAND_BYTES:,} (send commands through the HTTP API)"
        )
    record = COMMANDS.decode(data)
    name, fields = record["body"]
    try:
        if fields.get("signature") is not None:
            fields = {**fields, "signature": signature_from_plain(fields["signature"])}
        elif name == _START_ROLLOUT:
            policy = fields["policy"]
            fields = {**fields, "policy": Policy(**{**policy, "steps": tuple(policy["steps"])})}
        body = _BODIES[name](**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise UndecodableMessage(
            f"command body {name:.100} does not map onto the core: {exc!r:.500}"
        ) from exc
    command = Command(
        record["command_id"],
        record["model"],
        record["actor"],
        record["at"],
        body,
        role=record["role"],
        key_id=record["key_id"],
        signature=record["signature"],
    )
    return command, ReplyTo(record["reply_to"], record.get("request_id", ""))

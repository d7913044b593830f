"""A second, independent Avro decoder for auditors: Apache Avro's own Python library.

``modelvc audit replay --decoder reference`` decodes every message twice: with
fastavro, as the service and the workers do, and with this module, and reports
any difference as a ``decoder_mismatch`` violation. So a bug in one decoder (or
in how the codec drives it) cannot silently shape what the audit sees.

Independent means it shares nothing with ``streams.codec`` but the files: it
reads each writer schema from ``schemas/released`` itself, parses it with
Apache Avro and checks that the file's name is the schema's CRC-64-AVRO
fingerprint as Apache Avro computes it; it parses the reader schema from the
``.avsc`` files with Apache Avro; and it takes the single-object header (magic
``C3 01``, then the writer's fingerprint) apart itself, from the Avro spec.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.io
import avro.name
import avro.schema

from schemas import RELEASED_DIR, SCHEMA_DIR

# From the Avro specification ("Single-object encoding"), not from streams.codec: an
# independent reader must not inherit the codec's reading of the spec.
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
FINGERPRINT_SIZE = 8
MAX_DETAIL = 500  # characters of a decoder's message quoted in a finding


class ReferenceDecodeError(Exception):
    """Apache Avro could not decode the bytes (or found no writer schema for them)."""


class ReleasedSchemaError(Exception):
    """A file in schemas/released is not the schema its name says it is."""


class _NamedUnionReader(avro.io.DatumReader):  # type: ignore[misc]
    """Reads a record inside a union as ``(full name, record)``.

    A union of records must say which branch was written (the core maps the
    payload by it); fastavro's ``return_record_name`` gives the same pair.
    """

    def read_union(
        self,
        writers_schema: avro.schema.UnionSchema,
        readers_schema: avro.schema.UnionSchema,
        decoder: avro.io.BinaryDecoder,
    ) -> object:
        index = int(decoder.read_long())
        if not 0 <= index < len(writers_schema.schemas):
            raise ValueError(f"union branch {index} of {len(writers_schema.schemas)}")
        branch = writers_schema.schemas[index]
        datum = self.read_data(branch, readers_schema, decoder)
        if isinstance(branch, avro.schema.RecordSchema):
            return (branch.fullname, datum)
        return datum


def released_writers(released_dir: Path = RELEASED_DIR) -> dict[bytes, avro.schema.Schema]:
    """Every released writer schema by its fingerprint, parsed and checked by Apache Avro."""
    writers: dict[bytes, avro.schema.Schema] = {}
    for path in sorted(released_dir.glob("*.avsc")):
        schema = avro.schema.parse(path.read_text())
        fingerprint = schema.fingerprint("CRC-64-AVRO")
        if fingerprint.hex() != path.stem:
            raise ReleasedSchemaError(
                f"{path} holds a schema whose CRC-64-AVRO fingerprint is {fingerprint.hex()}; "
                "a released schema is never edited: restore the file from version control"
            )
        writers[fingerprint] = schema
    return writers


def reader_schema(files: Sequence[str], schema_dir: Path = SCHEMA_DIR) -> avro.schema.Schema:
    """The schema of the last of ``files``, after the named types of the ones before it."""
    names = avro.name.Names()
    schema: avro.schema.Schema | None = None
    for name in files:
        schema = avro.schema.make_avsc_object(json.loads((schema_dir / name).read_text()), names)
    if schema is None:
        raise ValueError("a reader schema needs at least one .avsc file")
    return schema


@dataclass(frozen=True)
class ReferenceDecoder:
    """Decodes single-object encoded messages of one record with Apache Avro."""

    reader: avro.schema.Schema
    writers: Mapping[bytes, avro.schema.Schema]

    @classmethod
    def from_files(
        cls,
        files: Sequence[str],
        schema_dir: Path = SCHEMA_DIR,
        released_dir: Path = RELEASED_DIR,
    ) -> ReferenceDecoder:
        reader = reader_schema(files, schema_dir)
        writers = {
            fp: w
            for fp, w in released_writers(released_dir).items()
            if getattr(w, "fullname", None) == getattr(reader, "fullname", None)
        }
        return cls(reader, writers)

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None or len(data) < len(SINGLE_OBJECT_MAGIC) + FINGERPRINT_SIZE:
            raise ReferenceDecodeError("shorter than a single-object header")
        if data[: len(SINGLE_OBJECT_MAGIC)] != SINGLE_OBJECT_MAGIC:
            raise ReferenceDecodeError("no single-object magic C3 01")
        start = len(SINGLE_OBJECT_MAGIC)
        fingerprint = bytes(data[start : start + FINGERPRINT_SIZE])
        writer = self.writers.get(fingerprint)
        if writer is None:
            raise ReferenceDecodeError(
                f"no released writer schema has fingerprint {fingerprint.hex()}"
            )
        buffer = io.BytesIO(data)
        buffer.seek(start + FINGERPRINT_SIZE)
        try:
            record = _NamedUnionReader(writer, self.reader).read(avro.io.BinaryDecoder(buffer))
        except Exception as exc:  # Apache Avro raises many types for corrupt bytes
            raise ReferenceDecodeError(f"Apache Avro: {exc!r:.{MAX_DETAIL}}") from exc
        if buffer.tell() != len(data):
            raise ReferenceDecodeError(
                f"{len(data) - buffer.tell()} trailing bytes after the record"
            )
        if not isinstance(record, dict):
            raise ReferenceDecodeError(f"decoded a {type(record).__name__}, not a record")
        return record


def first_difference(a: object, b: object, path: str = "") -> str | None:
    """Where two decodings differ (None when they are the same), type for type.

    Strict on purpose: an int is not a bool or a float, a tuple (a union branch)
    not a list, and doubles compare by their bits (NaN equals itself, -0.0 is
    not 0.0), since the event hash and the commit id see exactly these values.
    """
    here = path or "the record"
    if type(a) is not type(b):
        return f"{here}: {type(a).__name__} {_shown(a)} vs {type(b).__name__} {_shown(b)}"
    if isinstance(a, float):
        assert isinstance(b, float)
        same = struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
        return None if same else f"{here}: {a!r} vs {b!r}"
    if isinstance(a, dict):
        assert isinstance(b, dict)
        if a.keys() != b.keys():
            only_a, only_b = (
                sorted(map(str, a.keys() - b.keys())),
                sorted(map(str, b.keys() - a.keys())),
            )
            return f"{here}: fields {only_a} only in the first, {only_b} only in the second"
        for key in a:
            found = first_difference(a[key], b[key], f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        if len(a) != len(b):
            return f"{here}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    return None if a == b else f"{here}: {_shown(a)} vs {_shown(b)}"


def _shown(value: object) -> str:
    return f"{value!r:.100}"

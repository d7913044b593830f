"""Golden wire fixtures: bytes earlier releases wrote must stay readable, forever.

Every fixture is decoded through the very codecs the service and the workers
use (``streams.codec``), with no writer registered by hand: what passes here
is what the running service reads.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas import RELEASED_DIR
from streams import codec, signing
from streams.codec import (
    SingleObjectCodec,
    appended_defaults,
    decode_event,
    encode_event,
    fingerprint,
    full_name,
)
from streams.core import Command, MakeCommit
from streams.core.events import PAYLOAD_TYPES, AliasMoved, ModelEvent
from streams.core.fold import Fold, fold, state_digest
from streams.errors import UndecodableMessage
from tests.golden.make_fixtures import golden_key
from workers.signing import prediction_message

REPO = Path(__file__).parents[2]
GOLDEN = Path(__file__).parents[1] / "golden"
# Unsigned history (v1: before issue 10) and a signed log of partition 0 (signed-v1).
EVENT_FIXTURES = sorted((GOLDEN).glob("v*/event-*.bin"))
COMMAND_FIXTURES = sorted((GOLDEN).glob("v*/command-*.bin"))
SIGNED = GOLDEN / "signed-v1"
SIGNED_EVENTS = sorted(SIGNED.glob("event-*.bin"))


def released_files() -> list[Path]:
    return sorted(RELEASED_DIR.glob("*.avsc"))


def test_there_are_golden_fixtures_for_every_event_type() -> None:
    kinds = {p.stem.split("-", 2)[2] for p in EVENT_FIXTURES}
    assert kinds == {
        "ModelCreated",
        "Committed",
        "BranchCreated",
        "BranchDeleted",
        "Merged",
        "RolledBack",
        "AliasMoved",
    }


@pytest.mark.parametrize("fixture", EVENT_FIXTURES, ids=lambda p: p.parent.name + "/" + p.stem)
def test_current_schema_reads_every_golden_event(fixture: Path) -> None:
    event = decode_event(fixture.read_bytes())
    expected = json.loads(fixture.with_suffix(".json").read_text())
    assert event.to_plain() == expected
    # The hash chain an auditor recomputes is unchanged by re-reading.
    assert event.prev_hash == expected["prev_hash"]


def test_golden_log_folds_into_a_valid_chain() -> None:
    events = [decode_event(f.read_bytes()) for f in EVENT_FIXTURES]
    result = fold(events)
    assert result.voided == 0 and result.models["churn"].seq == len(events)


@pytest.mark.parametrize("fixture", COMMAND_FIXTURES, ids=lambda p: p.stem)
def test_current_schema_reads_every_golden_command(fixture: Path) -> None:
    command, _ = codec.decode_command(fixture.read_bytes())
    assert command.model == "churn" and command.command_id == f"cmd-{fixture.stem[-2:]}"
    # Written before tokens and signatures: read as unauthenticated and unsigned.
    assert (command.role, command.key_id, command.signature) == ("", "", b"")
    assert type(command.signature) is bytes


@pytest.mark.parametrize("fixture", EVENT_FIXTURES, ids=lambda p: p.parent.name + "/" + p.stem)
def test_unsigned_history_reads_as_unsigned_with_its_hash_unchanged(fixture: Path) -> None:
    event = decode_event(fixture.read_bytes())
    assert (event.key_id, event.signature) == ("", b"") and type(event.signature) is bytes
    # The chain an auditor recomputes: key_id and signature add nothing to an old hash.
    assert encode_event(event)[2:10] == codec.EVENTS.fingerprint
    assert decode_event(encode_event(event)).hash() == event.hash()


def test_the_old_unsigned_log_folds_to_the_same_state_with_a_verifier() -> None:
    """Legacy history stays valid: a reader that verifies signatures voids none of it."""
    events = [decode_event(f.read_bytes()) for f in sorted(GOLDEN.glob("v1/event-*.bin"))]
    checking = Fold(verify=signing.verify)
    assert [checking.apply(e, 0) for e in events] == [None] * len(events)
    assert state_digest(checking.models) == state_digest(fold(events).models)


# -- reading a writer the reader only appends to, without resolution ----------------------
def _schema(fields: list[Any]) -> dict[str, Any]:
    return {"type": "record", "name": "R", "namespace": "t", "fields": fields}


UNION = [{"type": "record", "name": "A", "fields": [{"name": "a", "type": "long"}]}, "string"]


def test_appended_fields_and_branches_are_read_by_the_writer_alone() -> None:
    writer = _schema([{"name": "x", "type": UNION}])
    reader = _schema(
        [
            {"name": "x", "type": [*UNION, "long"]},
            {"name": "k", "type": "string", "default": ""},
            {"name": "s", "type": "bytes", "default": "\u00ff"},
        ]
    )
    assert appended_defaults(writer, reader) == {"t.R": {"k": "", "s": b"\xff"}}
    reading = SingleObjectCodec(reader)
    reading.add_writer(writer)
    data = SingleObjectCodec(writer).encode({"x": ("t.A", {"a": 7})})
    assert reading.decode(data) == {"x": ("t.A", {"a": 7}), "k": "", "s": b"\xff"}


@pytest.mark.parametrize(
    "reader_fields",
    [
        [{"name": "y", "type": UNION}],  # renamed
        [{"name": "k", "type": "string", "default": ""}, {"name": "x", "type": UNION}],
        [{"name": "x", "type": ["long", *UNION]}],  # a branch inserted before the old ones
        [{"name": "x", "type": UNION}, {"name": "k", "type": "string"}],  # no default
        [{"name": "x", "type": UNION}, {"name": "m", "type": "string", "default": {"a": 1}}],
        [{"name": "x", "type": [UNION[0], "bytes"]}],  # a branch retyped
    ],
)
def test_anything_but_appending_is_left_to_avro_resolution(reader_fields: list[Any]) -> None:
    assert (
        appended_defaults(_schema([{"name": "x", "type": UNION}]), _schema(reader_fields)) is None
    )


def test_each_released_writer_reads_the_same_with_or_without_resolution() -> None:
    """The fast path (decode by the writer alone, then add defaults) against fastavro's
    own schema resolution, on every golden message of every record."""
    fixtures = {
        "event": codec.EVENTS,
        "command": codec.COMMANDS,
        "prediction": codec.PREDICTIONS,
        "dead-letter": codec.DEAD_LETTERS,
        "reply": codec.REPLIES,
        "feature": codec.FEATURES,
    }
    seen = 0
    for kind, current in fixtures.items():
        for path in sorted(GOLDEN.glob(f"*/{kind}-*.bin")):
            data = path.read_bytes()
            if data[2:10] not in current.prefixes:
                continue
            resolved = fastavro.schemaless_reader(
                io.BytesIO(data[10:]),
                current.writers[data[2:10]],
                current.parsed,
                return_record_name=True,
            )
            assert isinstance(resolved, dict)
            for name, default in current.bytes_defaults:
                resolved[name] = default if resolved[name] == "" else resolved[name]
            assert current.decode(data) == resolved, path
            seen += 1
    assert seen > len(EVENT_FIXTURES)  # every v1 event, and more


# -- the signed log (issue 10) -------------------------------------------------------------
def signed_index() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SIGNED / "index.json").read_text())
    return loaded


def test_there_are_signed_golden_events_of_every_event_type() -> None:
    kinds = {p.stem.split("-", 2)[2] for p in SIGNED_EVENTS}
    assert {"TokenIssued", "TokenRevoked", "RefProtected", "RefUnprotected"} <= kinds
    assert {"WriterKeyAdded", "WriterKeyRetired", "ModelCreated", "Committed"} <= kinds
    assert {t.__name__ for t in PAYLOAD_TYPES} <= kinds | {
        p.stem.split("-", 2)[2] for p in [*EVENT_FIXTURES, *GOLDEN.glob("rollout-v1/event-*.bin")]
    }


@pytest.mark.parametrize("fixture", SIGNED_EVENTS, ids=lambda p: p.stem)
def test_current_schema_reads_every_signed_golden_event(fixture: Path) -> None:
    event = decode_event(fixture.read_bytes())
    assert event.to_plain() == json.loads(fixture.with_suffix(".json").read_text())
    assert len(event.signature) == 64 and len(event.key_id) == 64


def test_signed_events_round_trip_bit_exact() -> None:
    for fixture in SIGNED_EVENTS:
        event = decode_event(fixture.read_bytes())
        again = encode_event(event)
        assert decode_event(again) == event
        assert encode_event(decode_event(again)) == again
        if fixture.read_bytes()[2:10] == codec.EVENTS.fingerprint:
            assert again == fixture.read_bytes()


def test_the_signed_golden_log_verifies_and_folds_to_its_recorded_digest() -> None:
    index = signed_index()
    events = [decode_event(f.read_bytes()) for f in SIGNED_EVENTS]
    reader = Fold(verify=signing.verify, trusted=frozenset(index["trusted"]))
    assert [reader.apply(e, index["partition"]) for e in events] == [None] * len(events)
    assert state_digest(reader.models) == index["state_digest"]
    assert reader.models["churn"].seq == sum(e.model == "churn" for e in events)
    ring = reader.rings[index["partition"]]
    assert set(ring.active) == {golden_key("second").key_id}
    assert set(ring.retired) == {golden_key("first").key_id}
    assert reader.security is not None
    assert reader.security.tokens["fedcba9876543210"].revoked_at is not None
    assert dict(reader.security.rules) == {("alias", "churn", "production"): "releaser"}


def test_a_signature_damaged_on_the_wire_is_voided_not_folded() -> None:
    """Only the fold decides validity: flip one bit of a signature, the event is void."""
    data = bytearray(SIGNED_EVENTS[5].read_bytes())
    event = decode_event(bytes(data))
    at = bytes(data).rindex(event.signature)
    data[at] ^= 1
    damaged = decode_event(bytes(data))
    assert damaged.signature != event.signature and damaged.hash() == event.hash()
    reader = Fold(verify=signing.verify)
    for e in [decode_event(f.read_bytes()) for f in SIGNED_EVENTS[:5]]:
        assert reader.apply(e, 0) is None
    reason = reader.apply(damaged, 0)
    assert reason is not None and reason.startswith("bad signature: ")


@pytest.mark.parametrize(
    ("key_id", "signature"),
    [("zz", b"\x00" * 200), ("a" * 65, b""), ("", b"\x01"), ("k" * 4096, b"\xff" * 4096)],
)
def test_a_malformed_key_id_or_signature_still_decodes(key_id: str, signature: bytes) -> None:
    """Validity is the fold's job: a forged event must be reported with its coordinates,
    not skipped as undecodable."""
    event = decode_event(SIGNED_EVENTS[5].read_bytes())
    forged = ModelEvent(**{**event.__dict__, "key_id": key_id, "signature": signature})
    assert decode_event(encode_event(forged)) == forged


def test_a_signed_command_round_trips_and_verifies() -> None:
    command, reply_to = codec.decode_command((SIGNED / "command-01.bin").read_bytes())
    signer = golden_key("first")
    assert (command.role, command.key_id, reply_to) == (
        "admin",
        signer.key_id,
        ("golden", "req-01"),
    )
    assert signing.command_verifies(signer.public_key, command)
    data = codec.encode_command(command, *reply_to)
    assert codec.decode_command(data) == (command, reply_to)
    assert codec.encode_command(codec.decode_command(data)[0], *reply_to) == data


def test_the_old_prediction_reads_unsigned_and_the_signed_one_verifies() -> None:
    (old,) = GOLDEN.glob("v1/prediction-*.bin")
    unsigned = codec.PREDICTIONS.decode(old.read_bytes())
    assert (unsigned["key_id"], unsigned["signature"]) == ("", b"")
    assert type(unsigned["signature"]) is bytes
    signed = codec.PREDICTIONS.decode((SIGNED / "prediction-01.bin").read_bytes())
    worker = golden_key("worker")
    assert signed["key_id"] == worker.key_id
    assert signing.verify(worker.public_key, prediction_message(signed), signed["signature"])
    # A worker that does not sign leaves both fields out: they are written as empty.
    written = {k: v for k, v in signed.items() if k not in ("key_id", "signature")}
    assert codec.PREDICTIONS.decode(codec.PREDICTIONS.encode(written)) == {
        **written,
        "key_id": "",
        "signature": b"",
    }


# -- the released set: every writer schema ever shipped -------------------------------------
@pytest.mark.parametrize("current", codec.CODECS, ids=lambda c: c.name)
def test_every_current_schema_is_in_the_released_set(current: SingleObjectCodec) -> None:
    """A schema change must ship its writer schema, or the next release cannot read it."""
    path = RELEASED_DIR / f"{current.fingerprint.hex()}.avsc"
    assert path.exists(), (
        f"{current.name} changed: its fingerprint {current.fingerprint.hex()} is not released; "
        "run `python -m tests.golden.make_fixtures` to add schemas/released/"
        f"{current.fingerprint.hex()}.avsc (never edit or delete a released file)"
    )


@pytest.mark.parametrize("path", released_files(), ids=lambda p: p.stem)
def test_each_released_schema_is_named_by_its_fingerprint(path: Path) -> None:
    schema = json.loads(path.read_text())
    assert fingerprint(schema).hex() == path.stem, f"{path.name} was edited after release"


@pytest.mark.parametrize("path", released_files(), ids=lambda p: p.stem)
def test_the_running_codecs_read_every_released_writer(path: Path) -> None:
    schema = json.loads(path.read_text())
    (reader,) = [c for c in codec.CODECS if c.name == full_name(schema)]
    assert bytes.fromhex(path.stem) in reader.writers


def test_a_released_schema_is_registered_without_any_code_change(tmp_path: Path) -> None:
    """Dropping an evolved writer schema into the released set is all a reader needs."""
    evolved = json.loads(json.dumps(codec.EVENTS.schema))
    evolved["fields"].append({"name": "tenant", "type": "string", "default": "default"})
    released = tmp_path / "released"
    shutil.copytree(RELEASED_DIR, released)
    (released / f"{fingerprint(evolved).hex()}.avsc").write_text(json.dumps(evolved))
    reader = SingleObjectCodec.reading_released(codec.EVENTS.schema, released)
    data = SingleObjectCodec(evolved).encode(
        {**codec.event_to_record(decode_event(EVENT_FIXTURES[1].read_bytes())), "tenant": "x"}
    )
    assert codec.event_from_record(reader.decode(data)) == decode_event(
        EVENT_FIXTURES[1].read_bytes()
    )
    with pytest.raises(UndecodableMessage, match="unknown schema"):
        codec.EVENTS.decode(data)  # not released: the running codec cannot read it


def test_an_incompatible_schema_change_is_caught() -> None:
    """Adding a field without a default breaks old bytes: this suite must fail on it."""
    broken = json.loads(json.dumps(codec.EVENTS.schema))
    broken["fields"].append({"name": "tenant", "type": "string"})
    reader = SingleObjectCodec.reading_released(broken)
    with pytest.raises(UndecodableMessage):
        reader.decode(EVENT_FIXTURES[0].read_bytes())


def test_a_compatible_schema_change_still_reads_old_bytes() -> None:
    evolved = json.loads(json.dumps(codec.EVENTS.schema))
    evolved["fields"].append({"name": "tenant", "type": "string", "default": "default"})
    reader = SingleObjectCodec.reading_released(evolved)
    assert reader.decode(EVENT_FIXTURES[1].read_bytes())["tenant"] == "default"


def test_messages_name_their_schema_and_round_trip() -> None:
    # Re-encoded: the v1 fixture itself names the (older) schema that wrote it.
    data = encode_event(decode_event(EVENT_FIXTURES[1].read_bytes()))
    assert data[:2] == b"\xc3\x01" and data[2:10] == codec.EVENTS.fingerprint
    assert encode_event(decode_event(data)) == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "magic"),
        (b'{"json": true}', "magic"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown schema"),
        (EVENT_FIXTURES[1].read_bytes()[:-5], "corrupt"),
        (EVENT_FIXTURES[1].read_bytes() + b"\x00", "trailing"),
    ],
)
def test_undecodable_bytes_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(UndecodableMessage, match=reason):
        decode_event(data)


def test_an_undecodable_reason_stays_short_whatever_the_bytes() -> None:
    # A string field of 1 MB of invalid UTF-8: the UnicodeDecodeError quotes all of it.
    length = b"\x80\x89\x7a"  # zigzag varint of 1,000,000
    data = codec.FEATURES.header + b"\x04ev" + length + b"\xff" * 1_000_000
    with pytest.raises(UndecodableMessage) as caught:
        codec.FEATURES.decode(data)
    assert len(str(caught.value)) < 1000


SERVING_FIXTURES = {
    "feature": codec.FEATURES,
    "prediction": codec.PREDICTIONS,
    "dead-letter": codec.DEAD_LETTERS,
    "reply": codec.REPLIES,
}


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in record.items()}


@pytest.mark.parametrize(
    "fixture",
    sorted(p for kind in SERVING_FIXTURES for p in GOLDEN.glob(f"v*/{kind}-*.bin")),
    ids=lambda p: p.parent.name + "/" + p.stem,
)
def test_current_schema_reads_every_golden_serving_record(fixture: Path) -> None:
    current = SERVING_FIXTURES[fixture.stem.rsplit("-", 1)[0]]
    written = json.loads(fixture.with_suffix(".json").read_text())
    decoded = _plain(current.decode(fixture.read_bytes()))
    # Fields added since the fixture was written read as their defaults.
    added = {f["name"]: f["default"] for f in current.schema["fields"] if f["name"] not in written}
    assert decoded == {**written, **added}


def test_there_are_golden_serving_records_of_every_kind() -> None:
    for kind in SERVING_FIXTURES:
        assert list(GOLDEN.glob(f"v*/{kind}-*.bin")), f"no golden {kind} fixture"


def test_the_previous_dead_letter_schema_is_released() -> None:
    """dead_letter.avsc grew bounded fields: letters written before must stay readable."""
    (old,) = GOLDEN.glob("v1/dead-letter-*.bin")
    assert old.read_bytes()[2:10] != codec.DEAD_LETTERS.fingerprint
    assert codec.DEAD_LETTERS.decode(old.read_bytes())["truncated"] is False


# -- the built wheel ------------------------------------------------------------------------
def test_a_built_wheel_carries_the_schemas_and_the_consoles_pages(tmp_path: Path) -> None:
    """`pip wheel --no-deps .`, unpacked, then `import streams.codec`: works without the repo;
    the console's pages and assets are in it too (served from the package, no build step)."""
    source = tmp_path / "source"
    source.mkdir()
    # Built from a copy: a build in the working tree would leave build/ behind.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("schemas", "streams", "workers", "modelvc"):
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    built = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(built), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = built.glob("modelvc-*.whl")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    assert sorted(p.name for p in (unpacked / "schemas" / "released").glob("*.avsc")) == [
        p.name for p in released_files()
    ]
    pages = REPO / "streams" / "console" / "static"
    shipped = unpacked / "streams" / "console" / "static"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(p.name for p in pages.iterdir())
    probe = (
        "import sys; sys.path[:0] = sys.argv[1:]\n"
        "import streams.codec as c\n"
        "assert c.__file__.startswith(sys.argv[1]), c.__file__\n"
        "print(len(c.EVENTS.writers), c.EVENTS.decode(sys.stdin.buffer.read())['model'])\n"
    )
    # -S: no site-packages .pth, so the editable install of this repo cannot answer instead.
    site = sysconfig.get_paths()["purelib"]
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(unpacked), site],
        input=EVENT_FIXTURES[0].read_bytes(),
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.split() == [str(len(codec.EVENTS.writers)).encode(), b"churn"]


def test_a_command_larger_than_the_api_writes_is_refused_before_it_is_decided() -> None:
    # Written straight to the commands topic: its event might not fit on the broker (Kafka
    # refuses messages over 1 MiB, Tansu took 1.1 MB), so it is dead-lettered as undecodable.
    command = Command("c1", "m", "mallory", 0, MakeCommit("a" * 64, "x" * (600 * 1024)))
    data = codec.encode_command(command)
    assert len(data) > codec.MAX_COMMAND_BYTES
    with pytest.raises(UndecodableMessage, match="through the HTTP API"):
        codec.decode_command(data)
    fits = Command("c1", "m", "mallory", 0, MakeCommit("a" * 64, "x" * (64 * 1024)))
    assert codec.decode_command(codec.encode_command(fits))[0] == fits


# -- model signatures in the log (issue 11) -------------------------------------------------
SIGNATURE_LOG = GOLDEN / "signature-v1"
SIGNATURE_EVENTS = sorted(SIGNATURE_LOG.glob("event-*.bin"))


@pytest.mark.parametrize("fixture", SIGNATURE_EVENTS, ids=lambda p: p.stem)
def test_current_schema_reads_every_golden_event_with_a_signature(fixture: Path) -> None:
    event = decode_event(fixture.read_bytes())
    assert event.to_plain() == json.loads(fixture.with_suffix(".json").read_text())
    assert decode_event(encode_event(event)) == event


def test_the_golden_signature_log_folds_to_its_recorded_digest() -> None:
    index = json.loads((SIGNATURE_LOG / "index.json").read_text())
    events = [decode_event(f.read_bytes()) for f in SIGNATURE_EVENTS]
    result = fold(events)
    assert result.voided == 0 and len(events) == index["events"]
    assert state_digest(result.models) == index["state_digest"]
    state = result.models["fraud"]
    signatures = [c.signature for c in state.commits.values()]
    assert [s is None for s in signatures] == [False, False, True, False, False, False]
    assert signatures[3] == signatures[1]  # the "ours" merge kept main's file and signature
    moves = [e.payload for e in events if isinstance(e.payload, AliasMoved)]
    assert [m.allow_signature_change for m in moves] == [False, True, False]


def test_old_events_read_fast_with_their_new_fields_at_the_defaults() -> None:
    """The previous release's events skip Avro resolution (appended_defaults reaches the
    nested Commit.signature and AliasMoved.allow_signature_change) and read as if written
    today without them."""
    for path in EVENT_FIXTURES:
        data = path.read_bytes()
        assert data[2:10] in codec.EVENTS.prefixes, path
        record = codec.EVENTS.decode(data)
        name, payload = record["payload"]
        commit = payload.get("commit")
        if isinstance(commit, tuple):
            commit = commit[1]
        if commit is not None:
            assert commit["signature"] is None
        if name.endswith("AliasMoved"):
            assert payload["allow_signature_change"] is False


def test_a_command_with_a_signature_round_trips_and_old_commands_read_without() -> None:
    commands = [codec.decode_command(p.read_bytes()) for p in sorted(SIGNATURE_LOG.glob("c*"))]
    assert commands and all(c.body.signature is not None for c, _ in commands)  # type: ignore[union-attr]
    for command, reply_to in commands:
        assert codec.decode_command(codec.encode_command(command, *reply_to)) == (
            command,
            reply_to,
        )
    for path in COMMAND_FIXTURES:
        body = codec.decode_command(path.read_bytes())[0].body
        assert getattr(body, "signature", None) is None
        assert getattr(body, "allow_signature_change", False) is False


def test_a_junk_signature_in_a_command_is_undecodable() -> None:
    command, _ = codec.decode_command(sorted(SIGNATURE_LOG.glob("command-*.bin"))[0].read_bytes())
    record = codec.COMMANDS.decode(codec.encode_command(command))
    name, body = record["body"]
    body["signature"] = {"format": "pmml", "inputs": [], "outputs": 1}
    data = codec.COMMANDS.encode({**record, "body": (name, body)})
    with pytest.raises(UndecodableMessage, match="unknown model format"):
        codec.decode_command(data)
    # An ONNX graph off the wire is bounded and checked like the rest of a signature.
    tensor = {"name": "x\x1b[2J", "kind": "input", "type": "float", "shape": ["N", "4"]}
    body["signature"] = {"format": "onnx", "inputs": [], "outputs": 1, "graph": [tensor]}
    data = codec.COMMANDS.encode({**record, "body": (name, body)})
    with pytest.raises(UndecodableMessage, match="not a tensor name"):
        codec.decode_command(data)


def test_nested_appended_fields_are_filled_wherever_the_record_sits() -> None:
    """A record reached through a union, an array and a map gets its appended defaults."""
    inner_old = {"type": "record", "name": "I", "fields": [{"name": "a", "type": "long"}]}
    inner_new = {
        **inner_old,
        "fields": [*inner_old["fields"], {"name": "b", "type": "boolean", "default": False}],
    }

    def outer(inner: dict[str, Any]) -> dict[str, Any]:
        return _schema(
            [
                {"name": "one", "type": ["null", inner]},
                {"name": "many", "type": {"type": "array", "items": "t.I"}},
                {"name": "named", "type": {"type": "map", "values": "t.I"}},
            ]
        )

    writer, reader = outer(inner_old), outer(inner_new)
    assert appended_defaults(writer, reader) == {"t.I": {"b": False}}
    reading = SingleObjectCodec(reader)
    reading.add_writer(writer)
    record = {"one": {"a": 1}, "many": [{"a": 2}], "named": {"k": {"a": 3}}}
    data = SingleObjectCodec(writer).encode(record)
    assert data[2:10] in reading.prefixes
    expected = fastavro.schemaless_reader(
        io.BytesIO(data[10:]), reading.writers[data[2:10]], reading.parsed, return_record_name=True
    )
    assert (
        reading.decode(data)
        == expected
        == {
            "one": ("t.I", {"a": 1, "b": False}),
            "many": [{"a": 2, "b": False}],
            "named": {"k": {"a": 3, "b": False}},
        }
    )

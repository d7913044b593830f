"""Golden wire fixtures: bytes earlier releases wrote must stay readable, forever.

Every fixture is decoded through the very codecs the service and the workers
use (``streams.codec``), with no writer registered by hand: what passes here
is what the running service reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import pytest

from schemas import RELEASED_DIR
from streams import codec
from streams.codec import SingleObjectCodec, decode_event, encode_event, fingerprint, full_name
from streams.core import Command, MakeCommit
from streams.core.fold import fold
from streams.errors import UndecodableMessage

REPO = Path(__file__).parents[2]
GOLDEN = Path(__file__).parents[1] / "golden"
EVENT_FIXTURES = sorted((GOLDEN).glob("v*/event-*.bin"))
COMMAND_FIXTURES = sorted((GOLDEN).glob("v*/command-*.bin"))


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
def test_a_built_wheel_carries_the_schemas(tmp_path: Path) -> None:
    """`pip wheel --no-deps .`, unpacked, then `import streams.codec`: works without the repo."""
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

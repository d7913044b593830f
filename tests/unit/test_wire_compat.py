"""Golden wire fixtures: bytes earlier releases wrote must stay readable, forever."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams import codec
from streams.codec import SingleObjectCodec, decode_event, encode_event
from streams.core.fold import fold
from streams.errors import UndecodableMessage

GOLDEN = Path(__file__).parents[1] / "golden"
EVENT_FIXTURES = sorted((GOLDEN).glob("v*/event-*.bin"))
COMMAND_FIXTURES = sorted((GOLDEN).glob("v*/command-*.bin"))


def writer_schema(data: bytes) -> dict:
    path = GOLDEN / "schemas" / f"{data[2:10].hex()}.avsc"
    assert path.exists(), f"no writer schema {path.name} for a golden fixture"
    return json.loads(path.read_text())


def reader_accepting_golden(current: SingleObjectCodec, files: list[Path]) -> SingleObjectCodec:
    reader = SingleObjectCodec(current.schema)
    for f in files:
        reader.add_writer(writer_schema(f.read_bytes()))
    return reader


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
    reader = reader_accepting_golden(codec.EVENTS, [fixture])
    record = reader.decode(fixture.read_bytes())
    event = codec.event_from_record(record)
    expected = json.loads(fixture.with_suffix(".json").read_text())
    assert event.to_plain() == expected
    # The hash chain an auditor recomputes is unchanged by re-reading.
    assert event.prev_hash == expected["prev_hash"]


def test_golden_log_folds_into_a_valid_chain() -> None:
    reader = reader_accepting_golden(codec.EVENTS, EVENT_FIXTURES)
    events = [codec.event_from_record(reader.decode(f.read_bytes())) for f in EVENT_FIXTURES]
    result = fold(events)
    assert result.voided == 0 and result.models["churn"].seq == len(events)


@pytest.mark.parametrize("fixture", COMMAND_FIXTURES, ids=lambda p: p.stem)
def test_current_schema_reads_every_golden_command(fixture: Path) -> None:
    reader = reader_accepting_golden(codec.COMMANDS, [fixture])
    assert reader.decode(fixture.read_bytes())["model"] == "churn"


def test_an_incompatible_schema_change_is_caught() -> None:
    """Adding a field without a default breaks old bytes: this suite must fail on it."""
    broken = json.loads(json.dumps(codec.EVENTS.schema))
    broken["fields"].append({"name": "tenant", "type": "string"})
    reader = reader_accepting_golden(SingleObjectCodec(broken), EVENT_FIXTURES)
    with pytest.raises(UndecodableMessage):
        reader.decode(EVENT_FIXTURES[0].read_bytes())


def test_a_compatible_schema_change_still_reads_old_bytes() -> None:
    evolved = json.loads(json.dumps(codec.EVENTS.schema))
    evolved["fields"].append({"name": "tenant", "type": "string", "default": "default"})
    reader = reader_accepting_golden(SingleObjectCodec(evolved), EVENT_FIXTURES)
    assert reader.decode(EVENT_FIXTURES[1].read_bytes())["tenant"] == "default"


def test_messages_name_their_schema_and_round_trip() -> None:
    data = EVENT_FIXTURES[1].read_bytes()
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


SERVING_FIXTURES = {
    "feature": codec.FEATURES,
    "prediction": codec.PREDICTIONS,
}


@pytest.mark.parametrize(
    "fixture",
    sorted(p for kind in SERVING_FIXTURES for p in GOLDEN.glob(f"v*/{kind}-*.bin")),
    ids=lambda p: p.parent.name + "/" + p.stem,
)
def test_current_schema_reads_every_golden_feature_and_prediction(fixture: Path) -> None:
    current = SERVING_FIXTURES[fixture.stem.split("-")[0]]
    reader = reader_accepting_golden(current, [fixture])
    expected = json.loads(fixture.with_suffix(".json").read_text())
    assert reader.decode(fixture.read_bytes()) == expected


def test_there_are_golden_features_and_predictions() -> None:
    for kind in SERVING_FIXTURES:
        assert list(GOLDEN.glob(f"v*/{kind}-*.bin")), f"no golden {kind} fixture"

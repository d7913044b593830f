"""The auditor's second decoder: Apache Avro agrees with fastavro on every golden
message, resolves writers from schemas/released by itself, and any difference is
a decoder_mismatch violation."""

from __future__ import annotations

import shutil
from pathlib import Path

import avro.schema
import pytest

from modelvc.audit import cross_checked, replay
from modelvc.reference_decoder import (
    ReferenceDecodeError,
    ReferenceDecoder,
    ReleasedSchemaError,
    first_difference,
)
from schemas import RELEASED_DIR
from streams import signing
from streams.codec import (
    COMMANDS,
    DEAD_LETTERS,
    EVENT_SCHEMA_FILES,
    EVENTS,
    FEATURES,
    PREDICTIONS,
    REPLIES,
    SingleObjectCodec,
    encode_event,
)
from streams.core.audit import VIOLATIONS, Auditor, Where
from streams.core.fold import Fold
from tests.unit.test_audit import events, write_archive

GOLDEN = Path(__file__).parents[1] / "golden"
GOLDEN_EVENTS = sorted(GOLDEN.glob("v*/event-*.bin"))
SIGNED_EVENTS = sorted(GOLDEN.glob("signed-v1/event-*.bin"))
SIGNATURE_EVENTS = sorted(GOLDEN.glob("signature-v1/event-*.bin"))
REFERENCE = ReferenceDecoder.from_files(EVENT_SCHEMA_FILES)


def located(auditor: Auditor, values: list[bytes | None]) -> Auditor:
    locate = cross_checked(auditor, REFERENCE)
    return auditor.run(locate("modelvc.events", 0, i, v) for i, v in enumerate(values))


def test_golden_fixtures_exist() -> None:
    assert len(GOLDEN_EVENTS) >= 11  # one per event type and more


@pytest.mark.parametrize("path", GOLDEN_EVENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_apache_avro_decodes_every_golden_event_as_fastavro_does(path: Path) -> None:
    data = path.read_bytes()
    ours = REFERENCE.decode(data)
    assert first_difference(EVENTS.decode(data), ours) is None
    assert isinstance(ours["payload"], tuple)  # the union branch is named, as the core needs


@pytest.mark.parametrize("path", SIGNED_EVENTS, ids=lambda p: p.name)
def test_apache_avro_decodes_every_signed_event_as_fastavro_does(path: Path) -> None:
    data = path.read_bytes()
    ours = REFERENCE.decode(data)
    assert first_difference(EVENTS.decode(data), ours) is None
    assert isinstance(ours["signature"], bytes) and len(ours["signature"]) == 64


@pytest.mark.parametrize(
    ("schema", "fast", "kind"),
    [
        ("command.avsc", COMMANDS, "command"),
        ("prediction.avsc", PREDICTIONS, "prediction"),
        ("dead_letter.avsc", DEAD_LETTERS, "dead-letter"),
        ("command_reply.avsc", REPLIES, "reply"),
        ("feature_event.avsc", FEATURES, "feature"),
    ],
)
def test_apache_avro_reads_every_golden_record_as_fastavro_does(
    schema: str, fast: SingleObjectCodec, kind: str
) -> None:
    """Old writers resolve to the same values in both, whichever way the codec reads them
    (appended defaults, or fastavro's resolution): a missing bytes field is ``b""`` in
    both, not fastavro's raw JSON default ``""``."""
    reference = ReferenceDecoder.from_files([schema])
    fixtures = sorted(GOLDEN.glob(f"*/{kind}-*.bin"))
    assert fixtures
    for path in fixtures:
        data = path.read_bytes()
        assert first_difference(fast.decode(data), reference.decode(data)) is None, path


def test_old_and_signed_commands_and_predictions_are_in_the_golden_set() -> None:
    for kind in ("command", "prediction"):
        assert {p.parent.name for p in GOLDEN.glob(f"*/{kind}-*.bin")} >= {"v1", "signed-v1"}
    # Commands carrying a model signature (issue 11), read by the test above too.
    assert list(GOLDEN.glob("signature-v1/command-*.bin"))


@pytest.mark.parametrize("path", SIGNATURE_EVENTS, ids=lambda p: p.name)
def test_apache_avro_reads_the_signature_fields_as_fastavro_does(path: Path) -> None:
    data = path.read_bytes()
    ours = REFERENCE.decode(data)
    assert first_difference(EVENTS.decode(data), ours) is None
    name, payload = ours["payload"]
    commit = payload.get("commit")
    if isinstance(commit, tuple):
        commit = commit[1]
    if commit is not None and commit["signature"] is not None:
        branch, signature = commit["signature"]
        assert branch == "modelvc.events.ModelSignature"
        assert signature["format"] == "lightgbm" and signature["inputs"]
    if name == "modelvc.events.AliasMoved":
        assert isinstance(payload["allow_signature_change"], bool)


def test_the_signature_golden_log_cross_checks_clean() -> None:
    """The audit folds the log, recomputing each commit id with its signature (an id that
    did not cover it would be invalid), and Apache Avro reads every field the same."""
    auditor = located(Auditor(), [p.read_bytes() for p in SIGNATURE_EVENTS])
    assert list(auditor.violations()) == []
    assert auditor.events == len(SIGNATURE_EVENTS)


def test_the_signed_golden_log_cross_checks_clean() -> None:
    auditor = located(
        Auditor(fold=Fold(verify=signing.verify)), [p.read_bytes() for p in SIGNED_EVENTS]
    )
    assert list(auditor.violations()) == []
    assert auditor.events == len(SIGNED_EVENTS)


def test_the_golden_log_cross_checks_clean() -> None:
    auditor = located(Auditor(), [p.read_bytes() for p in GOLDEN_EVENTS])
    assert list(auditor.violations()) == []
    assert auditor.events == len(GOLDEN_EVENTS)


def test_events_written_today_cross_check_clean() -> None:
    log = events()
    auditor = located(Auditor(), [encode_event(e) for e in log])
    assert list(auditor.violations()) == [] and auditor.events == len(log)


def test_writers_come_from_the_released_files_by_fingerprint() -> None:
    names = {path.stem for path in RELEASED_DIR.glob("*.avsc")}
    assert {fp.hex() for fp in REFERENCE.writers} <= names
    # Both released ModelEvent writers, the golden v1 one and today's.
    assert len(REFERENCE.writers) >= 2
    for path in GOLDEN_EVENTS:
        assert path.read_bytes()[2:10] in REFERENCE.writers


def test_a_released_file_that_is_not_its_fingerprint_is_refused(tmp_path: Path) -> None:
    released = tmp_path / "released"
    shutil.copytree(RELEASED_DIR, released)
    victim = next(p for p in sorted(released.glob("*.avsc")) if '"seq"' in p.read_text())
    victim.write_text(victim.read_text().replace('"seq"', '"sequence"'))
    with pytest.raises(ReleasedSchemaError, match=victim.stem):
        ReferenceDecoder.from_files(EVENT_SCHEMA_FILES, released_dir=released)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "header"),
        (b"\xc3\x01\x00", "header"),
        (b"\x00\x01" + b"\x00" * 20, "magic"),
        (b"\xc3\x01" + b"\xff" * 8 + b"\x00", "fingerprint ffffffffffffffff"),
    ],
)
def test_the_single_object_header_is_read_by_the_reference_itself(
    data: bytes | None, message: str
) -> None:
    with pytest.raises(ReferenceDecodeError, match=message):
        REFERENCE.decode(data)


def test_trailing_or_missing_bytes_are_refused() -> None:
    value = encode_event(events()[1])
    with pytest.raises(ReferenceDecodeError, match="2 trailing bytes"):
        REFERENCE.decode(value + b"\x00\x00")
    with pytest.raises(ReferenceDecodeError, match="Apache Avro"):
        REFERENCE.decode(value[:-5])


def test_messages_both_decoders_refuse_are_no_mismatch() -> None:
    damaged = encode_event(events()[0])[:14]  # a released schema's header, the body cut short
    auditor = located(Auditor(), [damaged, b"\xc3\x01garbage", b"plain garbage", None])
    assert [f.kind for f in auditor.findings] == ["undecodable", "skipped", "skipped", "skipped"]


def test_a_decoder_that_reads_differently_is_a_violation_with_coordinates() -> None:
    """A reference resolving to an older reader schema (the golden v1 ModelEvent,
    before command_digest) decodes today's events without that field: a real
    difference between the two decodings, so a decoder_mismatch at each event."""
    (old,) = (
        path
        for path in sorted(RELEASED_DIR.glob("*.avsc"))
        if (schema := avro.schema.parse(path.read_text())).fullname == "modelvc.events.ModelEvent"
        and "command_digest" not in schema.fields_dict
    )
    reference = ReferenceDecoder.from_files([old.name], schema_dir=RELEASED_DIR)
    log = events()
    auditor = Auditor()
    locate = cross_checked(auditor, reference)
    auditor.run(locate("modelvc.events", 3, i, encode_event(e)) for i, e in enumerate(log))
    found = list(auditor.violations())
    assert "decoder_mismatch" in VIOLATIONS
    assert [(f.kind, f.model, f.seq, f.where) for f in found] == [
        ("decoder_mismatch", "churn", e.seq, Where("modelvc.events", 3, i))
        for i, e in enumerate(log)
    ]
    assert "command_digest" in found[0].detail
    assert auditor.fold.models["churn"].seq == len(log)  # the fold still reads fastavro's


def test_first_difference_is_strict_about_types_and_bits() -> None:
    assert first_difference({"a": [1, 2.5]}, {"a": [1, 2.5]}) is None
    assert first_difference(1, 1.0) == "the record: int 1 vs float 1.0"
    assert first_difference(True, 1) is not None
    assert first_difference(0.0, -0.0) == "the record: 0.0 vs -0.0"
    assert first_difference(float("nan"), float("nan")) is None
    assert first_difference(("x", {}), ["x", {}]) is not None
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == "a.b[1]: 2 vs 3"
    assert "only in the first" in (first_difference({"a": 1, "b": 2}, {"a": 1}) or "")


def test_an_archive_replay_with_the_reference_decoder(tmp_path: Path) -> None:
    log = events()
    values = [encode_event(e) for e in log]
    write_archive(tmp_path, values)
    fast = replay(None, "modelvc.events", tmp_path)
    checked = replay(None, "modelvc.events", tmp_path, decoder="reference")
    assert checked.clean and checked.digest == fast.digest
    assert checked.auditor is not None and checked.auditor.events == len(log)
    with pytest.raises(ValueError, match="fastavro, reference"):
        replay(None, "modelvc.events", tmp_path, decoder="avro")

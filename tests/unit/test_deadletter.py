"""The dead-letter record is bounded whatever it carries, and sending one never raises."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from hypothesis import given, settings
from hypothesis import strategies as st

from modelvc.audit import replay
from streams import deadletter
from streams.archive import PLACEHOLDER_MAGIC
from streams.codec import DEAD_LETTERS, MAGIC, encode_event
from tests.unit.test_audit import events, write_archive
from workers.errors import WrongType
from workers.scoring import feature_row

BROKER_DEFAULT_LIMIT = 1_048_576  # message.max.bytes, key and overhead included


def letter(value: bytes | None, reason: str = "bad", key: bytes | None = b"k") -> dict[str, Any]:
    return deadletter.record("ns.events", 3, 41, key, value, reason, "fold", at=1)


def test_a_small_original_is_kept_whole_and_named_by_its_hash() -> None:
    rec = letter(b"garbage")
    assert rec["value"] == b"garbage" and rec["truncated"] is False
    assert rec["value_sha256"] == hashlib.sha256(b"garbage").hexdigest()
    assert rec["value_size"] == 7 and rec["key_size"] == 1
    assert DEAD_LETTERS.decode(deadletter.encode(rec)) == rec


def test_an_original_above_the_limit_is_replaced_by_its_sha256_size_and_coordinates() -> None:
    value = bytes(range(256)) * 4800  # 1.2 MB
    rec = letter(value, key=b"x" * 5000)
    assert rec["value"] is None and rec["key"] is None and rec["truncated"] is True
    assert rec["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert (rec["value_size"], rec["key_size"]) == (len(value), 5000)
    assert (rec["topic"], rec["partition"], rec["offset"]) == ("ns.events", 3, 41)
    assert len(deadletter.encode(rec)) < 8 * 1024


def test_a_long_reason_is_cut_with_a_marker() -> None:
    rec = letter(b"v", reason="wrong_type: " + "9" * 3_000_000)
    assert len(rec["reason"].encode()) <= deadletter.REASON_LIMIT
    assert rec["reason"].startswith("wrong_type: 999") and "truncated" in rec["reason"]
    assert "3,000,012 bytes" in rec["reason"] and rec["truncated"] is True


def test_a_reason_that_is_not_valid_utf8_still_encodes() -> None:
    rec = letter(b"v", reason="lone surrogate \ud800 and é" * 500)
    assert DEAD_LETTERS.decode(deadletter.encode(rec))["reason"] == rec["reason"]


@settings(max_examples=60, deadline=None)
@given(
    key=st.none() | st.binary(max_size=3000),
    value=st.none() | st.binary(max_size=200_000),
    reason=st.text(max_size=5000),
    repeat=st.integers(1, 400),
)
def test_every_letter_fits_far_below_the_broker_limit(
    key: bytes | None, value: bytes | None, reason: str, repeat: int
) -> None:
    rec = letter(None if value is None else value * repeat, reason * repeat, key)
    encoded = deadletter.encode(rec)
    assert len(encoded) + len(b"ns.events/3") <= deadletter.MAX_ENCODED_BYTES
    assert deadletter.MAX_ENCODED_BYTES < BROKER_DEFAULT_LIMIT // 10
    assert DEAD_LETTERS.decode(encoded) == rec


def test_finding_3_a_1mb_feature_value_makes_a_bounded_rejection_and_letter() -> None:
    with pytest.raises(WrongType) as refused:
        feature_row({"tenure": "x" * 1_000_000, "spend": 1.0}, ["tenure", "spend"])
    assert len(str(refused.value)) < 1000
    rec = deadletter.record("ns.features", 0, 5, None, b"\x00" * 1_100_000, str(refused.value), "w")
    assert len(deadletter.encode(rec)) < 8 * 1024


def test_a_letter_names_the_model_and_commit_when_known_bounded() -> None:
    rec = deadletter.record(
        "ns.features",
        1,
        7,
        b"k",
        b"v",
        "missing_feature: x",
        "worker",
        model="churn",
        commit_id="c" * 64,
        rollout_id="r0123456789a",
        arm="candidate",
        ref="production",
    )
    sent = DEAD_LETTERS.decode(deadletter.encode(rec))
    assert (sent["model"], sent["commit_id"]) == ("churn", "c" * 64)
    # How it was routed, as its prediction would have said.
    assert (sent["rollout_id"], sent["arm"], sent["ref"]) == (
        "r0123456789a",
        "candidate",
        "production",
    )
    # Unknown (an undecodable event): empty, as letters written before the fields existed.
    plain = DEAD_LETTERS.decode(
        deadletter.encode(deadletter.record("t", 0, 0, None, b"", "r", "s"))
    )
    assert (plain["model"], plain["commit_id"]) == ("", "")
    assert (plain["rollout_id"], plain["arm"], plain["ref"]) == ("", "", "")
    # Hostile text from a sender stays bounded and encodable, in the minimal letter too.
    hostile = "m\ud800" * 10_000
    odd = deadletter.record(
        "t", 0, 0, None, None, "r", "s", model=hostile, rollout_id=hostile, arm=hostile, ref=hostile
    )
    for each in (odd, deadletter.minimal(odd)):
        decoded = DEAD_LETTERS.decode(deadletter.encode(each))
        for name, limit in (("model", 256), ("rollout_id", 64), ("arm", 64), ("ref", 256)):
            assert len(each[name].encode()) <= limit
            assert decoded[name] == each[name]


class Producer:
    """A collaborator that fails the first ``failures`` sends, then records what it is sent."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send_and_wait(self, topic: str, key: bytes, value: bytes) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        self.sent.append((topic, key, value))


def test_a_letter_that_cannot_be_sent_falls_back_to_a_minimal_one() -> None:
    producer = Producer(1, MessageSizeTooLargeError())
    rec = letter(b"v" * 1000, reason="r" * 2000)
    outcome = asyncio.run(deadletter.send(producer, "ns.dead-letter", rec))  # type: ignore[arg-type]
    assert outcome is deadletter.Outcome.MINIMAL
    ((topic, key, value),) = producer.sent
    sent = DEAD_LETTERS.decode(value)
    assert topic == "ns.dead-letter" and key == b"ns.events/3"
    assert sent["value"] is None and sent["value_sha256"] == rec["value_sha256"]
    assert (sent["offset"], sent["truncated"]) == (41, True)
    assert len(sent["reason"]) <= deadletter.MINIMAL_REASON_LIMIT


def test_a_letter_never_raises_and_a_lost_one_is_logged_with_its_hash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = Producer(2, KafkaTimeoutError())
    rec = letter(b"lost value")
    with caplog.at_level(logging.ERROR, logger="modelvc.deadletter"):
        outcome = asyncio.run(deadletter.send(producer, "ns.dead-letter", rec))  # type: ignore[arg-type]
    assert outcome is deadletter.Outcome.LOST and not producer.sent
    assert rec["value_sha256"] in caplog.text and "ns.events[3]@41" in caplog.text


def test_garbage_that_never_was_an_event_is_skipped_by_the_audit_not_a_violation(
    tmp_path: Path,
) -> None:
    """Random bytes and restore placeholders carry no Avro magic: skipped, the chain intact."""
    values = [encode_event(e) for e in events()]
    placeholder = PLACEHOLDER_MAGIC + b'{"refused": "MessageSizeTooLargeError"}'
    forged_header = MAGIC + b"\x01" * 8  # the magic, but no release's schema fingerprint
    garbage = [b"\x00random", placeholder, forged_header]
    write_archive(tmp_path, [*values[:2], *garbage, *values[2:]])
    result = replay(None, "modelvc.events", tmp_path)
    assert result.clean and result.auditor is not None
    assert [(f.kind, f.where.offset) for f in result.skipped] == [
        ("skipped", 2),
        ("skipped", 3),
        ("skipped", 4),
    ]
    assert result.auditor.events == len(values)
    assert result.to_dict()["skipped"][1]["offset"] == 3
    # Bytes naming a released schema that do not decode are damage, not garbage.
    damaged = values[2][:12]
    write_archive(tmp_path / "damaged", [*values[:2], damaged, *values[2:]])
    hurt = replay(None, "modelvc.events", tmp_path / "damaged")
    assert [v.kind for v in hurt.violations] == ["undecodable"]
    # Garbage that displaced an event still breaks its chain: that is a violation.
    write_archive(tmp_path / "gap", [*values[:2], b"\x00random", *values[3:]])
    gap = replay(None, "modelvc.events", tmp_path / "gap")
    assert not gap.clean and gap.violations[0].kind == "gap"

"""The one home of the dead-letter record: bounded, and sent without ever raising.

A dead letter keeps the bad message for a human, so it must never be the
thing that fails. Every field that comes from the bad message is bounded:

* the reason is cut to ``REASON_LIMIT`` bytes of UTF-8, with a marker saying
  how much was cut (a worker's reason may quote a 1 MB feature value);
* an original key or value above ``KEY_LIMIT`` / ``VALUE_LIMIT`` is left out
  and named by its sha256 and size (always recorded), and its topic,
  partition and offset locate it;

so an encoded letter stays far below the broker's default 1 MB message limit
whatever arrived. Text is made valid UTF-8 first (Avro strings must be; a
lone surrogate would make encoding itself raise).

``send`` tries the letter, then a minimal one (coordinates, sizes, hashes and
a short reason) if the first cannot be delivered; only if both fail is the
message given up, and then it is logged with its coordinates and sha256 and
reported to the caller to count: never silently.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer

from streams.codec import DEAD_LETTERS

log = logging.getLogger("modelvc.deadletter")

REASON_LIMIT = 2 * 1024
MINIMAL_REASON_LIMIT = 256
KEY_LIMIT = 1024
VALUE_LIMIT = 64 * 1024
# Room for the reason, the original key and value at their limits, and the fixed fields.
MAX_ENCODED_BYTES = REASON_LIMIT + KEY_LIMIT + VALUE_LIMIT + 4 * 1024


class Outcome(enum.Enum):
    SENT = "sent"
    MINIMAL = "minimal"  # the full letter failed; the minimal one was delivered
    LOST = "lost"  # neither could be delivered; logged with coordinates and sha256


def bounded_text(text: str, limit: int) -> tuple[str, bool]:
    """``text`` as valid UTF-8 of at most ``limit`` bytes (marker included), and whether cut."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode("utf-8"), False
    marker = f" [... {len(data):,} bytes, truncated]"
    head = data[: max(0, limit - len(marker.encode()))].decode("utf-8", "ignore")
    return head + marker, True


def _bounded_bytes(data: bytes | None, limit: int) -> tuple[bytes | None, str | None, int | None]:
    """(kept bytes or None when over the limit, sha256 hex, size) of an original."""
    if data is None:
        return None, None, None
    data = bytes(data)
    return (data if len(data) <= limit else None), hashlib.sha256(data).hexdigest(), len(data)


def record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    stage: str,
    at: int | None = None,
    *,
    model: str = "",
    commit_id: str = "",
    rollout_id: str = "",
    arm: str = "",
    ref: str = "",
) -> dict[str, Any]:
    """The bounded DeadLetter record for the message at ``topic``/``partition``/``offset``.

    ``model`` and ``commit_id``: what the message was for, when the sender knows (a worker
    whose feature event decoded), so the monitor can count it against that version;
    ``rollout_id``, ``arm`` and ``ref``: how it was routed there (as a prediction says),
    so it counts against the rollout's arm too."""
    kept_key, key_sha256, key_size = _bounded_bytes(key, KEY_LIMIT)
    kept_value, value_sha256, value_size = _bounded_bytes(value, VALUE_LIMIT)
    text, cut = bounded_text(reason, REASON_LIMIT)
    return {
        "topic": bounded_text(topic, 512)[0],
        "partition": partition,
        "offset": offset,
        "key": kept_key,
        "value": kept_value,
        "reason": text,
        "stage": bounded_text(stage, 64)[0],
        "at": int(time.time() * 1000) if at is None else at,
        "key_sha256": key_sha256,
        "key_size": key_size,
        "value_sha256": value_sha256,
        "value_size": value_size,
        # Bounded like the other texts: a model name is ≤ 128 characters, a commit id 64.
        "model": bounded_text(model, 256)[0],
        "commit_id": bounded_text(commit_id, 128)[0],
        # A rollout id is 12 characters and an arm 9; a ref is bounded as a model is.
        "rollout_id": bounded_text(rollout_id, 64)[0],
        "arm": bounded_text(arm, 64)[0],
        "ref": bounded_text(ref, 256)[0],
        "truncated": cut
        or (key is not None and kept_key is None)
        or (value is not None and kept_value is None),
    }


def minimal(letter: dict[str, Any]) -> dict[str, Any]:
    """The letter without the original bytes and with a short reason: what is left to send."""
    reason, _ = bounded_text(letter["reason"], MINIMAL_REASON_LIMIT)
    return {**letter, "key": None, "value": None, "reason": reason, "truncated": True}


def encode(letter: dict[str, Any]) -> bytes:
    return DEAD_LETTERS.encode(letter)


def describe(letter: dict[str, Any]) -> str:
    """One log line that finds the original again: coordinates, size and sha256."""
    return (
        f"{letter['topic']}[{letter['partition']}]@{letter['offset']} "
        f"({letter['value_size']} bytes, sha256 {letter['value_sha256']}) "
        f"at stage {letter['stage']}: {bounded_text(letter['reason'], MINIMAL_REASON_LIMIT)[0]}"
    )


async def send(
    producer: AIOKafkaProducer, dead_letter_topic: str, letter: dict[str, Any]
) -> Outcome:
    """Deliver ``letter`` (acks as the producer is configured); never raises."""
    for attempt, outcome in ((letter, Outcome.SENT), (minimal(letter), Outcome.MINIMAL)):
        try:
            # The letter's own key, not the original one: it is bounded and names the source.
            await producer.send_and_wait(
                dead_letter_topic,
                key=f"{attempt['topic']}/{attempt['partition']}".encode(),
                value=encode(attempt),
            )
        except Exception as exc:  # any failure: fall back, then give up loudly
            log.warning("dead letter %s not delivered (%r)", describe(letter), exc)
            continue
        return outcome
    log.error("dead letter LOST, only this log line keeps it: %s", describe(letter))
    return Outcome.LOST


def send_sync(producer: KafkaProducer, dead_letter_topic: str, letter: dict[str, Any]) -> Outcome:
    """``send`` for synchronous tools (archive restore, kafka-python); never raises."""
    for attempt, outcome in ((letter, Outcome.SENT), (minimal(letter), Outcome.MINIMAL)):
        try:
            producer.send(
                dead_letter_topic,
                key=f"{attempt['topic']}/{attempt['partition']}".encode(),
                value=encode(attempt),
            ).get(timeout=30)
        except Exception as exc:  # any failure: fall back, then give up loudly
            log.warning("dead letter %s not delivered (%r)", describe(letter), exc)
            continue
        return outcome
    log.error("dead letter LOST, only this log line keeps it: %s", describe(letter))
    return Outcome.LOST

"""Where a topic's partitions end: the one home of "have I read to the high watermark?".

A partition's end is the high watermark a *fetch response* reported for it,
never ListOffsets (``end_offsets``), which some brokers (Tansu) answer wrongly
for multi-record batches. A consumer knows the watermark of a partition only
after a fetch of it has been answered, so "at the end" means: every partition
has been answered, and each position is at or past its watermark.

Both Kafka clients keep the last watermark per partition (``highwater(tp)``):
kafka-python (synchronous: the log reader, the archiver, restore) and aiokafka
(asynchronous: the streams follower, the workers' version tracker, benchmarks).

Transactions (Apache Kafka; topics an exactly-once worker writes): commit and
abort markers take offsets, and a ``read_committed`` reader is never given a
marker nor an aborted record. Both clients still move the position past them
(kafka-python 3.0.12 sets it to the next batch's offset after a control or an
aborted batch, even when a fetch returns no record), so a reader reaches the
high watermark once every transaction below it is decided. While one is open,
the broker answers up to the last stable offset only: the reader waits there
until it commits or aborts (at most the producer's transaction timeout). A
reader of a topic that is being written therefore reads to the ends it saw
first (:func:`reached` with fixed ends), never chasing a watermark that each
new open transaction stays ahead of.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class Watermarked(Protocol):
    """What both clients' consumers offer: the last fetched watermark, or None."""

    def highwater(self, partition: Any) -> int | None: ...


def fetched_ends(consumer: Watermarked, tps: Iterable[Any]) -> dict[int, int] | None:
    """Each partition's end as its last fetch response said; None until all were answered."""
    ends: dict[int, int] = {}
    for tp in tps:
        mark = consumer.highwater(tp)
        if mark is None:
            return None
        ends[tp.partition] = mark
    return ends


def reached(ends: Mapping[int, int] | None, positions: Mapping[int, int]) -> bool:
    """Whether every partition's position is at or past its end (unknown ends: not yet)."""
    return ends is not None and all(positions.get(p, 0) >= end for p, end in ends.items())


def positions(consumer: Any, tps: Iterable[Any]) -> dict[int, int]:
    """A kafka-python consumer's position in each partition of ``tps``."""
    return {tp.partition: consumer.position(tp) for tp in tps}


def at_end(consumer: Any, tps: Iterable[Any]) -> bool:
    """A kafka-python consumer has read every partition of ``tps`` to its latest end."""
    tps = list(tps)
    return reached(fetched_ends(consumer, tps), positions(consumer, tps))


async def at_end_async(consumer: Any, tps: Iterable[Any]) -> bool:
    """An aiokafka consumer has read every partition of ``tps`` to its end."""
    tps = list(tps)
    ends = fetched_ends(consumer, tps)
    if ends is None:
        return False
    return reached(ends, {tp.partition: await consumer.position(tp) for tp in tps})


def _late(topic: str, timeout: float) -> TimeoutError:
    return TimeoutError(f"no fetch answer for every partition of {topic} in {timeout:.0f}s")


def wait_for_ends(consumer: Any, tps: list[Any], timeout: float) -> dict[int, int]:
    """The end of every partition of ``tps`` (kafka-python), fetching until each is answered.

    Fetching consumes records: seek afterwards, or use a consumer of its own.
    """
    deadline = time.monotonic() + timeout
    while (ends := fetched_ends(consumer, tps)) is None:
        if time.monotonic() > deadline:
            raise _late(tps[0].topic, timeout)
        consumer.poll(timeout_ms=100, max_records=1)
    return ends


async def wait_for_ends_async(consumer: Any, tps: list[Any], timeout: float) -> dict[int, int]:
    """As :func:`wait_for_ends`, for an aiokafka consumer."""
    deadline = time.monotonic() + timeout
    while (ends := fetched_ends(consumer, tps)) is None:
        if time.monotonic() > deadline:
            raise _late(tps[0].topic, timeout)
        await consumer.getmany(timeout_ms=100, max_records=1)
    return ends


@dataclass
class _Answer:
    mark: int
    at_ms: int  # when the client processed the fetch response (its wall clock, ms)
    previous_ms: int | None  # the one seen before it, if any


@dataclass
class FreshEnds:
    """Ends of partitions from fetch responses *sent after* a given moment (aiokafka).

    A watermark read now may come from a fetch the broker answered before an
    event was appended. aiokafka has one fetch in flight per broker and stamps
    each response with the wall-clock time it processed it
    (``last_poll_timestamp``), so a response is fresh for a moment ``t`` when
    the response seen before it was processed after ``t``: its request was
    sent after that, hence after ``t``. :meth:`observe` is called by the one
    task that polls the consumer, after each poll. (Wall clock, as aiokafka
    stamps: a clock stepped back only delays the answer, within the caller's
    timeout.)
    """

    _answers: dict[int, _Answer] = field(default_factory=dict)

    @staticmethod
    def now_ms() -> int:
        """The moment to pass to :meth:`end_after`, on the clock aiokafka stamps with."""
        return int(time.time() * 1000)

    def observe(self, consumer: Any, tps: Iterable[Any]) -> None:
        for tp in tps:
            mark, at_ms = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
            if mark is None or at_ms is None:
                continue
            seen = self._answers.get(tp.partition)
            if seen is None:
                self._answers[tp.partition] = _Answer(mark, at_ms, None)
            elif at_ms != seen.at_ms:
                self._answers[tp.partition] = _Answer(mark, at_ms, seen.at_ms)

    def end_after(self, partition: int, asked_ms: int) -> int | None:
        """The partition's end from a fetch sent after ``asked_ms``; None until one came."""
        seen = self._answers.get(partition)
        # Strictly later: a response stamped in the same millisecond may precede the ask.
        if seen is None or seen.previous_ms is None or seen.previous_ms <= asked_ms:
            return None
        return seen.mark

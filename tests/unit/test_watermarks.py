"""Where a partition ends: from fetch answers only, and fresh when freshness is asked for."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import pytest

from streams.watermarks import (
    FreshEnds,
    at_end,
    at_end_async,
    fetched_ends,
    positions,
    reached,
    wait_for_ends,
    wait_for_ends_async,
)


class TP(NamedTuple):
    topic: str
    partition: int


TPS = [TP("t", 0), TP("t", 1)]


class Broker:
    """What a consumer has learnt from fetch answers: per partition, its watermark and when."""

    def __init__(self) -> None:
        self.marks: dict[TP, int] = {}
        self.stamps: dict[TP, int] = {}
        self.positions: dict[TP, int] = dict.fromkeys(TPS, 0)
        self.unanswered = list(TPS)  # each poll, one more partition's fetch is answered

    def answer(self, tp: TP, mark: int, at_ms: int = 0) -> None:
        self.marks[tp], self.stamps[tp] = mark, at_ms

    def highwater(self, tp: TP) -> int | None:
        return self.marks.get(tp)

    def last_poll_timestamp(self, tp: TP) -> int | None:
        return self.stamps.get(tp)

    def position(self, tp: TP) -> int:
        return self.positions[tp]

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, Any]:
        if self.unanswered:
            self.answer(self.unanswered.pop(0), 7)
        return {}


class AsyncBroker(Broker):
    async def position(self, tp: TP) -> int:  # type: ignore[override]
        return self.positions[tp]

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, Any]:
        return self.poll(timeout_ms, max_records)


def test_no_end_is_known_until_every_partition_was_answered() -> None:
    broker = Broker()
    broker.answer(TPS[0], 5)
    assert fetched_ends(broker, TPS) is None
    broker.answer(TPS[1], 0)
    assert fetched_ends(broker, TPS) == {0: 5, 1: 0}


def test_the_end_is_reached_when_every_position_is_at_its_watermark() -> None:
    assert not reached(None, {})
    assert reached({}, {})
    assert not reached({0: 5, 1: 0}, {0: 4, 1: 0})
    assert reached({0: 5, 1: 0}, {0: 5, 1: 0})


def test_both_clients_consumers_read_to_the_end_the_same_way() -> None:
    for broker in (Broker(), AsyncBroker()):
        broker.answer(TPS[0], 3)
        broker.answer(TPS[1], 0)

        def done(b: Broker = broker) -> bool:
            if isinstance(b, AsyncBroker):
                return asyncio.run(at_end_async(b, TPS))
            return at_end(b, TPS)

        assert not done()
        broker.positions[TPS[0]] = 3
        assert done()


def test_past_transaction_markers_the_end_is_reached_without_a_record_at_it() -> None:
    # Records at 0..3, a commit marker at 4: the watermark is 5, and a read_committed
    # reader's last record is at 3; its position moved past the marker all the same.
    broker = Broker()
    broker.answer(TPS[0], 5)
    broker.answer(TPS[1], 0)
    broker.positions[TPS[0]] = 4  # after the last record, before the marker
    assert positions(broker, TPS) == {0: 4, 1: 0} and not at_end(broker, TPS)
    broker.positions[TPS[0]] = 5
    assert at_end(broker, TPS)


def test_a_reader_of_a_topic_being_written_ends_at_the_ends_it_saw_first() -> None:
    broker = Broker()
    broker.answer(TPS[0], 5)
    broker.answer(TPS[1], 2)
    first = fetched_ends(broker, TPS)
    broker.answer(TPS[0], 9)  # an open transaction keeps the watermark ahead of the reader
    broker.positions.update({TPS[0]: 5, TPS[1]: 2})
    assert reached(first, positions(broker, TPS)) and not at_end(broker, TPS)


def test_waiting_for_the_ends_fetches_until_each_partition_answered() -> None:
    assert wait_for_ends(Broker(), TPS, 5.0) == {0: 7, 1: 7}
    assert asyncio.run(wait_for_ends_async(AsyncBroker(), TPS, 5.0)) == {0: 7, 1: 7}
    silent = Broker()
    silent.unanswered = []
    with pytest.raises(TimeoutError, match="every partition of t"):
        wait_for_ends(silent, TPS, 0.05)


def test_a_fresh_end_comes_from_a_fetch_sent_after_the_question() -> None:
    broker, ends = Broker(), FreshEnds()
    broker.answer(TPS[0], 10, at_ms=1000)
    ends.observe(broker, TPS)
    asked = 1005
    assert ends.end_after(0, asked) is None  # answered before the question
    broker.answer(TPS[0], 11, at_ms=1010)
    ends.observe(broker, TPS)
    # Answered after it, but that fetch may have been sent before it (after 1000).
    assert ends.end_after(0, asked) is None
    ends.observe(broker, TPS)  # seeing the same answer again proves nothing more
    assert ends.end_after(0, asked) is None
    broker.answer(TPS[0], 12, at_ms=1020)
    ends.observe(broker, TPS)
    assert ends.end_after(0, asked) == 12  # sent after the 1010 answer, so after 1005
    assert ends.end_after(1, asked) is None  # never answered


def test_an_answer_in_the_very_millisecond_of_the_question_is_not_fresh() -> None:
    broker, ends = Broker(), FreshEnds()
    for at_ms in (1000, 1005, 1006):
        broker.answer(TPS[0], at_ms, at_ms=at_ms)
        ends.observe(broker, TPS)
    assert ends.end_after(0, 1005) is None  # the previous answer (1005) may precede the ask
    assert ends.end_after(0, 1004) == 1006

"""The at-least-once pipeline (workers.loop.Pipeline): offsets are committed in order, only
up to the last batch acknowledged with every batch before it; at most ``max_in_flight``
batches wait for acknowledgements; a failed send takes the consumer back to the first
unacknowledged batch. Its collaborators (commit, seek) are given through its constructor."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from workers.loop import Offsets, Pipeline, Sent, earliest
from workers.settings import WorkerSettings

A, B = TopicPartition("features", 0), TopicPartition("features", 1)


class Broker:
    """Records commits and seeks, as the worker's consumer would receive them."""

    def __init__(self) -> None:
        self.commits: list[Offsets] = []
        self.seeks: list[Offsets] = []

    async def commit(self, offsets: Offsets) -> None:
        self.commits.append(dict(offsets))

    def seek(self, offsets: Offsets) -> None:
        self.seeks.append(dict(offsets))


def batch(first: Offsets, after: Offsets) -> Sent:
    acks: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    return Sent(first, after, acks, sum(after[tp] - first[tp] for tp in first))


async def settle() -> None:
    for _ in range(20):  # let the committer task run its turns
        await asyncio.sleep(0)


def test_offsets_are_committed_in_order_behind_the_oldest_unacknowledged_batch() -> None:
    async def run() -> None:
        broker = Broker()
        pipeline = Pipeline(4, broker.commit, broker.seek)
        one, two, three = (
            batch({A: 0}, {A: 10}),
            batch({A: 10, B: 0}, {A: 20, B: 5}),
            batch({B: 5}, {B: 9}),
        )
        for sent in (one, two, three):
            pipeline.add(sent)
        two.acks.set_result(None)
        three.acks.set_result(None)
        await settle()
        assert broker.commits == [], "committed past the unacknowledged first batch"
        one.acks.set_result(None)
        await settle()
        # The three are acknowledged: one commit, at the last batch's offsets.
        assert broker.commits == [{A: 20, B: 9}]
        await pipeline.drain()
        assert broker.commits == [{A: 20, B: 9}] and broker.seeks == []

    asyncio.run(run())


def test_a_failed_send_commits_nothing_from_it_on_and_goes_back_to_its_first_offsets() -> None:
    async def run() -> None:
        broker = Broker()
        pipeline = Pipeline(4, broker.commit, broker.seek)
        one, two, three = (
            batch({A: 0}, {A: 10}),
            batch({A: 10}, {A: 20}),
            batch({A: 20, B: 0}, {A: 30, B: 4}),
        )
        for sent in (one, two, three):
            pipeline.add(sent)
        one.acks.set_result(None)
        three.acks.set_result(None)  # a later batch acknowledged before the failure
        await settle()
        assert broker.commits == [{A: 10}]
        two.acks.set_exception(KafkaTimeoutError())
        await settle()
        assert isinstance(pipeline.failure, KafkaTimeoutError)
        await pipeline.room()  # a failure makes room: the loop must see it, not wait
        # Batch four was fetched (not sent) meanwhile: it goes back too.
        await pipeline.recover([{B: 4}])
        assert broker.commits == [{A: 10}], "an offset past the failed batch was committed"
        assert broker.seeks == [{A: 10, B: 0}]
        assert pipeline.failure is None and not pipeline.in_flight
        # And it goes on from there: the batch scored again is committed once acked.
        again = batch({A: 10}, {A: 20})
        pipeline.add(again)
        again.acks.set_result(None)
        await pipeline.drain()
        assert broker.commits == [{A: 10}, {A: 20}]

    asyncio.run(run())


def test_at_most_max_in_flight_batches_wait_for_acknowledgements() -> None:
    async def run() -> None:
        broker = Broker()
        pipeline = Pipeline(2, broker.commit, broker.seek)
        one, two = batch({A: 0}, {A: 1}), batch({A: 1}, {A: 2})
        pipeline.add(one)
        await asyncio.wait_for(pipeline.room(), 1)  # one of two: room
        pipeline.add(two)
        waiting = asyncio.ensure_future(pipeline.room())
        await settle()
        assert not waiting.done(), "a third batch was let in with two unacknowledged"
        with pytest.raises(RuntimeError, match="room"):
            pipeline.add(batch({A: 2}, {A: 3}))
        two.acks.set_result(None)  # the newer one: the oldest still holds the room
        await settle()
        assert not waiting.done() and broker.commits == []
        one.acks.set_result(None)
        await asyncio.wait_for(waiting, 1)
        await pipeline.drain()
        assert broker.commits == [{A: 2}]

    asyncio.run(run())


def test_earliest_is_the_lowest_offset_per_partition() -> None:
    assert earliest([{A: 5, B: 3}, {A: 2}, {B: 7}]) == {A: 2, B: 3}
    assert earliest([]) == {}


def test_batches_in_flight_are_bounded_and_read_from_the_environment() -> None:
    env = {"MODELVC_WORKER_MAX_IN_FLIGHT": "8", "MODELVC_WORKER_LINGER_MS": "5"}
    settings = WorkerSettings.from_env(env)
    assert (settings.max_in_flight, settings.linger_ms) == (8, 5)
    assert WorkerSettings.from_env(settings.to_env()).max_in_flight == 8
    for bad in ("0", "65"):
        with pytest.raises(ValueError, match=r"MODELVC_WORKER_MAX_IN_FLIGHT=\d+ is not 1-64"):
            WorkerSettings.from_env({"MODELVC_WORKER_MAX_IN_FLIGHT": bad})

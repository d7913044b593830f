"""The follower: ``modelvc.events`` into the projection, and waiting for it to get there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from streams.follow import assigned_consumer
from streams.projection import Projection
from streams.service.letters import DeadLetters
from streams.settings import Settings
from streams.watermarks import FreshEnds, at_end_async

log = logging.getLogger("modelvc.streams")


class Follower:
    """Reads every partition of the events topic (no consumer group) into ``projection``.

    The one task that writes the projection; everyone else waits on it.
    """

    def __init__(self, settings: Settings, projection: Projection, letters: DeadLetters) -> None:
        self.settings = settings
        self.projection = projection
        self.letters = letters
        # Set once the fold has applied what every partition held when the follower started:
        # before that, a query would answer from a partial graph (say, right after a rebuild).
        self.ready = asyncio.Event()
        self.ends = FreshEnds()  # the partitions' ends, as the follower's fetches report
        self.partitions = settings.partitions  # the topic's real count, once following
        self._progress = asyncio.Condition()

    async def run(self) -> None:
        topic = self.settings.events_topic
        consumer, tps = await assigned_consumer(
            self.settings.access,
            topic,
            self.projection.next_offsets,
            self.settings.fetch_wait_ms,
            f"{self.settings.instance_id}-follower",
        )
        self.partitions = len(tps)
        try:
            log.info(
                "following %s from %s", topic, dict(sorted(self.projection.next_offsets.items()))
            )
            while True:
                # Short: a writer's catch-up waits for the ends one of these rounds reports
                # after it asked (up to two rounds), and at startup every partition's first
                # command, its writer-key ring included, pays that wait in turn.
                batches = await consumer.getmany(timeout_ms=50)
                for tp, messages in batches.items():
                    applied = self.projection.apply(
                        tp.partition, [(m.offset, m.value) for m in messages], len(tps)
                    )
                    for item, message in zip(applied, messages, strict=True):
                        if item.undecodable is not None:
                            await self.letters.send(
                                topic,
                                tp.partition,
                                message.offset,
                                message.key,
                                message.value,
                                item.undecodable,
                                "fold",
                            )
                        elif item.void_reason is not None:
                            log.warning(
                                "void event %s#%s at %s:%s: %s",
                                item.event and item.event.model,
                                item.event and item.event.seq,
                                tp.partition,
                                message.offset,
                                item.void_reason,
                            )
                self.ends.observe(consumer, tps)
                if not self.ready.is_set() and await at_end_async(consumer, tps):
                    log.info(
                        "caught up with %s at %s",
                        topic,
                        dict(sorted(self.projection.next_offsets.items())),
                    )
                    self.ready.set()
                async with self._progress:
                    self._progress.notify_all()
        finally:
            await consumer.stop()

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(predicate), timeout)

    async def wait_applied(self, partition: int, offset: int, timeout: float | None = None) -> None:
        """Return once the fold has applied ``offset`` of events ``partition``."""
        await self._wait_until(
            lambda: self.projection.applied(partition, offset),
            self.settings.command_timeout_s if timeout is None else timeout,
        )

    async def caught_up(self, partition: int) -> int:
        """Return once the fold has applied everything the broker had when we asked.

        Returns the partition's end it waited for.
        """
        asked = self.ends.now_ms()
        # The end a fetch sent after we asked reported (one from before may miss what the
        # partition's previous writer appended last), then the fold up to it.
        await self._wait_until(
            lambda: self.ends.end_after(partition, asked) is not None,
            self.settings.command_timeout_s,
        )
        end = self.ends.end_after(partition, asked) or 0
        if end > 0:
            await self.wait_applied(partition, end - 1)
        return end

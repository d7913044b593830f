"""``modelvc.metrics`` into the window store, and a wake-up for whoever judges new windows.

Every instance follows every partition (no consumer group): each answers the monitor
route, and the controller of a rollout runs wherever its model's home partition is.
The store's next offsets are where a restart resumes, and they are written with the
windows they cover, so nothing is skipped or counted twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from streams.errors import UndecodableMessage
from streams.follow import assigned_consumer
from streams.monitoring.windows import Added, Window, WindowStore, decode_window
from streams.service.letters import DeadLetters
from streams.settings import Settings
from streams.watermarks import at_end_async

log = logging.getLogger("modelvc.streams")
# How long to wait before looking again for a metrics topic that does not exist yet (a
# deployment made before the monitor: `modelvc up` or `modelvc topics apply` creates it).
RETRY_S = 5.0
MAX_POLL_RECORDS = 2000  # a window is a few KiB of histograms; bound each batch's memory

Listener = Callable[[Added], None]


class MetricsFollower:
    """Reads every partition of the metrics topic into ``store``; ``listeners`` hear of each
    batch's new windows (the controller wakes on them)."""

    def __init__(
        self,
        settings: Settings,
        store: WindowStore,
        letters: DeadLetters,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.settings = settings
        self.store = store
        self.letters = letters
        self.listeners = list(listeners)
        # Set once what every partition held at start is in the store: before that, a
        # controller would judge a step from a part of its windows.
        self.ready = asyncio.Event()
        self.junk = 0  # records that were no metric window (dead-lettered)

    async def run(self) -> None:
        topic = self.settings.metrics_topic
        while True:
            try:
                consumer, tps = await assigned_consumer(
                    self.settings.access,
                    topic,
                    self.store.next_offsets,
                    self.settings.fetch_wait_ms,
                    f"{self.settings.instance_id}-metrics",
                    MAX_POLL_RECORDS,
                )
                break
            except RuntimeError as exc:  # the topic does not exist (yet)
                log.warning("%s; monitor windows are not followed yet, retrying", exc)
                await asyncio.sleep(RETRY_S)
        try:
            log.info("following %s from %s", topic, dict(sorted(self.store.next_offsets.items())))
            while True:
                batches = await consumer.getmany(timeout_ms=100)
                for tp, messages in batches.items():
                    records: list[tuple[int, Window | None]] = []
                    for m in messages:
                        window = await self._window(tp.partition, m.offset, m.key, m.value)
                        records.append((m.offset, window))
                    self._tell(self.store.apply(tp.partition, records))
                if not self.ready.is_set() and await at_end_async(consumer, tps):
                    log.info(
                        "caught up with %s at %s",
                        topic,
                        dict(sorted(self.store.next_offsets.items())),
                    )
                    self.ready.set()
        finally:
            await consumer.stop()

    async def _window(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> Window | None:
        try:
            if value is None:
                raise ValueError("the record has no value")
            return decode_window(value)
        except (UndecodableMessage, ValueError, TypeError, KeyError) as exc:
            self.junk += 1
            await self.letters.send(
                self.settings.metrics_topic,
                partition,
                offset,
                key,
                value,
                f"not a metric window: {str(exc)[:500]}",
                "metrics",
            )
            return None

    def _tell(self, added: Added) -> None:
        if added.repeated or added.too_old:
            log.debug(
                "metric windows: %d repeated, %d older than the kept ones",
                added.repeated,
                added.too_old,
            )
        if added.windows:
            for listener in self.listeners:
                listener(added)

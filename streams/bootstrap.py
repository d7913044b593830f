"""Wiring in one place: build a streams instance's collaborators and inject them.

``python -m streams`` and the Faust app (``streams.app``) use :func:`bootstrap`;
tests call it with an in-memory projection, a fixed clock or their own artifact
store instead of overwriting internals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from streams.artifacts import ArtifactStore
from streams.projection import Projection, RocksDBProjection
from streams.service.follower import Follower
from streams.service.letters import DeadLetters
from streams.service.producer import Producer
from streams.service.replies import Replies
from streams.service.writer import Writer
from streams.settings import Settings

log = logging.getLogger("modelvc.streams")


@dataclass
class Streams:
    """One streams instance's collaborators, wired."""

    settings: Settings
    projection: Projection
    producer: Producer
    letters: DeadLetters
    follower: Follower
    replies: Replies
    writer: Writer
    store: ArtifactStore  # the HTTP API's: uploads and downloads

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        """Flush and stop the producer, then close the projection; the tasks are stopped."""
        try:
            await self.producer.stop()
        finally:
            offsets = dict(self.projection.next_offsets)
            self.projection.close()
            log.info("%s stopped cleanly at offsets %s", self.settings.instance_id, offsets)


def bootstrap(
    settings: Settings,
    *,
    projection: Projection | None = None,
    store: ArtifactStore | None = None,
    clock: Callable[[], float] = time.time,
) -> Streams:
    """The collaborators for ``settings``; RocksDB and the artifact store on disk by default."""
    projection = projection if projection is not None else RocksDBProjection(settings.rocksdb_path)
    producer = Producer(settings)
    letters = DeadLetters(producer, settings.dead_letter_topic)
    follower = Follower(settings, projection, letters)
    replies = Replies(follower, producer, letters)
    return Streams(
        settings=settings,
        projection=projection,
        producer=producer,
        letters=letters,
        follower=follower,
        replies=replies,
        writer=Writer(follower, producer, replies, letters, clock),
        store=store if store is not None else ArtifactStore(settings.artifact_root),
    )

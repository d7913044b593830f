"""The instance's dead-letter sender: the record and its sending live in ``streams.deadletter``."""

from __future__ import annotations

import logging

from streams import deadletter
from streams.service.producer import Producer

log = logging.getLogger("modelvc.streams")


class DeadLetters:
    """Sends bounded dead letters and counts them (``/healthz`` shows the counts)."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self.sent = 0
        self.failures = 0  # letters that could only be sent minimal, or not at all

    async def send(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        stage: str,
    ) -> None:
        """Never raises: a letter that cannot be sent is logged and counted."""
        self.sent += 1
        letter = deadletter.record(topic, partition, offset, key, value, reason, stage)
        log.warning("dead letter %s", deadletter.describe(letter))
        outcome = await deadletter.send(self._producer.client, self._topic, letter)
        if outcome is not deadletter.Outcome.SENT:
            self.failures += 1

"""The instance's one Kafka producer: started with the app, stopped on shutdown."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from streams.kafka_access import KafkaAccess, negotiate
from streams.settings import Settings


class Producer:
    """Holds the producer, which can only be made inside the running event loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AIOKafkaProducer | None = None
        self.access: KafkaAccess = settings.access  # delivery resolved by start()

    async def start(self) -> None:
        if self._client is not None:
            return
        self.access = await negotiate(self._settings.access)
        client = AIOKafkaProducer(
            **self.access.producer(linger_ms=0, client_id=f"{self._settings.instance_id}-producer")
        )
        await client.start()
        self._client = client

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.stop()  # flushes what is still buffered

    @property
    def client(self) -> AIOKafkaProducer:
        if self._client is None:
            raise RuntimeError("the producer is not started (Streams.start() was not awaited)")
        return self._client

"""The Faust app: the commands agent, the log follower and the HTTP API.

No Faust tables: ``modelvc.events`` is the only log, and the projection is
kept by ``VersionService`` in RocksDB (a table would add a second changelog of
the same facts, and its recovery relies on ListOffsets, which the embedded
broker answers wrongly).
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams import api
from streams.service import VersionService
from streams.settings import Settings


def _transport_with_fetch_wait(wait_ms: int) -> type[faust_aiokafka.Transport]:
    """Faust pins fetch_max_wait_ms at 1500. The embedded broker answers a fetch only
    when that wait expires, which would put ~750 ms on every command; make it short."""

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = wait_ms  # read when the fetcher starts
            return consumer

    class Consumer(faust_aiokafka.Consumer):  # type: ignore[misc]
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):  # type: ignore[misc]
        pass

    Transport.Consumer = Consumer
    return Transport


class ModelvcApp(faust.App):  # type: ignore[misc]
    fetch_wait_ms = 10

    def _new_transport(self) -> Any:
        transport_cls = _transport_with_fetch_wait(self.fetch_wait_ms)
        return transport_cls(self.conf.broker_consumer, self, loop=self.loop)


def create_app(settings: Settings) -> tuple[faust.App, VersionService]:
    app = ModelvcApp(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.bootstrap.split(",")],
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_host=settings.web_host,
        # Faust binds to `web_bind` (default 0.0.0.0, from F_WEB_BIND), not to
        # `web_host`, which only names the server in URLs: bind where we were told.
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        # Faust's own pages (/router, /table, /graph, /stats) are not part of our
        # API; "/" stays (Faust always mounts an index there) and is documented.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        web_application_options={
            "middlewares": api.middlewares(settings),
            # request.read()/json() refuse larger bodies (413); uploads stream past it
            # with their own limit.
            "client_max_size": api.MAX_JSON_BYTES,
        },
        broker_session_timeout=6,
        broker_rebalance_timeout=6,
        broker_heartbeat_interval=1,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
    )
    app.fetch_wait_ms = settings.fetch_wait_ms
    service = VersionService(settings)
    commands = app.topic(
        settings.commands_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )

    @app.agent(commands, name="modelvc.decide")
    async def decide_commands(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await service.handle_command(
                message.partition, message.offset, message.key, message.value
            )

    @app.task
    async def follow_events() -> None:
        await service.start()
        await service.follow_events()

    @app.task
    async def follow_replies() -> None:
        await service.ready.wait()
        await service.follow_replies()

    @app.on_partitions_revoked.connect
    def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        service.on_partitions_revoked()

    api.register(app, service)
    return app, service

"""The Faust app: the commands agent, the log follower, the replies and the HTTP API.

An entry point over :func:`streams.bootstrap.bootstrap`'s collaborators: it
only connects them to Faust's agent, tasks, signals and web server.

No Faust tables: ``modelvc.events`` is the only log, and the projection is
kept by the follower (a table would add a second changelog of the same facts,
and its recovery relies on ListOffsets, which the embedded broker answers
wrongly).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiohttp.typedefs import Middleware
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams import api, auth
from streams.bootstrap import Streams
from streams.console.routes import Console, console_headers
from streams.console.sessions import Sessions
from streams.core.security import SecurityState
from streams.http_edge import JsonErrorRunner
from streams.parse import MAX_JSON_BYTES
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
    def __init__(self, *args: Any, fetch_wait_ms: int = 10, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_wait_ms = fetch_wait_ms
        self.shutdown_hooks: list[Callable[[], Awaitable[None]]] = []

    def _new_transport(self) -> Any:
        transport_cls = _transport_with_fetch_wait(self.fetch_wait_ms)
        return transport_cls(self.conf.broker_consumer, self, loop=self.loop)

    async def on_shutdown(self) -> None:
        # mode calls this once the agents and the app's tasks are stopped: nothing uses
        # the producer or the projection any more, so they can be flushed and closed.
        await super().on_shutdown()
        for hook in self.shutdown_hooks:
            await hook()


def broker_credentials(settings: Settings) -> faust.SASLCredentials | None:
    """Faust's own consumer and producer log in as the rest of the app does (the SASL
    login of ``settings.access``, SCRAM-SHA-512); None on a plaintext broker."""
    if settings.kafka_security != "sasl":
        return None
    login = settings.access.client()
    return faust.SASLCredentials(
        username=login["sasl_plain_username"],
        password=login["sasl_plain_password"],
        mechanism=login["sasl_mechanism"],
    )


def api_of(streams: Streams, **options: Any) -> api.Api:
    """The HTTP handlers over ``streams``' collaborators (``options``: the API's own
    bounds, e.g. ``store_deadline_s``)."""
    return api.Api(
        streams.settings,
        streams.projection,
        streams.follower,
        streams.replies,
        streams.letters,
        streams.store,
        streams.intake,
        streams.signer,
        windows=streams.windows,
        decisions=streams.controller.metrics,
        **options,
    )


def web_middlewares(
    settings: Settings, security: auth.SecuritySource, sessions: Sessions
) -> list[Middleware]:
    """The API's middlewares, under the console's security headers (outermost: its error
    answers carry them too); a console session's cookie stands for its token."""
    return [console_headers, *api.middlewares(settings, security, sessions)]


def create_app(streams: Streams) -> ModelvcApp:
    settings = streams.settings

    # Tokens are checked against ~security as this instance folded it.
    def security() -> SecurityState | None:
        return streams.projection.security

    # The console's sessions and login codes: in this instance's memory only.
    sessions = Sessions(streams.clock)
    app = ModelvcApp(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.bootstrap.split(",")],
        store="memory://",
        broker_credentials=broker_credentials(settings),
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
            "middlewares": web_middlewares(settings, security, sessions),
            # request.read()/json() refuse larger bodies (413); uploads stream past it
            # with their own limit.
            "client_max_size": MAX_JSON_BYTES,
        },
        broker_session_timeout=6,
        broker_rebalance_timeout=6,
        broker_heartbeat_interval=1,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
        # No leader tasks: without this Faust subscribes to `<app>-__assignor-__leader`,
        # which a broker with topic auto-creation would create with its own defaults.
        topic_disable_leader=True,
        fetch_wait_ms=settings.fetch_wait_ms,
    )
    # Faust builds a plain AppRunner; ours answers what aiohttp's parser refuses (a
    # request line over 8190 bytes, say) in JSON too. Faust keeps no other handle on it.
    driver: Any = app.web  # faust.web.drivers.aiohttp.Web
    driver._runner = JsonErrorRunner(driver.web_app, access_log=None)
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
            await streams.writer.handle(
                message.partition, message.offset, message.key, message.value
            )

    @app.task
    async def follow_events() -> None:
        await streams.start()
        await streams.follower.run()

    @app.task
    async def follow_replies() -> None:
        await streams.replies.run()

    @app.task
    async def follow_metrics() -> None:
        await streams.metrics.run()

    @app.task
    async def control_rollouts() -> None:
        await streams.controller.run()

    def commands_partitions(tps: Any) -> set[int]:
        return {tp.partition for tp in tps or () if tp.topic == settings.commands_topic}

    @app.on_partitions_revoked.connect
    def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        streams.writer.on_partitions_revoked()
        streams.ownership.revoked(commands_partitions(args[0] if args else ()))

    @app.on_partitions_assigned.connect
    def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # The whole assignment (Faust rebalances eagerly): the rollouts this instance judges.
        streams.ownership.assigned(commands_partitions(args[0] if args else ()))

    app.shutdown_hooks.append(streams.stop)
    handlers = api_of(streams)
    app.shutdown_hooks.append(handlers.close)
    driver.web_app.router.add_routes(handlers.routes())
    driver.web_app.router.add_routes(Console(security, sessions).routes())
    return app

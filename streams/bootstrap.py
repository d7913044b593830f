"""Wiring in one place: build a streams instance's collaborators and inject them.

``python -m streams`` and the Faust app (``streams.app``) use :func:`bootstrap`;
tests call it with an in-memory projection, a fixed clock, their own artifact
store or writer key instead of overwriting internals.

Once the follower has caught up, an instance puts its writer key into the
writer-key ring of every events partition whose ring is still empty (so nobody
else's key can be a ring's first, and every partition is signed from the
start), and logs an error for each ring that holds other keys but not its own.
An instance given a bootstrap token file (``MODELVC_BOOTSTRAP_TOKEN_FILE``) then
issues that token as the first admin's, if ``~security`` holds no token yet: how
``modelvc up`` hands its user a token without anyone being able to act before
one exists.

The projection trusts a ring's first key only when it is this instance's or one
of ``MODELVC_TRUSTED_WRITER_KEYS``: a key a forger wrote first is void.

The monitor's windows (``modelvc.metrics``) are followed into a window store beside
the projection, and the rollout controller judges the running rollouts of the models
whose commands partition this instance owns (``streams.monitoring``); its decisions
are signed and submitted like the API's commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from streams.artifacts import ArtifactStore, Intake, open_store
from streams.core.commands import Command, IssueToken
from streams.core.security import SECURITY_STREAM, TOKEN_FORMAT, token_id_of, token_sha256
from streams.monitoring.controller import Controller, Ownership
from streams.monitoring.follower import MetricsFollower
from streams.monitoring.windows import WindowStore
from streams.projection import Projection, RocksDBProjection
from streams.service.answers import Answer
from streams.service.follower import Follower
from streams.service.letters import DeadLetters
from streams.service.producer import Producer
from streams.service.replies import Replies
from streams.service.writer import Writer, introduce_key
from streams.settings import Settings
from streams.signing import SigningKey, WriterKey, sign_command, verify

log = logging.getLogger("modelvc.streams")
BOOTSTRAP_ATTEMPTS = 5


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
    store: ArtifactStore  # shared by every instance and worker: commits check it, downloads read it
    intake: Intake  # uploads: bounded, checked, then put into the store
    signer: SigningKey  # this instance's writer key: signs its events and the API's commands
    windows: WindowStore  # the monitor's metric windows, per model
    metrics: MetricsFollower  # modelvc.metrics into ``windows``
    ownership: Ownership  # the commands partitions this instance's writer owns
    controller: Controller  # decides the rollouts of the models of those partitions
    clock: Callable[[], float] = time.time
    _tasks: set[asyncio.Task[bool]] = field(default_factory=set)

    async def start(self) -> None:
        await self.producer.start()
        task = asyncio.get_running_loop().create_task(self._introduce_then_bootstrap())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _introduce_then_bootstrap(self) -> bool:
        await self.introduce_key()
        if self.settings.bootstrap_token_file is None:
            return False
        return await self.issue_bootstrap_token()

    async def submit(self, command: Command) -> Answer:
        """``command`` signed with the time it is sent (which the writer checks is recent),
        and submitted once: how this instance's own decisions (the rollout controller's)
        take the API's path."""
        now = replace(command, at=int(self.clock() * 1000))
        return await self.replies.submit(sign_command(self.signer, now))

    async def _submit(self, command: Command) -> Answer:
        """``command``, signed and submitted, again while it times out (partitions still
        being assigned): the same command id never applies twice."""
        answer = Answer({"error": "timeout"})
        for _ in range(BOOTSTRAP_ATTEMPTS):
            answer = await self.submit(command)
            if answer.body.get("error") != "timeout":
                break
        return answer

    async def introduce_key(self) -> list[int]:
        """Put this instance's key into every events partition's empty ring; the partitions
        where that failed or whose ring holds other keys only (each logged as an error)."""
        await self.follower.ready.wait()
        own = self.signer.key_id
        rings = self.projection.rings
        empty = [
            p for p in range(self.settings.partitions) if p not in rings or not rings[p].signed
        ]
        answers = await asyncio.gather(
            *(self._submit(introduce_key(self.signer, p, 0)) for p in empty)
        )
        failed = []
        for partition, answer in zip(empty, answers, strict=True):
            if not answer.ok:
                failed.append(partition)
                log.error(
                    "events partition %d: could not start its writer-key ring with key %s: %s",
                    partition,
                    own[:16],
                    answer.body.get("message"),
                )
        for partition, ring in sorted(rings.items()):
            if ring.signed and own not in ring.active and partition not in failed:
                failed.append(partition)
                log.error(
                    "events partition %d: its writer-key ring does not hold this instance's key "
                    "%s, so commands for its models will be refused (untrusted_writer): give "
                    "this instance the deployment's writer key (MODELVC_WRITER_KEY=<path of the "
                    "key the other instances use>), or retire/add keys from an instance whose "
                    "key the ring holds",
                    partition,
                    own[:16],
                )
        if empty and not failed:
            log.info("writer key %s is in every events partition's ring", own[:16])
        return sorted(failed)

    async def issue_bootstrap_token(self) -> bool:
        """Issue the bootstrap file's token as the first admin's, unless any token exists.

        True when this instance issued it (or found its own earlier issue repeated).
        The command id comes from the token id, so instances racing issue it once.
        """
        path = self.settings.bootstrap_token_file
        if path is None:
            return False
        await self.follower.ready.wait()
        try:
            with open(path, "rb") as handle:
                token = handle.read(1024).decode("ascii", "replace").strip()
        except OSError as exc:
            log.error("cannot read the bootstrap token file %s: %s", path, exc.strerror)
            return False
        token_id = token_id_of(token)
        if token_id is None:
            log.error("%s holds no modelvc token (%s); no admin token issued", path, TOKEN_FORMAT)
            return False
        security = self.projection.security
        if security is not None and security.tokens:
            return False  # tokens exist: an admin issues the next ones
        command = Command(
            f"bootstrap-token-{token_id}",
            SECURITY_STREAM,
            self.settings.admin_actor,
            int(self.clock() * 1000),
            IssueToken(token_id, self.settings.admin_actor, "admin", token_sha256(token), 0),
            role="admin",
        )
        answer = await self._submit(command)
        if not answer.ok:
            log.error(
                "issuing the bootstrap admin token %s failed: %s",
                token_id,
                answer.body.get("message"),
            )
            return False
        log.info(
            "issued the bootstrap admin token %s for %r (from %s)",
            token_id,
            self.settings.admin_actor,
            path,
        )
        return True

    async def stop(self) -> None:
        """Flush and stop the producer, then close the projection; the tasks are stopped."""
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.producer.stop()
        finally:
            offsets = dict(sorted(self.projection.next_offsets.items()))  # logged: stable order
            self.projection.close()
            self.windows.close()
            log.info("%s stopped cleanly at offsets %s", self.settings.instance_id, offsets)


def bootstrap(
    settings: Settings,
    *,
    projection: Projection | None = None,
    store: ArtifactStore | None = None,
    clock: Callable[[], float] = time.time,
    signer: SigningKey | None = None,
    windows: WindowStore | None = None,
) -> Streams:
    """The collaborators for ``settings``; RocksDB and the writer key (made at first start)
    on disk, and the store MODELVC_ARTIFACTS names, by default. Nothing is reached here:
    ``python -m streams`` passes the store it opened and checked before it serves.

    The metric windows are kept in RocksDB beside the projection, or in memory when the
    caller passes a projection of its own (a test's in-memory fold) and no window store."""
    if windows is None:
        path = settings.data_dir / "monitoring.rocksdb"
        windows = WindowStore.on_disk(path) if projection is None else WindowStore.in_memory()
    signer = signer if signer is not None else WriterKey.load_or_create(settings.writer_key)
    if projection is None:
        # A ring may start only with a key this deployment uses: a forger's is void.
        trusted = settings.trusted_writer_keys | {signer.key_id}
        projection = RocksDBProjection(settings.rocksdb_path, verify=verify, trusted=trusted)
    producer = Producer(settings)
    letters = DeadLetters(producer, settings.dead_letter_topic)
    follower = Follower(settings, projection, letters)
    replies = Replies(follower, producer, letters)
    if store is None:
        store = open_store(settings.artifacts, settings.s3_endpoint)
    ownership = Ownership(lambda: follower.partitions)
    metrics = MetricsFollower(settings, windows, letters)
    folded = projection
    streams = Streams(
        settings=settings,
        projection=projection,
        producer=producer,
        letters=letters,
        follower=follower,
        replies=replies,
        writer=Writer(follower, producer, replies, letters, signer, clock),
        store=store,
        intake=Intake(store, settings.staging_dir, max_bytes=settings.max_model_bytes),
        signer=signer,
        windows=windows,
        metrics=metrics,
        ownership=ownership,
        controller=Controller(
            windows,
            lambda: folded.models,
            ownership.owns,
            # Late-bound: the instance's own submit, signed with its key.
            lambda command: streams.submit(command),
            ready=lambda: follower.ready.is_set() and metrics.ready.is_set(),
            clock=clock,
        ),
        clock=clock,
    )
    metrics.listeners.append(streams.controller.on_windows)
    return streams

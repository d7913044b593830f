"""Which version serves each (model, ref): learned from modelvc.events itself.

The tracker reads the whole events topic from offset 0 (no consumer group)
and folds it with the same pure core as the streams app, then keeps
following it. When a served ref resolves to a new commit, the new artifact is
loaded and verified first; only then does the served version change, between
two batches. A failed load keeps the old version and is retried.

Loading includes re-checking the artifact (its format's validator, then its native
library in a sandbox, then the memory budget ``MODELVC_WORKER_MEMORY_MB`` for a batch
of ``MODELVC_WORKER_MAX_BATCH`` rows), so a file put in the store by hand cannot
poison a worker. A served ref may move between formats (LightGBM, ONNX): the new
version's predictor takes over between two batches like any other. The fold checks
the writers' signatures (``streams.signing.verify``) as the streams app's does, so an
event forged straight into the log moves nothing a worker serves; a ring may start
only with a key of ``MODELVC_TRUSTED_WRITER_KEYS`` (the stack sets it), so a forger
cannot claim a partition by writing its first key. It also folds ``~security``, whose
tokens the worker's REST endpoints accept. Each failure is counted
(``modelvc_artifact_failures_total``) and kept in
:attr:`VersionTracker.failures` until that ref loads, for /healthz.

A served ref that is an alias with an active canary rollout, or a shadow, gets a
:class:`~workers.scoring.Route`: the rollout's candidate (or the shadow commit) is
loaded first, and only then is the route in place, set with the version in one step
(no await between), so a batch never sees half a change. A candidate that will not
load leaves the ref served by its baseline alone, unstamped, and is retried; a shadow
that will not load is counted (``modelvc_shadow_failures_total``) and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from streams.codec import decode_event
from streams.core import refs
from streams.core.errors import VersionGraphError
from streams.core.events import Committed, Merged, ModelEvent
from streams.core.fold import Fold
from streams.core.rollout import BASELINE, CANDIDATE
from streams.core.state import ModelState
from streams.errors import UndecodableMessage
from streams.follow import assigned_consumer
from streams.settings import TRUSTED_KEYS_ENV
from streams.signing import verify
from streams.topics import misplaced
from streams.watermarks import at_end_async
from workers.artifacts import ArtifactLoader, LoadedModel, MemoryBudget
from workers.errors import (
    ArtifactLoadFailed,
    ArtifactUnavailable,
    UnknownModel,
    UnknownRef,
)
from workers.metrics import Metrics
from workers.scoring import Route, Version
from workers.settings import WorkerSettings
from workers.typed import TypedRegistry

log = logging.getLogger("modelvc.workers")


def trusted_keys(settings: WorkerSettings) -> frozenset[str] | None:
    """The writer keys a ring may start with; None (trust on first use, with a warning)
    when none are configured: then whoever writes a ring's first key to Kafka is trusted."""
    keys = settings.topics.trusted_writer_keys
    if keys:
        return keys
    log.warning(
        "%s is not set: this worker trusts the first writer key of each events partition, "
        "whoever wrote it; set it to the streams instances' key id (`modelvc key list`)",
        TRUSTED_KEYS_ENV,
    )
    return None


class VersionTracker:
    def __init__(
        self,
        settings: WorkerSettings,
        loader: ArtifactLoader,
        metrics: Metrics,
        fold: Fold | None = None,
        registry: TypedRegistry | None = None,
    ) -> None:
        """``fold``: the version log folded so far (empty by default: :meth:`follow` reads it
        from offset 0); a test or a benchmark passes one it built, and need not follow.
        ``registry``: the typed feature schemas the scorer decodes, which this tracker
        fills with every signature it sees in the log and every version it loads."""
        self.settings = settings
        self.loader = loader
        self.metrics = metrics
        self.fold = (
            fold if fold is not None else Fold(verify=verify, trusted=trusted_keys(settings))
        )
        self.serving: dict[tuple[str, str | None], Version] = {}
        # Events folded so far, and whether a served ref may be behind the log: a ref first
        # loaded while the log moved it (the load takes seconds; the refresh that move
        # triggered did not know the ref yet) is refreshed on the next turn of follow.
        self._folded = 0
        self._refresh_due = False
        # The served keys with a rollout or a shadow loaded; each route's version is
        # serving[key] (both are set together).
        self.routes: dict[tuple[str, str | None], Route] = {}
        self.ready = asyncio.Event()
        self.switches: list[tuple[float, str, str, str]] = []  # (monotonic, model, ref, commit)
        self._failed: dict[str, str] = {}  # failure label -> the commit that would not load
        # "model@ref" -> the commit that would not load, why, how often, since when.
        self.failures: dict[str, dict[str, Any]] = {}
        self._budget = MemoryBudget(settings.worker_memory_mb << 20, settings.max_batch)
        self.registry = registry if registry is not None else TypedRegistry()
        for state in self.fold.models.values():
            for commit in state.commits.values():
                if commit.signature is not None:
                    self.registry.add(commit.signature)

    def learn(self, event: ModelEvent) -> None:
        """Register the typed schema of a commit's signature the moment the log shows it, so
        a producer that fetched it can publish before this worker ever loads the version."""
        payload = event.payload
        commit = payload.commit if isinstance(payload, Committed | Merged) else None
        if commit is not None and commit.signature is not None:
            self.registry.add(commit.signature)

    # -- resolution ---------------------------------------------------------------
    def resolve(self, model: str, ref: str | None) -> tuple[str, str, str]:
        """(ref name, commit id, artifact digest) that ``ref`` of ``model`` names now."""
        state = self.fold.models.get(model)
        if state is None:
            raise UnknownModel(f"model {model[:64]!r} does not exist in the version log")
        name = ref or refs.default_ref(state)
        try:
            commit_id = refs.resolve(state, name)
        except VersionGraphError as exc:
            # exc.message quotes the ref, already cut short; a feature event's ref is hostile.
            raise UnknownRef(f"model {model[:64]!r}: {exc.message}").about(model) from exc
        return name, commit_id, state.commits[commit_id].artifact_sha256

    async def _load(self, digest: str) -> LoadedModel:
        return await asyncio.get_running_loop().run_in_executor(
            None, self.loader.load, digest, self._budget
        )

    async def version_for(self, model: str, ref: str | None) -> Version:
        """The served version, loading it on first use of this (model, ref)."""
        key = (model, ref)
        current = self.serving.pop(key, None)
        if current is not None:
            self.serving[key] = current  # re-inserted last: the dict is in LRU order
            return current
        name, commit_id, digest = self.resolve(model, ref)
        label = f"{model}@{name}"
        folded = self._folded
        try:
            loaded = await self._load(digest)
        except ArtifactLoadFailed as exc:
            self._note_failure(model, label, commit_id, digest, exc)
            raise ArtifactUnavailable(f"{label} ({commit_id[:10]}): {exc}").about(
                model, commit_id, ref=name
            ) from exc
        self._clear_failure(label)
        version = Version(model, name, commit_id, digest, loaded)
        route = await self._route(key, version, None)
        if key in self.serving:  # another batch loaded it meanwhile
            return self.serving[key]
        if self._folded != folded:
            self._refresh_due = True  # what it resolved to may have moved meanwhile
        while len(self.serving) >= self.settings.max_refs:
            # Each (model, ref) spelling is served, refreshed and labelled in metrics on
            # its own, and `main~0`, `main~00`, ... all resolve: the least recently used
            # one goes (it is resolved afresh if it comes back), so a producer cannot grow
            # this worker without bound, nor lock new refs out.
            oldest = next(iter(self.serving))
            self._unpublish(self.serving.pop(oldest))
            self.routes.pop(oldest, None)
        self.serving[key] = version
        self._set_route(key, route)
        self._publish(version)
        return version

    async def route_for(self, model: str, ref: str | None) -> Route:
        """How ``(model, ref)`` is served now: its version, and its alias's rollout and
        shadow once loaded (loading the version on first use, as :meth:`version_for`)."""
        version = await self.version_for(model, ref)
        route = self.routes.get((model, ref))
        return route if route is not None and route.version is version else Route(version)

    # -- rollouts and shadows -------------------------------------------------------------
    async def _route(
        self, key: tuple[str, str | None], version: Version, previous: Route | None
    ) -> Route:
        """``version``'s route: split by its alias's active rollout when the rollout's
        baseline is what ``version`` serves and its candidate loads, and shadowed by its
        alias's shadow commit when that loads. Reuses what ``previous`` had loaded."""
        model, name = key[0], version.ref
        state = self.fold.models.get(model)
        route = Route(version)
        if state is None:
            return route
        try:
            _, rollout_id, _ = refs.serving(state, name, "", "")
        except VersionGraphError:
            rollout_id = ""  # no longer resolves: refresh keeps the version and says so
        rollout = state.rollouts.get(rollout_id) if rollout_id else None
        candidate_label = f"{model}@{name} rollout candidate"
        if rollout is not None and rollout.baseline == version.commit_id:
            had = previous.candidate if previous is not None else None
            candidate = await self._extra(state, candidate_label, version, rollout.candidate, had)
            if candidate is not None:
                route = replace(
                    route,
                    rollout=rollout,
                    baseline=replace(version, rollout_id=rollout.id, arm=BASELINE),
                    candidate=replace(candidate, rollout_id=rollout.id, arm=CANDIDATE),
                )
        else:
            self._clear_failure(candidate_label)  # none wanted now: nothing failing
        shadow_label = f"{model}@{name} shadow"
        shadow_commit = refs.shadow_of(state, name)
        if shadow_commit is not None:
            had = previous.shadow if previous is not None else None
            shadow = await self._extra(state, shadow_label, version, shadow_commit, had)
            if shadow is None:
                self.metrics.shadow_failed(model, "load")
            else:
                route = replace(route, shadow=replace(shadow, shadow=True))
        else:
            self._clear_failure(shadow_label)
        return route

    async def _extra(
        self,
        state: ModelState,
        label: str,
        version: Version,
        commit_id: str,
        had: Version | None,
    ) -> Version | None:
        """``commit_id`` loaded beside ``version`` (a candidate or a shadow), or None when it
        will not load (noted, and retried as any failed load)."""
        if had is not None and had.commit_id == commit_id:
            return had
        commit = state.commits.get(commit_id)
        if commit is None:  # the fold accepts no rollout or shadow of an unknown commit
            return None
        try:
            loaded = await self._load(commit.artifact_sha256)
        except ArtifactLoadFailed as exc:
            self._note_failure(version.model, label, commit_id, commit.artifact_sha256, exc)
            return None
        self._clear_failure(label)
        return Version(version.model, version.ref, commit_id, commit.artifact_sha256, loaded)

    def _set_route(self, key: tuple[str, str | None], route: Route) -> None:
        if route.rollout is None and route.shadow is None:
            self.routes.pop(key, None)
        else:
            self.routes[key] = route
        self._publish_routes()

    def _publish_routes(self) -> None:
        # Rebuilt whole: routes change only with the log, and two spellings of one ref
        # (the default ref and `production`) share their series.
        self.metrics.routes(
            [
                (
                    r.version.model,
                    r.version.ref,
                    r.rollout.id,
                    r.rollout.candidate,
                    r.rollout.percent,
                )
                for r in self.routes.values()
                if r.rollout is not None
            ],
            [
                (r.shadow.model, r.shadow.ref, r.shadow.commit_id)
                for r in self.routes.values()
                if r.shadow is not None
            ],
        )

    def _note_failure(
        self, model: str, label: str, commit_id: str, digest: str, exc: Exception
    ) -> None:
        previous = self.failures.get(label)
        if previous is None or previous["commit_id"] != commit_id:
            log.warning(
                "cannot load %s for %s: %s (keeping the previous version)", commit_id, label, exc
            )
            previous = {"commit_id": commit_id, "artifact_sha256": digest, "attempts": 0}
            previous["since"] = time.time()  # wall clock: shown to people in /healthz
        attempts = previous["attempts"] + 1
        self.failures.pop(label, None)  # re-inserted last: the dict keeps the newest failures
        if len(self.failures) >= self.settings.max_refs:
            del self.failures[next(iter(self.failures))]
        self.failures[label] = {**previous, "reason": str(exc)[:1000], "attempts": attempts}
        self._failed[label] = commit_id
        self.metrics.artifact_failed(model)

    def _clear_failure(self, label: str) -> None:
        self._failed.pop(label, None)
        self.failures.pop(label, None)

    def _publish(self, version: Version) -> None:
        # Read from the file itself: a legacy commit (no signature in the log) has one too.
        self.registry.add(version.loaded.summary.signature)
        self.metrics.serving(version.model, version.ref, version.commit_id)

    def _unpublish(self, old: Version) -> None:
        # Two spellings (the default ref and `main`, say) can share one series: keep it
        # while any served key still shows it.
        labels = (old.model, old.ref, old.commit_id)
        if all((v.model, v.ref, v.commit_id) != labels for v in self.serving.values()):
            self.metrics.not_serving(*labels)

    async def refresh(self) -> None:
        """Move every served ref whose target changed; keep the old one if loading fails.
        Then its route: the rollout and shadow of its alias now (a rollout's step moves its
        percentage; an abort or a stop removes it)."""
        for key, current in list(self.serving.items()):
            try:
                name, commit_id, digest = self.resolve(*key)
            except (UnknownModel, UnknownRef) as exc:
                log.warning(
                    "%s no longer resolves (%s); still serving %s", key, exc, current.commit_id
                )
                continue
            label = f"{key[0]}@{name}"
            version = current
            if commit_id == current.commit_id:
                self._clear_failure(label)  # moved back to what serves: nothing failing
            else:
                try:
                    loaded = await self._load(digest)
                except ArtifactLoadFailed as exc:
                    self._note_failure(key[0], label, commit_id, digest, exc)
                else:
                    self._clear_failure(label)
                    version = Version(key[0], name, commit_id, digest, loaded)
            route = await self._route(key, version, self.routes.get(key))
            if self.serving.get(key) is not current:
                continue  # evicted or replaced by a batch meanwhile: that one is newer
            # The version and its route together, no await between: see the module doc.
            self.serving[key] = version
            self._set_route(key, route)
            if version is current:
                continue
            self._publish(version)
            self._unpublish(current)
            self.switches.append((time.monotonic(), key[0], name, commit_id))
            self.metrics.switched(key[0])
            log.info("%s@%s now serves %s", key[0], name, commit_id[:12])
        self.loader.forget_except(
            {v.artifact_sha256 for v in self.serving.values()}
            | {
                v.artifact_sha256
                for r in self.routes.values()
                for v in (r.candidate, r.shadow)
                if v is not None
            }
        )

    # -- following the log ----------------------------------------------------------
    def apply(self, event: ModelEvent, partition: int, partitions: int) -> None:
        """Fold one event of the log (read from ``partition`` of ``partitions``)."""
        # The streams app's rule too: a model's history lives on one partition.
        if misplaced(event.model, partition, partitions) is None:
            self.fold.apply(event, partition)
            self.learn(event)
        else:
            self.fold.void(event.model)
        self._folded += 1

    @property
    def refresh_due(self) -> bool:
        """Whether a served ref may be behind the log (:meth:`follow` refreshes then)."""
        return self._refresh_due

    async def follow(self) -> None:
        topic = self.settings.topics.events_topic
        consumer, tps = await assigned_consumer(
            self.settings.topics.access,
            topic,
            {},
            self.settings.fetch_wait_ms,
            f"{self.settings.worker_id}-versions",
            max_poll_records=20000,
        )
        try:
            last_retry = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=20000)
                for tp, messages in batches.items():
                    for message in messages:
                        try:
                            event = decode_event(message.value)
                        except UndecodableMessage as exc:
                            log.warning("skipping undecodable event at %s: %s", message.offset, exc)
                            continue
                        self.apply(event, tp.partition, len(tps))
                if not self.ready.is_set() and await at_end_async(consumer, tps):
                    self.ready.set()
                    log.info("version log caught up: %d models", len(self.fold.models))
                retry_due = self._failed and time.monotonic() - last_retry >= self.settings.retry_s
                if batches or retry_due or self._refresh_due:
                    last_retry = time.monotonic()
                    self._refresh_due = False
                    await self.refresh()
        finally:
            await consumer.stop()

"""Load, faults and the end checks of the 3-broker cluster suite.

- :class:`Writers`: threads committing (half with ``expect_head``) and moving an alias, each
  retrying a failed request the way a user would: the same command id again.
- :class:`FeatureStream`: a paced stream of feature events, a few of them unscorable.
- :class:`Ledger`: the one checker that every feature event has exactly one outcome (a
  committed prediction or a dead letter), read ``read_committed``.
- :func:`lost_writes`, :func:`replay_matches_live`: no acknowledged write lost; the
  audit replay is clean and its digest is the live one.
- :func:`partition_states`, :func:`wait_fully_replicated`: the cluster as the admin sees it.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from modelvc import audit
from modelvc.client import Client, ClientError
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from streams.codec import DEAD_LETTERS, FEATURES, PREDICTIONS, decode_event
from streams.core.events import AliasMoved, Committed, ModelEvent
from streams.errors import UndecodableMessage
from streams.kafka_access import KafkaAccess
from streams.logreader import log_consumer, read_topic, topic_partitions
from streams.settings import Settings
from streams.topics import plan_topics
from streams.watermarks import at_end
from tests.conftest import BROKERS_ENV

BROKERS = 3
SEED_ENV = "MODELVC_CLUSTER_SEED"
DEFAULT_SEED = 20_250_909
CLUSTER_ENV = "MODELVC_TEST_CLUSTER"
# What a user retries with the same command id: unreachable or too slow (0), the service's
# "no answer in time" (504) and "try later" (502/503), and "internal" (500), which a Kafka
# error mid-append answers; the command id makes every one of these safe to send again.
RETRYABLE = frozenset({0, 500, 502, 503, 504})
RETRY_FOR_S = 120.0
# Refusals a writer expects under contention: not acknowledged, so not checked.
EXPECTED_REFUSALS = frozenset({"stale_head", "up_to_date", "write_raced"})
FEATURE_NAMES = [f"Column_{j}" for j in range(4)]  # tests.conftest.train_model's features


def cluster_selected() -> bool:
    """MODELVC_TEST_CLUSTER=1 runs the suite, =0 never; unset: when the Kafka tier runs."""
    flag = os.environ.get(CLUSTER_ENV, "")
    if flag in ("0", "1"):
        return flag == "1"
    return "kafka" in os.environ.get(BROKERS_ENV, "")


# -- the cluster, as the admin client sees it ---------------------------------------------


@dataclass(frozen=True)
class PartitionState:
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def partition_states(
    access: KafkaAccess, topics: list[str]
) -> dict[tuple[str, int], PartitionState]:
    admin = KafkaAdminClient(**access.admin(request_timeout_ms=10_000))
    try:
        return {
            (t.get("topic", t.get("name")), int(p["partition_index"])): PartitionState(
                int(p["leader_id"]),
                tuple(sorted(p["replica_nodes"])),
                tuple(sorted(p["isr_nodes"])),
            )
            for t in admin.describe_topics(topics)
            for p in t["partitions"]
        }
    finally:
        admin.close()


def min_insync(access: KafkaAccess, topics: list[str]) -> dict[str, str]:
    """Each topic's effective min.insync.replicas (its own, or the broker default)."""
    admin = KafkaAdminClient(**access.admin(request_timeout_ms=10_000))
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        described = admin.describe_configs(resources, config_filter="all")
        return {
            name: str(entries["min.insync.replicas"]["value"])
            for name, entries in (described.get("topic") or {}).items()
            if "min.insync.replicas" in entries
        }
    finally:
        admin.close()


def all_topics(settings: Settings) -> list[str]:
    return [spec.name for spec in plan_topics(settings, BROKERS)]


def replicated(settings: Settings) -> None:
    """Every topic the stack created has 3 replicas and min.insync.replicas 2 (issue 9)."""
    topics = all_topics(settings)
    factors = {
        topic: len(state.replicas)
        for (topic, _), state in partition_states(settings.access, topics).items()
    }
    insync = min_insync(settings.access, topics)
    wrong = {
        t: (factors.get(t), insync.get(t))
        for t in topics
        if (factors.get(t), insync.get(t)) != (BROKERS, "2")
    }
    assert not wrong, (
        f"topics created with (replication factor, min.insync.replicas) {wrong}, not "
        f"({BROKERS}, '2'): streams/topics.py must create them from Settings.replication_factor"
    )


def wait_fully_replicated(access: KafkaAccess, topics: list[str], timeout: float = 120.0) -> None:
    """Until every partition of ``topics`` has a leader and all its replicas in sync."""
    deadline = time.monotonic() + timeout
    lagging: dict[tuple[str, int], PartitionState] = {}
    while time.monotonic() < deadline:
        try:
            states = partition_states(access, topics)
        except Exception as exc:  # the admin client may not answer mid-failover
            lagging = {("?", -1): PartitionState(-1, (), ())}
            print(f"describe_topics failed ({exc!r}); retrying")
            time.sleep(0.5)
            continue
        lagging = {k: s for k, s in states.items() if s.leader < 0 or len(s.isr) < BROKERS}
        if states and not lagging:
            return
        time.sleep(0.5)
    raise AssertionError(
        f"partitions not back to {BROKERS} in-sync replicas in {timeout}s: {lagging}"
    )


# -- writers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Acknowledged:
    """A write the service answered with success: it must be in the log, once."""

    model: str
    event: str
    seq: int
    head: str
    ref: str
    command_id: str


@dataclass
class WriteLog:
    acknowledged: list[Acknowledged] = field(default_factory=list)
    retries: Counter[int] = field(default_factory=Counter)  # by HTTP status (0: unreachable)
    refusals: Counter[str] = field(default_factory=Counter)  # expected under contention
    failures: list[str] = field(default_factory=list)  # anything else: a finding

    def merge(self, other: WriteLog) -> None:
        self.acknowledged += other.acknowledged
        self.retries.update(other.retries)
        self.refusals.update(other.refusals)
        self.failures += other.failures

    def summary(self) -> str:
        return (
            f"{len(self.acknowledged)} acknowledged, retries by status {dict(self.retries)}, "
            f"refusals {dict(self.refusals)}, failures {len(self.failures)}"
        )


def send(
    call: Callable[[str], Any], log: WriteLog, command_id: str | None = None, what: str = ""
) -> dict[str, Any] | None:
    """``call(command_id)`` until it answers, re-sending the same id after a retryable error.

    Returns the receipt; None after an expected refusal (counted); a failure is recorded.
    """
    command_id = command_id or f"c-{uuid.uuid4().hex}"
    deadline = time.monotonic() + RETRY_FOR_S
    pause = 0.1
    while True:
        try:
            answer = dict(call(command_id))
        except ClientError as exc:
            code = str(exc.body.get("error", ""))
            if exc.status in RETRYABLE and time.monotonic() < deadline:
                log.retries[exc.status] += 1
                time.sleep(pause)
                pause = min(2.0, pause * 2)
                continue
            if code in EXPECTED_REFUSALS:
                log.refusals[code] += 1
                return None
            log.failures.append(f"{what} {command_id}: {exc.status} {exc.body}")
            return None
        log.acknowledged.append(
            Acknowledged(
                answer["model"],
                answer["event"],
                int(answer["seq"]),
                str(answer["head"]),
                str(answer["ref"]),
                command_id,
            )
        )
        return answer


def read(call: Callable[[], Any], log: WriteLog) -> Any:
    """A query, retried while the service cannot answer (as during a failover)."""
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            return call()
        except ClientError as exc:
            if exc.status not in RETRYABLE or time.monotonic() > deadline:
                raise
            log.retries[exc.status] += 1
            time.sleep(0.2)


class Writers:
    """``threads`` writers over ``models`` (two per model): even ones commit blindly, odd
    ones compare-and-set (``expect_head``); now and then each moves the production alias."""

    def __init__(
        self,
        url: str,
        token: str,
        models: list[str],
        digest: str,
        rng: random.Random,
        threads: int = 8,
    ) -> None:
        self.url = url
        self.token = token
        self.models = models
        self.digest = digest
        self.threads = threads
        self.seeds = [rng.getrandbits(64) for _ in range(threads)]
        self.stopping = threading.Event()
        self.logs = [WriteLog() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"writer-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> WriteLog:
        self.stopping.set()
        for t in self._threads:
            t.join(timeout=RETRY_FOR_S + 60)
        assert not any(t.is_alive() for t in self._threads), "a writer thread hangs"
        total = WriteLog()
        for log in self.logs:
            total.merge(log)
        return total

    def _run(self, i: int) -> None:
        rng = random.Random(self.seeds[i])
        log = self.logs[i]
        model = self.models[i % len(self.models)]
        cas = i % 2 == 1
        client = Client(self.url, timeout=30.0, token=self.token)
        n = 0
        head: str | None = None
        try:
            while not self.stopping.is_set():
                n += 1
                if rng.random() < 0.1:
                    send(
                        lambda cid: client.set_alias(model, "production", "main", command_id=cid),
                        log,
                        what=f"writer-{i} alias {model}",
                    )
                elif cas:
                    if head is None:
                        head = read(lambda: client.refs(model), log)["branches"]["main"]
                    answer = send(
                        lambda cid, h=head, msg=f"w{i}-{n}": client.commit(
                            model, self.digest, msg, expect_head=h, command_id=cid
                        ),
                        log,
                        what=f"writer-{i} cas {model}",
                    )
                    # Stale (another writer moved main): read it again and try anew.
                    head = answer["head"] if answer else None
                else:
                    send(
                        lambda cid, msg=f"w{i}-{n}": client.commit(
                            model, self.digest, msg, command_id=cid
                        ),
                        log,
                        what=f"writer-{i} commit {model}",
                    )
                time.sleep(rng.uniform(0.0, 0.05))
        except Exception as exc:  # a thread's crash must fail the test, not vanish
            log.failures.append(f"writer-{i} crashed: {exc!r}")


# -- the feature stream --------------------------------------------------------------------


class FeatureStream:
    """``count`` feature events of ``model``, published at an even pace over ``seconds``.

    About 1 in 100 is unscorable (a feature missing or not a number): the worker must
    dead-letter those. Which ones, and every value, come from ``rng``.
    """

    def __init__(
        self,
        access: KafkaAccess,
        topic: str,
        model: str,
        count: int,
        seconds: float,
        rng: random.Random,
    ) -> None:
        self.access, self.topic, self.model = access, topic, model
        self.count, self.seconds = count, seconds
        self.seed = rng.getrandbits(64)
        self.sent: list[str] = []
        self.unscorable: set[str] = set()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="features", daemon=True)

    def start(self) -> FeatureStream:
        self._thread.start()
        return self

    def join(self, timeout: float = 300.0) -> FeatureStream:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the feature stream did not finish"
        if self.error is not None:
            raise AssertionError(f"publishing features failed: {self.error!r}")
        return self

    def _run(self) -> None:
        rng = random.Random(self.seed)
        chunk = 200
        pause = self.seconds / max(1, self.count // chunk)
        try:
            with FeatureProducer(self.access, self.topic) as producer:
                for i in range(self.count):
                    features: dict[str, Any] = {n: rng.gauss(0.0, 1.0) for n in FEATURE_NAMES}
                    event_id = f"ev-{self.seed:x}-{i}"
                    if rng.random() < 0.01:
                        if rng.random() < 0.5:
                            del features[rng.choice(FEATURE_NAMES)]
                        else:
                            features[rng.choice(FEATURE_NAMES)] = "not a number"
                        self.unscorable.add(event_id)
                    self.sent.append(
                        producer.publish(
                            self.model, features, entity_key=f"e{i % 97}", event_id=event_id
                        )
                    )
                    if (i + 1) % chunk == 0:
                        producer.flush()
                        time.sleep(pause)
        except BaseException as exc:
            self.error = exc


# -- the one accounting checker ------------------------------------------------------------


Where = tuple[int, int]  # (partition, offset) of a feature event


@dataclass
class Ledger:
    """Every feature event and its outcomes, read ``read_committed`` from the beginning.

    An outcome is a prediction (by its source coordinates) or a worker's dead letter (by
    the coordinates it names). ``problems()`` is empty when each event has exactly one.
    """

    settings: Settings
    events: dict[Where, str] = field(default_factory=dict)  # -> feature event id
    outcomes: dict[Where, list[str]] = field(default_factory=lambda: defaultdict(list))
    strays: list[str] = field(default_factory=list)  # outcomes naming no feature event
    undecodable: list[str] = field(default_factory=list)
    # Where each partition's reading stopped, when the outcomes did not settle in time.
    stopped_at: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    dead_letters: int = 0
    predictions: int = 0

    def read(self, expected: int, timeout: float = 240.0) -> Ledger:
        """Read until ``expected`` events each have an outcome and every partition is read
        to its end (an open transaction holds a read_committed reader back: it counts as
        not done), or ``timeout``."""
        s = self.settings
        consumer = log_consumer(s.access, max_poll_records=10_000)
        try:
            tps = [
                tp
                for topic in (s.features_topic, s.predictions_topic, s.dead_letter_topic)
                for tp in topic_partitions(consumer, topic)
            ]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, 0)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=500).items():
                    for r in records:
                        self._take(tp, r.offset, r.value)
                if self._settled(expected) and at_end(consumer, tps):
                    return self
            self.stopped_at = {
                f"{tp.topic}[{tp.partition}]": (consumer.position(tp), consumer.highwater(tp))
                for tp in tps
            }
            return self
        finally:
            consumer.close()

    def _settled(self, expected: int) -> bool:
        return len(self.events) >= expected and all(w in self.outcomes for w in self.events)

    def _take(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        s = self.settings
        where = f"{tp.topic}[{tp.partition}]@{offset}"
        try:
            if tp.topic == s.features_topic:
                self.events[(tp.partition, offset)] = FEATURES.decode(value)["event_id"]  # type: ignore[arg-type]
            elif tp.topic == s.predictions_topic:
                p = PREDICTIONS.decode(value)  # type: ignore[arg-type]
                self.predictions += 1
                if p["source_topic"] != s.features_topic:
                    self.strays.append(f"{where}: prediction of {p['source_topic']}")
                self.outcomes[(p["source_partition"], p["source_offset"])].append(
                    f"prediction {p['prediction_id']} {p['scores']}"
                )
            else:
                letter = DEAD_LETTERS.decode(value)  # type: ignore[arg-type]
                if letter["topic"] == s.features_topic:
                    self.dead_letters += 1
                    self.outcomes[(letter["partition"], letter["offset"])].append(
                        f"dead letter {letter['reason'][:80]}"
                    )
        except UndecodableMessage as exc:
            self.undecodable.append(f"{where}: {exc}")

    def problems(self) -> list[str]:
        missing = [w for w in self.events if w not in self.outcomes]
        repeated = {w: o for w, o in self.outcomes.items() if len(o) > 1}
        strays = self.strays + [
            f"outcome for no feature event at {w}" for w in self.outcomes if w not in self.events
        ]
        found = []
        if missing:
            found.append(f"{len(missing)} feature events with no outcome, e.g. {missing[:5]}")
        if repeated:
            sample = dict(list(repeated.items())[:3])
            found.append(
                f"{len(repeated)} feature events with more than one outcome, e.g. {sample}"
            )
        if strays:
            found.append(f"{len(strays)} strays, e.g. {strays[:5]}")
        if self.undecodable:
            found.append(f"undecodable: {self.undecodable[:5]}")
        return found

    def summary(self) -> str:
        return (
            f"{len(self.events)} feature events, {self.predictions} predictions, "
            f"{self.dead_letters} dead letters"
        )


def account_for(stack: Stack, streams: Iterable[FeatureStream], timeout: float = 240.0) -> Ledger:
    """Each feature event published has exactly one committed prediction or dead letter."""
    streams = list(streams)
    expected = sum(len(s.sent) for s in streams)
    ledger = Ledger(stack.settings).read(expected, timeout)
    problems = ledger.problems()
    sent = Counter(i for s in streams for i in s.sent)
    published = Counter(ledger.events.values())
    if published != sent:
        problems.append(
            f"the features topic holds {sum(published.values())} events ({len(published)} ids) "
            f"but {sum(sent.values())} were published ({len(sent)} ids)"
        )
    letters = {
        ledger.events[w]
        for w, o in ledger.outcomes.items()
        if o[0].startswith("dead") and w in ledger.events
    }
    unscorable = set().union(*(s.unscorable for s in streams))
    if letters != unscorable:
        problems.append(f"dead-lettered {len(letters)} events, {len(unscorable)} were unscorable")
    assert not problems, (
        f"{ledger.summary()}: "
        + "; ".join(problems)
        + f"; (position, high watermark) where reading stopped: {ledger.stopped_at}"
    )
    return ledger


# -- the log: no acknowledged write lost, replay equals live --------------------------------


def lost_writes(settings: Settings, acknowledged: list[Acknowledged]) -> list[str]:
    """Acknowledged writes missing from the events log, or applied twice."""
    by_seq: dict[tuple[str, int], ModelEvent] = {}
    applied: Counter[tuple[str, str]] = Counter()
    for r in read_topic(settings.access, settings.events_topic):
        event = decode_event(r.value)  # type: ignore[arg-type]
        if (event.model, event.seq) in by_seq:
            continue  # the same event twice (a producer retry): the fold skips it
        by_seq[(event.model, event.seq)] = event
        applied[(event.model, event.command_id)] += 1
    problems = [f"command {k[1]} of {k[0]} applied {n} times" for k, n in applied.items() if n > 1]
    for ack in acknowledged:
        found = by_seq.get((ack.model, ack.seq))
        if found is None or found.command_id != ack.command_id:
            problems.append(f"lost: {ack}")
            continue
        payload = found.payload
        if ack.event == "Committed" and not (
            isinstance(payload, Committed) and payload.commit.id == ack.head
        ):
            problems.append(f"commit {ack.head} answered, log has {found.type}: {ack}")
        if ack.event == "AliasMoved" and not (
            isinstance(payload, AliasMoved) and payload.to_commit == ack.head
        ):
            problems.append(f"alias move to {ack.head} answered, log has {found.type}: {ack}")
    return problems


def replay_matches_live(
    stack: Stack, url: str | None = None, timeout: float = 60.0
) -> audit.Replay:
    """``audit replay`` is clean and its digest is the live service's (once it caught up)."""
    replayed = audit.replay(stack.settings.access, stack.settings.events_topic)
    assert replayed.clean, f"audit replay: {replayed.violations[:5]} {replayed.problems[:5]}"
    client = stack.client(url, timeout=30.0)
    deadline = time.monotonic() + timeout
    live = ""
    while time.monotonic() < deadline:
        try:
            live = client.digest()["digest"]
        except ClientError as exc:
            live = f"unanswered ({exc.status})"
        if live == replayed.digest:
            return replayed
        time.sleep(0.5)
    raise AssertionError(f"replayed digest {replayed.digest} != live {live}")


def worker_health(stack: Stack, name: str = "worker-1") -> dict[str, Any]:
    with urllib.request.urlopen(stack.worker_url(name) + "/healthz", timeout=5) as response:
        return dict(json.load(response))

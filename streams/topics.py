"""Creating and checking the topics modelvc needs (idempotent).

The top half is pure: what to create (partitions, replicas, configs) and what a topic
that already exists must be, as findings that refuse or warn. The bottom half asks
the cluster (brokers, topics, their configs), reports the findings and creates what
is missing. A refusal found before creating creates nothing: the operator fixes the
topic and starts again. A topic that appears while modelvc creates it is checked too.

What is refused, and why (the rest is a warning in the log):

- ``events`` is the source of truth. Finite retention or compaction would drop
  history; fewer replicas than asked loses acknowledged commits with a broker; a
  partition count unlike ``commands`` breaks the single-writer rule (commands
  partition N is decided onto events partition N).
- ``dead-letter`` is the only record of inputs that were refused: compaction would
  collapse letters about the same source, too few replicas loses them. Its retention
  only warns: an operator may expire letters after triage, on purpose.
- every topic: ``min.insync.replicas`` above its replicas fails every ``acks=all``
  write, so modelvc would fail at its first write anyway.
- ``metrics`` holds the monitor's windows, keyed by model: compaction would keep one
  window per model, so it is refused. Finite retention or too few replicas only warn:
  the windows are derived from predictions and labels, and what expires is history
  that `modelvc monitor` and the rollout controller no longer see.
- ``commands``, ``replies``, ``features``, ``labels``, ``predictions`` and
  ``shadow-predictions`` are an hour's or a week's traffic, which clients retry or
  producers resend: too few replicas or compaction warn. They are still read with the
  settings the operator gave them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from streams.core.signatures import keys_partition
from streams.errors import ReplicationUnavailable, UnsafeTopic
from streams.settings import Settings

log = logging.getLogger("modelvc.topics")

# The event log is the source of truth: never expire or compact it.
_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
# cleanup.policy is Kafka's default, said anyway: Tansu then reports it, so it is checked.
_WEEK = {"retention.ms": str(7 * 24 * 3600 * 1000), "cleanup.policy": "delete"}
_HOUR = {"retention.ms": str(3600 * 1000), "cleanup.policy": "delete"}
# Three copies let one broker be down while acks=all writes go on and are still on two
# brokers when acknowledged (min.insync 2). More would cost writes latency for little.
MAX_DEFAULT_REPLICAS = 3
MIN_INSYNC = 2
# The settings an existing topic is checked for; Tansu reports only those a topic was
# created with, Apache Kafka every one (its broker defaults included).
CHECKED_CONFIGS = ("retention.ms", "retention.bytes", "cleanup.policy", "min.insync.replicas")
# A reported value longer than this is not a Kafka setting; only its start is quoted.
_MAX_VALUE = 100

Role = Literal[
    "events",
    "commands",
    "replies",
    "dead-letter",
    "features",
    "labels",
    "predictions",
    "shadow-predictions",
    "metrics",
    "extra",
]
Severity = Literal["refuse", "warn", "ignore"]


@dataclass(frozen=True)
class Rules:
    """How seriously a role takes each way an existing topic can differ (module docstring)."""

    finite_retention: Severity
    compaction: Severity
    few_replicas: Severity


RULES: dict[Role, Rules] = {
    "events": Rules("refuse", "refuse", "refuse"),
    "dead-letter": Rules("warn", "refuse", "refuse"),
    "commands": Rules("ignore", "warn", "warn"),
    "replies": Rules("ignore", "warn", "warn"),
    "features": Rules("ignore", "warn", "warn"),
    "labels": Rules("ignore", "warn", "warn"),
    "predictions": Rules("ignore", "warn", "warn"),
    "shadow-predictions": Rules("ignore", "warn", "warn"),
    "metrics": Rules("warn", "refuse", "warn"),
    "extra": Rules("ignore", "warn", "warn"),
}


@dataclass(frozen=True)
class TopicSpec:
    """A topic as modelvc creates it."""

    name: str
    role: Role
    partitions: int
    replicas: int
    config: Mapping[str, str]


@dataclass(frozen=True)
class Observed:
    """An existing topic as the cluster describes it; ``config`` holds what it reported."""

    name: str
    partitions: int
    replicas: int  # the fewest distinct brokers holding a partition
    config: Mapping[str, str]


@dataclass(frozen=True)
class Finding:
    topic: str
    problem: str
    fix: str
    severity: Severity

    def __str__(self) -> str:
        return f"{self.topic}: {self.problem}; {self.fix}"


def home_partition(model: str, partitions: int) -> int:
    """The partition of the commands and events topics that ``model`` lives on.

    Kafka's default partitioner for a keyed record (murmur2 of the key, as the Java,
    kafka-python and aiokafka clients all compute it): commands are keyed by model,
    and the single writer of commands partition N appends to events partition N.
    The one exception is ``~keys.P``, the writer-key ring of partition P, which lives
    on P itself (so "was this key active when the event was written" is decided by
    offset order in one partition); its producers name the partition explicitly.
    A ring of a partition the topic does not have (P >= partitions) has no home:
    ``misplaced`` refuses it on every partition, and this returns P all the same.
    """
    ring = keys_partition(model)
    if ring is not None:
        return ring
    hashed: int = murmur2(model.encode("utf-8", "surrogatepass"))
    return (hashed & 0x7FFFFFFF) % partitions


def misplaced(model: str, partition: int, partitions: int) -> str | None:
    """Why a command or event of ``model`` read from ``partition`` is not where it belongs.

    A model's history must live on one partition: read from two, its order would
    depend on which partition a reader fetched first, and readers would disagree.
    """
    home = home_partition(model, partitions)
    if home == partition and home < partitions:
        return None
    if keys_partition(model) is not None:
        if home >= partitions:
            return (
                f"{model[:64]!r} is the writer-key ring of partition {home}, which a topic "
                f"of {partitions} partitions does not have; no reader trusts it"
            )
        return (
            f"{model[:64]!r} is the writer-key ring of partition {home}, not {partition}; "
            f"its commands and events must be produced to partition {home} explicitly"
        )
    return (
        f"model {model[:64]!r} lives on partition {home} of {partitions}, not {partition}; "
        "a producer must key commands by the model name (Kafka's default partitioner)"
    )


# ---------------------------------------------------------------------------
# Pure part: the plan and the checks
# ---------------------------------------------------------------------------


def wanted_replicas(asked: int | None, brokers: int) -> int:
    """``MODELVC_REPLICATION_FACTOR`` if set, else min(3, brokers in the cluster)."""
    return asked if asked is not None else max(1, min(MAX_DEFAULT_REPLICAS, brokers))


def topic_config(base: Mapping[str, str], replicas: int) -> dict[str, str]:
    """``base`` plus ``min.insync.replicas=2`` where there are 3 or more replicas.

    With fewer, 2 in sync would stop every write while one broker is down (or always,
    with one replica), so the broker's default stays.
    """
    if replicas >= MAX_DEFAULT_REPLICAS:
        return {**base, "min.insync.replicas": str(MIN_INSYNC)}
    return dict(base)


def plan_topics(
    settings: Settings, brokers: int, extra: Mapping[str, int] | None = None
) -> list[TopicSpec]:
    """Every topic modelvc needs, as it would create it on a cluster of ``brokers``."""
    replicas = wanted_replicas(settings.replication_factor, brokers)
    wanted: list[tuple[str, Role, int, Mapping[str, str]]] = [
        (settings.events_topic, "events", settings.partitions, _FOREVER),
        (settings.commands_topic, "commands", settings.partitions, _WEEK),
        (settings.replies_topic, "replies", 1, _HOUR),
        (settings.dead_letter_topic, "dead-letter", 1, _FOREVER),
        (settings.features_topic, "features", settings.partitions, _WEEK),
        (settings.predictions_topic, "predictions", settings.partitions, _WEEK),
        (settings.labels_topic, "labels", settings.partitions, _WEEK),
        (
            settings.shadow_predictions_topic,
            "shadow-predictions",
            settings.partitions,
            _WEEK,
        ),
        (settings.metrics_topic, "metrics", settings.partitions, _FOREVER),
    ]
    wanted += [(name, "extra", count, _WEEK) for name, count in (extra or {}).items()]
    return [
        TopicSpec(name, role, count, replicas, topic_config(config, replicas))
        for name, role, count, config in wanted
    ]


def check_creatable(missing: Sequence[TopicSpec], asked: int | None, brokers: int) -> None:
    """Refuse to create topics with more replicas than the cluster has brokers.

    Kafka would refuse too, with less to go on; Tansu would accept and keep one copy.
    """
    if not missing or asked is None or asked <= brokers:
        return
    names = ", ".join(spec.name for spec in missing)
    raise ReplicationUnavailable(
        f"MODELVC_REPLICATION_FACTOR={asked} but the cluster has {brokers} broker(s) up, "
        f"so {names} cannot be created with {asked} replicas; start the missing brokers, "
        f"set MODELVC_REPLICATION_FACTOR={brokers} or lower, or unset it for min(3, brokers)"
    )


def kafka_tool(tool: str, bootstrap: str, sasl: bool, *args: str) -> str:
    """A Kafka command line an operator can run against this cluster."""
    server = bootstrap.split(",")[0]
    login = " --command-config <your SASL client.properties>" if sasl else ""
    return " ".join([f"{tool} --bootstrap-server {server}{login}", *args])


def _retention_is_finite(value: str) -> bool:
    # -1 is "forever"; a value that is not an integer cannot be shown to be forever.
    try:
        return int(value) >= 0
    except ValueError:
        return True


def _quoted(value: str) -> str:
    return repr(value[:_MAX_VALUE])


def check_topic(spec: TopicSpec, seen: Observed, bootstrap: str, sasl: bool) -> list[Finding]:
    """What is wrong with an existing topic for its role; [] when it can be used as is."""
    rules = RULES[spec.role]
    findings: list[Finding] = []

    def alter(config: str) -> str:
        return kafka_tool(
            "kafka-configs.sh",
            bootstrap,
            sasl,
            "--alter --entity-type topics --entity-name",
            spec.name,
            "--add-config",
            config,
        )

    recreate = (
        "or, while it holds nothing you need, delete it "
        f"({kafka_tool('kafka-topics.sh', bootstrap, sasl, '--delete --topic', spec.name)}) "
        "and let modelvc create it"
    )
    finite = {
        key: seen.config[key]
        for key in ("retention.ms", "retention.bytes")
        if key in seen.config and _retention_is_finite(seen.config[key])
    }
    if finite and rules.finite_retention != "ignore":
        shown = ", ".join(f"{k}={_quoted(v)}" for k, v in finite.items())
        findings.append(
            Finding(
                spec.name,
                f"its retention is finite ({shown}): the broker would delete older "
                f"{spec.role} records, which modelvc keeps forever",
                f"keep them with {alter('retention.ms=-1,retention.bytes=-1')} "
                "(records already deleted stay lost: restore them from the archive), " + recreate,
                rules.finite_retention,
            )
        )
    policy = seen.config.get("cleanup.policy")
    if (
        policy is not None
        and "compact" in (p.strip() for p in policy.split(","))
        and rules.compaction != "ignore"
    ):
        findings.append(
            Finding(
                spec.name,
                f"cleanup.policy={_quoted(policy)} compacts it: the broker keeps only "
                f"the last {spec.role} record of each key",
                f"stop compacting with {alter('cleanup.policy=delete')} "
                "(records already compacted stay lost), " + recreate,
                rules.compaction,
            )
        )
    if seen.replicas < spec.replicas and rules.few_replicas != "ignore":
        reassign = kafka_tool(
            "kafka-reassign-partitions.sh",
            bootstrap,
            sasl,
            "--reassignment-json-file <plan with",
            f"{spec.replicas} brokers per partition> --execute",
        )
        findings.append(
            Finding(
                spec.name,
                f"it has {seen.replicas} replica(s) but {spec.replicas} are asked "
                "(MODELVC_REPLICATION_FACTOR, or min(3, brokers) when unset): a broker "
                "failure can lose acknowledged records",
                f"add replicas with {reassign}, or accept {seen.replicas} with "
                f"MODELVC_REPLICATION_FACTOR={seen.replicas}, " + recreate,
                rules.few_replicas,
            )
        )
    findings += _check_min_insync(spec, seen, alter)
    return findings


def _check_min_insync(
    spec: TopicSpec, seen: Observed, alter: Callable[[str], str]
) -> list[Finding]:
    raw = seen.config.get("min.insync.replicas")
    if raw is None:
        return []
    try:
        min_insync = int(raw)
    except ValueError:
        min_insync = 0
    if min_insync > seen.replicas:
        return [
            Finding(
                spec.name,
                f"min.insync.replicas={_quoted(raw)} is above its {seen.replicas} "
                "replica(s): every acks=all write would fail with NotEnoughReplicas",
                f"lower it with {alter(f'min.insync.replicas={min(seen.replicas, MIN_INSYNC)}')}",
                "refuse",
            )
        ]
    if seen.replicas >= MAX_DEFAULT_REPLICAS and min_insync < MIN_INSYNC:
        return [
            Finding(
                spec.name,
                f"min.insync.replicas={_quoted(raw)} with {seen.replicas} replicas: "
                "an acknowledged write may be on one broker only",
                f"raise it with {alter(f'min.insync.replicas={MIN_INSYNC}')}",
                "warn",
            )
        ]
    return []


def check_partition_pair(
    settings: Settings, counts: Mapping[str, int], bootstrap: str, sasl: bool
) -> Finding | None:
    """Commands and events must have as many partitions (existing counts, or planned ones)."""
    events, commands = settings.events_topic, settings.commands_topic
    if counts.get(events) == counts.get(commands):
        return None
    delete = kafka_tool("kafka-topics.sh", bootstrap, sasl, "--delete --topic", commands)
    return Finding(
        events,
        f"it has {counts.get(events)} partitions but {commands} has {counts.get(commands)} "
        "(commands partition N is decided onto events partition N)",
        f"keep the events topic as it is (a model's partition is its name's hash modulo "
        f"the count): set MODELVC_PARTITIONS={counts.get(events)} and, if {commands} "
        f"exists with another count, delete it ({delete}) and let modelvc create it",
        "refuse",
    )


def unreported(spec: TopicSpec, seen: Observed) -> list[str]:
    """The checked settings the broker did not report for an existing topic."""
    rules = RULES[spec.role]
    # With one replica there is no in-sync set to speak of (Tansu's case): not worth a line.
    needed = ["min.insync.replicas"] if seen.replicas > 1 else []
    if rules.finite_retention != "ignore":
        needed += ["retention.ms", "retention.bytes"]
    if rules.compaction != "ignore":
        needed.append("cleanup.policy")
    return [key for key in needed if key not in seen.config]


def check_all(
    specs: Sequence[TopicSpec],
    seen: Mapping[str, Observed],
    settings: Settings,
    only: Collection[str] | None = None,
) -> list[Finding]:
    """Every finding about the topics that exist (or ``only`` those of them), and about
    the commands/events pair (a topic not seen counts with the partitions planned)."""
    sasl = settings.kafka_security == "sasl"
    findings = [
        f
        for spec in specs
        if spec.name in seen and (only is None or spec.name in only)
        for f in check_topic(spec, seen[spec.name], settings.bootstrap, sasl)
    ]
    counts = {
        spec.name: seen[spec.name].partitions if spec.name in seen else spec.partitions
        for spec in specs
    }
    pair = check_partition_pair(settings, counts, settings.bootstrap, sasl)
    return findings + ([pair] if pair else [])


def refusal(findings: Iterable[Finding]) -> str | None:
    """The one message that stops startup, or None when nothing is refused."""
    refused = [str(f) for f in findings if f.severity == "refuse"]
    if not refused:
        return None
    return "refusing to use existing topics: " + " | ".join(refused)


# ---------------------------------------------------------------------------
# Shell: ask the cluster, report, create
# ---------------------------------------------------------------------------


def ensure_topics(settings: Settings, extra: dict[str, int] | None = None) -> None:
    """Check the topics that exist, then create the missing ones (module docstring).

    Raises :class:`UnsafeTopic` when an existing topic is refused and
    :class:`ReplicationUnavailable` when a topic cannot have the replicas asked.
    """
    admin = KafkaAdminClient(**settings.access.admin())
    try:
        brokers = max(1, len(admin.describe_cluster()["brokers"]))
        specs = plan_topics(settings, brokers, extra)
        existing = set(admin.list_topics())
        seen = _observe(admin, settings, [s for s in specs if s.name in existing])
        _report(check_all(specs, seen, settings))
        missing = [s for s in specs if s.name not in existing]
        check_creatable(missing, settings.replication_factor, brokers)
        raced = _create(admin, missing)
        # Clients start right after this: every topic created must have its leaders.
        admin.wait_for_topics([spec.name for spec in missing], timeout_ms=30_000)
        # A topic that appeared meanwhile (another instance, a hand, or metadata that
        # had not caught up with a creation) is checked like any existing one; the pair
        # is checked again with the counts the cluster now has.
        pair = {settings.events_topic, settings.commands_topic}
        again = [s for s in specs if s.name in raced or (s.name in pair and s in missing)]
        seen = {**seen, **_observe(admin, settings, again)}
        _report(check_all(specs, seen, settings, only=raced))
    finally:
        admin.close()


def _create(admin: KafkaAdminClient, missing: Sequence[TopicSpec]) -> set[str]:
    """Create ``missing``; the names of those that turned out to exist already."""
    raced: set[str] = set()
    for spec in missing:
        try:
            admin.create_topics(
                {
                    spec.name: {
                        "num_partitions": spec.partitions,
                        "replication_factor": spec.replicas,
                        "configs": dict(spec.config),
                    }
                }
            )
        except TopicAlreadyExistsError:
            raced.add(spec.name)
            continue
        log.info(
            "created %s: %d partition(s), %d replica(s), %s",
            spec.name,
            spec.partitions,
            spec.replicas,
            ", ".join(f"{k}={v}" for k, v in spec.config.items()),
        )
    return raced


def _report(findings: Sequence[Finding]) -> None:
    for finding in findings:
        if finding.severity == "warn":
            log.warning("topic %s", finding)
    message = refusal(findings)
    if message is not None:
        # Logged as well as raised: the streams app's log is where an operator looks.
        log.error("%s", message)
        raise UnsafeTopic(message)


def _observe(
    admin: KafkaAdminClient, settings: Settings, specs: list[TopicSpec]
) -> dict[str, Observed]:
    """Partitions, replicas and the checked configs of the existing topics ``specs``."""
    if not specs:
        return {}
    names = [spec.name for spec in specs]
    configs = _configs(admin, settings, names)
    seen = {
        name: Observed(name, o.partitions, o.replicas, (configs or {}).get(name, {}))
        for name, o in _described(admin, names).items()
        if name in names
    }
    gaps = [
        f"{', '.join(keys)} of {spec.name}"
        for spec in specs
        if spec.name in seen and (keys := unreported(spec, seen[spec.name]))
    ]
    if configs is not None and gaps:
        # Apache Kafka reports every setting it may describe: a gap there is an ACL.
        log.warning(
            "the broker did not report %s; those were not checked (Tansu reports only the "
            "settings a topic was created with; Apache Kafka needs DescribeConfigs on the topic)",
            "; ".join(gaps),
        )
    return seen


def _configs(
    admin: KafkaAdminClient, settings: Settings, names: list[str]
) -> dict[str, dict[str, str]] | None:
    """The checked settings each topic reports; None when the broker cannot describe them."""
    try:
        # "all", not "modified": Tansu marks the settings a topic was created with as
        # defaults, and Apache Kafka's broker defaults matter as much as a topic's own.
        # No key list: Tansu drops the connection when a request names keys.
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names],
            config_filter="all",
        )
    except KafkaError as exc:
        log.warning(
            "the broker at %s cannot describe topic configs (%s): retention, cleanup.policy "
            "and min.insync.replicas of %s are not checked; replicas and partitions are",
            settings.bootstrap,
            type(exc).__name__,
            ", ".join(names),
        )
        return None
    found: dict[str, dict[str, str]] = {}
    for name, entries in (described.get("topic") or {}).items():
        if name in names and isinstance(entries, dict):
            found[name] = {
                key: str(entry["value"])[:_MAX_VALUE]
                for key, entry in entries.items()
                if key in CHECKED_CONFIGS
                and isinstance(entry, dict)
                and entry.get("value") is not None
            }
    return found


def _described(admin: KafkaAdminClient, names: list[str]) -> dict[str, Observed]:
    """Partition and replica counts; waits while a topic is described with no partitions
    (Apache Kafka may describe a topic it has just created so)."""
    deadline = time.monotonic() + 15.0
    while True:
        found = {o.name: o for o in map(_counts, admin.describe_topics(names))}
        if all(found.get(n, _EMPTY).partitions for n in names) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


_EMPTY = Observed("", 0, 0, {})


def _counts(topic: dict[str, Any]) -> Observed:
    partitions = topic.get("partitions") or []
    # Distinct brokers: Tansu describes a topic created with 3 replicas on its one node
    # as [node, node, node], which is one copy.
    replicas = min((len(set(p.get("replica_nodes") or ())) for p in partitions), default=0)
    return Observed(str(topic.get("topic", topic.get("name"))), len(partitions), replicas, {})

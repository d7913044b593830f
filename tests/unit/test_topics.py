"""The pure half of streams.topics: what modelvc creates and what it refuses to use."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from streams.errors import ReplicationUnavailable
from streams.settings import Settings
from streams.topics import (
    Finding,
    Observed,
    TopicSpec,
    check_all,
    check_creatable,
    plan_topics,
    refusal,
    topic_config,
    unreported,
    wanted_replicas,
)

SETTINGS = Settings(namespace="t", bootstrap="10.0.0.1:9092,10.0.0.2:9092", partitions=4)
KEEP = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


def specs(brokers: int = 3, settings: Settings = SETTINGS) -> dict[str, TopicSpec]:
    return {s.role: s for s in plan_topics(settings, brokers)}


def seen_as_planned(spec: TopicSpec, **changes: object) -> Observed:
    """An existing topic exactly as modelvc would have created it, with ``changes``."""
    base: dict[str, object] = {
        "partitions": spec.partitions,
        "replicas": spec.replicas,
        "config": {**spec.config, "retention.bytes": spec.config.get("retention.bytes", "-1")},
    }
    base |= changes
    config = base["config"]
    assert isinstance(config, Mapping)
    return Observed(spec.name, int(str(base["partitions"])), int(str(base["replicas"])), config)


def findings_for(
    role: str, settings: Settings = SETTINGS, brokers: int = 3, **changes: object
) -> list[Finding]:
    planned = specs(brokers, settings)
    seen = {s.name: seen_as_planned(s) for s in planned.values()}
    seen[planned[role].name] = seen_as_planned(planned[role], **changes)
    return check_all(list(planned.values()), seen, settings)


def refused(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "refuse"]


# -- what is created ----------------------------------------------------------------


@pytest.mark.parametrize(("brokers", "replicas"), [(1, 1), (2, 2), (3, 3), (5, 3), (12, 3)])
def test_replication_defaults_to_three_or_every_broker(brokers: int, replicas: int) -> None:
    assert wanted_replicas(None, brokers) == replicas
    assert {s.replicas for s in plan_topics(SETTINGS, brokers)} == {replicas}


def test_an_asked_replication_factor_wins() -> None:
    assert wanted_replicas(2, 5) == 2
    asked = Settings(namespace="t", replication_factor=5)
    assert {s.replicas for s in plan_topics(asked, 7)} == {5}


@pytest.mark.parametrize(("replicas", "min_insync"), [(1, None), (2, None), (3, "2"), (5, "2")])
def test_min_insync_is_two_only_with_three_replicas_or_more(
    replicas: int, min_insync: str | None
) -> None:
    config = topic_config(KEEP, replicas)
    assert config.get("min.insync.replicas") == min_insync
    assert {k: v for k, v in config.items() if k != "min.insync.replicas"} == KEEP
    planned = {s.config.get("min.insync.replicas") for s in plan_topics(SETTINGS, replicas)}
    assert planned == {min_insync}


def test_the_events_and_dead_letter_topics_are_kept_forever_and_never_compacted() -> None:
    planned = specs()
    for role in ("events", "dead-letter"):
        assert {k: planned[role].config[k] for k in KEEP} == KEEP
    assert planned["events"].partitions == planned["commands"].partitions == 4


def test_more_replicas_than_brokers_is_refused_naming_the_variable() -> None:
    asked = Settings(namespace="t", replication_factor=3)
    missing = plan_topics(asked, 1)
    with pytest.raises(ReplicationUnavailable, match="MODELVC_REPLICATION_FACTOR=3") as info:
        check_creatable(missing, 3, 1)
    assert "1 broker(s)" in str(info.value) and "t.events" in str(info.value)


def test_more_replicas_than_brokers_is_fine_when_nothing_must_be_created() -> None:
    # A broker down while the streams app restarts: existing topics are only checked.
    check_creatable([], 3, 2)
    check_creatable(plan_topics(SETTINGS, 3), None, 3)


# -- what is refused ----------------------------------------------------------------


def test_a_topic_as_modelvc_creates_it_is_accepted() -> None:
    for brokers in (1, 3):
        planned = specs(brokers)
        seen = {s.name: seen_as_planned(s) for s in planned.values()}
        assert check_all(list(planned.values()), seen, SETTINGS) == []


@pytest.mark.parametrize(
    ("retention", "value"),
    [("retention.ms", "86400000"), ("retention.bytes", "1073741824"), ("retention.ms", "0")],
)
def test_an_events_topic_with_finite_retention_is_refused(retention: str, value: str) -> None:
    found = refused(findings_for("events", config={**KEEP, retention: value}))
    assert len(found) == 1 and found[0].topic == "t.events"
    message = str(found[0])
    assert f"{retention}='{value}'" in message
    assert (
        "kafka-configs.sh --bootstrap-server 10.0.0.1:9092 --alter --entity-type topics "
        "--entity-name t.events --add-config retention.ms=-1,retention.bytes=-1" in message
    )
    assert "kafka-topics.sh --bootstrap-server 10.0.0.1:9092 --delete --topic t.events" in message


def test_a_retention_that_is_not_a_number_is_not_taken_for_forever() -> None:
    found = refused(findings_for("events", config={**KEEP, "retention.ms": "never"}))
    assert [f.topic for f in found] == ["t.events"]


@pytest.mark.parametrize("policy", ["compact", "compact,delete", "delete, compact"])
def test_an_events_topic_that_compacts_is_refused(policy: str) -> None:
    found = refused(findings_for("events", config={**KEEP, "cleanup.policy": policy}))
    assert len(found) == 1
    assert "--add-config cleanup.policy=delete" in str(found[0])


def test_an_events_topic_with_fewer_replicas_than_asked_is_refused() -> None:
    found = refused(findings_for("events", replicas=1, config=KEEP))
    assert len(found) == 1
    message = str(found[0])
    assert "1 replica(s) but 3 are asked" in message
    assert "kafka-reassign-partitions.sh --bootstrap-server 10.0.0.1:9092" in message
    assert "MODELVC_REPLICATION_FACTOR=1" in message


def test_fewer_replicas_than_the_setting_is_refused_even_below_three_brokers() -> None:
    asked = Settings(namespace="t", replication_factor=2)
    assert refused(findings_for("events", settings=asked, brokers=2, replicas=1))
    assert not refused(findings_for("events", settings=asked, brokers=2, replicas=2))


@pytest.mark.parametrize("role", ["events", "commands"])
def test_partition_counts_unlike_commands_are_refused(role: str) -> None:
    found = refused(findings_for(role, partitions=8))
    assert len(found) == 1
    message = str(found[0])
    assert "t.commands" in message
    events = 8 if role == "events" else 4
    assert f"MODELVC_PARTITIONS={events}" in message
    assert "kafka-topics.sh --bootstrap-server 10.0.0.1:9092 --delete --topic t.commands" in (
        message
    )


def test_an_existing_events_topic_unlike_the_commands_to_create_is_refused() -> None:
    planned = specs()
    events = planned["events"]
    seen = {events.name: seen_as_planned(events, partitions=6)}
    found = refused(check_all(list(planned.values()), seen, SETTINGS))
    assert ["MODELVC_PARTITIONS=6" in str(f) for f in found] == [True]


def test_a_dead_letter_topic_with_few_replicas_or_compaction_is_refused() -> None:
    assert refused(findings_for("dead-letter", replicas=2))
    assert refused(findings_for("dead-letter", config={**KEEP, "cleanup.policy": "compact"}))


def test_a_dead_letter_topic_that_expires_letters_only_warns() -> None:
    found = findings_for("dead-letter", config={**KEEP, "retention.ms": "604800000"})
    assert [f.severity for f in found] == ["warn"]


@pytest.mark.parametrize(
    "role",
    ["commands", "replies", "features", "labels", "predictions", "shadow-predictions"],
)
def test_traffic_topics_with_few_replicas_or_compaction_only_warn(role: str) -> None:
    found = findings_for(role, replicas=1, config={"cleanup.policy": "compact"})
    assert [f.severity for f in found] == ["warn", "warn"]
    assert refusal(found) is None


def test_the_metrics_topic_is_kept_forever_and_never_compacted() -> None:
    planned = specs()
    assert {k: planned["metrics"].config[k] for k in KEEP} == KEEP
    assert planned["metrics"].name == "t.metrics"
    assert planned["labels"].partitions == planned["features"].partitions
    # Keyed by model, compaction would leave one window per model.
    assert refused(findings_for("metrics", config={**KEEP, "cleanup.policy": "compact"}))
    expiring = findings_for("metrics", replicas=2, config={**KEEP, "retention.ms": "86400000"})
    assert [f.severity for f in expiring] == ["warn", "warn"]


def test_min_insync_above_the_replicas_is_refused_for_any_topic() -> None:
    found = refused(findings_for("features", replicas=3, config={"min.insync.replicas": "4"}))
    assert "--add-config min.insync.replicas=2" in str(found[0])


def test_min_insync_of_one_with_three_replicas_warns() -> None:
    found = findings_for("events", config={**KEEP, "min.insync.replicas": "1"})
    assert [f.severity for f in found] == ["warn"]


def test_sasl_commands_say_how_to_log_in() -> None:
    with_login = Settings(
        namespace="t",
        bootstrap="b:9092",
        kafka_security="sasl",
        kafka_credentials=Path("/nonexistent/creds.json"),  # never read by the checks
    )
    found = refused(findings_for("events", settings=with_login, replicas=1))
    login = "--bootstrap-server b:9092 --command-config <your SASL client.properties>"
    assert login in str(found[0])


def test_every_refusal_is_in_the_one_message() -> None:
    found = findings_for(
        "events", replicas=1, config={**KEEP, "cleanup.policy": "compact", "retention.ms": "1"}
    )
    message = refusal(found)
    assert message is not None
    assert message.count("t.events:") == 3


def test_a_second_look_checks_only_the_topics_asked_and_the_pair() -> None:
    planned = specs()
    seen = {s.name: seen_as_planned(s, replicas=1, config={}) for s in planned.values()}
    assert check_all(list(planned.values()), seen, SETTINGS, only=set()) == []
    found = check_all(list(planned.values()), seen, SETTINGS, only={"t.events"})
    assert {f.topic for f in found} == {"t.events"}
    seen["t.commands"] = seen_as_planned(planned["commands"], partitions=2)
    assert refused(check_all(list(planned.values()), seen, SETTINGS, only=set()))


# -- what a broker does not report -------------------------------------------------------


def test_settings_a_broker_did_not_report_are_named_not_guessed() -> None:
    planned = specs()
    bare = Observed("t.events", 4, 3, {})
    assert check_all([planned["events"], planned["commands"]], {"t.events": bare}, SETTINGS) == []
    assert set(unreported(planned["events"], bare)) == {
        "retention.ms",
        "retention.bytes",
        "cleanup.policy",
        "min.insync.replicas",
    }
    assert unreported(planned["commands"], Observed("t.commands", 4, 1, {})) == ["cleanup.policy"]

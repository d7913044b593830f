"""Topics on Apache Kafka: production settings when modelvc creates them, refusals when
an existing one would break a guarantee.

Each test has its own namespace on the shared single broker (`bootstrap`). Three replicas
and min.insync.replicas 2 on three brokers are checked on the cluster tests/cluster shares.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from modelvc.processes import StackError, free_port
from modelvc.stack import Stack, start_streams
from streams.errors import ReplicationUnavailable, UnsafeTopic
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import BROKERS_ENV, selected_broker_kinds

pytestmark = pytest.mark.skipif(
    "kafka" not in selected_broker_kinds(),
    reason=f"Apache Kafka tier not selected: run `make kafka` and set {BROKERS_ENV}=kafka",
)

FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


@pytest.fixture
def kafka(broker_kind: str, bootstrap: str) -> str:
    if broker_kind != "kafka":
        pytest.skip("Apache Kafka only: these checks are about its topic configs")
    return bootstrap


@pytest.fixture
def admin(kafka: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        yield client
    finally:
        client.close()


def settings_for(kafka: str, namespace: str, **kwargs: Any) -> Settings:
    return Settings(namespace=namespace, bootstrap=kafka, delivery="exactly-once", **kwargs)


def precreate(
    admin: KafkaAdminClient,
    name: str,
    partitions: int = 4,
    replicas: int = 1,
    configs: Mapping[str, str] = FOREVER,
) -> None:
    admin.create_topics(
        {name: {"num_partitions": partitions, "replication_factor": replicas, "configs": configs}}
    )
    # Existing, as modelvc will see it: KRaft answers a creation before metadata has it.
    admin.wait_for_topics([name], timeout_ms=30_000)


def ours(admin: KafkaAdminClient, namespace: str) -> set[str]:
    return {t for t in admin.list_topics() if t.startswith(f"{namespace}.")}


def topic_settings(admin: KafkaAdminClient, name: str) -> dict[str, str]:
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all"
    )
    return {k: v["value"] for k, v in described["topic"][name].items()}


def replicas_of(admin: KafkaAdminClient, name: str) -> set[int]:
    # This client may ask a broker the new topic has not reached yet (KRaft propagates
    # metadata to each broker on its own).
    admin.wait_for_topics([name], timeout_ms=30_000)
    (topic,) = admin.describe_topics([name])
    return {len(p["replica_nodes"]) for p in topic["partitions"]}


def test_an_events_topic_with_finite_retention_is_refused(
    admin: KafkaAdminClient, kafka: str, namespace: str
) -> None:
    precreate(admin, f"{namespace}.events", configs={**FOREVER, "retention.ms": "86400000"})
    with pytest.raises(UnsafeTopic) as refused:
        ensure_topics(settings_for(kafka, namespace))
    message = str(refused.value)
    assert "retention.ms='86400000'" in message
    assert (
        f"kafka-configs.sh --bootstrap-server {kafka} --alter --entity-type topics "
        f"--entity-name {namespace}.events --add-config retention.ms=-1,retention.bytes=-1"
    ) in message
    # Refused before anything was created: the operator fixes it and starts again.
    assert ours(admin, namespace) == {f"{namespace}.events"}


def test_an_events_topic_of_the_broker_defaults_is_refused(
    admin: KafkaAdminClient, kafka: str, namespace: str
) -> None:
    """Created by hand with no configs: Kafka's default retention is a week."""
    precreate(admin, f"{namespace}.events", configs={})
    with pytest.raises(UnsafeTopic, match=r"retention\.ms='604800000'"):
        ensure_topics(settings_for(kafka, namespace))


def test_a_compacted_events_topic_is_refused(
    admin: KafkaAdminClient, kafka: str, namespace: str
) -> None:
    precreate(admin, f"{namespace}.events", configs={**FOREVER, "cleanup.policy": "compact"})
    with pytest.raises(UnsafeTopic, match=r"cleanup\.policy='compact'.*cleanup\.policy=delete"):
        ensure_topics(settings_for(kafka, namespace))


def test_events_partitioned_unlike_commands_are_refused(
    admin: KafkaAdminClient, kafka: str, namespace: str
) -> None:
    precreate(admin, f"{namespace}.events", partitions=4)
    precreate(admin, f"{namespace}.commands", partitions=2, configs={})
    with pytest.raises(UnsafeTopic) as refused:
        ensure_topics(settings_for(kafka, namespace))
    message = str(refused.value)
    assert f"{namespace}.commands has 2" in message
    assert f"kafka-topics.sh --bootstrap-server {kafka} --delete --topic {namespace}.commands" in (
        message
    )


def test_a_correct_existing_events_topic_is_used(
    admin: KafkaAdminClient, kafka: str, namespace: str
) -> None:
    precreate(admin, f"{namespace}.events", partitions=4)
    settings = settings_for(kafka, namespace)
    ensure_topics(settings)
    ensure_topics(settings)  # everything exists now, and all of it passes
    assert ours(admin, namespace) == {
        settings.events_topic,
        settings.commands_topic,
        settings.replies_topic,
        settings.dead_letter_topic,
        settings.features_topic,
        settings.predictions_topic,
        settings.labels_topic,
        settings.metrics_topic,
        settings.shadow_predictions_topic,
    }
    # One broker: one replica, and the broker's min.insync (1) rather than 2.
    assert replicas_of(admin, settings.commands_topic) == {1}
    assert topic_settings(admin, settings.commands_topic)["min.insync.replicas"] == "1"


def test_more_replicas_than_brokers_names_the_variable(
    admin: KafkaAdminClient, kafka: str, namespace: str
) -> None:
    with pytest.raises(
        ReplicationUnavailable, match="MODELVC_REPLICATION_FACTOR=3 but the cluster has 1 broker"
    ):
        ensure_topics(settings_for(kafka, namespace, replication_factor=3))
    assert ours(admin, namespace) == set()


def test_a_refused_topic_stops_modelvc_up_and_the_streams_app(
    admin: KafkaAdminClient, kafka: str, namespace: str, tmp_path: Path
) -> None:
    precreate(admin, f"{namespace}.events", configs={**FOREVER, "cleanup.policy": "compact"})
    with pytest.raises(
        StackError, match=re.escape(f"{namespace}.events: cleanup.policy='compact'")
    ):
        Stack.up(tmp_path / "up", bootstrap=kafka, namespace=namespace)
    # The streams app on its own refuses too, and says why in its log.
    settings = settings_for(kafka, namespace, data_dir=tmp_path / "streams", web_port=free_port())
    started = time.monotonic()
    with pytest.raises(StackError, match="exited"):
        start_streams(settings, tmp_path)
    assert time.monotonic() - started < 60
    log = (tmp_path / "logs" / "streams.log").read_text()
    assert f"refusing to use existing topics: {namespace}.events: cleanup.policy" in log

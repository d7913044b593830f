"""A consumer that reads every partition of a topic from given offsets (no consumer group).

How every reader of ``modelvc.events`` starts: the streams projection (from
its stored offsets) and each worker's version tracker (from 0).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka_access import KafkaAccess


async def assigned_consumer(
    kafka: KafkaAccess,
    topic: str,
    start: Mapping[int, int],
    fetch_wait_ms: int,
    client_id: str,
    max_poll_records: int = 5000,
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started consumer assigned all of ``topic``, each partition at ``start`` (default 0)."""
    consumer = AIOKafkaConsumer(
        **kafka.consumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_wait_ms,
            max_poll_records=max_poll_records,
            client_id=client_id,
        )
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            raise RuntimeError(f"topic {topic} does not exist; run `modelvc up` or create it")
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp.partition, 0))
    except BaseException:
        await consumer.stop()
        raise
    return consumer, tps


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, from a metadata request that names all topics.

    ``consumer.topics()`` fetches that into a cluster view of its own and
    ``partitions_for_topic`` reads the client's, which Apache Kafka fills only for
    topics the client already tracks (Tansu answers with every topic): ask the
    client for the whole cluster and read the topic from that answer.
    """
    cluster = await consumer._client.fetch_all_metadata()
    return [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]

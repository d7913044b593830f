"""A consumer that reads every partition of a topic from given offsets (no consumer group).

How every reader of ``modelvc.events`` starts: the streams projection (from
its stored offsets) and each worker's version tracker (from 0).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition


async def assigned_consumer(
    bootstrap: str,
    topic: str,
    start: Mapping[int, int],
    fetch_wait_ms: int,
    client_id: str,
    max_poll_records: int = 5000,
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started consumer assigned all of ``topic``, each partition at ``start`` (default 0)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_wait_ms,
        max_poll_records=max_poll_records,
        client_id=client_id,
    )
    await consumer.start()
    try:
        await consumer.topics()  # refreshes metadata
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            raise RuntimeError(f"topic {topic} does not exist; run `modelvc up` or create it")
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp.partition, 0))
    except BaseException:
        await consumer.stop()
        raise
    return consumer, tps

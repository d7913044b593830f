"""The archiver process (`python -m streams.archive`): follow the events topic into an archive.

It starts where the archive ends, appends every message in order, and
flushes at most every ``flush_s`` seconds, only when something new arrived.
On SIGTERM it reads on to the end of the log, flushes and exits: `modelvc
down` stops it last, so it holds everything the writers wrote.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import Any

from streams.archive.directory import Archive
from streams.archive.format import ArchiveError, Record
from streams.kafka_access import KafkaAccess
from streams.logreader import log_consumer, topic_partitions
from streams.watermarks import at_end

log = logging.getLogger("modelvc.archive")


def run_archiver(archive: Archive, kafka: KafkaAccess, topic: str, flush_s: float = 1.0) -> None:
    """Follow ``topic`` into ``archive`` until SIGTERM; then drain to the end and flush."""
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer = log_consumer(kafka, fetch_max_wait_ms=50, max_poll_records=10_000)
    try:
        tps = topic_partitions(consumer, topic)
        if not tps:
            raise ArchiveError(f"topic {topic} does not exist; run `modelvc up` or create it")
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, archive.next_offset(tp.partition))
        log.info(
            "archiving %s into %s from %s",
            topic,
            archive.root,
            {tp.partition: archive.next_offset(tp.partition) for tp in tps},
        )
        last_flush = time.monotonic()
        while True:
            for tp, messages in consumer.poll(timeout_ms=100).items():
                for m in messages:
                    archive.append(
                        Record(topic, tp.partition, m.offset, m.timestamp, m.key, m.value)
                    )
            done = stopping and at_end(consumer, tps)
            if done or time.monotonic() - last_flush >= flush_s:
                archive.flush()  # writes nothing when nothing arrived
                last_flush = time.monotonic()
            if done:
                log.info(
                    "archive flushed up to %s",
                    {tp.partition: archive.next_offset(tp.partition) for tp in tps},
                )
                return
    finally:
        with contextlib.suppress(Exception):
            archive.flush()
        consumer.close()


def main() -> None:
    from streams.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    archive = Archive(settings.archive_dir, settings.events_topic)
    run_archiver(archive, settings.access, settings.events_topic)

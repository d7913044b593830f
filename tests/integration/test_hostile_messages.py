"""Hostile bytes on every topic: no process goes down, every bad message is a bounded dead letter.

Issue 7, findings 3 and 4, and the fuzz of random and oversized messages on every
topic, against a real broker. The embedded broker (Tansu) takes messages above
1 MB, so an attacker with a plain Kafka client can put them on any topic. Apache Kafka
refuses them (its own bound, checked here); there the attacker sends the largest message
it takes, which is still far above what a dead letter keeps.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from modelvc.processes import alive, free_port
from modelvc.stack import Stack
from modelvc.streaming import feature_event
from streams import deadletter
from streams.archive import PLACEHOLDER_MAGIC, Archive
from streams.codec import DEAD_LETTERS, FEATURES, MAGIC, encode_command
from streams.core.commands import Command, MakeCommit
from streams.logreader import read_topic
from tests.conftest import train_model
from tests.integration.test_audit import cli
from tests.integration.test_workers import (
    features,
    healthz,
    predictions,
    rows,
    setup_model,
    wait_for,
)

pytestmark = pytest.mark.broker
BIG = 1_200_000  # above the 1 MB default limit of Kafka producers and brokers
# Below Apache Kafka's message.max.bytes (1,048,588 by default), with room for the framing.
KAFKA_FITS = 1_000_000


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[Stack]:
    """One stack (streams app, worker, archiver) that every hostile test here attacks in turn."""
    home = tmp_path_factory.mktemp("hostile") / "home"
    s = Stack.up(home, bootstrap=bootstrap, namespace=f"hostile{os.getpid()}", workers=1)
    try:
        setup_model(s, tmp_path_factory.mktemp("models"))
        yield s
    finally:
        s.down()


def attacker(stack: Stack) -> KafkaProducer:
    """A plain Kafka client that sends whatever it likes (the broker takes > 1 MB)."""
    return KafkaProducer(bootstrap_servers=stack.settings.bootstrap, max_request_size=8 << 20)


def oversized(broker_kind: str, stack: Stack, topic: str) -> int:
    """The size of the largest garbage an attacker puts on ``topic``: BIG on Tansu, which
    takes it; on Apache Kafka, after checking that the broker refuses BIG, KAFKA_FITS."""
    if broker_kind == "tansu":
        return BIG
    # A producer of its own: kafka-python aborts every pending batch of a producer that
    # was refused a message, which would take the attack's other messages with it.
    producer = attacker(stack)
    try:
        with pytest.raises(MessageSizeTooLargeError):
            producer.send(topic, value=bytes(BIG), partition=0).get(30)
    finally:
        producer.close()
    return KAFKA_FITS


def garbage(rng: random.Random, size: int) -> bytes:
    data = rng.randbytes(size)
    # Bytes with the Avro magic claim to be a record; on the events log the audit rightly
    # calls those damage. Garbage here must never have been an event.
    return b"\x00" + data[1:] if data[:2] == MAGIC else data


def letters(stack: Stack) -> list[tuple[int, dict[str, Any]]]:
    """(encoded size, record) of every decodable dead letter."""
    out = []
    for r in read_topic(stack.settings.access, stack.settings.dead_letter_topic):
        if r.value and r.value[:2] == MAGIC:
            try:
                out.append((len(r.value) + len(r.key or b""), DEAD_LETTERS.decode(r.value)))
            except Exception:
                continue  # the fuzz writes garbage here too
    return out


Where = tuple[str, int, int]  # (topic, partition, offset) a dead letter names


def letters_for(
    stack: Stack, wanted: list[Where], stage: str | None = None
) -> dict[Where, tuple[int, dict[str, Any]]]:
    """The first dead letter (of ``stage``, if given) for each of ``wanted``. Each round reads
    the dead-letter topic once for all of them: it holds the fuzz's 1 MB garbage too."""
    want = set(wanted)
    found: dict[Where, tuple[int, dict[str, Any]]] = {}

    def all_found() -> bool:
        for size, d in letters(stack):
            where = (d["topic"], d["partition"], d["offset"])
            if where in want and where not in found and stage in (None, d["stage"]):
                found[where] = (size, d)
        return len(found) == len(want)

    try:
        wait_for(all_found, what="a dead letter for each message")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; none for {sorted(want - set(found))[:5]}") from None
    return found


def letter_for(
    stack: Stack, topic: str, partition: int, offset: int, stage: str | None = None
) -> tuple[int, dict[str, Any]]:
    return letters_for(stack, [(topic, partition, offset)], stage)[(topic, partition, offset)]


def assert_bounded(size: int, letter: dict[str, Any], original: bytes) -> None:
    assert size <= deadletter.MAX_ENCODED_BYTES
    assert letter["value_size"] == len(original)
    assert letter["value_sha256"] == hashlib.sha256(original).hexdigest()
    if len(original) > deadletter.VALUE_LIMIT:
        assert letter["value"] is None and letter["truncated"] is True
    assert len(letter["reason"].encode()) <= deadletter.REASON_LIMIT


def assert_all_alive(stack: Stack) -> None:
    for name, spawned in stack.processes.items():
        assert alive(spawned.pid), f"{name} died; see {spawned.log}"
    assert healthz(stack.url)["ready"]
    assert healthz(stack.worker_url())["ready"]


def test_finding_3_a_1mb_feature_value_is_dead_lettered_bounded_and_the_partition_moves_on(
    serving: Stack,
) -> None:
    topic = serving.settings.features_topic
    good = features(rows(1)[0])
    huge = feature_event("churn", {**good, "f2": "x" * 1_000_000}, event_id="huge")
    producer = attacker(serving)
    sent = []
    # All on one partition: the good event after the huge one must still be scored.
    for event in (feature_event("churn", good, event_id="f3-before"), huge):
        sent.append(producer.send(topic, key=b"k", value=FEATURES.encode(event), partition=0))
    sent.append(
        producer.send(
            topic,
            key=b"k",
            value=FEATURES.encode(feature_event("churn", good, event_id="f3-after")),
            partition=0,
        )
    )
    metadata = [future.get(10) for future in sent]
    producer.close()
    size, letter = letter_for(serving, topic, 0, metadata[1].offset)
    assert_bounded(size, letter, FEATURES.encode(huge))
    assert letter["reason"].startswith("wrong_type: ") and letter["stage"] == "worker"
    wait_for(
        lambda: {"f3-before", "f3-after"} <= {p["feature_event_id"] for p in predictions(serving)},
        what="the events around the huge one to be scored",
    )
    assert_all_alive(serving)


def test_finding_4_random_bytes_on_events_leave_the_streams_app_serving(
    serving: Stack, tmp_path: Path, broker_kind: str
) -> None:
    size = oversized(broker_kind, serving, serving.settings.events_topic)
    value = garbage(random.Random(4), size)
    producer = attacker(serving)
    sent = producer.send(serving.settings.events_topic, key=b"churn", value=value, partition=1)
    offset = sent.get(10).offset
    producer.close()
    size, letter = letter_for(serving, serving.settings.events_topic, 1, offset)
    assert_bounded(size, letter, value)
    assert letter["stage"] == "fold"
    c = serving.client()
    c.create("after-events-garbage")
    digest = c.upload(train_model(tmp_path / "m.txt"))["sha256"]
    assert c.commit("after-events-garbage", digest, "still serving")["seq"] == 2
    assert_all_alive(serving)


def test_finding_4_random_bytes_on_commands_are_dead_lettered_and_commands_still_work(
    serving: Stack, tmp_path: Path, broker_kind: str
) -> None:
    size = oversized(broker_kind, serving, serving.settings.commands_topic)
    value = garbage(random.Random(5), size)
    producer = attacker(serving)
    offsets = {}
    for partition in range(serving.settings.partitions):  # whichever partition the agent owns
        sent = producer.send(
            serving.settings.commands_topic, key=b"x", value=value, partition=partition
        )
        offsets[partition] = sent.get(10).offset
    producer.close()
    for partition, offset in offsets.items():
        size, letter = letter_for(serving, serving.settings.commands_topic, partition, offset)
        assert_bounded(size, letter, value)
        assert letter["stage"] == "decode"
    c = serving.client()
    c.create("after-commands-garbage")
    digest = c.upload(train_model(tmp_path / "m.txt"))["sha256"]
    assert c.commit("after-commands-garbage", digest, "still deciding")["seq"] == 2
    assert_all_alive(serving)


def test_random_bytes_on_replies_are_dead_lettered(serving: Stack, broker_kind: str) -> None:
    value = garbage(
        random.Random(6), oversized(broker_kind, serving, serving.settings.replies_topic)
    )
    producer = attacker(serving)
    instance = serving.settings.instance_id.encode()
    sent = producer.send(serving.settings.replies_topic, key=instance, value=value)
    offset = sent.get(10).offset
    producer.close()
    size, letter = letter_for(serving, serving.settings.replies_topic, 0, offset)
    assert_bounded(size, letter, value)
    assert letter["stage"] == "reply"
    assert_all_alive(serving)


def test_fuzz_random_and_oversized_messages_on_every_topic(
    serving: Stack, tmp_path: Path, broker_kind: str
) -> None:
    """A fixed budget of hostile messages on every topic; then everything still answers,
    the audit is clean, and every commit acknowledged before or after is in the log."""
    s = serving.settings
    big = oversized(broker_kind, serving, s.features_topic)
    c = serving.client()
    digest = c.upload(train_model(tmp_path / "m.txt"))["sha256"]
    c.create("fuzzed")
    acknowledged = [c.commit("fuzzed", digest, f"before-{i}")["head"] for i in range(3)]
    rng = random.Random(20240607)
    topics = {
        s.events_topic: s.partitions,
        s.commands_topic: s.partitions,
        s.replies_topic: 1,
        s.features_topic: s.partitions,
        s.predictions_topic: s.partitions,
        s.dead_letter_topic: 1,
    }
    keys: list[bytes | None] = [None, b"", b"churn", b"fuzzed", s.instance_id.encode()]
    producer = attacker(serving)
    sent: list[tuple[str, Any, bytes]] = []
    for topic, partitions in topics.items():
        sizes = [0, 1, 9, 10, 11, *(rng.randrange(12, 4096) for _ in range(8)), big]
        for size in sizes:
            value = garbage(rng, size)
            key = rng.choice(keys) if rng.random() < 0.8 else rng.randbytes(rng.randrange(1, 3000))
            future = producer.send(topic, key=key, value=value, partition=rng.randrange(partitions))
            sent.append((topic, future, value))
    # Oversized but well-formed (1.1 MB on Tansu, 0.9 MB on Kafka): a commit message (keyed
    # by its model, so it reaches the partition that owns it), and a feature value.
    well_formed = big - 100_000
    command = Command("fuzz-big", "fuzzed", "fuzzer", 0, MakeCommit(digest, "m" * well_formed))
    big_command = encode_command(command)
    sent.append(
        (s.commands_topic, producer.send(s.commands_topic, big_command, b"fuzzed"), big_command)
    )
    huge = FEATURES.encode(feature_event("churn", {"f0": "y" * well_formed}, event_id="fuzz-huge"))
    sent.append((s.features_topic, producer.send(s.features_topic, value=huge), huge))
    # Generous: on a loaded machine Tansu takes seconds for each 1.2 MB message.
    landed = [(topic, future.get(60), value) for topic, future, value in sent]
    producer.close()

    # Every bad message that a service reads becomes a bounded dead letter.
    read_by_a_service = {s.events_topic, s.commands_topic, s.features_topic}
    bad = [(t, m.partition, m.offset, value) for t, m, value in landed if t in read_by_a_service]
    found = letters_for(serving, [(t, p, o) for t, p, o, _ in bad])
    for topic, partition, offset, value in bad:
        size, letter = found[(topic, partition, offset)]
        assert size <= deadletter.MAX_ENCODED_BYTES
        if value:
            assert_bounded(size, letter, value)
    assert_all_alive(serving)

    acknowledged += [c.commit("fuzzed", digest, f"after-{i}")["head"] for i in range(3)]
    commits = c.log("fuzzed")["commits"]
    assert [x["id"] for x in commits if x["id"] in acknowledged] == list(reversed(acknowledged))
    # The well-formed big commit is larger than any the API writes: refused on both
    # brokers (dead-lettered above), whether or not its event would fit the broker.
    assert [x["id"] for x in commits if x["id"] not in acknowledged] == []
    replay = cli(serving, "--json", "audit", "replay", "--jobs", "1")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    summary = json.loads(replay.stdout)
    assert not summary["violations"] and summary["live_digest"] == summary["digest"]
    garbage_on_events = sum(1 for topic, _, _ in landed if topic == s.events_topic)
    assert len(summary["skipped"]) >= garbage_on_events
    # A subscriber reads past the garbage on the predictions topic instead of dying on it.
    tail = cli(
        serving, "tail", "predictions", "--from-beginning", "--idle-timeout", "3",
        "--bootstrap", s.bootstrap,
    )  # fmt: skip
    assert tail.returncode == 0 and "Traceback" not in tail.stderr, tail.stderr[-2000:]
    assert "skipping undecodable message" in tail.stderr
    assert_all_alive(serving)


def test_finding_4_archive_restore_skips_what_the_broker_refuses(tmp_path: Path) -> None:
    """An archived 1.2 MB message the producer refuses: `up` skips, reports and dead-letters it,
    keeps later offsets aligned with a placeholder, and exits 4 with one line, no traceback."""
    home = tmp_path / "home"
    stack = Stack.up(home)  # its own embedded broker: memory only, history in the archive
    try:
        c = stack.client()
        digest = c.upload(train_model(tmp_path / "m.txt"))["sha256"]
        c.create("churn")
        partition = c.commit("churn", digest, "one")["partition"]
        value = garbage(random.Random(9), BIG)
        producer = attacker(stack)
        events = stack.settings.events_topic
        offset = producer.send(events, key=b"churn", value=value, partition=partition).get(10)
        offset = offset.offset
        producer.close()
        last = c.commit("churn", digest, "two")  # after the garbage, on the same partition
        assert last["partition"] == partition and last["offset"] > offset
        log_before, digest_before = c.log("churn"), c.digest()["digest"]
    finally:
        stack.down()  # the archiver drains the log (garbage included) and flushes
    assert Archive(home / "archive").next_offset(partition) == last["offset"] + 1

    ports = ["--port", str(free_port()), "--broker-port", str(free_port())]
    env = {**os.environ, "MODELVC_HOME": str(home)}
    env.pop("KAFKA_BOOTSTRAP", None)
    up = subprocess.run(
        [sys.executable, "-m", "modelvc.cli", "up", "--workers", "0", *ports],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    try:
        assert up.returncode == 4, up.stdout + up.stderr
        assert "Traceback" not in up.stderr
        (line,) = [ln for ln in up.stderr.splitlines() if "refused" in ln]
        assert f"{partition}@{offset} (" in line and "1,200,000 bytes" in line
        restored = Stack.load(home)
        c = restored.client()
        assert c.log("churn") == log_before and c.digest()["digest"] == digest_before
        at = {
            r.offset: r.value
            for r in read_topic(restored.settings.access, events, partitions=[partition])
        }
        assert at[offset] is not None and at[offset].startswith(PLACEHOLDER_MAGIC)
        assert hashlib.sha256(value).hexdigest().encode() in at[offset]
        size, letter = letter_for(restored, events, partition, offset, "restore")
        assert_bounded(size, letter, value)
        assert "MessageSizeTooLargeError" in letter["reason"]
        assert c.commit("churn", digest, "three")["seq"] == 4
        replay = cli(restored, "--json", "audit", "replay", "--jobs", "1")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        skipped = json.loads(replay.stdout)["skipped"]
        assert [(s["partition"], s["offset"]) for s in skipped] == [(partition, offset)]
    finally:
        if (home / "stack.json").exists():
            Stack.load(home).down()

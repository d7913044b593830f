"""What a stranger who can write to Kafka can slip into the log, and what the audit says:
tampered bytes, forged but correctly chained events (unsigned, or signed by another key or a
retired one), replayed and reordered genuine events, tampered signed predictions.

The subject is the auditor's reading of what the log holds, not the broker's behaviour, so
this module runs once, on Tansu (`EDGE_TESTS` in the Makefile); test_audit.py's replay and
re-scoring over a live deployment run on both brokers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from streams.codec import PREDICTIONS, decode_event, encode_event
from streams.core.events import AliasMoved, ModelEvent
from streams.core.signatures import event_message
from streams.kafka_access import negotiate_sync
from streams.logreader import read_topic
from streams.settings import Settings
from streams.signing import SigningKey, key_id_of, read_public_key
from streams.topics import ensure_topics
from tests.conftest import train_model
from tests.integration.test_audit import append, chain, cli
from tests.integration.test_workers import wait_for

pytestmark = pytest.mark.broker


def test_a_tampered_log_fails_replay_naming_the_first_bad_event(
    tmp_path: Path, bootstrap: str, namespace: str
) -> None:
    from tests.unit.test_audit import events

    values = [encode_event(e) for e in events()]
    value = bytearray(values[4])
    value[value.index(b"golden")] ^= 0x01
    values[4] = bytes(value)
    settings = Settings.namespaced(namespace, bootstrap=bootstrap)
    topic = settings.events_topic
    # Created as modelvc creates it: Apache Kafka runs with auto.create.topics.enable=false.
    ensure_topics(settings)
    producer = KafkaProducer(**negotiate_sync(settings.access).producer())
    # Keyed by model, as the streams app writes: the model's home partition.
    placed = {producer.send(topic, key=b"churn", value=v).get(10).partition for v in values}
    producer.close()
    (partition,) = placed
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "MODELVC_NAMESPACE": namespace,
        "MODELVC_HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "modelvc.cli", "audit", "replay", "--no-live"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"broken_hash  churn#5  {topic}[{partition}]@4" in done.stdout


def replay_json(stack: Stack, *flags: str) -> tuple[int, dict[str, Any], str]:
    done = cli(stack, "--json", "audit", "replay", "--no-live", "--jobs", "1", *flags)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


@pytest.fixture
def released(tmp_path: Path, bootstrap: str, namespace: str) -> Any:
    """A stack whose model has had production moved twice by its (signed) writer."""
    s = Stack.up(tmp_path / "home", bootstrap=bootstrap, namespace=namespace)
    try:
        c = s.client()
        c.create("churn")
        for seed in (1, 2):
            digest = c.upload(train_model(tmp_path / f"m{seed}.txt", seed))["sha256"]
            c.commit("churn", digest, f"v{seed}")
            c.set_alias("churn", "production", "main")
        yield s
    finally:
        s.down()


def writer_key_id(stack: Stack) -> str:
    return key_id_of(read_public_key(stack.home / "keys" / "writer.key.pub"))


@pytest.mark.parametrize("kind", ["unsigned", "bad_signature"])
def test_a_forged_correctly_chained_event_is_void_and_reported_at_its_offset(
    released: Stack, kind: str
) -> None:
    events = chain(released, "churn")
    last, partition, _ = events[-1]
    first_head = next(
        e.payload.to_commit for e, _, _ in events if isinstance(e.payload, AliasMoved)
    )
    production = last.payload.to_commit if isinstance(last.payload, AliasMoved) else None
    assert production is not None and production != first_head
    forged = ModelEvent(
        "churn",
        last.seq + 1,
        last.hash(),
        "forged-1",
        "release-manager",
        last.at + 1,
        AliasMoved("production", production, first_head),
        key_id=writer_key_id(released) if kind == "bad_signature" else "",
    )
    if kind == "bad_signature":  # the writer's key id, a stranger's signature
        forged = dataclasses.replace(
            forged, signature=SigningKey.generate().sign(event_message(forged.hash()))
        )
    offset = append(
        released.settings.access, released.settings.events_topic, encode_event(forged), partition
    )
    code, report, stderr = replay_json(released)
    assert code == 1
    assert [
        (v["kind"], v["model"], v["seq"], v["partition"], v["offset"]) for v in report["violations"]
    ] == [(kind, "churn", last.seq + 1, partition, offset)]
    # Without pins each ring's first key is trusted on first use, and said so to pin it.
    key = writer_key_id(released)
    assert f"trusted on first use: key {key} on partition {partition}" in stderr
    assert f"--trust-digest {key}" in stderr
    # The live projection ignored it: production still serves what it served.
    c = released.client()
    c.positions = {partition: offset}
    assert c.refs("churn")["aliases"]["production"] == production
    human = cli(released, "audit", "replay", "--no-live", "--jobs", "2")
    assert human.returncode == 1
    topic = released.settings.events_topic
    assert f"{kind:<12} churn#{last.seq + 1}  {topic}[{partition}]@{offset}" in human.stdout


def test_pinned_writer_keys_decide_whose_first_key_counts(released: Stack, tmp_path: Path) -> None:
    pub = released.home / "keys" / "writer.key.pub"
    code, report, stderr = replay_json(released, "--trust-key", str(pub))
    assert code == 0 and report["violations"] == [], report["violations"]
    assert "trusted on first use" not in stderr and report["trusted_on_first_use"] == []
    code, _, _ = replay_json(released, "--trust-digest", writer_key_id(released).upper())
    assert code == 0
    stranger = SigningKey.generate()
    code, report, _ = replay_json(released, "--trust-digest", stranger.key_id)
    assert code == 1
    kinds = {v["kind"] for v in report["violations"]}
    assert "untrusted_key" in kinds
    ring = [v for v in report["violations"] if v["kind"] == "untrusted_key"]
    assert all(v["model"] == f"~keys.{v['partition']}" and v["seq"] == 1 for v in ring)
    bad = cli(released, "audit", "replay", "--no-live", "--trust-digest", "abc")
    assert bad.returncode == 2 and "64 hex" in bad.stderr


def test_an_event_signed_by_a_retired_key_is_caught(released: Stack) -> None:
    c = released.client()
    old = SigningKey.generate()
    c.add_writer_key(old.public_key, note="a second writer, since decommissioned")
    c.retire_writer_key(old.key_id, reason="host decommissioned")
    last, partition, _ = chain(released, "churn")[-1]
    assert isinstance(last.payload, AliasMoved)
    forged = ModelEvent(
        "churn",
        last.seq + 1,
        last.hash(),
        "forged-retired",
        "release-manager",
        last.at + 1,
        AliasMoved("production", last.payload.to_commit, last.payload.to_commit),
        key_id=old.key_id,
    )
    forged = dataclasses.replace(forged, signature=old.sign(event_message(forged.hash())))
    offset = append(
        released.settings.access, released.settings.events_topic, encode_event(forged), partition
    )
    code, report, _ = replay_json(released)
    assert code == 1
    (violation,) = report["violations"]
    assert (violation["kind"], violation["offset"]) == ("bad_signature", offset)
    assert "retired" in violation["detail"]


def test_a_replayed_genuine_event_and_a_reordered_pair_are_caught(
    released: Stack, bootstrap: str, namespace: str
) -> None:
    events = chain(released, "churn")
    moves = [(e, p, o) for e, p, o in events if isinstance(e.payload, AliasMoved)]
    (first_move, partition, _), (second_move, _, _) = moves
    # Replayed: the genuine event that first moved production, written again later.
    offset = append(
        released.settings.access,
        released.settings.events_topic,
        encode_event(first_move),
        partition,
    )
    code, report, _ = replay_json(released)
    assert code == 0 and report["violations"] == []
    (dup,) = report["duplicate_events"]
    assert (dup["seq"], dup["partition"], dup["offset"]) == (first_move.seq, partition, offset)
    c = released.client()
    c.positions = {partition: offset}
    assert c.refs("churn")["aliases"]["production"] == second_move.payload.to_commit
    # Reordered: a mirror of the log with two genuine, signed events swapped.
    mirror = Settings.namespaced(f"{namespace}-mirror", bootstrap=bootstrap)
    ensure_topics(mirror)
    records = list(read_topic(released.settings.access, released.settings.events_topic))
    swap = [i for i, r in enumerate(records) if r.partition == partition and r.value]
    at = next(
        i
        for i in swap
        if (e := decode_event(records[i].value)).model == "churn" and e.seq == first_move.seq
    )
    after = swap[swap.index(at) + 1]
    records[at], records[after] = records[after], records[at]
    producer = KafkaProducer(**negotiate_sync(mirror.access).producer())
    written = {
        i: producer.send(mirror.events_topic, r.value, partition=r.partition)
        for i, r in enumerate(records)
    }
    offsets = {i: f.get(10).offset for i, f in written.items()}
    producer.close()
    done = subprocess.run(
        [sys.executable, "-m", "modelvc.cli", "--json", "audit", "replay", "--no-live"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            **mirror.access.to_env(),
            "MODELVC_NAMESPACE": mirror.namespace,
            "MODELVC_HOME": str(released.home.parent / "auditor"),
        },
        timeout=180,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    kinds = {(v["kind"], v["offset"]) for v in json.loads(done.stdout)["violations"]}
    assert ("reordered", offsets[at]) in kinds


def test_signed_predictions_verify_in_audit_served_and_a_tampered_one_does_not(
    tmp_path: Path, bootstrap: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    monkeypatch.setenv("MODELVC_SIGN_PREDICTIONS", "1")  # the stack's workers inherit it
    stack = Stack.up(tmp_path / "home", bootstrap=bootstrap, namespace=namespace, workers=1)
    try:
        c = stack.client()
        c.create("churn")
        c.commit("churn", c.upload(train_model(tmp_path / "m.txt", 3))["sha256"], "v1")
        c.set_alias("churn", "production", "main")
        with FeatureProducer(stack.settings.access, stack.settings.features_topic) as p:
            for i, row in enumerate(np.random.default_rng(5).normal(size=(10, 4))):
                p.publish("churn", {f"Column_{j}": float(v) for j, v in enumerate(row)}, f"s{i}")
        got = wait_for(
            lambda: (
                (
                    found := [
                        PREDICTIONS.decode(r.value)
                        for r in read_topic(stack.settings.access, stack.settings.predictions_topic)
                        if r.value
                    ]
                )
                and len(found) >= 10
                and found
            )
        )
        pub = stack.home / "keys" / "worker-worker-1.key.pub"
        worker_key = key_id_of(read_public_key(pub))
        assert {p["key_id"] for p in got} == {worker_key} and all(p["signature"] for p in got)
        pid = got[0]["prediction_id"]
        found = cli(stack, "--json", "audit", "served", pid, "--trust-worker-key", str(pub))
        assert found.returncode == 0, found.stdout + found.stderr
        answer = json.loads(found.stdout)
        assert answer["signed"] and answer["signatures"] == []
        assert answer["prediction"]["key_id"] == worker_key
        # A stranger writes the same prediction with another score, the signature kept.
        tampered = got[0] | {"scores": [got[0]["scores"][0] + 0.25]}
        offset = append(
            stack.settings.access, stack.settings.predictions_topic, PREDICTIONS.encode(tampered)
        )
        found = cli(stack, "--json", "audit", "served", pid, "--trust-worker-key", str(pub))
        assert found.returncode == 1, found.stdout + found.stderr
        (bad,) = json.loads(found.stdout)["signatures"]
        assert (bad["kind"], bad["offset"]) == ("bad_signature", offset)
        assert json.loads(found.stdout)["prediction"]["scores"] == got[0]["scores"]
        # Pins that name another key: every signed prediction is unpinned.
        other = tmp_path / "other.pub"
        other.write_text(SigningKey.generate().public_key + "\n")
        unpinned = cli(
            stack,
            "--json",
            "audit",
            "served",
            got[1]["prediction_id"],
            "--trust-worker-key",
            str(other),
        )
        assert unpinned.returncode == 1
        assert [f["kind"] for f in json.loads(unpinned.stdout)["signatures"]] == ["unpinned"]
        checked = cli(stack, "audit", "verify-predictions", "--all")
        assert checked.returncode == 1 and f"bad_signature: prediction {pid}" in checked.stdout
    finally:
        stack.down()

"""A model's history lives on one partition, whatever a producer with a Kafka client writes.

Commands are keyed by model, and the single writer of commands partition N appends
to events partition N. A command or event put on another partition by hand would
make a second writer, or an order that depends on which partition a reader
fetched first; both are refused.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from modelvc.stack import Stack
from streams.codec import encode_command, encode_event
from streams.core import Command, MakeCommit, decide
from streams.topics import home_partition
from tests.conftest import train_model
from tests.integration.test_hostile_messages import assert_all_alive, cli, healthz, letter_for
from tests.integration.test_service import fold_of_log

pytestmark = pytest.mark.broker


def _elsewhere(model: str, partitions: int) -> int:
    return (home_partition(model, partitions) + 1) % partitions


def test_a_command_on_the_wrong_partition_is_dead_lettered_not_decided(
    module_serving: Stack, model: str, tmp_path: Path
) -> None:
    stack = module_serving
    s = stack.settings
    c = stack.client()
    digest = c.upload(train_model(tmp_path / "m.txt"))["sha256"]
    c.create(model)
    head = c.commit(model, digest, "v1")["head"]
    wrong = _elsewhere(model, s.partitions)
    command = Command(f"misrouted-{model}", model, "mallory", 0, MakeCommit(digest, "sneaky"))
    producer = KafkaProducer(bootstrap_servers=s.bootstrap)
    try:
        sent = producer.send(
            s.commands_topic, encode_command(command), model.encode(), partition=wrong
        )
        metadata = sent.get(20)
    finally:
        producer.close()
    _, letter = letter_for(stack, s.commands_topic, wrong, metadata.offset, stage="route")
    assert f"lives on partition {home_partition(model, s.partitions)}" in letter["reason"]
    assert c.refs(model)["branches"]["main"] == head  # nothing was decided
    assert c.commit(model, digest, "v2")["seq"] == 3  # the rightful writer goes on
    assert healthz(stack.url)["ready"]


def test_an_event_on_the_wrong_partition_is_void_for_readers_and_a_violation_for_auditors(
    module_serving: Stack, model: str, tmp_path: Path
) -> None:
    stack = module_serving  # its worker-1 is the worker this test once added itself
    s = stack.settings
    c = stack.client()
    digest = c.upload(train_model(tmp_path / "m.txt"))["sha256"]
    c.create(model)
    head = c.commit(model, digest, "v1")["head"]
    before = c.digest()["digest"]
    # A correctly chained next event, as its writer would make it, put on another partition.
    state = fold_of_log(stack).models[model]
    (event,) = decide(
        state, Command(f"forged-{model}", model, "mallory", 1, MakeCommit(digest, "x"))
    )
    wrong = _elsewhere(model, s.partitions)
    producer = KafkaProducer(bootstrap_servers=s.bootstrap)
    try:
        forged = producer.send(s.events_topic, encode_event(event), model.encode(), partition=wrong)
        forged_at = forged.get(20)
    finally:
        producer.close()
    # The rightful writer's next event takes that seq on the right partition.
    v2 = c.commit(model, digest, "v2")
    assert v2["seq"] == 3 and v2["head"] != head
    assert c.digest()["digest"] != before  # nothing else writes between: tests run one by one
    assert [x["message"] for x in c.log(model)["commits"]] == ["v2", "v1"]
    replay = cli(stack, "--json", "audit", "replay", "--jobs", "1")
    assert replay.returncode == 1, replay.stdout + replay.stderr
    summary = json.loads(replay.stdout)
    # The shared log may hold other tests' violations: this model's are exactly the forgery.
    mine = [v for v in summary["violations"] if v["model"] == model]
    assert [(v["kind"], v["partition"], v["offset"], v["seq"]) for v in mine] == [
        ("misplaced", wrong, forged_at.offset, event.seq)
    ], summary["violations"]
    assert summary["live_digest"] == summary["digest"]  # the auditor folds as readers do
    # The worker's fold voids it too: main serves the rightful writer's commit.
    answer = predict(stack, model, {f"Column_{i}": 0.5 for i in range(4)})
    assert answer["commit_id"] == v2["head"]
    assert_all_alive(stack)


def predict(stack: Stack, model: str, features: dict[str, float]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{stack.worker_url()}/v1/models/{model}/predict",
        data=json.dumps({"features": features, "ref": "main"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {stack.token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))

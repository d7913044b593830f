"""The streams app against a real broker: API statuses, rebuild, races, crashes, bad input.

The tests share one stack (``module_stack``), each on a model of its own (``model``). The
checks of the whole state (digests) hold on a shared log too: every test folds the whole
log, whoever wrote it, and no other process writes while a test runs.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer

from modelvc.client import Client, ClientError
from modelvc.stack import Stack
from streams import signing
from streams.codec import DEAD_LETTERS, decode_event
from streams.core.fold import Fold, state_digest
from streams.logreader import read_topic

pytestmark = pytest.mark.broker

# (topic, partition, offset) of the garbage a test put on an events topic on purpose: the
# service dead-letters it and folds past it, and so does fold_of_log (that one record only).
INJECTED: set[tuple[str, int, int]] = set()


def fold_of_log(stack: Stack) -> Fold:
    """The log folded as the service folds it: by partition, every signature checked."""
    result = Fold(verify=signing.verify)
    topic = stack.settings.events_topic
    for record in read_topic(stack.settings.access, topic):
        if (topic, record.partition, record.offset) in INJECTED:
            continue
        assert record.value is not None
        result.apply(decode_event(record.value), record.partition)
    return result


def history(c: Client, model: str, files: list[Path]) -> None:
    digests = [c.upload(f)["sha256"] for f in files]
    c.create(model)
    c.commit(model, digests[0], "one", params={"lr": "0.1"}, metrics={"auc": 0.8})
    c.create_branch(model, "exp")
    c.commit(model, digests[1], "two", branch="exp", metrics={"auc": 0.9})
    c.commit(model, digests[0], "three")
    c.merge(model, "exp", strategy="theirs")
    c.set_alias(model, "production", "main")
    c.rollback(model, "main", "main~1", "regression")
    c.create_branch(model, "tmp")
    c.delete_branch(model, "tmp")


def test_api_answers_with_clear_statuses(
    module_stack: Stack, model: str, model_file: Path, tmp_path: Path
) -> None:
    c = module_stack.client()
    missing = f"{model}-nope"  # a model nobody creates
    digest = c.upload(model_file)["sha256"]
    assert c.create(model)["event"] == "ModelCreated"
    with pytest.raises(ClientError) as exists:
        c.create(model)
    assert exists.value.status == 409
    first = c.commit(model, digest, "first")
    second = c.commit(model, digest, "second", expect_head=first["head"])
    with pytest.raises(ClientError) as stale:
        c.commit(model, digest, "stale", expect_head=first["head"])
    assert stale.value.status == 409 and stale.value.body["current"] == second["head"]
    with pytest.raises(ClientError) as unknown_model:
        c.log(missing)
    assert unknown_model.value.status == 404 and unknown_model.value.body["hint"] == {
        "code": "create_model",
        "args": {"model": missing},
    }
    with pytest.raises(ClientError) as unknown_ref:
        c.show(model, "no-such-ref")
    assert unknown_ref.value.status == 404
    with pytest.raises(ClientError) as bad_metric:
        c.commit(model, digest, "x", metrics={"auc": "high"})  # type: ignore[dict-item]
    assert bad_metric.value.status == 422
    with pytest.raises(ClientError) as not_uploaded:
        c.commit(model, "e" * 64, "x")
    assert not_uploaded.value.status == 422 and "upload it first" in str(not_uploaded.value)
    pickle_file = tmp_path / "model.pkl"
    pickle_file.write_bytes(b"\x80\x04\x95junk")
    with pytest.raises(ClientError) as pickled:
        c.upload(pickle_file)
    assert pickled.value.status == 422 and "pickle" in str(pickled.value)
    assert c.artifact(digest) == model_file.read_bytes()
    assert c.resolve(model, "main~1")["commit"] == first["head"]


def test_repeated_command_is_answered_once_and_applied_once(
    module_stack: Stack, model: str, model_file: Path
) -> None:
    c = module_stack.client()
    digest = c.upload(model_file)["sha256"]
    c.create(model)
    first = c.commit(model, digest, "once", command_id="fixed-id")
    again = c.commit(model, digest, "once", command_id="fixed-id")
    assert again["repeated"] and again["head"] == first["head"] and again["seq"] == first["seq"]
    assert len(c.log(model)["commits"]) == 1


def test_deleting_rocksdb_rebuilds_the_same_graph(
    module_stack: Stack, model: str, tmp_path: Path
) -> None:
    from tests.conftest import train_model

    stack = module_stack
    c = stack.client()
    history(c, model, [train_model(tmp_path / "a.txt", 1), train_model(tmp_path / "b.txt", 2)])
    before = c.digest()
    log_before = c.log(model)
    stack.restart_streams(wipe=True)
    c = stack.client()
    after = c.digest()
    assert after["digest"] == before["digest"]
    assert c.log(model) == log_before
    assert after["digest"] == state_digest(fold_of_log(stack).models)
    # and a restart that keeps RocksDB resumes from its stored offsets
    stack.restart_streams()
    assert stack.client().digest()["digest"] == before["digest"]


def test_concurrent_writers_with_expect_head_lose_no_update(
    module_stack: Stack, model: str, model_file: Path
) -> None:
    stack = module_stack
    c = stack.client()
    digest = c.upload(model_file)["sha256"]
    c.create(model)
    c.commit(model, digest, "root")
    accepted: list[str] = []
    rejected: list[ClientError] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        client = stack.client()
        for i in range(25):
            head = client.refs(model)["branches"]["main"]
            try:
                answer = client.commit(model, digest, f"w{n}-{i}", expect_head=head)
                with lock:
                    accepted.append(answer["head"])
            except ClientError as exc:
                with lock:
                    rejected.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) + len(rejected) == 200
    assert all(
        e.status == 409 and e.body["error"] in ("stale_head", "write_raced") for e in rejected
    )
    log = c.log(model, "main")["commits"]
    assert all(len(commit["parents"]) <= 1 for commit in log)  # linear
    reachable = {commit["id"] for commit in log}
    assert set(accepted) <= reachable
    assert len(log) == len(accepted) + 1


def test_kill_9_while_commands_flow_applies_each_command_once(
    module_stack: Stack, model: str, model_file: Path
) -> None:
    stack = module_stack
    c = stack.client(timeout=60)
    digest = c.upload(model_file)["sha256"]
    c.create(model)
    ids = [f"cmd-{uuid.uuid4()}" for _ in range(60)]
    done: list[str] = []
    stop_flag = threading.Event()

    def flow() -> None:
        for i, command_id in enumerate(ids):
            while not stop_flag.is_set():
                try:
                    # A client per attempt: the restarted service may answer elsewhere.
                    client = stack.client(timeout=60)
                    client.commit(model, digest, f"c{i}", command_id=command_id)
                    done.append(command_id)
                    break
                except ClientError:
                    time.sleep(0.2)  # service down or timed out: retry the same command id

    worker = threading.Thread(target=flow)
    worker.start()
    while len(done) < 15:
        time.sleep(0.05)
    stack.restart_streams(hard=True)  # SIGKILL mid-flow, then start again
    worker.join(timeout=240)
    stop_flag.set()
    assert done == ids
    c = stack.client()
    replayed = fold_of_log(stack)
    assert c.digest()["digest"] == state_digest(replayed.models)
    messages = [commit["message"] for commit in c.log(model)["commits"]]
    assert sorted(messages) == sorted(f"c{i}" for i in range(60))  # each applied exactly once


def test_undecodable_messages_go_to_the_dead_letter_topic(
    module_stack: Stack, model: str, model_file: Path
) -> None:
    stack = module_stack
    settings = stack.settings
    garbage = {
        settings.commands_topic: b"not avro at all",
        settings.events_topic: b"\xc3\x01garbage",
    }
    sent: set[tuple[str, int, int]] = set()  # where each garbage record went
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap)
    try:
        for topic, value in garbage.items():
            meta = producer.send(topic, key=model.encode(), value=value).get(10)
            sent.add((topic, meta.partition, meta.offset))
            if topic == settings.events_topic:
                INJECTED.add((topic, meta.partition, meta.offset))
    finally:
        producer.close()
    c = stack.client()
    c.create(model)
    c.commit(model, c.upload(model_file)["sha256"], "still serving")
    # The shared stack's dead-letter topic may hold other letters: ours are the ones that
    # name the partition and offset each garbage record was written at.
    deadline = time.monotonic() + 20
    letters: list[dict] = []
    while time.monotonic() < deadline and len(letters) < 2:
        decoded = [
            DEAD_LETTERS.decode(r.value)
            for r in read_topic(settings.access, settings.dead_letter_topic)
            if r.value
        ]
        letters = [d for d in decoded if (d["topic"], d["partition"], d["offset"]) in sent]
        time.sleep(0.2)
    by_topic = {letter["topic"]: letter for letter in letters}
    assert by_topic[settings.commands_topic]["value"] == b"not avro at all"
    assert "magic" in by_topic[settings.commands_topic]["reason"]
    assert by_topic[settings.events_topic]["value"] == b"\xc3\x01garbage"
    assert by_topic[settings.events_topic]["reason"]


def test_sigterm_stops_cleanly_and_the_restart_resumes_from_the_stored_offsets(
    module_stack: Stack, model: str, model_file: Path
) -> None:
    stack = module_stack
    c = stack.client()
    c.create(model)
    c.commit(model, c.upload(model_file)["sha256"], "one")
    offsets = dict(sorted((int(p), o) for p, o in c.digest()["offsets"].items()))
    log = Path(stack.processes["streams"].log)
    mark = log.stat().st_size
    stack.restart_streams()  # SIGTERM, then start again on the same RocksDB
    text = log.read_bytes()[mark:].decode(errors="replace")
    # On shutdown the producer was flushed and stopped and RocksDB closed, after the agent
    # and the follower had stopped ...
    assert f"{stack.settings.instance_id} stopped cleanly at offsets {offsets}" in text
    # ... and the new process resumed from the offsets stored with the graph.
    assert f"following {stack.settings.events_topic} from {offsets}" in text
    assert stack.client().log(model)["commits"][0]["message"] == "one"

"""Signed events on a real stack: whoever can write to Kafka cannot move a ref.

A forged, correctly chained ``AliasMoved`` written straight to the events topic is
void in the live projection and in the workers (they keep serving what they
served), and ``audit replay`` reports it with its coordinates; a command written
straight to the commands topic, unsigned, is dead-lettered and decides nothing.

Right after ``up`` every partition's writer-key ring holds the stack's key, so a
partition nobody has written a model to cannot be claimed: unsigned events there
(and an unsigned token on ``~security``) are void, and an attacker's own key,
added to a ring by an event it signed itself, signs nothing anyone trusts.

The tests share one stack (``module_serving``), each with a model of its own; its rings
are read right after ``up``, before any test writes, and one partition is kept free of
models for the test that needs a partition nobody has written a model to. The attack
made before ``up`` needs a log of its own, so that test starts a stack of its own.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from modelvc.client import Client
from modelvc.stack import Stack
from streams.auth import new_token
from streams.codec import decode_event, encode_command, encode_event
from streams.core import Command, CreateModel, MakeCommit, ModelEvent, MoveAlias
from streams.core.commands import AddWriterKey, Body
from streams.core.decide import decide
from streams.core.events import AliasMoved, TokenIssued, WriterKeyAdded
from streams.core.fold import Fold
from streams.core.hashing import GENESIS_HASH
from streams.core.security import SECURITY_STREAM
from streams.core.signatures import keys_stream
from streams.http_client import HttpError
from streams.logreader import read_topic
from streams.settings import Settings
from streams.signing import SigningKey, sign_event, verify
from streams.topics import ensure_topics, home_partition
from tests.integration.test_audit import cli
from tests.integration.test_hostile_messages import letter_for
from tests.integration.test_workers import features, rows, train, wait_for

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def keys_right_after_up(module_serving: Stack) -> dict[str, Any]:
    """The module stack's writer-key rings as ``up`` left them, read before any test writes."""
    return dict(module_serving.client().writer_keys())


@pytest.fixture
def serving(module_serving: Stack, keys_right_after_up: dict[str, Any]) -> Stack:
    """The module's shared stack (``up`` waits for the admin token; worker-1 serves), its
    rings read right after ``up`` (:func:`keys_right_after_up`) before the first test runs."""
    return module_serving


def spare_partition(stack: Stack) -> int:
    """The partition no test of this module writes a model to, but
    test_unsigned_events_on_a_partition_no_model_was_written_to_are_void (once per stack):
    not the security stream's, which `up` writes tokens to."""
    n = stack.settings.partitions
    return next(p for p in range(n) if p != home_partition(SECURITY_STREAM, n))


def fresh_model(stack: Stack, on: bool) -> str:
    """A model name no other test uses: on the spare partition (``on``) or off it."""
    n, spare = stack.settings.partitions, spare_partition(stack)
    while (home_partition(name := f"m{uuid.uuid4().hex[:10]}", n) == spare) != on:
        pass
    return name


@pytest.fixture
def model(serving: Stack) -> str:
    """A model of this test's own on the shared stack, off the spare partition."""
    return fresh_model(serving, on=False)


def setup_model(stack: Stack, model: str, tmp_path: Path) -> tuple[Client, list[str]]:
    """``model`` with two commits (test_workers.setup_model, for a model of one's own)."""
    c = stack.client()
    c.create(model)
    heads = []
    for i, seed in enumerate((1, 2)):
        path, _ = train(tmp_path / f"v{i}.txt", seed)
        heads.append(c.commit(model, c.upload(path)["sha256"], f"v{i}")["head"])
    return c, heads


def accepted(stack: Stack) -> bool:
    try:
        stack.client().whoami()
    except HttpError as exc:
        if exc.status == 401:
            return False
        raise
    return True


def predict(stack: Stack, ref: str, model: str, token: str | None = None) -> dict[str, Any] | None:
    """The worker's answer for ``ref`` of ``model``, or None while it cannot answer yet."""
    body = json.dumps({"features": features(rows(1)[0]), "ref": ref}).encode()
    request = urllib.request.Request(
        stack.worker_url() + f"/v1/models/{model}/predict",
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token or stack.token}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, Any] = json.load(response)
            return answer
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 503):  # the worker has not folded that far yet
            return None
        raise


def serves(stack: Stack, ref: str, commit: str, model: str) -> bool:
    answer = predict(stack, ref, model)
    return answer is not None and answer["commit_id"] == commit


def worker_status(stack: Stack, token: str, model: str) -> int:
    """The worker's HTTP status for a prediction of ``model`` with ``token``."""
    try:
        predict(stack, "production", model, token)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def forge(stack: Stack, *events: ModelEvent) -> list[tuple[int, int]]:
    """Write ``events`` straight to the events topic, as anyone with write access can:
    each keyed by its chain, a ring's on its own partition. Their (partition, offset)."""
    attacker = KafkaProducer(bootstrap_servers=stack.settings.bootstrap)
    try:
        sent = [
            attacker.send(
                stack.settings.events_topic,
                key=event.model.encode(),
                value=encode_event(event),
                partition=home_partition(event.model, stack.settings.partitions),
            ).get(10)
            for event in events
        ]
    finally:
        attacker.close()
    return [(r.partition, r.offset) for r in sent]


def chain_end(stack: Stack, chain: str) -> tuple[int, str]:
    """(seq, hash) of ``chain``'s newest event in the log: what a forgery chains to."""
    events = [
        decode_event(r.value)
        for r in read_topic(stack.settings.access, stack.settings.events_topic)
        if r.key == chain.encode() and r.value
    ]
    if not events:
        return 0, GENESIS_HASH
    last = max(events, key=lambda e: e.seq)
    return last.seq, last.hash()


def made_up_history(
    model: str, partition: int, key: SigningKey | None
) -> tuple[list[ModelEvent], list[ModelEvent]]:
    """A model's creation, a commit and a production alias made by the real core (so only
    the signature gives them away), signed by ``key`` (None: unsigned); with a key, also
    the ring's first event naming it, self-signed. (ring events, model events)."""
    fold, now = Fold(verify=verify), int(time.time() * 1000)
    ring: list[ModelEvent] = []
    made: list[ModelEvent] = []
    bodies: list[Body] = [
        CreateModel(),
        MakeCommit("b" * 64, "evil"),
        MoveAlias("production", "main"),
    ]
    if key is not None:
        # The attacker's own view: a ring that trusts its key (the real one never does).
        own = Command(
            "evil-key", keys_stream(partition), "mallory", now, AddWriterKey(key.public_key)
        )
        for event in decide(None, own, key.key_id):
            ring.append(sign_event(key, event))
            assert fold.apply(ring[-1], partition) is None
    for i, body in enumerate(bodies):
        command = Command(f"evil-{i}", model, "mallory", now, body)
        for event in decide(fold.models.get(model), command, "" if key is None else key.key_id):
            signed = event if key is None else sign_event(key, event)
            assert fold.apply(signed, partition) is None
            made.append(signed)
    assert [e.type for e in made] == ["ModelCreated", "Committed", "AliasMoved"]
    return ring, made


def last_event(stack: Stack, model: str) -> tuple[int, ModelEvent]:
    """(partition, event) of ``model``'s newest event in the log, read as an attacker would."""
    found = [
        (r.partition, decode_event(r.value))
        for r in read_topic(stack.settings.access, stack.settings.events_topic)
        if r.key == model.encode() and r.value
    ]
    return max(found, key=lambda item: item[1].seq)


def test_a_forged_alias_move_is_void_everywhere_and_replay_reports_it(
    serving: Stack, model: str, tmp_path: Path
) -> None:
    c, heads = setup_model(serving, model, tmp_path)
    c.set_alias(model, "production", heads[0])
    wait_for(lambda: serves(serving, "production", heads[0], model), what="production served")

    partition, last = last_event(serving, model)
    assert last.key_id and last.signature  # the writer signs what it appends
    forged = ModelEvent(
        model,
        last.seq + 1,
        last.hash(),  # correctly chained: only the signature gives it away
        "forged-move",
        serving.admin_actor,
        int(time.time() * 1000),
        AliasMoved("production", heads[0], heads[1]),
    )
    attacker = KafkaProducer(bootstrap_servers=serving.settings.bootstrap)
    try:
        sent = attacker.send(
            serving.settings.events_topic, key=model.encode(), value=encode_event(forged)
        ).get(10)
    finally:
        attacker.close()
    assert sent.partition == partition

    # A genuine move after it, on the same partition: the fold passed the forgery once
    # it applied this one, and it took the seq the forgery claimed.
    staged = c.set_alias(model, "staging", heads[1])
    assert (staged["partition"], staged["seq"]) == (partition, forged.seq)
    assert staged["offset"] > sent.offset
    assert c.refs(model)["aliases"] == {"production": heads[0], "staging": heads[1]}

    # The worker resolves staging only once it has folded past the forgery...
    wait_for(lambda: serves(serving, "staging", heads[1], model), what="staging served")
    # ...and production still serves what it served.
    assert serves(serving, "production", heads[0], model)

    done = cli(serving, "--json", "audit", "replay")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    # The shared log may hold other tests' forgeries: this model's violation is this one.
    (violation,) = [v for v in report["violations"] if v["model"] == model]
    assert violation["kind"] == "unsigned"
    assert (violation["model"], violation["seq"]) == (model, forged.seq)
    assert (violation["partition"], violation["offset"]) == (partition, sent.offset)
    assert violation["topic"] == serving.settings.events_topic
    assert report["digest"] == report["live_digest"]  # replay voids it as the live fold did


def test_an_unsigned_command_is_dead_lettered_and_not_applied(
    serving: Stack, model: str, tmp_path: Path
) -> None:
    c, heads = setup_model(serving, model, tmp_path)
    c.set_alias(model, "production", heads[0])
    topic = serving.settings.commands_topic
    # What an attacker with write access to the commands topic would send: an admin's
    # role claimed, and no signature.
    unsigned = Command(
        f"unsigned-{model}",
        model,
        serving.admin_actor,
        0,
        MoveAlias("production", heads[1]),
        role="admin",
    )
    attacker = KafkaProducer(bootstrap_servers=serving.settings.bootstrap)
    try:
        sent = attacker.send(topic, key=model.encode(), value=encode_command(unsigned)).get(10)
    finally:
        attacker.close()
    _, letter = letter_for(serving, topic, sent.partition, sent.offset, stage="auth")
    assert "unsigned" in letter["reason"]
    c.set_alias(model, "staging", heads[1])  # the partition's writer goes on deciding
    assert c.refs(model)["aliases"] == {"production": heads[0], "staging": heads[1]}
    logged = {
        decode_event(r.value).command_id
        for r in read_topic(serving.settings.access, serving.settings.events_topic)
        if r.key == model.encode() and r.value
    }
    assert unsigned.command_id not in logged


def test_every_ring_holds_the_stack_key_right_after_up(
    serving: Stack, keys_right_after_up: dict[str, Any]
) -> None:
    keys = keys_right_after_up  # read before any test of the module wrote
    stack_key = keys["instance_key"]
    assert serving.settings.trusted_writer_keys == {stack_key}  # pinned for every reader
    assert set(keys["partitions"]) == {str(p) for p in range(serving.settings.partitions)}
    for ring in keys["partitions"].values():
        assert set(ring["active"]) == {stack_key} and not ring["retired"]
    # Nothing the module's tests forge adds a key: the rings are still just that.
    assert serving.client().writer_keys() == keys


def test_unsigned_events_on_a_partition_no_model_was_written_to_are_void(
    serving: Stack, tmp_path: Path
) -> None:
    c = serving.client()
    model = fresh_model(serving, on=True)
    partition = spare_partition(serving)
    # The shared stack kept this partition for this test: no model was written to it yet
    # (its ring's events are all it holds).
    held = {
        r.key
        for r in read_topic(serving.settings.access, serving.settings.events_topic)
        if r.partition == partition
    }
    assert held <= {keys_stream(partition).encode()}, held
    now = int(time.time() * 1000)
    _, forged = made_up_history(model, partition, None)
    token, token_id, token_hash = new_token()
    seq, last = chain_end(serving, SECURITY_STREAM)
    issued = ModelEvent(
        SECURITY_STREAM,
        seq + 1,
        last,  # correctly chained: only the missing signature gives it away
        "forged-token",
        serving.admin_actor,
        now,
        TokenIssued(token_id, "mallory", "admin", token_hash, 0),
    )
    forge(serving, *forged, issued)

    # Genuine writes after the forgeries, on the same partitions: read-your-writes means
    # the live fold has passed them.
    assert c.create(model)["seq"] == 1  # the forged creation did not take the model
    assert c.refs(model)["aliases"] == {}
    genuine = c.create_token("bob", "reader")
    assert genuine["token_id"] != token_id
    with pytest.raises(HttpError) as refused:
        Client(serving.url, token=token).whoami()
    assert refused.value.status == 401
    assert token_id not in {t["token_id"] for t in c.tokens()["tokens"]}
    # The worker folds the same log: it accepts the genuine token once it has passed the
    # forged one, which it never accepts.
    wait_for(lambda: worker_status(serving, genuine["token"], model) != 401, what="bob accepted")
    assert worker_status(serving, token, model) == 401


ATTACKED = "fresh-claimed"  # the model whose partition an attacker claims before `up`


@pytest.fixture
def claimed(
    tmp_path: Path, bootstrap: str, namespace: str
) -> Iterator[tuple[Stack, SigningKey, int]]:
    """A stack started on a log where an attacker already wrote the first key of a ring
    (its own, self-signed) and, signed with it, a model's history on that partition."""
    settings = Settings.namespaced(namespace, bootstrap=bootstrap)
    ensure_topics(settings)
    partition = home_partition(ATTACKED, settings.partitions)
    attacker = SigningKey.generate()
    ring, history = made_up_history(ATTACKED, partition, attacker)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for event in [*ring, *history]:
            producer.send(
                settings.events_topic,
                key=event.model.encode(),
                value=encode_event(event),
                partition=partition,
            ).get(10)
    finally:
        producer.close()
    s = Stack.up(tmp_path / "home", bootstrap=bootstrap, namespace=namespace)
    try:
        wait_for(lambda: accepted(s), what="the admin token accepted")
        s.add_worker()
        yield s, attacker, partition
    finally:
        s.down()


def test_an_attacker_who_wrote_a_ring_first_claims_nothing(
    claimed: tuple[Stack, SigningKey, int], tmp_path: Path
) -> None:
    stack, attacker, partition = claimed
    c = stack.client()
    # Its first key is not one the stack trusts: the ring started with the stack's key.
    keys = c.writer_keys()
    assert set(keys["partitions"][str(partition)]["active"]) == {keys["instance_key"]}
    # An attacker-signed key added after it, correctly chained, is void too.
    seq, last = chain_end(stack, keys_stream(partition))
    later = SigningKey.generate()
    added = ModelEvent(
        keys_stream(partition),
        seq + 1,
        last,
        "takeover",
        "mallory",
        int(time.time() * 1000),
        WriterKeyAdded(later.key_id, later.public_key, "mine now"),
        key_id=later.key_id,
    )
    forge(stack, sign_event(later, added))

    # The real service creates the attacked model and writes there...
    assert c.create(ATTACKED)["seq"] == 1
    path, _ = train(tmp_path / "v.txt", 1)
    head = c.commit(ATTACKED, c.upload(path)["sha256"], "real")["head"]
    c.set_alias(ATTACKED, "production", head)
    assert c.refs(ATTACKED)["aliases"] == {"production": head}
    ring = c.writer_keys()["partitions"][str(partition)]
    assert set(ring["active"]) == {keys["instance_key"]}
    assert attacker.key_id not in ring["active"] and later.key_id not in ring["active"]
    # ...and the worker, which pins the stack's key too, serves that, never the attacker's.
    wait_for(lambda: serves(stack, "production", head, ATTACKED), what="the real commit served")

"""`modelvc up --broker kafka` through the real CLI: a durable stack on Apache Kafka.

Everything a user made (commits, an alias, feature events, predictions) must come back
from Kafka itself after a `modelvc down`/`up` (the archive moved aside, so it cannot come
from there) and after a kill -9 of the broker. The `home` fixture stops by pid whatever
stack.json and the cluster record list, even when a test fails half way.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelvc.kafka_broker import spec_from_json, stop_recorded
from modelvc.processes import alive, free_port
from modelvc.stack import Stack, kafka_home, port_taken
from streams.codec import PREDICTIONS
from streams.kafka_access import KafkaAccess
from streams.logreader import read_topic
from tests.conftest import BROKERS_ENV, selected_broker_kinds, train_model
from tests.e2e.test_cli import run_cli
from tests.kafka.test_kafka_launcher import recorded_processes

kafka_only = pytest.mark.skipif(
    "kafka" not in selected_broker_kinds(),
    reason=f"Apache Kafka tier not selected: run `make kafka` and set {BROKERS_ENV}=kafka",
)
# A JVM start, a streams app and a worker on a loaded 2-core machine.
UP_TIMEOUT_S = 240.0


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    try:
        yield home
    finally:
        if (home / "stack.json").exists():
            Stack.load(home).down()
        stop_recorded(kafka_home(home), hard=True)


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user of this home: no bootstrap or URL but what `up` recorded."""
    drop = {"KAFKA_BOOTSTRAP", "MODELVC_URL", "MODELVC_MODEL", "MODELVC_DELIVERY"}
    drop |= {"MODELVC_ACTOR", "MODELVC_TOKEN", "MODELVC_TOKEN_FILE"}  # the home's admin.token
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {"MODELVC_HOME": str(home)}


def ok(home: Path, *args: str, timeout: float = 120.0) -> str:
    done = run_cli(user_env(home), *args, timeout=timeout)
    assert done.returncode == 0, f"modelvc {' '.join(args)}: {done.stderr}{done.stdout}"
    assert "Traceback" not in done.stderr
    return done.stdout


def free_port_pair() -> int:
    """A port P with P+1 free too (the broker and its KRaft controller), below the
    ephemeral range: a port from it may be taken by some client's connection between
    this check and the broker's bind, as a fixed port like 9092 never is."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    while True:
        port = rng.randrange(10_000, low - 1)
        if not port_taken(port) and not port_taken(port + 1):
            return port


def up_kafka(home: Path, *extra: str) -> str:
    return ok(
        home,
        "up",
        "--broker",
        "kafka",
        "--port",
        str(free_port()),
        "--worker-port",
        str(free_port()),
        *extra,
        timeout=UP_TIMEOUT_S,
    )


def record(home: Path) -> dict[str, Any]:
    return dict(json.loads((home / "stack.json").read_text()))


def recorded_pids(home: Path) -> list[int]:
    """Every pid stack.json and the cluster record list."""
    stack = record(home)
    pids = [stack["broker"]["pid"], *(p["pid"] for p in stack["processes"].values())]
    return pids + [s.pid for s in recorded_processes(kafka_home(home))]


def cluster_id(home: Path) -> str:
    return spec_from_json((kafka_home(home) / "cluster.json").read_text())[0].cluster_id


def predictions(home: Path) -> dict[str, dict[str, Any]]:
    """Every committed prediction on the topic (read_committed), by feature event id:
    exactly one each, restarts and the kill -9 included."""
    env = record(home)["env"]
    topic = f"{env['MODELVC_NAMESPACE']}.predictions"
    found = [
        PREDICTIONS.decode(r.value) for r in read_topic(KafkaAccess.from_env(env), topic) if r.value
    ]
    by_event = {p["feature_event_id"]: p for p in found}
    assert len(by_event) == len(found), f"an event scored twice: {found}"
    return by_event


def features_published(home: Path) -> int:
    env = record(home)["env"]
    topic = f"{env['MODELVC_NAMESPACE']}.features"
    return sum(1 for r in read_topic(KafkaAccess.from_env(env), topic) if r.value)


def audited_digest(home: Path, events: int) -> str:
    """`audit replay` from Kafka: clean, every event there, and its digest the live one.

    ``events`` counts the models' events; the log holds those of the ~security and
    ~keys.P chains too (tokens issued, writer keys), so there are at least as many.
    """
    replay = json.loads(ok(home, "--json", "audit", "replay", "--jobs", "1"))
    assert replay["violations"] == [] and replay["events"] >= events, replay
    assert replay["digest"] == replay["live_digest"], replay
    return str(replay["digest"])


def snapshot(home: Path) -> dict[str, Any]:
    """What a user sees: history, refs, the audited digest, feature events and predictions."""
    return {
        "log": json.loads(ok(home, "--json", "log")),
        "refs": json.loads(ok(home, "--json", "refs")),
        "digest": audited_digest(home, events=4),  # create, 2 commits, an alias move
        "features": features_published(home),
        "predictions": predictions(home),
    }


def publish(home: Path, path: Path, ids: list[str]) -> None:
    path.write_text(
        "".join(
            json.dumps({"event_id": i, "features": {f"Column_{c}": n + c for c in range(4)}}) + "\n"
            for n, i in enumerate(ids)
        )
    )
    assert f"published {len(ids)}" in ok(home, "publish", str(path))


@kafka_only
def test_up_broker_kafka_keeps_everything_across_down_up_and_a_kill_9(
    home: Path, tmp_path: Path
) -> None:
    out = up_kafka(home, "--broker-port", str(free_port_pair()))
    assert "broker: Apache Kafka" in out and f"durable under {kafka_home(home)}" in out
    assert "delivery: exactly-once" in out
    first_id, bootstrap = cluster_id(home), record(home)["bootstrap"]
    assert record(home)["broker_kind"] == "kafka"

    refused = run_cli(user_env(home), "up", "--broker", "kafka", timeout=60)
    assert refused.returncode == 3 and "already running" in refused.stderr
    assert "modelvc down" in refused.stderr

    ok(home, "create", "churn")
    ok(home, "commit", str(train_model(tmp_path / "v1.txt", seed=1)), "-m", "v1")
    ok(home, "commit", str(train_model(tmp_path / "v2.txt", seed=2, rounds=9)), "-m", "v2")
    ok(home, "alias", "set", "production", "main~1")
    publish(home, tmp_path / "f1.jsonl", ["e1", "e2", "e3"])
    tail = ["tail", "predictions", "--from-beginning", "--idle-timeout", "60"]
    tailed = ok(home, "--json", *tail, "-n", "3")
    assert {json.loads(line)["feature_event_id"] for line in tailed.splitlines()} == {
        "e1",
        "e2",
        "e3",
    }
    before = snapshot(home)
    v1 = before["refs"]["aliases"]["production"]
    assert {p["commit_id"] for p in before["predictions"].values()} == {v1}

    # down, the archive moved aside: whatever comes back, comes back from Kafka.
    pids = recorded_pids(home)
    assert "modelvc is down" in ok(home, "down", timeout=120)
    assert [p for p in pids if alive(p)] == []
    (home / "archive").rename(tmp_path / "archive-aside")
    out = up_kafka(home)
    assert "restored" not in out and "had lost" not in out
    assert (cluster_id(home), record(home)["bootstrap"]) == (first_id, bootstrap)
    assert snapshot(home) == before

    # kill -9 of the broker while the stack runs: `modelvc up` brings it all back.
    os.kill(record(home)["broker"]["pid"], signal.SIGKILL)
    out = up_kafka(home)
    assert "had lost broker" in out and "restored" not in out
    assert (cluster_id(home), record(home)["bootstrap"]) == (first_id, bootstrap)
    assert snapshot(home) == before
    publish(home, tmp_path / "f2.jsonl", ["e4"])  # and it serves on
    ok(home, *tail, "-n", "4")
    assert predictions(home)["e4"]["commit_id"] == v1

    pids = recorded_pids(home)
    ok(home, "down", timeout=120)
    assert [p for p in pids if alive(p)] == []
    assert not (home / "stack.json").exists()


@kafka_only
def test_up_broker_kafka_on_a_taken_port_says_which_and_records_nothing(home: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = run_cli(
            user_env(home), "up", "--broker", "kafka", "--broker-port", str(taken), timeout=60
        )
    assert done.returncode == 3, done.stderr
    assert f"port {taken} on 127.0.0.1 is taken" in done.stderr and "--broker-port P" in done.stderr
    assert not (kafka_home(home) / "cluster.json").exists()
    assert not (home / "stack.json").exists()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("MODELVC_JAVA", "/nonexistent/java", "cannot run /nonexistent/java"),
        ("MODELVC_KAFKA_LIB", "{empty}", "no Apache Kafka jars in"),
    ],
)
def test_up_broker_kafka_without_java_or_jars_says_what_to_install(
    home: Path, tmp_path: Path, variable: str, value: str, says: str
) -> None:
    """No broker needed: it must fail before starting anything, and say how to fix it."""
    (tmp_path / "empty").mkdir()
    env = user_env(home) | {variable: value.format(empty=tmp_path / "empty")}
    done = run_cli(env, "up", "--broker", "kafka", timeout=60)
    assert done.returncode == 3, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert "`make kafka`" in done.stderr and "Java 17+" in done.stderr
    assert not (home / "stack.json").exists() and not kafka_home(home).exists()


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@kafka_only
def test_up_broker_kafka_with_sasl_gives_every_process_and_command_its_own_login(
    home: Path, tmp_path: Path
) -> None:
    from kafka import KafkaProducer
    from kafka.errors import TopicAuthorizationFailedError

    env = user_env(home) | {"MODELVC_KAFKA_SECURITY": "sasl"}
    ports = ["--port", str(free_port()), "--worker-port", str(free_port())]
    done = run_cli(
        env,
        *["up", "--broker", "kafka", "--broker-port", str(free_port_pair()), *ports],
        timeout=UP_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "access: SASL/SCRAM-SHA-512" in done.stdout
    logins = kafka_home(home) / "credentials"
    for role in ("admin", "streams", "worker", "producer", "auditor"):
        assert (logins / f"{role}.json").stat().st_mode & 0o777 == 0o600
    # Each process logs in as its role, so the broker's ACLs bound what it can do.
    roles = {"streams": "streams", "worker-1": "worker", "monitor": "worker", "archiver": "auditor"}
    for name, process in record(home)["processes"].items():
        login = environ_of(process["pid"])["MODELVC_KAFKA_CREDENTIALS"]
        assert login == str(logins / f"{roles[name]}.json"), name

    ok(home, "create", "churn")
    ok(home, "commit", str(train_model(tmp_path / "v1.txt", seed=1)), "-m", "v1")
    publish(home, tmp_path / "f.jsonl", ["s1", "s2"])  # logs in as producer
    tail = ["tail", "predictions", "--from-beginning", "--idle-timeout", "60", "-n", "2"]
    tailed = ok(home, "--json", *tail)  # logs in as auditor
    assert {json.loads(line)["feature_event_id"] for line in tailed.splitlines()} == {"s1", "s2"}
    audited_digest(home, events=2)

    # The producer's login may write features only: the broker refuses it the event log.
    bootstrap = record(home)["bootstrap"]
    events = f"{record(home)['env']['MODELVC_NAMESPACE']}.events"
    access = KafkaAccess(bootstrap, "sasl", logins / "producer.json", "at-least-once")
    producer = KafkaProducer(**access.producer(max_block_ms=30_000))
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(events, b"forged").get(30)
    finally:
        producer.close(timeout=5)
    assert "modelvc is down" in ok(home, "down", timeout=120)

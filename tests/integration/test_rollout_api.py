"""Issue 12's routes on a real stack (one per module): rollouts and shadows and their
refusals (409 rollout_active / rollout_moved, 422 policies, 403 roles), drift references
(stored canonical, hostile bodies refused), the monitor route over windows written straight
to the metrics topic, and the controller deciding a step from those windows through the
same command path as the API (actor rollout:<id>)."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kafka import KafkaProducer

from modelvc.stack import Stack
from streams.core import monitoring
from streams.core.rollout import BASELINE, CANDIDATE
from streams.kafka_access import negotiate_sync
from streams.monitoring.windows import Version, Window, encode_window
from tests.conftest import train_model
from tests.integration.test_http_hygiene import admin_ready, send
from workers.metrics import sample_sum

pytestmark = pytest.mark.broker

Answer = tuple[int, dict[str, str], Any]
WINDOW_MS = 1000


@dataclass
class World:
    stack: Stack
    digest: str  # an uploaded model
    reader: str  # a reader's token
    commits: list[str]  # of model "ro", oldest first; production names the first

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Answer:
        headers = {"Authorization": f"Bearer {token or self.stack.token}"}
        data = None
        if isinstance(body, bytes):
            data, headers["Content-Type"] = body, "application/json"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        return send(self.stack.url, method, path, data, headers)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, _, answer = self.call(method, path, body)
        assert status in (200, 201), (method, path, status, answer)
        return answer

    def refused(self, status: int, code: str, method: str, path: str, body: Any = None) -> Any:
        got, _, answer = self.call(method, path, body)
        assert (got, answer.get("error")) == (status, code), (method, path, answer)
        return answer

    def model(self, name: str, commits: int) -> list[str]:
        self.ok("POST", "/v1/models", {"name": name})
        heads = []
        for n in range(commits):
            body = {"artifact_sha256": self.digest, "message": f"{name} {n}"}
            heads.append(self.ok("POST", f"/v1/models/{name}/commits", body)["head"])
        self.ok("PUT", f"/v1/models/{name}/aliases/production", {"ref": heads[0]})
        return heads

    def write_windows(self, *windows: Window) -> None:
        """Straight to the metrics topic, as the monitor writes them (keyed by model)."""
        settings = self.stack.settings
        producer = KafkaProducer(**negotiate_sync(settings.access).producer())
        try:
            for window in windows:
                producer.send(
                    settings.metrics_topic, key=window.model.encode(), value=encode_window(window)
                ).get(10)
        finally:
            producer.close()


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[World]:
    home = tmp_path_factory.mktemp("rollouts") / "home"
    model_file = train_model(tmp_path_factory.mktemp("model") / "model.txt")
    stack = Stack.up(home, bootstrap=bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}")
    try:
        admin_ready(stack)
        world = World(stack, "", "", [])
        status, _, uploaded = send(
            stack.url,
            "POST",
            "/v1/artifacts",
            model_file.read_bytes(),
            {"Authorization": f"Bearer {stack.token}", "Content-Type": "application/octet-stream"},
        )
        assert status == 201, uploaded
        world.digest = uploaded["sha256"]
        world.reader = world.ok("POST", "/v1/tokens", {"actor": "rita", "role": "reader"})["token"]
        world.commits = world.model("ro", 2)
        yield world
    finally:
        stack.down()


def stats(labeled: int, right: float) -> monitoring.Stats:
    acc = monitoring.Accumulator(monitoring.EMPTY)
    for i in range(labeled):
        label = float(i % 2)
        acc.add_prediction(3.0, 1_000 + i)
        acc.add_pair(right if label else 1 - right, label, 20)
    return acc.freeze()


def window(model: str, version: Version, start_ms: int, labeled: int, right: float) -> Window:
    v = version
    return Window(
        monitoring.window_id(model, v.ref, v.commit_id, v.rollout_id, v.arm, v.shadow, start_ms),
        model,
        version,
        start_ms,
        start_ms + WINDOW_MS,
        stats(labeled, right),
        "test-monitor",
        int(time.time() * 1000),
    )


def test_rollouts_are_refused_and_controlled_by_hand(world: World) -> None:
    candidate = world.commits[1]
    path = "/v1/models/ro/rollouts"
    base = {"alias": "production", "to": candidate}
    for policy in (
        {"steps": [50, 10, 100]},
        {"steps": [10, 50]},
        {"steps": "10,100"},
        {"steps": [10, 100], "max_regression": {"accuracy": 0.1}},
        {"steps": [10, 100], "max_regression": {"logloss": -1}},
        {"steps": [10, 100], "min_labels": "many"},
        {"steps": [10, 100], "max_dead_letter_rate": 2},
        {"steps": [10, 100], "step_timeout_ms": -5},
    ):
        answer = world.refused(422, "invalid", "POST", path, {**base, **policy})
        assert answer["field"] == "policy", answer
    status, _, answer = world.call("POST", path, {**base, "steps": [10, 100]}, world.reader)
    assert (status, answer["error"]) == (403, "forbidden")

    started = world.ok(
        "POST", path, {**base, "steps": [10, 100], "min_labels": 1000, "max_p99_ms": 1e6}
    )
    rollout = started["rollout"]
    assert (rollout["status"], rollout["percent"], rollout["candidate"]) == (
        "running",
        10,
        candidate,
    )
    rid = rollout["id"]
    again = {**base, "steps": [50, 100], "max_p99_ms": 1e6}
    world.refused(409, "rollout_active", "POST", path, again)
    world.refused(
        409, "rollout_active", "PUT", "/v1/models/ro/aliases/production", {"ref": candidate}
    )
    assert [r["id"] for r in world.ok("GET", path)["rollouts"]] == [rid]

    world.ok("POST", f"{path}/{rid}/pause", {"reason": "holiday"})
    world.refused(409, "rollout_moved", "POST", f"{path}/{rid}/pause", {})
    world.ok("POST", f"{path}/{rid}/resume", {})
    world.refused(422, "invalid", "POST", f"{path}/{rid}/abort", {})  # a reason is needed
    world.ok("POST", f"{path}/{rid}/abort", {"reason": "not today"})
    world.refused(409, "rollout_moved", "POST", f"{path}/{rid}/promote", {"reason": "late"})
    world.refused(422, "invalid", "POST", f"{path}/not-a-rollout/pause", {})
    world.refused(404, "unknown_rollout", "GET", f"{path}/r000000000000")
    shown = world.ok("GET", f"{path}/{rid}")
    assert shown["status"] == "aborted"
    decisions = [(d["type"], d["actor"]) for d in shown["decisions"]]
    admin = world.stack.admin_actor
    assert decisions == [
        ("RolloutStarted", admin),
        ("RolloutPaused", admin),
        ("RolloutResumed", admin),
        ("RolloutAborted", admin),
    ]
    # Traffic is the baseline's again, so the alias may move by hand.
    world.ok("PUT", "/v1/models/ro/aliases/production", {"ref": candidate})
    world.ok("PUT", "/v1/models/ro/aliases/production", {"ref": world.commits[0]})


def test_shadows_start_list_and_stop(world: World) -> None:
    world.ok("POST", "/v1/models/ro/shadow", {"alias": "production", "candidate": "main"})
    (shadow,) = world.ok("GET", "/v1/models/ro/shadow")["shadows"]
    assert (shadow["alias"], shadow["candidate"]) == ("production", world.commits[1])
    world.refused(422, "invalid", "POST", "/v1/models/ro/shadow", {"alias": "production"})
    world.ok("POST", "/v1/models/ro/shadow/stop", {"alias": "production"})
    assert world.ok("GET", "/v1/models/ro/shadow")["shadows"] == []


def test_references_are_stored_canonical_and_hostile_ones_refused(world: World) -> None:
    reference = monitoring.reference_from_rows(
        ["age", "income"], [[float(i), float(i * i % 97)] for i in range(500)]
    )
    canonical = monitoring.reference_to_json(reference)
    spaced = json.dumps(json.loads(canonical), indent=2).encode()
    stored = world.ok("POST", "/v1/references", spaced)
    digest = stored["sha256"]
    assert digest == hashlib.sha256(canonical).hexdigest()
    status, headers, body = world.call("GET", f"/v1/references/{digest}")
    assert status == 200 and headers["x-sha256"] == digest
    assert monitoring.reference_from_json(json.dumps(body).encode()) == reference

    for hostile in (
        b"[1, 2]",
        b'{"format": "modelvc.reference/1", "features": {"a": [3, 2, 1]}}',
        b'{"format": "something else"}',
        b"not json",
    ):
        world.refused(422, "reference_rejected", "POST", "/v1/references", hostile)
    too_big = b'{"pad": "' + b"x" * monitoring.MAX_REFERENCE_BYTES + b'"}'
    world.refused(413, "too_large", "POST", "/v1/references", too_big)
    # A model's digest names no reference, nor does one nobody stored.
    world.refused(422, "reference_rejected", "GET", f"/v1/references/{world.digest}")
    world.refused(404, "unknown_artifact", "GET", f"/v1/references/{'0' * 64}")

    commit = {"artifact_sha256": world.digest, "message": "with bins", "branch": "main"}
    answer = world.refused(
        422,
        "invalid",
        "POST",
        "/v1/models/ro/commits",
        {**commit, "reference_sha256": "0" * 64},
    )
    assert answer["field"] == "reference_sha256"
    world.refused(
        422,
        "reference_rejected",
        "POST",
        "/v1/models/ro/commits",
        {**commit, "reference_sha256": world.digest},
    )
    head = world.ok("POST", "/v1/models/ro/commits", {**commit, "reference_sha256": digest})
    shown = world.ok("GET", f"/v1/models/ro/commits/{head['head']}")
    assert shown["reference_sha256"] == digest


def test_the_monitor_route_shows_windows_from_the_metrics_topic(world: World) -> None:
    commit = world.commits[0]
    version = Version("production", commit)
    now = int(time.time() * 1000) // WINDOW_MS * WINDOW_MS
    windows = [window("ro", version, now - (3 - i) * WINDOW_MS, 10, 0.8) for i in range(3)]
    # A window written twice counts once; the others follow the repeat on the partition.
    world.write_windows(windows[0], *windows)

    def shown() -> Any:
        answer = world.ok("GET", "/v1/models/ro/monitor?last=2")
        # All three read, so the repeat before the last two too.
        return answer if [v["windows_total"] for v in answer["versions"]] == [3] else None

    answer = wait_for("windows on the monitor route", shown)
    assert answer["window_ms"] == WINDOW_MS
    (row,) = answer["versions"]
    assert (row["ref"], row["commit_id"], row["arm"], row["shadow"]) == (
        "production",
        commit,
        "",
        False,
    )
    assert row["cumulative"]["labeled"] == 30
    assert [w["window_id"] for w in row["windows"]] == [w.window_id for w in windows[1:]]
    assert 0 < row["cumulative"]["logloss"] < 0.3 and row["cumulative"]["auc"] == 1.0
    by_commit = world.ok("GET", f"/v1/models/ro/monitor?ref={commit}")["versions"]
    assert [v["commit_id"] for v in by_commit] == [commit]
    assert world.ok("GET", "/v1/models/ro/monitor?ref=nothing")["versions"] == []
    for bad in ("abc", "-1", "100000"):
        world.refused(422, "invalid", "GET", f"/v1/models/ro/monitor?last={bad}")
    status, _, answer = world.call("GET", "/v1/models/ro/monitor", token=world.reader)
    assert status == 200


def test_the_controller_advances_a_step_its_windows_support(world: World) -> None:
    heads = world.model("auto", 2)
    path = "/v1/models/auto/rollouts"
    body = {
        "alias": "production",
        "to": heads[1],
        "steps": [20, 100],
        "min_labels": 10,
        "max_regression": {"logloss": 0.05},
    }
    rollout = world.ok("POST", path, body)["rollout"]
    rid = rollout["id"]
    # The controller counts only windows that began once the step (and the rollout) did.
    start = rollout["step_started_at"]
    world.write_windows(
        window("auto", Version("production", heads[0], rid, BASELINE), start, 40, 0.8),
        window("auto", Version("production", heads[1], rid, CANDIDATE), start, 20, 0.8),
    )

    def advanced() -> Any:
        shown = world.ok("GET", f"{path}/{rid}")
        return shown if shown["step"] == 1 else None

    shown = wait_for("the controller's advance", advanced)
    decision = shown["decisions"][-1]
    assert (decision["type"], decision["actor"]) == ("RolloutAdvanced", f"rollout:{rid}")
    assert decision["command_id"] == f"rollout:{rid}:0:advance"
    assert decision["evidence"]["candidate"]["labeled"] == 20
    assert shown["percent"] == 100 and shown["status"] == "running"
    with urllib.request.urlopen(f"{world.stack.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert sample_sum(text, "modelvc_rollout_decisions_total") >= 1
    assert sample_sum(text, "modelvc_rollout_time_to_decision_seconds_count") >= 1

"""The data the console reads and the checks it acts through, against a real stack: the
server's replay (POST /v1/audit/replay), the log's graph, and compare-and-set on a
rollback (one module-scoped stack: seconds, not minutes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from modelvc.client import Client
from modelvc.stack import Stack
from streams.http_client import HttpError
from tests.conftest import train_model

MODEL = "console"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("replay-route") / "home"
    stack = Stack.up(home, bootstrap=bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}")
    try:
        client = stack.client()
        sha = str(client.upload(train_model(home.parent / "model.txt"))["sha256"])
        client.create(MODEL)
        client.commit(MODEL, sha, "first")
        client.commit(MODEL, sha, "second")
        client.set_alias(MODEL, "production", "main")
        yield stack
    finally:
        stack.down()


def _replay(client: Client) -> Any:
    return client.request("POST", "/v1/audit/replay", {})


def test_the_server_replays_the_log_clean_and_its_digest_is_the_live_one(shared: Stack) -> None:
    client = shared.client()
    answer = _replay(client)
    live = client.request("GET", "/v1/state/digest")["digest"]
    assert answer["clean"] is True and answer["violations"] == []
    assert answer["violation_count"] == 0
    assert answer["digest"] == answer["live_digest"] == live and answer["matches"] is True
    # The model's events, and the admin token's and writer keys' before them.
    assert answer["models"] == 1 and answer["events"] >= 5
    assert isinstance(answer["took_ms"], int) and answer["took_ms"] >= 0


def test_a_second_call_while_one_runs_gets_the_same_answer(shared: Stack) -> None:
    client = shared.client()
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: _replay(client), range(2))
    # The same run: even its duration is the same (a cached answer's age may differ).
    assert {**first, "age_ms": 0} == {**second, "age_ms": 0} and first["clean"] is True


def test_a_reader_may_run_it(shared: Stack) -> None:
    token = shared.client().create_token("auditor", "reader")["token"]
    reader = Client(shared.url, token=token)
    assert _replay(reader)["clean"] is True


def test_the_log_draws_its_graph_on_demand(shared: Stack) -> None:
    client = shared.client()
    plain = client.request("GET", f"/v1/models/{MODEL}/log")
    assert "graph" not in plain
    drawn = client.request("GET", f"/v1/models/{MODEL}/log", query={"graph": "1"})
    rows = drawn["graph"]
    assert [r["commit"] for r in rows if r["kind"] == "commit"] == [
        c["id"] for c in drawn["commits"]
    ]
    assert rows[0] == {
        "kind": "commit",
        "lanes": [True],
        "column": 0,
        "commit": drawn["commits"][0]["id"],
        "marks": [],
    }


def test_a_rollback_expecting_an_old_head_is_a_conflict_naming_the_head(shared: Stack) -> None:
    client = shared.client()
    head = client.refs(MODEL)["branches"]["main"]
    old = client.request("GET", f"/v1/models/{MODEL}/resolve/main~1")["commit"]
    body = {"branch": "main", "to": "main~1", "reason": "canary regression", "expect": old}
    with pytest.raises(HttpError) as caught:
        client.request("POST", f"/v1/models/{MODEL}/rollbacks", body)
    assert caught.value.status == 409
    assert caught.value.body["error"] == "stale_head" and caught.value.body["current"] == head
    assert client.refs(MODEL)["branches"]["main"] == head  # nothing moved

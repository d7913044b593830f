"""Two streams-app instances in one consumer group: when one dies, the other takes its
commands partitions over, re-checks it is caught up on each before deciding there (the
revocation cleared what it knew), decides on the state the dead one left, and answers."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from modelvc.client import Client, ClientError
from modelvc.processes import stop
from modelvc.stack import Stack
from streams.topics import home_partition

pytestmark = pytest.mark.broker

CAUGHT_UP = re.compile(r"events partition (\d+): caught up to offset (\d+) before deciding")


def one_model_per_partition(partitions: int) -> dict[int, str]:
    found: dict[int, str] = {}
    salt = uuid.uuid4().hex[:6]
    for i in range(1000):
        name = f"rb-{salt}-{i}"
        found.setdefault(home_partition(name, partitions), name)
        if len(found) == partitions:
            return found
    raise AssertionError("no name for some partition")


def checks(log: Path, since: int) -> list[tuple[int, int]]:
    """(partition, end) of each catch-up check the instance logged after byte ``since``."""
    text = log.read_bytes()[since:].decode(errors="replace")
    return [(int(p), int(end)) for p, end in CAUGHT_UP.findall(text)]


def commit(client: Client, model: str, digest: str, message: str, **kwargs: str) -> dict:
    """A commit, sent again with the same command id while a rebalance holds it up."""
    command_id = f"cmd-{uuid.uuid4().hex}"
    deadline = time.monotonic() + 90
    while True:
        try:
            return client.commit(model, digest, message, command_id=command_id, **kwargs)
        except ClientError as exc:
            if exc.status != 504 or time.monotonic() > deadline:
                raise


def test_the_survivor_takes_over_rechecks_and_decides_on_the_latest_state(
    stack: Stack, model_file: Path
) -> None:
    partitions = stack.settings.partitions
    models = one_model_per_partition(partitions)
    a = stack.client(timeout=120)
    digest = a.upload(model_file)["sha256"]
    for model in models.values():
        a.create(model)  # A alone owns every partition and has caught up on each
    a_log = Path(stack.processes["streams"].log)

    # B joins the group: a rebalance revokes A's partitions and splits them.
    b_process, b_url = stack.add_streams("streams-b")
    try:
        b = stack.client(b_url, timeout=120)
        b_log = Path(b_process.log)
        # Through B, one commit per model: B decides its partitions, A the others, and
        # A's answers reach B over the replies topic.
        heads = {p: commit(b, m, digest, "via b")["head"] for p, m in models.items()}
        owned_by_b = {p for p, _ in checks(b_log, 0)}
        assert owned_by_b and owned_by_b != set(range(partitions)), owned_by_b
        mark = a_log.stat().st_size
        # B writes to one of its partitions, and dies right after (no clean leave).
        last = next(iter(sorted(owned_by_b)))
        written = commit(b, models[last], digest, "b's last", expect_head=heads[last])
        stop(b_process, hard=True)
    finally:
        stop(b_process, hard=True)

    # A gets B's partitions after the session times out, and decides there on the state
    # B left: expect_head is B's last head, so a stale state would answer stale_head.
    after = commit(a, models[last], digest, "a takes over", expect_head=written["head"])
    assert after["repeated"] is False and after["partition"] == last
    for p in sorted(owned_by_b - {last}):
        commit(a, models[p], digest, "a takes over", expect_head=heads[p])
    rechecked = dict(checks(a_log, mark))
    # A re-checked every partition it newly owns before deciding there (A had decided on
    # all of them before B joined: only the revocation made it check again) ...
    assert owned_by_b <= set(rechecked), (owned_by_b, rechecked)
    # ... and the check on B's last partition waited for B's last event.
    assert rechecked[last] > written["offset"]
    assert "partitions revoked" in a_log.read_bytes()[mark:].decode(errors="replace")
    messages = [c["message"] for c in a.log(models[last], "main")["commits"]]
    assert messages == ["a takes over", "b's last", "via b"]

"""Issue 7, finding 7: command ids are idempotency keys per model, never reply addresses.

The tests share one stack (``module_stack``), each on models of its own (``model``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelvc.client import Client, ClientError
from modelvc.processes import stop
from modelvc.stack import Stack
from streams.codec import REPLIES
from streams.logreader import read_topic

pytestmark = pytest.mark.broker


def all_at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads released together; each result, or the ClientError it raised."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except ClientError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def assert_each_got_its_own_answer(models: list[str], answers: list[Any]) -> None:
    for model, answer in zip(models, answers, strict=True):
        assert not isinstance(answer, ClientError), f"{model}: {answer.status} {answer.body}"
        assert answer["model"] == model, f"{model} got the answer meant for {answer['model']}"
        assert answer["event"] == "ModelCreated" and answer["repeated"] is False


def test_finding_7_same_command_id_two_models_each_get_their_answer(
    module_stack: Stack, model: str
) -> None:
    stack = module_stack
    shared_id = f"shared-{uuid.uuid4().hex[:8]}"
    models = [f"{model}-twin{i}" for i in range(4)]
    answers = all_at_once(
        [lambda m=m: stack.client().create(m, command_id=shared_id) for m in models]
    )
    assert_each_got_its_own_answer(models, answers)
    listed = {m["name"] for m in stack.client().models()["models"]}
    assert set(models) <= listed


@pytest.fixture
def second_instance(module_stack: Stack) -> Iterator[str]:
    """Another streams app on the same topics (its URL), for one test: stopped after it, so
    the module's other tests meet the stack's one instance, as on a stack of their own."""
    _, url = module_stack.add_streams("streams-b")
    try:
        yield url
    finally:
        stop(module_stack.processes.pop("streams-b"))
        module_stack.save()


def test_finding_7_same_command_id_through_two_instances_each_get_their_answer(
    module_stack: Stack, model: str, second_instance: str
) -> None:
    """The commands partitions are shared by the two instances, so some of these are
    decided by the instance that did not receive them and answered via the replies topic."""
    stack = module_stack
    shared_id = f"shared-{uuid.uuid4().hex[:8]}"
    models = [f"{model}-pair{i}" for i in range(8)]
    urls = [stack.url if i % 2 else second_instance for i in range(len(models))]
    answers = all_at_once(
        [
            lambda m=m, u=u: stack.client(u).create(m, command_id=shared_id)
            for m, u in zip(models, urls, strict=True)
        ]
    )
    assert_each_got_its_own_answer(models, answers)
    # Some were decided by the instance that did not receive them: their answers
    # crossed the replies topic, each with its own request id.
    crossed = [
        REPLIES.decode(r.value)
        for r in read_topic(stack.settings.access, stack.settings.replies_topic)
        if r.value is not None
    ]
    crossed = [r for r in crossed if r["command_id"] == shared_id]
    assert crossed, "no answer crossed between the instances"
    assert len({r["request_id"] for r in crossed}) == len(crossed)
    assert all(r["request_id"] for r in crossed)


def test_finding_7_reused_command_id_with_different_body_is_refused(
    module_stack: Stack, model: str, model_file: Path
) -> None:
    stack = module_stack
    c = stack.client()
    digest = c.upload(model_file)["sha256"]
    c.create(model)
    first = c.commit(model, digest, "first", metrics={"auc": 0.8}, command_id="job-42")
    assert first["repeated"] is False

    with pytest.raises(ClientError) as reused:
        c.commit(model, digest, "something else", metrics={"auc": 0.8}, command_id="job-42")
    assert reused.value.status == 422
    body = reused.value.body
    assert body["error"] == "command_id_reused"
    assert (body["seq"], body["event"]) == (first["seq"], "Committed")
    assert (body["partition"], body["offset"]) == (first["partition"], first["offset"])
    assert "job-42" in body["message"] and "new command id" in body["message"]

    # Another actor (another token) sending the same id is another request too.
    mallory = Client(stack.url, token=c.create_token("mallory", "committer")["token"])
    with pytest.raises(ClientError) as other_actor:
        mallory.commit(model, digest, "first", metrics={"auc": 0.8}, command_id="job-42")
    assert other_actor.value.status == 422

    again = c.commit(model, digest, "first", metrics={"auc": 0.8}, command_id="job-42")
    assert again["repeated"] is True
    assert (again["seq"], again["head"]) == (first["seq"], first["head"])
    assert [entry["message"] for entry in c.log(model)["commits"]] == ["first"]

    # The key is (model, command id): the same id on another model is a new request.
    other_model = f"{model}-2"
    c.create(other_model)
    other = c.commit(other_model, digest, "something else", command_id="job-42")
    assert other["model"] == other_model and other["repeated"] is False

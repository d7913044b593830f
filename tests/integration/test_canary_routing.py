"""The worker's side of a canary rollout and a shadow, on a real broker, in seconds.

No monitor and no labels: the rollout waits for labels forever (the controller never moves
it), so what is checked is the routing itself. Each entity is scored by the arm the rollout's
hash names, stamped with it; the shadow's scores go to their own topic only; dead letters
name the version that refused the event; an abort returns every entity to the baseline.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from modelvc.client import Client
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from streams.codec import DEAD_LETTERS, PREDICTIONS
from streams.core import rollout
from streams.logreader import read_topic
from tests.integration.test_workers import NAMES, healthz, scrape, train, wait_for
from workers.metrics import sample_sum

pytestmark = pytest.mark.broker
MODEL = "churn"
ENTITIES = [f"customer-{i}" for i in range(200)]


@dataclass
class Rig:
    stack: Stack
    client: Client
    commits: list[str]  # baseline, candidate, shadow


@pytest.fixture(scope="module")
def rig(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("canary")
    stack = Stack.up(
        work / "home", bootstrap=bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}", workers=1
    )
    try:
        c = stack.client()
        c.create(MODEL)
        commits = []
        for seed in (1, 2, 3):
            path, _ = train(work / f"m{seed}.txt", seed)
            commits.append(c.commit(MODEL, c.upload(path)["sha256"], f"m{seed}")["head"])
        c.set_alias(MODEL, "production", commits[0])
        yield Rig(stack, c, commits)
    finally:
        stack.down()


def read(stack: Stack, topic: str, decode: Any) -> list[dict[str, Any]]:
    return [decode(r.value) for r in read_topic(stack.settings.access, topic) if r.value]


def scored(stack: Stack, ids: set[str], count: int, what: str) -> list[dict[str, Any]]:
    """The predictions of the events ``ids``, once there are ``count`` of them."""

    def found() -> list[dict[str, Any]]:
        topic = stack.settings.predictions_topic
        return [p for p in read(stack, topic, PREDICTIONS.decode) if p["feature_event_id"] in ids]

    return list(wait_for(lambda: len(p := found()) == count and p, what=what))


def publish(stack: Stack, prefix: str, entities: list[str], bad: int = 0) -> set[str]:
    """One event per entity (ref production); the first ``bad`` lack a feature."""
    x = np.random.default_rng(len(prefix)).normal(size=(len(entities), len(NAMES)))
    ids = set()
    with FeatureProducer(stack.settings.access, stack.settings.features_topic) as producer:
        for i, entity in enumerate(entities):
            features = dict(zip(NAMES, map(float, x[i]), strict=True))
            if i < bad:
                del features[NAMES[0]]
            ids.add(
                producer.publish(MODEL, features, entity, "production", event_id=f"{prefix}{i}")
            )
    return ids


def test_a_rollout_routes_each_entity_and_an_abort_returns_all_to_the_baseline(rig: Rig) -> None:
    stack, c = rig.stack, rig.client
    baseline, candidate, shadow = rig.commits
    # The worker routes a ref it serves: let it serve production first.
    scored(stack, publish(stack, "w", ["warm-up"]), 1, "the first prediction")
    # min_labels out of reach and no step timeout: the controller waits, the step holds.
    started = c.start_rollout(
        MODEL, "production", candidate, [50, 100], min_labels=10**9, max_p99_ms=1e6
    )
    rollout_id = started["rollout"]["id"]
    c.start_shadow(MODEL, "production", shadow)
    # Routed once the worker has loaded both commits and the shadow: it says so.
    wait_for(
        lambda: (
            sample_sum(scrape(stack), "modelvc_rollout_percent", rollout=rollout_id) == 50
            and sample_sum(scrape(stack), "modelvc_shadow_info", commit=shadow) == 1
        ),
        what="the worker to route the rollout and load the shadow",
    )
    health = healthz(stack.worker_url())
    assert health["rollouts"][f"{MODEL}@production"] == {
        "rollout_id": rollout_id,
        "percent": 50,
        "baseline": baseline,
        "candidate": candidate,
    }
    assert health["shadows"] == {f"{MODEL}@production": shadow}
    topics = stack.settings
    predictions = scored(stack, publish(stack, "a", ENTITIES, bad=10), 190, "predictions")
    state = rollout.Rollout(
        rollout_id,
        "production",
        baseline,
        candidate,
        rollout.Policy((50, 100)),
        0,
        rollout.RUNNING,
        0,
        0,
    )
    arms = {}
    for p in predictions:
        arm = rollout.arm(state, p["entity_key"])
        expected = candidate if arm == rollout.CANDIDATE else baseline
        assert (p["commit_id"], p["rollout_id"], p["arm"], p["shadow"]) == (
            expected,
            rollout_id,
            arm,
            False,
        )
        arms[p["entity_key"]] = arm
    assert set(arms.values()) == {rollout.BASELINE, rollout.CANDIDATE}
    shadows = wait_for(
        lambda: (
            len(s := read(stack, topics.shadow_predictions_topic, PREDICTIONS.decode)) == 190 and s
        ),
        what="shadow predictions",
    )
    assert {(s["commit_id"], s["shadow"], s["arm"]) for s in shadows} == {(shadow, True, "")}
    assert {s["feature_event_id"] for s in shadows} == {p["feature_event_id"] for p in predictions}
    letters = wait_for(
        lambda: len(d := read(stack, topics.dead_letter_topic, DEAD_LETTERS.decode)) >= 10 and d,
        what="dead letters",
    )
    for letter in letters:
        # The letter keeps the original key: the producer keys each event by its entity.
        arm = rollout.arm(state, letter["key"].decode())
        expected = candidate if arm == rollout.CANDIDATE else baseline
        assert (letter["model"], letter["commit_id"]) == (MODEL, expected)

    c.control_rollout(MODEL, rollout_id, "abort", reason="test over")
    c.stop_shadow(MODEL, "production")
    wait_for(
        lambda: (
            "modelvc_rollout_percent{" not in (text := scrape(stack))
            and "modelvc_shadow_info{" not in text
        ),
        what="the worker to drop the rollout and the shadow",
    )
    back = scored(stack, publish(stack, "b", ENTITIES[:50]), 50, "predictions after the abort")
    assert {(p["commit_id"], p["rollout_id"], p["arm"]) for p in back} == {(baseline, "", "")}
    text = scrape(stack)
    assert sample_sum(text, "modelvc_predictions_total", arm=rollout.CANDIDATE) == list(
        arms.values()
    ).count(rollout.CANDIDATE)
    assert sample_sum(text, "modelvc_predictions_total", arm="shadow") == 190

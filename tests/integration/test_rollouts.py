"""Canary rollouts end to end: a worker, the monitor and the streams controller on a real broker.

Labels come from a known function of the features (y = [f0 + f1 > 0]), so which version is
truly better is known in advance: the baseline learnt a part of it (f0 only), the better
candidate all of it, the worse one an unrelated feature. The controller alone must promote
the first step by step and abort the second, each decision an event in the log with its
evidence; `audit served` must name the rollout and arm behind a canary's prediction, and
`audit replay` must be clean afterwards.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from modelvc.client import Client
from modelvc.demo import labelled_traffic
from modelvc.stack import Stack
from streams.codec import PREDICTIONS, decode_event
from streams.core import rollout
from streams.core.events import ModelEvent
from streams.logreader import read_topic
from tests.integration.test_audit import cli as run_cli
from tests.integration.test_workers import wait_for

pytestmark = pytest.mark.broker
NAMES = [f"f{i}" for i in range(4)]
MODEL = "churn"
# Short windows and a small policy, so that a whole rollout takes seconds.
MONITOR_TUNING = {"window_ms": 1000, "lateness_ms": 500}
POLICY: dict[str, Any] = {
    "steps": [10, 50, 100],
    "min_labels": 200,
    "max_regression": {"logloss": 0.05},
    "step_timeout_ms": 0,
}
ENTITIES = 2000  # enough that a 10% share of them is near 10% of the traffic
RATE = 1000.0  # feature events per second while a rollout runs
DECISION_TIMEOUT_S = 90.0
ENDED = (rollout.COMPLETED, rollout.ABORTED)


def truth(x: np.ndarray) -> np.ndarray:
    labels: np.ndarray = (x[:, 0] + x[:, 1] > 0).astype(int)
    return labels


def train(
    path: Path,
    seed: int,
    rows: int,
    rounds: int,
    leaves: int,
    target: Callable[[np.ndarray], np.ndarray],
) -> Path:
    x = np.random.default_rng(seed).normal(size=(rows, len(NAMES)))
    params = {
        "objective": "binary",
        "num_leaves": leaves,
        "min_data_in_leaf": 5,
        "verbosity": -1,
        "num_threads": 1,
    }
    booster = lgb.train(params, lgb.Dataset(x, target(x), feature_name=NAMES), rounds)
    booster.save_model(str(path))
    return path


def models(work: Path) -> dict[str, Path]:
    """Log loss against ``truth``: baseline ~0.56, better ~0.04, worse ~1.4 (one feature off)."""
    return {
        "baseline": train(work / "baseline.txt", 1, 300, 5, 4, lambda x: (x[:, 0] > 0).astype(int)),
        "better": train(work / "better.txt", 2, 3000, 60, 15, truth),
        "worse": train(work / "worse.txt", 3, 300, 20, 4, lambda x: (x[:, 2] > 0).astype(int)),
    }


@dataclass
class Rig:
    stack: Stack
    client: Client
    commits: dict[str, str]  # baseline / better / worse -> commit id


@pytest.fixture(scope="module")
def rig(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("rollouts")
    stack = Stack.up(
        work / "home", bootstrap=bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}", workers=1
    )
    try:
        stack.add_monitor(**MONITOR_TUNING)
        c = stack.client()
        c.create(MODEL)
        commits = {
            name: c.commit(MODEL, c.upload(path)["sha256"], name)["head"]
            for name, path in models(work).items()
        }
        yield Rig(stack, c, commits)
    finally:
        stack.down()


@contextmanager
def traffic(stack: Stack, prefix: str, seed: int) -> Iterator[dict[str, str]]:
    """Score ``production`` at ~RATE events/s, each batch's labels following a batch later."""
    with labelled_traffic(
        stack,
        MODEL,
        NAMES,
        lambda x, _: truth(x),
        prefix=prefix,
        seed=seed,
        rate=RATE,
        entities=ENTITIES,
    ) as sent:
        yield sent


# -- reading back what happened ----------------------------------------------------------
def start_rollout(rig: Rig, to: str) -> str:
    rig.client.set_alias(MODEL, "production", rig.commits["baseline"])
    answer = rig.client.start_rollout(MODEL, "production", to, **POLICY)
    return str(answer["rollout"]["id"])


def rollout_status(rig: Rig, rid: str) -> dict[str, Any]:
    return dict(rig.client.rollout(MODEL, rid))


def wait_until_ended(rig: Rig, rid: str) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (s := rollout_status(rig, rid))["status"] in ENDED and s,
            timeout=DECISION_TIMEOUT_S,
            what=f"rollout {rid} to end",
        )
    )


def model_events(stack: Stack) -> list[ModelEvent]:
    return [
        event
        for r in read_topic(stack.settings.access, stack.settings.events_topic)
        if r.value and (event := decode_event(r.value)).model == MODEL
    ]


def of_rollout(events: list[ModelEvent], rid: str) -> list[ModelEvent]:
    return [e for e in events if getattr(e.payload, "rollout_id", None) == rid]


Located = tuple[int, int, dict[str, Any]]  # partition, offset, prediction


def predictions(stack: Stack, prefix: str) -> list[Located]:
    return [
        (r.partition, r.offset, p)
        for r in read_topic(stack.settings.access, stack.settings.predictions_topic)
        if r.value and (p := PREDICTIONS.decode(r.value))["feature_event_id"].startswith(prefix)
    ]


def all_scored(stack: Stack, prefix: str, sent: dict[str, str]) -> list[Located]:
    return list(
        wait_for(
            lambda: len(got := predictions(stack, prefix)) >= len(sent) and got,
            what=f"every {prefix} event scored",
        )
    )


def cli(stack: Stack, *args: str) -> dict[str, Any]:
    done = run_cli(stack, "--json", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


# -- the proofs --------------------------------------------------------------------------
def test_a_better_candidate_is_promoted_step_by_step_and_production_moves(rig: Rig) -> None:
    baseline, better = rig.commits["baseline"], rig.commits["better"]
    rid = start_rollout(rig, better)
    with traffic(rig.stack, "up", seed=11) as sent:
        ended = wait_until_ended(rig, rid)
    assert (ended["status"], ended["percent"]) == (rollout.COMPLETED, 100), ended
    assert rig.client.resolve(MODEL, "production")["commit"] == better

    events = model_events(rig.stack)
    mine = of_rollout(events, rid)
    assert [e.type for e in mine] == ["RolloutStarted"] + ["RolloutAdvanced"] * 3
    advanced = mine[1:]
    assert [(e.payload.percent, e.payload.completed) for e in advanced] == [  # type: ignore[union-attr]
        (50, False),
        (100, False),
        (100, True),
    ]
    for e in advanced:
        assert e.actor == f"rollout:{rid}"
        evidence = json.loads(e.payload.evidence)  # type: ignore[union-attr]
        # No decision before the step's minimum of labels, and the criterion it checked:
        assert evidence["candidate"]["labeled"] >= POLICY["min_labels"]
        (criterion,) = [c for c in evidence["criteria"] if c["name"] == "logloss"]
        assert criterion["ok"] and criterion["candidate"] < criterion["baseline"]
    # The last decision moves the alias, in the same decision: the very next event.
    moved = events[events.index(advanced[-1]) + 1]
    assert moved.type == "AliasMoved" and moved.actor == f"rollout:{rid}"
    assert (moved.payload.alias, moved.payload.from_commit, moved.payload.to_commit) == (  # type: ignore[union-attr]
        "production",
        baseline,
        better,
    )

    scored = [p for _, _, p in all_scored(rig.stack, "up", sent)]
    in_rollout = [p for p in scored if p["rollout_id"] == rid]
    assert {p["arm"] for p in in_rollout} == {rollout.BASELINE, rollout.CANDIDATE}
    for p in in_rollout:
        assert p["commit_id"] == (better if p["arm"] == rollout.CANDIDATE else baseline), p
        assert p["entity_key"] == sent[p["feature_event_id"]]
        # An entity in the first step's share stays on the candidate at every later step.
        if rollout.bucket(rid, p["entity_key"]) < 10 * (rollout.BUCKETS // 100):
            assert p["arm"] == rollout.CANDIDATE, p

    candidate = next(p for p in in_rollout if p["arm"] == rollout.CANDIDATE)
    explained = cli(rig.stack, "audit", "served", candidate["prediction_id"])
    assert explained["commit"]["id"] == better and not explained["findings"], explained
    assert explained["rollout"]["id"] == rid and explained["rollout"]["arm"] == rollout.CANDIDATE
    assert explained["rollout"]["decision"]["actor"] in (f"rollout:{rid}", rig.stack.admin_actor)


def test_a_worse_candidate_is_aborted_and_the_baseline_serves_everything_after(
    rig: Rig,
) -> None:
    baseline, worse = rig.commits["baseline"], rig.commits["worse"]
    rid = start_rollout(rig, worse)
    with traffic(rig.stack, "down", seed=12) as sent:
        ended = wait_until_ended(rig, rid)
        time.sleep(3.0)  # traffic goes on after the abort: it must all be the baseline's
    assert ended["status"] == rollout.ABORTED, ended
    assert rig.client.resolve(MODEL, "production")["commit"] == baseline

    mine = of_rollout(model_events(rig.stack), rid)
    assert [e.type for e in mine] == ["RolloutStarted", "RolloutAborted"]
    aborted = mine[-1]
    assert aborted.actor == f"rollout:{rid}" and "logloss" in aborted.payload.reason  # type: ignore[union-attr]
    evidence = json.loads(aborted.payload.evidence)  # type: ignore[union-attr]
    assert evidence["candidate"]["labeled"] >= POLICY["min_labels"]
    (criterion,) = [c for c in evidence["criteria"] if c["name"] == "logloss"]
    assert not criterion["ok"] and criterion["candidate"] > criterion["baseline"] + 0.05

    scored = all_scored(rig.stack, "down", sent)
    assert any(p["commit_id"] == worse for _, _, p in scored)  # the candidate did serve
    # Per partition, in log order: from the first prediction the worker scored knowing of
    # the abort (no rollout stamped, scored after it) on, only the baseline serves.
    switched_after = []
    for partition in {part for part, _, _ in scored}:
        ordered = sorted((o, p) for part, o, p in scored if part == partition)
        first = next(
            (
                i
                for i, (_, p) in enumerate(ordered)
                if p["scored_at"] >= aborted.at and p["rollout_id"] == ""
            ),
            None,
        )
        assert first is not None, f"partition {partition}: no prediction after the abort"
        after = [p for _, p in ordered[first:]]
        assert all(p["commit_id"] == baseline and p["rollout_id"] == "" for p in after)
        switched_after.append(ordered[first][1]["scored_at"] - aborted.at)
    # ... and the worker switched within seconds of the decision.
    assert max(switched_after) < 3000, switched_after
    late = [
        p for _, _, p in scored if p["commit_id"] == worse and p["scored_at"] > aborted.at + 3000
    ]
    assert not late


def test_audit_replay_is_clean_after_the_rollouts(rig: Rig) -> None:
    report = cli(rig.stack, "audit", "replay")
    assert not report["violations"] and not report["segment_problems"], report
    assert report["digest"] == rig.client.digest()["digest"]

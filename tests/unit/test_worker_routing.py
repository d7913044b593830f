"""Canary routing and shadows in the worker, without Kafka: a folded log, real boosters.

What a feature event's (model, ref) is scored by when its alias has an active rollout or a
shadow: each entity by the arm ``streams.core.refs.serving`` names, each group of rows by one
version, predictions stamped; shadow scores apart; dead letters attributed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from streams.artifacts import LocalStore, sha256_of
from streams.codec import DEAD_LETTERS, FEATURES, PREDICTIONS
from streams.core import Command, CreateModel, MakeCommit, decide
from streams.core.commands import (
    AbortRollout,
    AdvanceRollout,
    MoveAlias,
    PromoteRollout,
    StartRollout,
    StartShadow,
    StopShadow,
)
from streams.core.fold import Fold
from streams.core.refs import serving
from streams.core.rollout import BASELINE, CANDIDATE, Policy
from streams.settings import Settings
from workers.artifacts import ArtifactLoader
from workers.loop import Worker
from workers.metrics import Metrics, sample_sum
from workers.scorer import Incoming, Scored, Scorer
from workers.scoring import Route, Version
from workers.settings import WorkerSettings
from workers.signing import WorkerKeys, signature_finding
from workers.versions import VersionTracker

NAMES = ["tenure", "spend", "age"]
ENTITIES = [f"customer-{i}" for i in range(400)]


def train(seed: int, names: list[str]) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(names)))
    y = (x[:, 1] * seed - x[:, 0] > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 5, "verbosity": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=names), num_boost_round=6)
    return str(booster.model_to_string()).encode()


class Log:
    """A model ``churn`` with commits v3, v2, v1 on main (alias production: v1), and its
    tracker. v2 and v4 are trained on the same features as v1, v3 on others."""

    def __init__(self, tmp_path: Path, stored: tuple[str, ...] = ("v1", "v2", "v3", "v4")) -> None:
        self.store = LocalStore(tmp_path / "store")
        self.data = {"v1": train(1, NAMES), "v2": train(3, NAMES), "v3": train(5, ["x", "y"])}
        self.data["v4"] = train(7, NAMES)
        self.digests = {name: sha256_of(data) for name, data in self.data.items()}
        for name in stored:
            self.put(name)
        self.fold = Fold()
        self.n = 0
        self.run(CreateModel())
        # v1 last: main's head, as production.
        self.commits = {name: self.commit(name) for name in ("v4", "v3", "v2", "v1")}
        self.run(MoveAlias("production", self.commits["v1"]))
        self.metrics = Metrics()
        self.now = 0.0  # the loader's clock: a failed fetch backs off
        loader = ArtifactLoader(self.store, clock=lambda: self.now)
        self.tracker = VersionTracker(WorkerSettings(), loader, self.metrics, self.fold)
        self.scorer = Scorer(self.tracker, self.metrics, "w1")

    def put(self, name: str) -> None:
        self.store.put(io.BytesIO(self.data[name]), self.digests[name])

    def run(self, body: Any) -> None:
        command = Command(f"c{self.n}", "churn", "tester", self.n, body)
        self.n += 1
        events = decide(self.fold.models.get("churn"), command)
        assert events, body
        for event in events:
            self.fold.apply(event)

    def commit(self, name: str) -> str:
        self.run(MakeCommit(self.digests[name], name))
        return self.fold.models["churn"].branches["main"] or ""

    @property
    def rollout_id(self) -> str:
        return next(reversed(list(self.fold.models["churn"].rollouts)))

    def start_rollout(self, *steps: int) -> str:
        self.run(
            StartRollout(
                "production",
                self.commits["v2"],
                Policy(steps, min_labels=0, max_dead_letter_rate=1.0),
            )
        )
        return self.rollout_id

    def score(self, ref: str | None = "production", count: int = len(ENTITIES)) -> Scored:
        asyncio.run(self.tracker.refresh())  # as after each batch of the log it follows
        batch = [incoming(event(i, ENTITIES[i], ref), i) for i in range(count)]
        return asyncio.run(self.scorer.score(batch))

    def booster(self, name: str) -> lgb.Booster:
        return lgb.Booster(model_str=self.data[name].decode())


def event(i: int, entity_key: str, ref: str | None, **features: object) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    values: dict[str, object] = dict(zip(NAMES, map(float, rng.normal(size=3)), strict=True))
    return {
        "event_id": f"e{i}",
        "model": "churn",
        "ref": ref,
        "entity_key": entity_key,
        "event_time": 1_000 + i,
        "features": values | features,
    }


def incoming(value: dict[str, Any], offset: int) -> Incoming:
    return Incoming("modelvc.features", 0, offset, 1_000, b"k", FEATURES.encode(value))


def decoded(scored: list[tuple[int, bytes | None, bytes]]) -> list[dict[str, Any]]:
    return [PREDICTIONS.decode(value) for _, _, value in scored]


def expected_score(log: Log, name: str, i: int) -> float:
    row = [event(i, "", None)["features"][n] for n in NAMES]
    return float(log.booster(name).predict(np.asarray([row]), num_threads=1)[0])


@pytest.fixture
def log(tmp_path: Path) -> Log:
    return Log(tmp_path)


# -- routing -------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["production", None])
def test_a_rollout_serves_each_entity_by_the_arm_refs_serving_names(
    log: Log, ref: str | None
) -> None:
    rollout_id = log.start_rollout(10, 50, 100)
    scored = log.score(ref)
    predictions = decoded(scored.predictions)
    assert len(predictions) == len(ENTITIES) and not scored.rejected
    state = log.fold.models["churn"]
    by_name = {commit: name for name, commit in log.commits.items()}
    for p in predictions:
        commit, rid, arm = serving(state, "production", p["entity_key"], p["feature_event_id"])
        assert (p["commit_id"], p["rollout_id"], p["arm"]) == (commit, rid, arm)
        assert p["requested_ref"] == "production" and not p["shadow"]
        # Scored by the arm's own version, not the batch's other one.
        i = int(p["feature_event_id"][1:])
        assert p["scores"][0] == pytest.approx(expected_score(log, by_name[commit], i), abs=1e-12)
    arms = [p["arm"] for p in predictions]
    assert rollout_id and {p["rollout_id"] for p in predictions} == {rollout_id}
    # 10% of 400 entities, within what a hash gives.
    assert 20 <= arms.count(CANDIDATE) <= 65 and arms.count(BASELINE) == 400 - arms.count(CANDIDATE)
    text = log.metrics.render().decode()
    assert sample_sum(text, "modelvc_predictions_total", arm=CANDIDATE) == arms.count(CANDIDATE)
    assert sample_sum(text, "modelvc_rollout_percent", rollout=rollout_id) == 10


def test_an_entity_keeps_its_arm_as_the_rollout_grows_and_all_return_on_abort(log: Log) -> None:
    rollout_id = log.start_rollout(10, 50, 100)
    first = {p["entity_key"]: p["arm"] for p in decoded(log.score().predictions)}
    log.run(AdvanceRollout(rollout_id, 0, "{}"))
    second = {p["entity_key"]: p["arm"] for p in decoded(log.score().predictions)}
    assert {k for k, arm in first.items() if arm == CANDIDATE} < {
        k for k, arm in second.items() if arm == CANDIDATE
    }
    assert 150 <= list(second.values()).count(CANDIDATE) <= 250
    log.run(AbortRollout(rollout_id, "worse"))
    after = decoded(log.score().predictions)
    assert {(p["commit_id"], p["rollout_id"], p["arm"]) for p in after} == {
        (log.commits["v1"], "", "")
    }
    text = log.metrics.render().decode()
    assert "modelvc_rollout_percent{" not in text  # the series went with the rollout


def test_events_without_an_entity_key_spread_over_both_arms_by_their_own_id(log: Log) -> None:
    # An empty key is one bucket: routed by it, every such event would go to one arm.
    log.start_rollout(50, 100)
    asyncio.run(log.tracker.refresh())
    batch = [incoming(event(i, "", "production"), i) for i in range(400)]
    predictions = decoded(asyncio.run(log.scorer.score(batch)).predictions)
    arms = [p["arm"] for p in predictions]
    assert 150 <= arms.count(CANDIDATE) <= 250, arms.count(CANDIDATE)
    state = log.fold.models["churn"]  # the rule refs.serving (and the audit) applies
    assert arms == [serving(state, "production", "", p["feature_event_id"])[2] for p in predictions]
    again = decoded(asyncio.run(log.scorer.score(batch)).predictions)
    assert [p["arm"] for p in again] == arms  # a redelivered event keeps its arm


def test_a_promoted_rollout_serves_the_candidate_unstamped(log: Log) -> None:
    rollout_id = log.start_rollout(10, 100)
    log.score()
    log.run(PromoteRollout(rollout_id, "looks good"))
    after = decoded(log.score().predictions)
    assert {(p["commit_id"], p["rollout_id"], p["arm"]) for p in after} == {
        (log.commits["v2"], "", "")
    }


def test_another_ref_of_the_model_is_not_routed(log: Log) -> None:
    log.start_rollout(50, 100)
    predictions = decoded(log.score("main").predictions)
    assert {(p["commit_id"], p["arm"]) for p in predictions} == {(log.commits["v1"], "")}


def test_without_a_rollout_routing_touches_no_event() -> None:
    """The common case costs nothing per event: no entity key is read, nothing hashed."""
    version = Version("churn", "production", "c1", "d1", None)  # type: ignore[arg-type]
    items = [object() for _ in range(1000)]

    def never(item: object) -> str:
        raise AssertionError("an entity key was read without a rollout")

    ((served_by, part),) = Route(version).split(items, never)
    assert served_by is version and part is items


def test_a_candidate_that_will_not_load_leaves_the_baseline_serving_unstamped(
    tmp_path: Path,
) -> None:
    log = Log(tmp_path, stored=("v1", "v3"))  # v2's artifact is missing from the store
    rollout_id = log.start_rollout(50, 100)
    predictions = decoded(log.score().predictions)
    assert {(p["commit_id"], p["rollout_id"]) for p in predictions} == {(log.commits["v1"], "")}
    (failure,) = log.tracker.failures.values()
    assert failure["commit_id"] == log.commits["v2"]
    log.put("v2")
    log.now += 3600  # past the failed fetch's backoff
    predictions = decoded(log.score().predictions)
    assert {p["rollout_id"] for p in predictions} == {rollout_id}
    assert {p["arm"] for p in predictions} == {BASELINE, CANDIDATE}
    assert not log.tracker.failures


# -- shadows -------------------------------------------------------------------------------
def test_a_shadow_scores_the_served_rows_apart_with_its_own_ids(log: Log) -> None:
    log.run(StartShadow("production", log.commits["v2"]))
    scored = log.score(count=50)
    served, shadow = decoded(scored.predictions), decoded(scored.shadow_predictions)
    assert {p["commit_id"] for p in served} == {log.commits["v1"]}
    assert not any(p["shadow"] for p in served)
    assert [p["feature_event_id"] for p in shadow] == [p["feature_event_id"] for p in served]
    v2 = log.commits["v2"]
    for p in shadow:
        assert (p["commit_id"], p["shadow"], p["requested_ref"]) == (v2, True, "production")
        digest = hashlib.sha256(f"{p['feature_event_id']}|{v2}|shadow".encode()).hexdigest()
        assert p["prediction_id"] == digest
        i = int(p["feature_event_id"][1:])
        assert p["scores"][0] == pytest.approx(expected_score(log, "v2", i), abs=1e-12)
    log.run(StopShadow("production"))
    assert not log.score(count=5).shadow_predictions


def test_a_shadow_beside_a_rollout_scores_both_arms_rows(log: Log) -> None:
    log.start_rollout(50, 100)
    log.run(StartShadow("production", log.commits["v4"]))
    scored = log.score(count=100)
    assert len(scored.shadow_predictions) == len(scored.predictions) == 100
    assert {p["arm"] for p in decoded(scored.shadow_predictions)} == {""}


def test_a_shadow_that_cannot_load_or_score_is_counted_and_never_blocks_serving(
    tmp_path: Path,
) -> None:
    log = Log(tmp_path, stored=("v1", "v2"))  # v3 missing
    log.run(StartShadow("production", log.commits["v3"]))
    scored = log.score(count=20)
    assert len(scored.predictions) == 20 and not scored.shadow_predictions
    assert not scored.rejected
    text = log.metrics.render().decode()
    assert sample_sum(text, "modelvc_shadow_failures_total", stage="load") >= 1
    # Loadable, but trained on other features: its refusals are counted, not dead letters.
    log.put("v3")
    log.now += 3600
    scored = log.score(count=20)
    assert len(scored.predictions) == 20 and not scored.shadow_predictions
    assert not scored.rejected
    text = log.metrics.render().decode()
    assert sample_sum(text, "modelvc_shadow_failures_total", stage="refused") == 20


def test_signed_stamped_predictions_verify(log: Log) -> None:
    from streams.signing import SigningKey, verify

    key = SigningKey.generate()
    log.scorer.signer = key
    log.start_rollout(50, 100)
    log.run(StartShadow("production", log.commits["v4"]))
    scored = log.score(count=40)
    keys = WorkerKeys({key.key_id: key.public_key}, pinned=True)
    for p in decoded(scored.predictions) + decoded(scored.shadow_predictions):
        assert signature_finding(p, keys, verify) is None
        changed = p | {"arm": "", "rollout_id": ""} if p["arm"] else p | {"shadow": False}
        assert signature_finding(changed, keys, verify) is not None


# -- dead letters ----------------------------------------------------------------------------
class Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []

    def append(self, key: bytes | None, value: bytes, timestamp: None) -> object:
        self.records.append((key, value))
        return object()


class Producer:
    """Records what the worker sends: the broker is not what is tested here."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future[None]:
        self.sent += [(topic, key, value) for key, value in batch.records]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    async def send_and_wait(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))


def sent_by_worker(log: Log, scored: Scored) -> dict[str, list[bytes]]:
    worker = Worker(
        WorkerSettings(topics=Settings(namespace="ns")), log.tracker, log.scorer, log.metrics
    )
    producer = Producer()

    async def send() -> None:
        await (await worker._send(scored, producer, [0, 1]))  # type: ignore[arg-type]

    asyncio.run(send())
    out: dict[str, list[bytes]] = {}
    for topic, _, value in producer.sent:
        out.setdefault(topic, []).append(value)
    return out


def test_dead_letters_name_the_version_that_refused_the_event(log: Log) -> None:
    rollout_id = log.start_rollout(50, 100)
    asyncio.run(log.tracker.refresh())
    batch = [incoming(event(i, ENTITIES[i], "production", age="old"), i) for i in range(40)] + [
        incoming(event(40, "x", "no-such-ref"), 40),
        Incoming("modelvc.features", 0, 41, 1_000, None, b"junk"),
    ]
    scored = asyncio.run(log.scorer.score(batch))
    sent = sent_by_worker(log, scored)
    letters = [DEAD_LETTERS.decode(v) for v in sent["ns.dead-letter"]]
    assert len(letters) == 42 and "ns.predictions" not in sent
    state = log.fold.models["churn"]
    by_offset = {letter["offset"]: letter for letter in letters}
    for i in range(40):
        commit, rid, arm = serving(state, "production", ENTITIES[i], f"e{i}")
        assert (by_offset[i]["model"], by_offset[i]["commit_id"]) == ("churn", commit)
        assert (by_offset[i]["rollout_id"], by_offset[i]["arm"]) == (rid, arm)
        assert by_offset[i]["ref"] == "production"
    assert rollout_id and {by_offset[i]["commit_id"] for i in range(40)} == {
        log.commits["v1"],
        log.commits["v2"],
    }
    assert (by_offset[40]["model"], by_offset[40]["commit_id"]) == ("churn", "")  # unknown ref
    assert (by_offset[41]["model"], by_offset[41]["commit_id"]) == ("", "")  # undecodable
    for unrouted in (by_offset[40], by_offset[41]):
        assert (unrouted["rollout_id"], unrouted["arm"], unrouted["ref"]) == ("", "", "")


def test_dead_letters_name_the_rollout_and_arm_of_a_candidate_that_refuses_events(
    log: Log,
) -> None:
    # v3 is trained on other features: every event routed to it is refused, and its letters
    # must say so (the candidate's arm), or the monitor cannot hold the candidate to them.
    log.run(
        StartRollout(
            "production",
            log.commits["v3"],
            Policy((50, 100), min_labels=0, max_dead_letter_rate=0.01),
            allow_signature_change=True,
        )
    )
    rollout_id = log.rollout_id
    scored = log.score()
    letters = [DEAD_LETTERS.decode(v) for v in sent_by_worker(log, scored)["ns.dead-letter"]]
    served = decoded(scored.predictions)
    assert letters and served and len(letters) + len(served) == len(ENTITIES)
    assert {(x["model"], x["commit_id"], x["rollout_id"], x["arm"], x["ref"]) for x in letters} == {
        ("churn", log.commits["v3"], rollout_id, CANDIDATE, "production")
    }
    assert {(p["rollout_id"], p["arm"]) for p in served} == {(rollout_id, BASELINE)}


def test_shadow_predictions_go_to_their_own_topic_only(log: Log) -> None:
    log.run(StartShadow("production", log.commits["v2"]))
    asyncio.run(log.tracker.refresh())
    scored = log.score(count=30)
    sent = sent_by_worker(log, scored)
    assert len(sent["ns.predictions"]) == len(sent["ns.shadow-predictions"]) == 30
    assert not any(PREDICTIONS.decode(v)["shadow"] for v in sent["ns.predictions"])
    assert all(PREDICTIONS.decode(v)["shadow"] for v in sent["ns.shadow-predictions"])


def test_a_move_folded_while_a_ref_first_loads_is_caught_up(tmp_path: Path) -> None:
    """The first load of a ref takes seconds (fetch, sandbox): a move of it folded meanwhile
    finds nothing served to refresh, so the ref is marked behind and refreshed next."""
    log = Log(tmp_path)
    tracker = log.tracker
    state = log.fold.models["churn"]
    move = Command("mv", "churn", "tester", log.n, MoveAlias("production", log.commits["v2"]))

    async def run() -> tuple[str, bool, str]:
        first = asyncio.create_task(tracker.version_for("churn", "production"))
        await asyncio.sleep(0)  # resolved to v1; its load runs in a thread
        for moved in decide(state, move):
            tracker.apply(moved, 0, 1)
        loaded = (await first).commit_id
        due = tracker.refresh_due
        await tracker.refresh()
        return loaded, due, tracker.serving[("churn", "production")].commit_id

    assert asyncio.run(run()) == (log.commits["v1"], True, log.commits["v2"])

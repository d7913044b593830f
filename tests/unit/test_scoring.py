"""Scoring without Kafka: matrices in the model's feature order, rejections with reasons."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.artifacts import LocalStore, sha256_of
from streams.codec import FEATURES, PREDICTIONS
from streams.core import Command, CreateBranch, CreateModel, MakeCommit, MoveAlias, decide
from streams.core.fold import Fold
from streams.settings import Settings
from tests.unit.test_worker_loader import CountingStore
from workers import scoring
from workers.artifacts import ArtifactLoader, MemoryBudget
from workers.bootstrap import bootstrap
from workers.errors import ArtifactLoadFailed, MissingFeature, WrongType
from workers.loop import Fault
from workers.metrics import Metrics, sample_sum
from workers.scorer import Incoming, Scorer
from workers.settings import WorkerSettings
from workers.versions import VersionTracker

NAMES = ["tenure", "spend", "age"]


@pytest.fixture
def booster_file(tmp_path: Path) -> tuple[Path, lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 3))
    y = (x[:, 1] - x[:, 0] > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "verbosity": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=NAMES), num_boost_round=12)
    path = tmp_path / "m.txt"
    booster.save_model(str(path))
    return path, booster, x


def tracker_with(
    tmp_path: Path, model_path: Path, settings: WorkerSettings | None = None
) -> VersionTracker:
    store = LocalStore(tmp_path / "store")
    data = model_path.read_bytes()
    digest = sha256_of(data)
    store.put(io.BytesIO(data), digest)
    fold = Fold()
    for i, body in enumerate([CreateModel(), MakeCommit(digest, "v1")]):
        for event in decide(fold.models.get("churn"), Command(f"c{i}", "churn", "t", i, body)):
            fold.apply(event)
    return VersionTracker(settings or WorkerSettings(), ArtifactLoader(store), Metrics(), fold)


def feature_events(x: np.ndarray, count: int) -> list[dict[str, object]]:
    """``count`` feature events of model churn (default ref), one per row of ``x``."""
    return [
        {
            "event_id": f"e{i}",
            "model": "churn",
            "ref": None,
            "entity_key": "k",
            "event_time": 1,
            "features": dict(zip(NAMES, map(float, x[i]), strict=True)),
        }
        for i in range(count)
    ]


def incoming(event: dict, offset: int) -> Incoming:
    return Incoming("modelvc.features", 0, offset, 1_000, b"k", FEATURES.encode(event))


def test_feature_row_follows_the_model_order_and_names_what_is_wrong() -> None:
    assert scoring.feature_row({"age": 3.0, "tenure": 1.0, "spend": 2.0}, NAMES) == [1.0, 2.0, 3.0]
    with pytest.raises(MissingFeature, match="age"):
        scoring.feature_row({"tenure": 1.0, "spend": 2.0}, NAMES)
    with pytest.raises(MissingFeature, match="null"):
        scoring.feature_row({"tenure": 1.0, "spend": None, "age": 1.0}, NAMES)
    with pytest.raises(WrongType, match="str"):
        scoring.feature_row({"tenure": 1.0, "spend": "lots", "age": 1.0}, NAMES)
    with pytest.raises(WrongType, match="bool"):
        scoring.feature_row({"tenure": True, "spend": 1.0, "age": 1.0}, NAMES)


def test_prediction_ids_are_deterministic_per_event_and_version() -> None:
    assert scoring.prediction_id("ev", "c1") == scoring.prediction_id("ev", "c1")
    assert scoring.prediction_id("ev", "c1") != scoring.prediction_id("ev", "c2")


def test_batch_scores_equal_booster_predict_and_bad_rows_are_rejected(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    path, booster, x = booster_file
    tracker = tracker_with(tmp_path, path)
    metrics = Metrics()
    scorer = Scorer(tracker, metrics, "w1")
    good = feature_events(x, 50)
    bad = [
        {**good[0], "event_id": "nan", "features": {**good[0]["features"], "age": float("nan")}},
        {**good[0], "event_id": "ghost", "model": "ghost"},
        {**good[0], "event_id": "ref", "ref": "nope"},
    ]
    batch = [incoming(e, i) for i, e in enumerate(good + bad)]
    batch.append(Incoming("modelvc.features", 0, 99, 1, None, b"\x00junk"))
    scored = asyncio.run(scorer.score(batch))
    predictions = [PREDICTIONS.decode(v) for _, _, v in scored.predictions]
    expected = booster.predict(x[:50])
    assert [p["scores"][0] for p in predictions] == list(expected)  # bit-identical
    assert {p["commit_id"] for p in predictions} == {tracker.serving[("churn", None)].commit_id}
    reasons = {item.offset: err.reason for item, err in scored.rejected}
    assert reasons == {
        50: "non_finite_value",
        51: "unknown_model",
        52: "unknown_ref",
        99: "undecodable",
    }
    # Counted per batch: one series per (model, commit, path), every scored row's delay.
    text = metrics.render().decode()
    commit = tracker.serving[("churn", None)].commit_id
    assert sample_sum(text, "modelvc_predictions_total") == 50
    assert sample_sum(text, "modelvc_predictions_total", commit=commit, path="stream") == 50
    assert sample_sum(text, "modelvc_end_to_end_seconds_count") == 50
    assert sample_sum(text, "modelvc_predict_seconds_count") == 1


def test_the_fault_hook_is_test_only_and_parsed_whole(tmp_path: Path) -> None:
    assert Fault.parse("") == Fault()
    assert Fault.parse("crash_before_commit:3").crash_before_commit == 3
    for spec in ("crash_before_commit:0", "crash_before_commit:3\n", "crash", "crash:3"):
        with pytest.raises(ValueError, match="tests only"):
            Fault.parse(spec)
    with pytest.raises(ValueError, match="crash_before_commit:N"):
        # Its own home: the worker's artifact cache is locked by one process at a time.
        topics = Settings(data_dir=tmp_path / "streams")
        bootstrap(WorkerSettings(topics=topics, fault="crash_before_commit:x"))


def test_default_ref_is_production_when_set_else_the_default_branch(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    tracker = tracker_with(tmp_path, booster_file[0])
    assert tracker.resolve("churn", None)[0] == "main"
    state = tracker.fold.models["churn"]
    for event in decide(state, Command("c9", "churn", "t", 9, MoveAlias("production", "main"))):
        tracker.fold.apply(event)
    assert tracker.resolve("churn", None)[0] == "production"


def test_a_switch_drops_the_old_serving_series_unless_another_ref_still_shows_it(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    tracker = tracker_with(tmp_path, booster_file[0])

    def serving_series() -> set[tuple[str, str]]:
        text = tracker.metrics.render().decode()
        return {
            (s.labels["ref"], s.labels["commit"])
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "modelvc_serving_info"
        }

    def run(i: int, body: CreateBranch | MakeCommit | MoveAlias) -> None:
        for event in decide(tracker.fold.models["churn"], Command(f"c{i}", "churn", "t", i, body)):
            tracker.fold.apply(event)

    async def scenario() -> None:
        first = await tracker.version_for("churn", None)  # the default ref: main
        await tracker.version_for("churn", "main")  # the same series
        assert serving_series() == {("main", first.commit_id)}
        run(10, CreateBranch("exp", "main"))
        run(11, MakeCommit(first.artifact_sha256, "v2", branch="exp"))
        run(12, MoveAlias("production", "exp"))  # the default ref is production now
        await tracker.refresh()
        moved = tracker.serving[("churn", None)]
        assert (moved.ref, moved.commit_id != first.commit_id) == ("production", True)
        assert serving_series() == {("main", first.commit_id), ("production", moved.commit_id)}
        run(13, MakeCommit(first.artifact_sha256, "v3"))  # main moves on: its old series goes
        await tracker.refresh()
        main = tracker.serving[("churn", "main")]
        assert serving_series() == {("main", main.commit_id), ("production", moved.commit_id)}

    asyncio.run(scenario())


def test_a_corrupt_artifact_is_never_loaded(tmp_path: Path, booster_file: tuple) -> None:
    store = LocalStore(tmp_path / "store")
    loader = ArtifactLoader(store)
    data = booster_file[0].read_bytes()
    digest = sha256_of(data)
    store.put(io.BytesIO(data), digest)
    store.path_for(digest).write_bytes(b"tree\ntampered")
    with pytest.raises(ArtifactLoadFailed, match="altered"):
        loader.load(digest)


def counting_store_with(tmp_path: Path, model_path: Path) -> tuple[CountingStore, str]:
    store = CountingStore(tmp_path / "store")
    data = model_path.read_bytes()
    digest = sha256_of(data)
    store.put(io.BytesIO(data), digest)
    return store, digest


def test_concurrent_loads_of_one_digest_fetch_and_build_it_once(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    """Eight batches needing a new 64 MiB version must not hold eight copies of it."""
    store, digest = counting_store_with(tmp_path, booster_file[0])
    loader = ArtifactLoader(store)  # a shared directory: no disk cache to hide a second read
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: loader.load(digest), range(8)))
    assert store.gets == 1 and all(model is loaded[0] for model in loaded)


def test_a_model_over_the_budget_is_refused_again_without_a_fetch(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    store, digest = counting_store_with(tmp_path, booster_file[0])
    loader = ArtifactLoader(store)
    for _ in range(3):  # the worker retries it every second
        with pytest.raises(ArtifactLoadFailed, match="MODELVC_WORKER_MEMORY_MB"):
            loader.load(digest, MemoryBudget(1, 5000))
    assert store.gets == 1
    assert loader.load(digest).digest == digest and store.gets == 2


def test_a_producer_cannot_grow_the_served_refs_without_bound(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    """`main~0`, `main~00`, ... all resolve; each would be served, refreshed and labelled.

    The least recently used spelling goes, so new models and refs are never locked out.
    """
    path, _, _ = booster_file
    tracker = tracker_with(tmp_path, path, WorkerSettings(max_refs=3))

    async def run() -> None:
        for ref in ("main", "main~0", "main~00"):
            await tracker.version_for("churn", ref)
        await tracker.version_for("churn", "main")  # used again: now the most recent
        for n in range(3, 50):
            await tracker.version_for("churn", "main" + "~0" * n)
        assert len(tracker.serving) == 3
        await tracker.version_for("churn", None)  # a new ref is always served
        assert ("churn", None) in tracker.serving and len(tracker.serving) == 3

    asyncio.run(run())
    # Evicted spellings leave no metric series behind either.
    families = text_string_to_metric_families(tracker.metrics.render().decode())
    serving = [s for f in families if f.name == "modelvc_serving_info" for s in f.samples]
    assert len(serving) == 3
    assert {s.labels["ref"] for s in serving} == {v.ref for v in tracker.serving.values()}


def test_attack_a_digest_that_is_no_sha256_fails_the_load_not_the_worker(tmp_path: Path) -> None:
    """A forged commit naming `<64 hex>\\n` once raised ArtifactNotFound out of the loop."""
    loader = ArtifactLoader(LocalStore(tmp_path / "store"))
    for digest in ("a" * 64 + "\n", "../../etc/passwd", ""):
        with pytest.raises(ArtifactLoadFailed):
            loader.load(digest)


def test_attack_a_huge_integer_feature_is_refused_not_a_crash() -> None:
    """JSON integers have no size limit; np.asarray raised OverflowError (a 500)."""
    from workers.errors import NonFiniteValue

    assert scoring.feature_row({"tenure": 10**300, "spend": 1.0, "age": 1}, NAMES)[0] == 10**300
    with pytest.raises(NonFiniteValue, match="too large"):
        scoring.feature_row({"tenure": 10**400, "spend": 1.0, "age": 1.0}, NAMES)


def test_attack_a_slow_model_does_not_stall_the_event_loop(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    """A large model's batch takes seconds; /healthz and the group heartbeat must go on."""
    import dataclasses
    import time

    path, _, _ = booster_file
    tracker = tracker_with(tmp_path, path)

    async def run() -> int:
        version = await tracker.version_for("churn", None)

        class SlowPredictor:  # a collaborator standing in for a model taking 0.5 s a batch
            signature = version.loaded.summary.signature
            runtime = "slow 1.0"

            def predict(self, matrix: np.ndarray) -> np.ndarray:
                time.sleep(0.5)
                return np.zeros((len(matrix), 1))

        slow = dataclasses.replace(
            version, loaded=dataclasses.replace(version.loaded, predictor=SlowPredictor())
        )
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticker = asyncio.create_task(tick())
        scores = await Scorer(tracker, Metrics(), "w").predict(slow, np.zeros((3, 3)))
        ticker.cancel()
        assert scores.shape == (3, 1)
        return ticks

    assert asyncio.run(run()) >= 10  # the loop ran while the model scored


def test_attack_rows_a_model_fails_on_are_refused_alone_and_the_rest_is_scored(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    """A checked ONNX graph may still fail on some values (onnxruntime raises) or give NaN:
    the batch must not fail whole (a worker crash-looping on it), only those rows."""
    import dataclasses

    from workers.errors import ModelFailed

    path, _, _ = booster_file
    tracker = tracker_with(tmp_path, path)

    async def run() -> tuple[np.ndarray, dict[int, ModelFailed]]:
        version = await tracker.version_for("churn", None)

        class Picky:  # fails on a batch holding a value over 100, NaN below -100
            signature = version.loaded.summary.signature
            runtime = "picky 1.0"

            def predict(self, matrix: np.ndarray) -> np.ndarray:
                if (matrix > 100).any():
                    raise RuntimeError("index out of range")
                return np.where(matrix[:, :1] < -100, np.nan, matrix[:, :1] * 2)

        picky = dataclasses.replace(
            version, loaded=dataclasses.replace(version.loaded, predictor=Picky())
        )
        matrix = np.array([[1.0, 0, 0], [500.0, 0, 0], [2.0, 0, 0], [-500.0, 0, 0]])
        return await Scorer(tracker, Metrics(), "w")._predicted(picky, matrix)

    scores, failed = asyncio.run(run())
    assert sorted(failed) == [1, 3]
    assert "index out of range" in str(failed[1]) and "not finite" in str(failed[3])
    assert failed[1].reason == "model_failed"
    assert scores[0, 0] == 2.0 and scores[2, 0] == 4.0

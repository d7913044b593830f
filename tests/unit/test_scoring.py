"""Scoring without Kafka: matrices in the model's feature order, rejections with reasons."""

from __future__ import annotations

import asyncio
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from streams.codec import FEATURES, PREDICTIONS
from streams.core import Command, CreateModel, MakeCommit, MoveAlias, decide
from streams.core.fold import Fold
from workers import scoring
from workers.artifacts import ArtifactLoader
from workers.errors import ArtifactLoadFailed, MissingFeature, WrongType
from workers.loop import Incoming, Scorer
from workers.metrics import Metrics
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
    from streams.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "store")
    digest, _ = store.put(model_path.read_bytes())
    fold = Fold()
    for i, body in enumerate([CreateModel(), MakeCommit(digest, "v1")]):
        for event in decide(fold.models.get("churn"), Command(f"c{i}", "churn", "t", i, body)):
            fold.apply(event)
    tracker = VersionTracker(
        settings or WorkerSettings(), ArtifactLoader(tmp_path / "store"), Metrics()
    )
    tracker.fold = fold
    return tracker


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
    scorer = Scorer(tracker, Metrics(), "w1")
    good = [
        {
            "event_id": f"e{i}",
            "model": "churn",
            "ref": None,
            "entity_key": "k",
            "event_time": 1,
            "features": dict(zip(NAMES, map(float, x[i]), strict=True)),
        }
        for i in range(50)
    ]
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


def test_default_ref_is_production_when_set_else_the_default_branch(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    tracker = tracker_with(tmp_path, booster_file[0])
    assert tracker.resolve("churn", None)[0] == "main"
    state = tracker.fold.models["churn"]
    for event in decide(state, Command("c9", "churn", "t", 9, MoveAlias("production", "main"))):
        tracker.fold.apply(event)
    assert tracker.resolve("churn", None)[0] == "production"


def test_a_corrupt_artifact_is_never_loaded(tmp_path: Path, booster_file: tuple) -> None:
    loader = ArtifactLoader(tmp_path / "store")
    from streams.artifacts import ArtifactStore

    digest, _ = ArtifactStore(tmp_path / "store").put(booster_file[0].read_bytes())
    ArtifactStore(tmp_path / "store").path_for(digest).write_bytes(b"tree\ntampered")
    with pytest.raises(ArtifactLoadFailed, match="digest"):
        loader.load(digest)


def test_metrics_render_in_prometheus_text_format() -> None:
    m = Metrics()
    m.inc("modelvc_predictions_total", (("model", "churn"), ("commit", "abc")), 3)
    m.observe("modelvc_batch_size", 120, (1, 100, 1000))
    text = m.render()
    assert 'modelvc_predictions_total{model="churn",commit="abc"} 3' in text
    assert 'modelvc_batch_size_bucket{le="100"} 0' in text
    assert 'modelvc_batch_size_bucket{le="1000"} 1' in text
    assert "modelvc_batch_size_count 1" in text


def test_a_producer_cannot_grow_the_served_refs_without_bound(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    """`main~0`, `main~00`, ... all resolve; each would be served, refreshed and labelled."""
    from workers.errors import TooManyRefs

    path, _, _ = booster_file
    tracker = tracker_with(tmp_path, path, WorkerSettings(max_refs=3))

    async def run() -> None:
        for ref in ("main", "main~0", "main~00"):
            await tracker.version_for("churn", ref)
        with pytest.raises(TooManyRefs, match="MODELVC_WORKER_MAX_REFS"):
            await tracker.version_for("churn", "main~000")
        assert (await tracker.version_for("churn", "main")).ref == "main"  # served ones go on

    asyncio.run(run())
    assert len(tracker.serving) == 3

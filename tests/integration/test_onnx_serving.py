"""ONNX served by a worker (issue 14), on one stack: exact scores, a hot switch between
formats, refused uploads, the audit and ``show``.

One module-scoped stack with one worker (Tansu only: an edge module). Model ``hot`` has a
LightGBM commit and an ONNX MLP commit with the same six features; model ``skl`` a
scikit-learn pipeline converted by skl2onnx, committed with the CLI.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from modelvc.client import Client, ClientError
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from streams.artifacts import open_store, sha256_of
from streams.formats.onnx import session_options
from tests import onnx_models
from tests.integration.test_audit import cli
from tests.integration.test_workers import predictions, wait_for

pytestmark = pytest.mark.broker
NAMES = [f"f{i}" for i in range(6)]
SKL_FEATURES = 4


@dataclass
class World:
    stack: Stack
    client: Client
    lightgbm: str  # commit ids of model "hot"
    mlp: str
    skl: str  # model "skl"'s head
    booster: lgb.Booster
    mlp_bytes: bytes
    skl_bytes: bytes


def train(path: Path) -> lgb.Booster:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, len(NAMES)))
    y = (x[:, 0] - x[:, 3] > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "verbosity": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=NAMES), num_boost_round=10)
    booster.save_model(str(path))
    return booster


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[World]:
    home = tmp_path_factory.mktemp("onnx") / "home"
    files = tmp_path_factory.mktemp("onnx-models")
    s = Stack.up(home, bootstrap=bootstrap, namespace=f"onnx{os.getpid()}", workers=1)
    try:
        c = s.client()
        booster = train(files / "hot.txt")
        mlp = onnx_models.mlp_bytes(inputs=len(NAMES), hidden=(16, 16), feature_names=NAMES)
        (files / "model.onnx").write_bytes(mlp)
        c.create("hot")
        gbm = c.commit("hot", c.upload(files / "hot.txt")["sha256"], "lightgbm")["head"]
        uploaded = c.upload(files / "model.onnx")
        assert uploaded["format"] == "onnx" and uploaded["signature"]["outputs"] == 1
        head = c.commit("hot", uploaded["sha256"], "the same features, as an MLP")["head"]
        c.set_alias("hot", "production", gbm)
        skl = onnx_models.sklearn_pipeline_bytes(features=SKL_FEATURES)
        (files / "pipeline.onnx").write_bytes(skl)
        c.create("skl")
        done = cli(s, "--json", "-M", "skl", "commit", str(files / "pipeline.onnx"), "-m", "skl")
        assert done.returncode == 0, done.stderr
        yield World(s, c, gbm, head, json.loads(done.stdout)["head"], booster, mlp, skl)
    finally:
        s.down()


def session(model: bytes) -> ort.InferenceSession:
    """A plain onnxruntime session with the options workers use: what users compare with."""
    return ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])


def onnx_scores(model: bytes, x: np.ndarray, output: str) -> np.ndarray:
    (got,) = session(model).run([output], {"input": x.astype(np.float32)})
    return np.asarray(got, dtype=np.float64).reshape(len(x), -1)


def features(names: list[str], row: np.ndarray) -> dict[str, float]:
    return dict(zip(names, map(float, row), strict=True))


def bits(values: Any) -> bytes:
    return np.asarray(values, dtype="<f8").tobytes()


def scored(stack: Stack, prefix: str, count: int) -> dict[str, dict[str, Any]]:
    """The predictions of events ``prefix0`` .. ``prefix{count-1}``, by event id."""

    def mine() -> dict[str, dict[str, Any]] | None:
        got = {p["feature_event_id"]: p for p in predictions(stack)}
        found = {k: v for k, v in got.items() if k.startswith(prefix)}
        return found if len(found) >= count else None

    found: dict[str, dict[str, Any]] = wait_for(mine, 60, f"{count} predictions of {prefix}")
    return found


def test_onnx_predictions_equal_onnxruntime_bit_for_bit(world: World) -> None:
    s = world.stack
    x = np.random.default_rng(1).normal(size=(200, len(NAMES)))
    z = np.random.default_rng(2).normal(size=(50, SKL_FEATURES))
    skl_names = [f"input_{i}" for i in range(SKL_FEATURES)]
    with FeatureProducer(s.settings.bootstrap, s.settings.features_topic) as producer:
        for i, row in enumerate(x):
            producer.publish("hot", features(NAMES, row), ref="main", event_id=f"mlp{i}")
        for i, row in enumerate(z):
            producer.publish("skl", features(skl_names, row), event_id=f"skl{i}")
    got = scored(s, "mlp", len(x)) | scored(s, "skl", len(z))
    mlp = onnx_scores(world.mlp_bytes, x, "output")
    skl = onnx_scores(world.skl_bytes, z, "probabilities")
    assert {got[f"mlp{i}"]["commit_id"] for i in range(len(x))} == {world.mlp}
    assert {got[f"skl{i}"]["commit_id"] for i in range(len(z))} == {world.skl}
    assert bits([got[f"mlp{i}"]["scores"] for i in range(len(x))]) == bits(mlp)
    assert bits([got[f"skl{i}"]["scores"] for i in range(len(z))]) == bits(skl)
    # Every prediction names the runtime that computed it.
    runtimes = {p["runtime"] for p in got.values()}
    assert len(runtimes) == 1
    assert runtimes.pop().startswith(f"onnxruntime {ort.__version__} threads=1 ")
    # A row alone (the HTTP endpoint, coalescing or not) scores as in any batch.
    request = urllib.request.Request(
        s.worker_url() + "/v1/models/hot/predict",
        data=json.dumps({"features": features(NAMES, x[5]), "ref": "main"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {s.token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    assert answer["commit_id"] == world.mlp and bits(answer["scores"]) == bits(mlp[5])
    assert bits(onnx_scores(world.mlp_bytes, x[5:6], "output")) == bits(mlp[5:6])


def test_a_hot_switch_between_lightgbm_and_onnx_mixes_no_batch(world: World) -> None:
    s, c = world.stack, world.client
    x = np.random.default_rng(3).normal(size=(500, len(NAMES)))
    stop = threading.Event()
    sent = [0]  # events published so far, hot0 .. hot{sent-1}

    def stream() -> None:
        # Paced in small bursts: batches are milliseconds apart, each its own scored_at.
        with FeatureProducer(s.settings.bootstrap, s.settings.features_topic) as producer:
            while not stop.is_set():
                for i in range(sent[0], sent[0] + 10):
                    producer.publish("hot", features(NAMES, x[i % len(x)]), event_id=f"hot{i}")
                producer.flush()
                sent[0] += 10
                time.sleep(0.02)

    def switched(target: str, since: int) -> bool:
        return any(
            p["commit_id"] == target and int(p["feature_event_id"][3:]) >= since
            for p in predictions(s)
            if p["feature_event_id"].startswith("hot")
        )

    streaming = threading.Thread(target=stream)
    streaming.start()
    try:
        for target in (world.mlp, world.lightgbm, world.mlp, world.lightgbm):
            time.sleep(0.3)
            c.set_alias("hot", "production", target)
            since = sent[0]  # events published after the move are served by it at last
            wait_for(functools.partial(switched, target, since), 30, f"a switch to {target}")
    finally:
        stop.set()
        streaming.join(30)
    count = sent[0]
    got = scored(s, "hot", count)
    by_commit = {
        world.lightgbm: np.asarray(world.booster.predict(x)).reshape(len(x), 1),
        world.mlp: onnx_scores(world.mlp_bytes, x, "output"),
    }
    batches: dict[tuple[str, int], set[str]] = defaultdict(set)
    for i in range(count):
        p = got[f"hot{i}"]
        # Each score is the named commit's own, to the bit.
        expected = by_commit[p["commit_id"]][i % len(x)]
        assert bits(p["scores"]) == bits(expected), (i, p["commit_id"])
        batches[(p["worker_id"], p["scored_at"])].add(p["commit_id"])
    assert all(len(commits) == 1 for commits in batches.values())
    served = [got[f"hot{i}"] for i in range(count)]
    # Served in turn: LightGBM, the MLP, LightGBM, the MLP, LightGBM (at least 4 changes).
    changes = sum(a["commit_id"] != b["commit_id"] for a, b in itertools.pairwise(served))
    assert {p["commit_id"] for p in served} == set(by_commit) and changes >= 4
    runtimes = {p["commit_id"]: p["runtime"] for p in served}
    assert runtimes[world.lightgbm].startswith(f"lightgbm {lgb.__version__} ")
    assert runtimes[world.mlp].startswith(f"onnxruntime {ort.__version__} ")
    # The auditor re-scores every prediction (both formats) with the same load and
    # predict, to the bit.
    audited = cli(s, "--json", "audit", "verify-predictions", "--all")
    assert audited.returncode == 0, audited.stdout + audited.stderr
    verdict = json.loads(audited.stdout)
    assert verdict["checked"] >= count and verdict["mismatches"] == []
    assert verdict["other_runtime"] == []


# case -> (its bytes, the answer's status and error, words of its reason)
REFUSALS: dict[str, tuple[Any, int, str, str]] = {
    "corrupt": (onnx_models.corrupt_bytes, 422, "artifact_rejected", "not a well-formed onnx"),
    "unsupported opset": (onnx_models.unsupported_opset_bytes, 422, "artifact_rejected", "opset"),
    "oversized graph": (None, 413, "too_large", "more than 10000 nodes"),
    "external data": (None, 422, "artifact_rejected", "external data"),
    "pickle renamed model.onnx": (onnx_models.pickle_bytes, 422, "artifact_rejected", "pickle"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_onnx_uploads_are_refused_with_their_reason(
    world: World, case: str, tmp_path: Path
) -> None:
    make, status, error, reason = REFUSALS[case]
    if case == "oversized graph":
        data = onnx_models.oversized_bytes(world.stack.settings.max_model_bytes)
    elif case == "external data":
        data = onnx_models.external_data_bytes(tmp_path)
    else:
        assert make is not None
        data = make()
    path = tmp_path / "upload" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(ClientError) as refused:
        world.client.upload(path)
    assert (refused.value.status, refused.value.body["error"]) == (status, error)
    assert reason in refused.value.body["message"].lower(), refused.value.body["message"]
    assert not open_store(world.stack.settings.artifacts).has(sha256_of(data))


def test_show_displays_the_format_and_the_graph(world: World) -> None:
    shown = cli(world.stack, "-M", "skl", "show", world.skl)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "onnx" in text and "input" in text and "probabilities" in text and "label" in text
    signature = world.client.show("skl", world.skl)["signature"]
    assert signature["format"] == "onnx" and signature["outputs"] == 2
    graph = {(t["name"], t["kind"]) for t in signature["graph"]}
    assert {("input", "input"), ("label", "output"), ("probabilities", "output")} <= graph


def test_a_merge_can_change_the_format_and_the_merged_commit_serves_onnx(world: World) -> None:
    """main holds LightGBM, a branch the MLP (the same six features); merging the branch
    with strategy theirs makes a merge commit of the ONNX file, served as ONNX."""
    c, s = world.client, world.stack
    gbm = c.show("hot", world.lightgbm)["artifact_sha256"]
    mlp = c.show("hot", world.mlp)["artifact_sha256"]
    c.create("mix")
    base = c.commit("mix", gbm, "lightgbm")["head"]
    c.create_branch("mix", "exp", base)
    c.commit("mix", mlp, "an MLP", branch="exp")
    c.commit("mix", gbm, "lightgbm again", params={"round": "2"})
    c.merge("mix", "exp", "main", strategy="theirs")
    merged = c.show("mix", "main")
    assert len(merged["parents"]) == 2 and merged["artifact_sha256"] == mlp
    assert merged["signature"]["format"] == "onnx"
    assert [f["name"] for f in merged["signature"]["inputs"]] == NAMES
    x = np.random.default_rng(4).normal(size=(20, len(NAMES)))
    with FeatureProducer(s.settings.bootstrap, s.settings.features_topic) as producer:
        for i, row in enumerate(x):
            producer.publish("mix", features(NAMES, row), ref="main", event_id=f"mix{i}")
    got = scored(s, "mix", len(x))
    assert {p["commit_id"] for p in got.values()} == {merged["id"]}
    expected = onnx_scores(world.mlp_bytes, x, "output")
    assert bits([got[f"mix{i}"]["scores"] for i in range(len(x))]) == bits(expected)


def test_the_open_inference_protocol_serves_onnx_through_tritonclient(world: World) -> None:
    """Triton's own client: the platform Triton names, and an FP32 [N, k] tensor (what an
    ONNX graph takes) scored to onnxruntime's bits."""
    s = world.stack
    client = httpclient.InferenceServerClient(s.worker_url().removeprefix("http://"))
    auth = {"Authorization": f"Bearer {s.token}"}
    meta = client.get_model_metadata("skl", model_version=world.skl, headers=auth)
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == [world.skl]
    assert meta["outputs"][0]["shape"] == [-1, 2]
    z = np.random.default_rng(5).normal(size=(7, SKL_FEATURES)).astype(np.float32)
    tensor = httpclient.InferInput("input", list(z.shape), "FP32")
    tensor.set_data_from_numpy(z, binary_data=True)
    result = client.infer(
        "skl",
        [tensor],
        model_version=world.skl[:12],
        headers=auth | {"Content-Type": "application/octet-stream"},
    )
    assert result.get_response()["parameters"]["commit_id"] == world.skl
    expected = onnx_scores(world.skl_bytes, z, "probabilities")
    assert bits(result.as_numpy("predict")) == bits(expected)

"""Hostile model files against a real stack: the API and the workers stay up (issue 7).

Finding 1: uploads that crashed the API in LightGBM are refused with 422.
Finding 2: models that hung or starved a worker, placed straight into the
store under a committed digest (no upload check), are refused by the worker;
the previous version keeps serving and /healthz keeps answering.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from modelvc.client import ClientError
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from streams.artifacts import LocalStore, open_store, sha256_of
from streams.codec import PREDICTIONS
from streams.logreader import read_topic
from tests.conftest import train_model
from tests.integration.test_workers import wait_for
from tests.unit.test_modelfile import edit_header, edit_tree
from workers.metrics import sample_sum

pytestmark = pytest.mark.broker
FEATURES = {f"Column_{i}": 0.25 * i for i in range(4)}


def cyclic(text: str) -> str:
    return edit_tree(text, 0, "left_child", "0 -1 -2")  # the root's left child is the root


def two_billion_classes(text: str) -> str:
    return edit_header(edit_header(text, "num_class", "2000000000"), "num_tree_per_iteration", "1")


def zero_trees(text: str) -> str:
    header, tail = text[: text.index("Tree=0")], text[text.index("end of trees") :]
    return edit_header(header + tail, "tree_sizes", "")


def hostile_files(text: str) -> dict[str, bytes]:
    data = text.encode()
    return {
        "truncated": data[: data.index(b"Tree=3") + 100],
        "num_tree_per_iteration=0": edit_header(text, "num_tree_per_iteration", "0").encode(),
        "1M tree_sizes": edit_header(text, "tree_sizes", " ".join(["573"] * 1_000_000)).encode(),
        "cyclic": cyclic(text).encode(),
        "num_class=2000000000": two_billion_classes(text).encode(),
        "zero trees": zero_trees(text).encode(),
    }


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def test_finding_1_hostile_uploads_are_refused_and_the_api_stays_up(
    stack: Stack, model_file: Path, tmp_path: Path
) -> None:
    c = stack.client()
    pid = stack.processes["streams"].pid
    for name, data in hostile_files(model_file.read_text()).items():
        path = tmp_path / "hostile.txt"
        path.write_bytes(data)
        with pytest.raises(ClientError) as refused:
            c.upload(path)
        assert refused.value.status == 422, name
        assert refused.value.body["error"] == "artifact_rejected", name
        assert not open_store(stack.settings.artifacts).has(sha256_of(data)), name
    assert stack.processes["streams"].pid == pid and get(stack.url + "/healthz")[0] == 200
    assert c.upload(model_file)["num_trees"] == 5  # and it still takes good models
    assert not list(stack.settings.staging_dir.iterdir())  # no temp file left


def test_finding_2_poisoned_files_in_the_store_are_refused_by_the_worker(
    stack: Stack, tmp_path: Path
) -> None:
    c = stack.client()
    c.create("churn")
    good = [train_model(tmp_path / f"v{i}.txt", seed=i) for i in range(2)]
    v0 = c.commit("churn", c.upload(good[0])["sha256"], "v0")["head"]
    c.set_alias("churn", "production", v0)
    stack.add_worker("worker-1")
    worker = stack.worker_url("worker-1")
    settings = stack.settings
    store = LocalStore(Path(settings.artifacts))
    sent = 0

    def score_one() -> str:
        """Send one event for the default ref; the commit that scored it."""
        nonlocal sent
        sent += 1
        event_id = f"ev{sent}"
        with FeatureProducer(settings.bootstrap, settings.features_topic) as producer:
            producer.publish("churn", FEATURES, event_id=event_id)

        def scored() -> str | None:
            for record in read_topic(settings.access, settings.predictions_topic):
                p = PREDICTIONS.decode(record.value) if record.value else None
                if p and p["feature_event_id"] == event_id:
                    return str(p["commit_id"])
            return None

        return str(wait_for(scored, what=f"a prediction for {event_id}"))

    def health() -> dict[str, Any]:
        status, body = get(worker + "/healthz")
        assert status == 200
        return dict(json.loads(body))

    def failures() -> float:
        return sample_sum(get(worker + "/metrics")[1], "modelvc_artifact_failures_total")

    assert score_one() == v0
    text = good[0].read_text()
    for name, poison in (
        ("cyclic", cyclic(text)),
        ("num_class=2000000000", two_billion_classes(text)),
        ("zero trees", zero_trees(text)),
    ):
        data = poison.encode()
        digest = sha256_of(data)
        # Straight into the store, as a hand or another tool would: no upload check.
        path = store.path_for(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        # The commit reads the file's signature with our own parser, so the API refuses
        # it before any worker sees it (the worker's own refusal of a hand-placed file is
        # tests/unit/test_artifacts.py::test_finding_2_the_worker_loader_refuses_...).
        with pytest.raises(ClientError) as refused:
            c.commit("churn", digest, f"poison: {name}")
        assert refused.value.status == 422, name
        assert refused.value.body["error"] == "artifact_rejected", refused.value.body
        assert health()["serving"]["churn@production"] == v0, name
        assert failures() == 0, name
        assert score_one() == v0, name  # still scoring, with the previous version
    # A good version after the poisons is taken up as usual.
    v1 = c.commit("churn", c.upload(good[1])["sha256"], "v1")["head"]
    c.set_alias("churn", "production", v1)
    wait_for(lambda: health()["serving"].get("churn@production") == v1, what="the switch to v1")
    assert score_one() == v1

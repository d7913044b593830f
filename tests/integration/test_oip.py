"""The Open Inference Protocol on a worker, driven by Triton's own HTTP client
(``tritonclient.http``): the bodies exactly as that client sends them, JSON and binary."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from modelvc.stack import Stack
from tests.integration.test_workers import NAMES, rows, setup_model, wait_for

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, bootstrap: str
) -> Iterator[tuple[Stack, list[str], list[lgb.Booster], list[str]]]:
    """One stack, model churn: main has v0 then v1, alias production points at v0."""
    home = tmp_path_factory.mktemp("oip") / "home"
    s = Stack.up(home, bootstrap=bootstrap, namespace=f"oip{os.getpid()}", workers=1)
    try:
        c, heads, boosters = setup_model(s, tmp_path_factory.mktemp("models"))
        c.set_alias("churn", "production", heads[0])
        digests = [c.show("churn", h)["artifact_sha256"] for h in heads]
        yield s, heads, boosters, digests
    finally:
        s.down()


def triton(stack: Stack) -> Any:
    return httpclient.InferenceServerClient(stack.worker_url().removeprefix("http://"))


def headers(stack: Stack, content_type: str = "application/json") -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token}", "Content-Type": content_type}


def matrix_input(x: np.ndarray, binary: bool) -> Any:
    tensor = httpclient.InferInput("input-0", list(x.shape), "FP64" if x.dtype == "<f8" else "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_metadata_readiness_and_exact_scores_through_tritonclient(
    served: tuple[Stack, list[str], list[lgb.Booster], list[str]],
) -> None:
    stack, heads, boosters, digests = served
    client = triton(stack)
    assert client.is_server_live()
    wait_for(client.is_server_ready, what="the worker's version log")
    assert client.get_server_metadata()["name"] == "modelvc-worker"
    assert client.is_model_ready("churn", headers=headers(stack))
    meta = client.get_model_metadata("churn", headers=headers(stack))
    assert meta["versions"] == [heads[0]] and meta["platform"] == "lightgbm"
    assert meta["inputs"][0]["shape"] == [-1, len(NAMES)]
    assert meta["inputs"][0]["parameters"]["feature_names"] == NAMES
    assert meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1, 1]}]

    # A batch of rows, JSON, the default ref (alias production): LightGBM's float64, bit for bit.
    x = rows(8)
    result = client.infer(
        "churn",
        [matrix_input(x, binary=False)],
        outputs=[httpclient.InferRequestedOutput("predict", binary_data=False)],
        request_id="req-1",
        headers=headers(stack),
    )
    expected = boosters[0].predict(x).reshape(-1, 1)
    assert result.as_numpy("predict").tobytes() == expected.tobytes()
    answer = result.get_response()
    assert answer["id"] == "req-1" and answer["model_version"] == heads[0]
    assert answer["parameters"] == {
        "commit_id": heads[0],
        "artifact_sha256": digests[0],
        "ref": "production",
    }
    # Row by row, as a client of one row at a time gets them: the same bits.
    for i in range(3):
        one = client.infer("churn", [matrix_input(x[i : i + 1], False)], headers=headers(stack))
        assert one.as_numpy("predict").tobytes() == expected[i : i + 1].tobytes()

    # parameters.ref, and the version in the URL, choose the version.
    by_param = client.infer(
        "churn", [matrix_input(x, False)], parameters={"ref": "main"}, headers=headers(stack)
    )
    assert by_param.get_response()["model_version"] == heads[1]
    assert by_param.as_numpy("predict").ravel().tobytes() == boosters[1].predict(x).tobytes()
    by_url = client.infer(
        "churn", [matrix_input(x, False)], model_version=heads[1][:12], headers=headers(stack)
    )
    assert by_url.get_response()["parameters"]["commit_id"] == heads[1]

    # Binary tensors (Triton's extension), FP32 widened exactly: Booster.predict on float32.
    x32 = x.astype(np.float32)
    binary = client.infer(
        "churn",
        [matrix_input(x32, binary=True)],
        headers=headers(stack, "application/octet-stream"),
    )
    assert binary.as_numpy("predict").ravel().tobytes() == boosters[0].predict(x32).tobytes()

    # One tensor per feature, by name.
    per_feature = []
    for j, name in enumerate(NAMES):
        tensor = httpclient.InferInput(name, [len(x)], "FP64")
        tensor.set_data_from_numpy(np.ascontiguousarray(x[:, j]), binary_data=False)
        per_feature.append(tensor)
    named = client.infer("churn", per_feature, headers=headers(stack))
    assert named.as_numpy("predict").tobytes() == expected.tobytes()


def test_refusals_say_what_to_send(
    served: tuple[Stack, list[str], list[lgb.Booster], list[str]],
) -> None:
    stack, *_ = served
    client = triton(stack)
    wait_for(client.is_server_ready, what="the worker's version log")

    def refused(*args: Any, **kwargs: Any) -> InferenceServerException:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(*args, **kwargs)
        return caught.value

    strings = httpclient.InferInput("input-0", [1, len(NAMES)], "BYTES")
    strings.set_data_from_numpy(np.array([["a"] * len(NAMES)], dtype=object), binary_data=False)
    exc = refused("churn", [strings], headers=headers(stack))
    assert exc.status() == "400" and "BYTES tensors" in exc.message()

    wrong = matrix_input(rows(2)[:, :3], binary=False)
    exc = refused("churn", [wrong], headers=headers(stack))
    assert exc.status() == "400" and "[N, 5]" in exc.message()

    exc = refused("nosuch", [matrix_input(rows(1), False)], headers=headers(stack))
    assert exc.status() == "404" and "does not exist" in exc.message()
    exc = refused(
        "churn", [matrix_input(rows(1), False)], parameters={"ref": "nope"}, headers=headers(stack)
    )
    assert exc.status() == "404"

    # The edge's own refusals, with their message where OIP clients look: tritonclient sends
    # no Content-Type unless told (a page of another site could not either), and no token.
    exc = refused("churn", [matrix_input(rows(1), False)])
    assert exc.status() == "415" and "Content-Type: application/json" in exc.message()
    exc = refused(
        "churn", [matrix_input(rows(1), False)], headers={"Content-Type": "application/json"}
    )
    assert exc.status() == "401" and "token" in exc.message()

    # Raw bodies: NaN, a bool, a body over the bound.
    url = stack.worker_url() + "/v2/models/churn/infer"

    def post(body: bytes) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(url, data=body, headers=headers(stack))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def tensor(data: str) -> bytes:
        return (
            f'{{"inputs": [{{"name": "x", "shape": [1, 5], "datatype": "FP64", "data": {data}}}]}}'
        ).encode()

    status, answer = post(tensor("[1, 2, NaN, 4, 5]"))
    assert status == 400 and "finite" in answer["error"]
    status, answer = post(tensor("[1, 2, 1e400, 4, 5]"))
    assert status == 400 and "row 0" in answer["error"]
    status, answer = post(tensor("[1, 2, true, 4, 5]"))
    assert status == 400 and "bool" in answer["error"]
    status, answer = post(b" " * (4 * 1024 * 1024 + 1))
    assert status == 413 and answer["code"] == "too_large"

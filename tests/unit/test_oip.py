"""workers.oip: reading Open Inference Protocol requests into rows, hostile ones refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from streams.core.model_signature import DOUBLE, Feature, ModelSignature
from workers import oip
from workers.http import Coalescer
from workers.scoring import Version

NAMES = ("a", "b", "c")


def body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def tensor(data: Any, shape: list[int], datatype: str = "FP64", name: str = "x") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def rows_of(raw: bytes, header: int | None = None, max_rows: int = 100) -> np.ndarray:
    return oip.matrix(oip.parse_request(raw, header, max_rows), NAMES)


def test_flat_nested_and_per_feature_tensors_give_the_same_rows() -> None:
    want = np.array([[1.0, 2.5, -3.0], [4.0, 5.0, 6.0]])
    flat = rows_of(body(tensor([1, 2.5, -3, 4, 5, 6], [2, 3])))
    nested = rows_of(body(tensor([[1, 2.5, -3], [4, 5, 6]], [2, 3])))
    by_name = rows_of(
        body(
            tensor([2.5, 5], [2], name="b"),
            tensor([[1], [4]], [2, 1], name="a"),
            tensor([-3, 6], [2], "INT32", name="c"),
        )
    )
    for got in (flat, nested, by_name):
        assert got.dtype == np.float64 and got.tobytes() == want.tobytes()


def test_fp32_is_the_float32_value_widened_exactly() -> None:
    got = rows_of(body(tensor([0.1, 1e-3, 3.0], [1, 3], "FP32")))
    assert got.tobytes() == np.array([[0.1, 1e-3, 3.0]], np.float32).astype(np.float64).tobytes()


def test_binary_tensors_after_the_json_header() -> None:
    x = np.array([[1.5, -2.0, 3.25]], dtype="<f4")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    got = rows_of(header + x.tobytes(), len(header))
    assert got.tobytes() == x.astype(np.float64).tobytes()
    with pytest.raises(oip.InvalidInference, match="binary_data_size"):
        rows_of(header + x.tobytes()[:-1], len(header))
    with pytest.raises(oip.InvalidInference, match="add up"):
        rows_of(header + x.tobytes() + b"\0", len(header))
    with pytest.raises(oip.InvalidInference, match="Inference-Header-Content-Length"):
        rows_of(header, len(header) + 1)


def test_parameters_id_and_outputs() -> None:
    raw = body(
        tensor([1, 2, 3], [1, 3]),
        id="r-1",
        parameters={"ref": "main", "binary_data_output": True},
        outputs=[{"name": "predict", "parameters": {"binary_data": False}}],
    )
    request = oip.parse_request(raw, None, 10)
    assert (request.id, request.ref, request.outputs, request.rows) == (
        "r-1",
        "main",
        ("predict",),
        1,
    )
    assert oip.one_ref(None, "main", "main") == "main" and oip.one_ref(None, None) is None
    with pytest.raises(oip.InvalidInference, match="several versions"):
        oip.one_ref("main", "production")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"not json", "not a JSON"),
        (b"[1]", "JSON object"),
        (b'{"inputs": []}', "non-empty"),
        (b"[" * 100_000 + b"]" * 100_000, "not a JSON"),  # nesting deeper than the parser goes
        (body(tensor([1, 2, float("nan")], [1, 3])), "NaN is not a number"),
        (body(tensor([1, 2, True], [1, 3])), "bool"),
        (body(tensor([1, 2, "3"], [1, 3])), "str"),
        (body(tensor([1, 2, None], [1, 3])), "NoneType"),
        (body(tensor([1, 2, [3]], [1, 3])), "list"),
        (body(tensor([1, 2, 10**400], [1, 3])), "too large for FP64"),
        (body(tensor([1, 2, 1e39], [1, 3], "FP32")), "out of range for FP32"),
        (body(tensor([1, 2, 1.5], [1, 3], "INT64")), "not an integer"),
        (body(tensor([1, 2, 300], [1, 3], "INT8")), "out of range for INT8"),
        (body(tensor([1, 2, -1], [1, 3], "UINT64")), "out of range for UINT64"),
        (body(tensor(["a", "b", "c"], [1, 3], "BYTES")), "BYTES tensors"),
        (body(tensor([1, 0, 1], [1, 3], "BOOL")), "BOOL tensors"),
        (body(tensor([1, 2, 3], [1, 3], "FP8")), "'FP8' is unknown"),
        (body(tensor([1, 2], [1, 3])), "holds 3 values, data has 2"),
        (body(tensor([[1, 2, 3], [4, 5]], [2, 3])), "every nested row"),
        (body(tensor([[1, 2, 3]], [2, 3])), "nested data"),
        (body(tensor([1, 2, 3], [1, 3, 1])), "shape must be"),
        (body(tensor([1, 2, 3], [True, 3])), "shape must be"),
        (body(tensor([], [0, 3])), "shape must be"),
        (body(tensor([1, 2, 3], [1, 3]), parameters=[]), "parameters must be"),
        (body(tensor([1, 2, 3], [1, 3]), id=7), "id must be"),
        (body(tensor([1, 2, 3], [1, 3]), outputs=[{"name": "proba"}]), "unknown output"),
        (body(tensor([1, 2], [2]), tensor([1, 2, 3], [3], name="b")), "disagree"),
    ],
)
def test_hostile_requests_are_refused_with_a_reason(raw: bytes, match: str) -> None:
    with pytest.raises(oip.InvalidInference, match=match) as caught:
        rows_of(raw)
    assert not isinstance(caught.value, oip.InferenceTooLarge)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (body(tensor([1, 2, 3], [101, 3])), "at most 100 rows"),
        (body(tensor([1], [1, 10**12])), "values"),  # refused before any allocation
        (body(tensor([1], [10**30, 3])), "rows"),
        (b" " * (oip.MAX_BODY_BYTES + 1), "limited"),
    ],
)
def test_requests_over_the_bounds_are_too_large(raw: bytes, match: str) -> None:
    with pytest.raises(oip.InferenceTooLarge, match=match):
        rows_of(raw)


def test_inputs_that_do_not_fit_the_version_name_what_to_send() -> None:
    with pytest.raises(oip.InvalidInference, match=r"takes \[N, 3\]"):
        rows_of(body(tensor([1, 2, 3, 4], [1, 4])))
    with pytest.raises(oip.InvalidInference, match=r"missing features: 'c'"):
        rows_of(body(tensor([1], [1], name="a"), tensor([2], [1], name="b")))
    with pytest.raises(oip.InvalidInference, match=r"not features of this version: 'z'"):
        rows_of(body(*(tensor([1], [1], name=n) for n in (*NAMES, "z"))))
    with pytest.raises(oip.InvalidInference, match="named twice"):
        rows_of(body(*(tensor([1], [1], name=n) for n in (*NAMES, "a"))))
    with pytest.raises(oip.InvalidInference, match=r"\[N\] or \[N, 1\]"):
        rows_of(body(*(tensor([1, 2], [1, 2], name=n) for n in NAMES)))


class Loaded:
    """A booster stand-in: the Coalescer only passes the version to its predict."""


def version(digest: str) -> Version:
    return Version("m", "main", "c" * 64, digest, Loaded())  # type: ignore[arg-type]


def test_concurrent_requests_share_one_call_and_get_their_own_rows() -> None:
    calls: list[int] = []

    async def predict(v: Version, matrix: np.ndarray) -> np.ndarray:
        calls.append(len(matrix))
        await asyncio.sleep(0.01)
        return matrix[:, :1] * 2

    async def run() -> list[np.ndarray]:
        coalescer = Coalescer(predict, max_rows=4)
        parts = [np.full((1 + i % 2, 3), float(i)) for i in range(6)]
        return await asyncio.gather(*(coalescer.predict(version("d"), p) for p in parts))

    answers = asyncio.run(run())
    assert [a.ravel().tolist() for a in answers] == [[2.0 * i] * (1 + i % 2) for i in range(6)]
    # All six queue before the first call; each call takes whole requests, at most 4 rows.
    assert calls == [4, 3, 2]


def test_a_failed_call_fails_its_requests_only() -> None:
    async def predict(v: Version, matrix: np.ndarray) -> np.ndarray:
        if (matrix < 0).any():
            raise RuntimeError("boom")
        await asyncio.sleep(0)
        return matrix[:, :1]

    async def run() -> list[Any]:
        coalescer = Coalescer(predict, max_rows=1)
        parts = [np.full((1, 3), v) for v in (1.0, -1.0, 2.0)]
        return await asyncio.gather(
            *(coalescer.predict(version("d"), p) for p in parts), return_exceptions=True
        )

    ok, failed, later = asyncio.run(run())
    assert ok.tolist() == [[1.0]] and later.tolist() == [[2.0]]
    assert isinstance(failed, RuntimeError)


@pytest.mark.parametrize("value", ["", "²", "١٢", "12a", "-1", " 12", "1" * 10, "9" * 5000])
def test_a_binary_header_length_that_is_not_a_plain_byte_count_is_refused(value: str) -> None:
    with pytest.raises(oip.InvalidInference, match="Inference-Header-Content-Length"):
        oip.header_length(value)


def test_a_binary_header_length_is_read_as_bytes() -> None:
    assert oip.header_length(None) is None
    assert oip.header_length("0") == 0
    assert oip.header_length("123456789") == 123456789


@pytest.mark.parametrize(
    ("fmt", "platform"), [("lightgbm", "lightgbm"), ("onnx", "onnxruntime_onnx")]
)
def test_the_metadata_names_the_platform_as_triton_does(fmt: str, platform: str) -> None:
    signature = ModelSignature(fmt, tuple(Feature(n, DOUBLE) for n in NAMES), 1)
    meta = oip.model_metadata("m", version("d"), signature)
    assert meta["platform"] == platform
    assert meta["inputs"][0]["parameters"]["feature_names"] == list(NAMES)

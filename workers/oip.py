"""The Open Inference Protocol (v2: KServe, Seldon MLServer and Triton share it) on a worker.

Pure: bytes in, rows or answer bodies out; no aiohttp, no Kafka, no clock. :mod:`workers.http`
routes the requests, resolves the version as ``/v1`` does, scores through the same path
(:mod:`workers.scoring`) and picks the statuses.

A model takes its rows either as one 2-D tensor ``[N, n_features]`` (columns in the
signature's order; any name, ``input-0`` in the metadata) or as one tensor per feature, named
by the feature, shaped ``[N]`` or ``[N, 1]``. Data is JSON (flat or nested, row major) or,
with Triton's binary tensor extension, raw little-endian bytes after the JSON header
(``Inference-Header-Content-Length``). FP64, FP32, FP16 and every INT/UINT are accepted and
widened to float64 exactly (an integer above 2**53 rounds as float64 does); BOOL and BYTES are
refused, as is anything non-finite. Outputs are always JSON: the protocol lets a server answer
JSON when a client asked for binary outputs (Triton's client reads either).

Every size is bounded before anything is allocated from it: the body (``MAX_BODY_BYTES``),
the rows (the worker's ``max_batch``, which its memory budget is sized for), the values
(``MAX_VALUES``), the inputs, the id and the ref.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.core.model_signature import ModelSignature
from workers.errors import WorkerError
from workers.scoring import Version

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_VALUES = 4 * 1024 * 1024  # one tensor's elements, whatever its shape says
MAX_INPUTS = 10_000  # one tensor per feature: no model of ours has more features
MAX_ID_CHARS = 256
MAX_REF_CHARS = 256
MATRIX_INPUT = "input-0"  # the name the metadata gives the 2-D tensor
OUTPUT = "predict"
# The model's platform in its metadata, by format: Triton's names, which OIP clients know.
PLATFORMS: Mapping[str, str] = {"lightgbm": "lightgbm", "onnx": "onnxruntime_onnx"}
SERVER_NAME = "modelvc-worker"
SPEC_HINT = (
    'send {"inputs": [{"name": "input-0", "shape": [N, n_features], "datatype": "FP64", '
    '"data": [...]}]} (GET /v2/models/MODEL lists the features in order)'
)

# OIP datatype -> (numpy little-endian dtype of its binary form, is it an integer type)
DATATYPES: Mapping[str, tuple[str, bool]] = {
    "FP64": ("<f8", False),
    "FP32": ("<f4", False),
    "FP16": ("<f2", False),
    **{f"INT{b}": (f"<i{b // 8}", True) for b in (8, 16, 32, 64)},
    **{f"UINT{b}": (f"<u{b // 8}", True) for b in (8, 16, 32, 64)},
}
_REFUSED_TYPES = {
    "BYTES": "BYTES tensors (strings) are not accepted: models here score numbers",
    "BOOL": "BOOL tensors are not accepted: send 0/1 as an INT or FP64 tensor",
}


class InvalidInference(WorkerError):
    """Raised for an inference request the worker cannot read (the HTTP edge answers 400)."""


class InferenceTooLarge(InvalidInference):
    """Raised for a request over one of the bounds (the HTTP edge answers 413)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    datatype: str
    values: np.ndarray  # flat float64, row major; finiteness is checked with the feature names


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    ref: str | None  # parameters.ref
    inputs: tuple[Tensor, ...]
    outputs: tuple[str, ...] | None  # None: every output

    @property
    def rows(self) -> int:
        return self.inputs[0].shape[0]


def _reject_constant(name: str) -> Any:
    raise InvalidInference(f"{name} is not a number the protocol allows; send finite values")


def header_length(value: str | None) -> int | None:
    """The JSON part's length from ``Inference-Header-Content-Length`` (binary tensors).

    ``fullmatch`` on ASCII digits: ``str.isdigit`` takes '²', which ``int`` refuses."""
    if value is None:
        return None
    if re.fullmatch(r"[0-9]{1,9}", value) is None:
        raise InvalidInference(
            "Inference-Header-Content-Length must be the JSON header's length in bytes"
        )
    return int(value)


def parse_request(body: bytes, header_length: int | None, max_rows: int) -> InferRequest:
    """The request in ``body``; ``header_length`` is ``Inference-Header-Content-Length``
    (binary tensors follow the JSON header), None for a JSON-only body."""
    if len(body) > MAX_BODY_BYTES:
        raise InferenceTooLarge(f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    if header_length is None:
        header, binary = body, b""
    elif 0 < header_length <= len(body):
        header, binary = body[:header_length], body[header_length:]
    else:
        raise InvalidInference(
            f"Inference-Header-Content-Length is {header_length}, the body has {len(body)} "
            "bytes: it must give the length of the JSON header that starts the body"
        )
    try:
        request = json.loads(header.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidInference(f"the body is not a JSON inference request; {SPEC_HINT}") from None
    if not isinstance(request, dict):
        raise InvalidInference(f"the body must be a JSON object; {SPEC_HINT}")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInference(f"'inputs' must be a non-empty list of tensors; {SPEC_HINT}")
    if len(inputs) > MAX_INPUTS:
        raise InferenceTooLarge(f"at most {MAX_INPUTS} input tensors per request")
    tensors: list[Tensor] = []
    offset = 0
    for i, raw in enumerate(inputs):
        tensor, used = _tensor(raw, i, binary, offset, max_rows)
        tensors.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidInference(
            f"the binary part of the body has {len(binary)} bytes, the inputs' "
            f"binary_data_size add up to {offset}"
        )
    rows = {t.shape[0] for t in tensors}
    if len(rows) > 1:
        raise InvalidInference(f"the inputs disagree on the number of rows: {sorted(rows)[:10]}")
    return InferRequest(
        id=_optional_string(request.get("id"), "id", MAX_ID_CHARS),
        ref=_optional_string(_parameters(request, "request").get("ref"), "parameters.ref"),
        inputs=tuple(tensors),
        outputs=_outputs(request.get("outputs")),
    )


def _optional_string(value: Any, what: str, limit: int = MAX_REF_CHARS) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidInference(f"{what} must be a string of 1 to {limit} characters")
    return value


def _parameters(holder: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInference(f"the {what}'s parameters must be a JSON object")
    return parameters


def _outputs(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_INPUTS:
        raise InvalidInference('\'outputs\' must be a list like [{"name": "predict"}]')
    names = []
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else None
        if name != OUTPUT:
            shown = name[:64] if isinstance(name, str) else type(name).__name__
            raise InvalidInference(f"unknown output {shown!r}: the model has one, {OUTPUT!r}")
        names.append(name)
    return tuple(names) or None


def _tensor(raw: Any, index: int, binary: bytes, offset: int, max_rows: int) -> tuple[Tensor, int]:
    """The input tensor ``raw`` and how many bytes of ``binary`` (from ``offset``) it used."""
    if not isinstance(raw, dict):
        raise InvalidInference(f"inputs[{index}] must be an object with name, shape, datatype")
    name = _optional_string(raw.get("name"), f"inputs[{index}].name")
    if name is None:
        raise InvalidInference(f"inputs[{index}] needs a name")
    what = f"input {name[:64]!r}"
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        shown = datatype[:32] if isinstance(datatype, str) else type(datatype).__name__
        refused = _REFUSED_TYPES.get(shown)
        raise InvalidInference(
            f"{what}: {refused or f'datatype {shown!r} is unknown'}; "
            f"use one of {', '.join(DATATYPES)}"
        )
    shape = _shape(raw.get("shape"), what, max_rows)
    count = math.prod(shape)
    dtype, integral = DATATYPES[datatype]
    size = _parameters(raw, what).get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise InvalidInference(f"{what} has both data and binary_data_size: send one")
        itemsize = np.dtype(dtype).itemsize
        if type(size) is not int or size != count * itemsize or offset + size > len(binary):
            raise InvalidInference(
                f"{what}: binary_data_size must be {count} x {itemsize} bytes for shape "
                f"{list(shape)} {datatype}, within the body"
            )
        values = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
        return Tensor(name, shape, datatype, values.astype(np.float64)), size
    flat = _flatten(raw.get("data"), shape, what)
    return Tensor(name, shape, datatype, _widened(flat, datatype, integral, what)), 0


def _shape(raw: Any, what: str, max_rows: int) -> tuple[int, ...]:
    if (
        not isinstance(raw, list)
        or not 1 <= len(raw) <= 2
        or any(type(d) is not int or d < 1 for d in raw)
    ):
        raise InvalidInference(
            f"{what}: shape must be [N] or [N, n] with positive integers (got {str(raw)[:64]})"
        )
    if raw[0] > max_rows:
        raise InferenceTooLarge(
            f"{what}: {raw[0]} rows; this worker scores at most {max_rows} rows per request "
            "(MODELVC_WORKER_MAX_BATCH): split the batch"
        )
    if math.prod(raw) > MAX_VALUES:
        raise InferenceTooLarge(f"{what}: shape {raw} has over {MAX_VALUES} values")
    return tuple(raw)


def _flatten(data: Any, shape: tuple[int, ...], what: str) -> list[Any]:
    """Row-major values of ``data``, flat or nested exactly as ``shape`` says."""
    if not isinstance(data, list):
        raise InvalidInference(f"{what}: data must be a JSON list (or use binary_data_size)")
    if data and type(data[0]) is list:
        if len(shape) != 2 or len(data) != shape[0]:
            raise InvalidInference(f"{what}: nested data must have {shape[0]} rows of shape[1]")
        flat: list[Any] = []
        for row in data:
            if type(row) is not list or len(row) != shape[1]:
                raise InvalidInference(
                    f"{what}: every nested row must be a list of {shape[1]} numbers"
                )
            flat.extend(row)
        data = flat
    values: list[Any] = data
    if len(values) != math.prod(shape):
        raise InvalidInference(
            f"{what}: shape {list(shape)} holds {math.prod(shape)} values, data has {len(values)}"
        )
    return values


def _widened(values: list[Any], datatype: str, integral: bool, what: str) -> np.ndarray:
    for value in values:
        kind = type(value)  # exact: a bool is not a number here, nor a numeric string
        if kind is int or (kind is float and not integral):
            continue
        wanted = "an integer" if integral else "a number"
        raise InvalidInference(
            f"{what}: {kind.__name__} {str(value)[:40]!r} in a {datatype} tensor, not {wanted}"
        )
    dtype = np.dtype(DATATYPES[datatype][0])
    if integral:
        info = np.iinfo(dtype)
        if values and (min(values) < info.min or max(values) > info.max):
            raise InvalidInference(f"{what}: a value is out of range for {datatype}")
        return np.array(values, dtype=np.float64)
    try:
        wide = np.array(values, dtype=np.float64)
    except OverflowError:
        raise InvalidInference(f"{what}: an integer is too large for {datatype}") from None
    if dtype == np.float64:
        return wide
    with np.errstate(over="ignore"):
        narrow = wide.astype(dtype)
    if not (np.isfinite(narrow) | ~np.isfinite(wide)).all():
        raise InvalidInference(f"{what}: a value is out of range for {datatype}")
    # The tensor's values are the narrow floats; widening them back to float64 is exact.
    return narrow.astype(np.float64)


def matrix(request: InferRequest, names: Sequence[str]) -> np.ndarray:
    """The rows (N x features, float64, the model's order) the request's inputs carry."""
    inputs = request.inputs
    if len(inputs) == 1 and inputs[0].name not in names:
        tensor = inputs[0]
        if len(tensor.shape) != 2 or tensor.shape[1] != len(names):
            raise InvalidInference(
                f"input {tensor.name[:64]!r} has shape {list(tensor.shape)}; this version "
                f"takes [N, {len(names)}] (features in the order GET /v2/models/MODEL lists), "
                "or one tensor per feature named by the feature"
            )
        return tensor.values.reshape(tensor.shape)
    by_name = {t.name: t for t in inputs}
    if len(by_name) != len(inputs):
        raise InvalidInference("an input is named twice")
    unknown = [n for n in by_name if n not in set(names)]
    missing = [n for n in names if n not in by_name]
    if unknown or missing:
        raise InvalidInference(
            "send one 2-D tensor [N, n_features] or one tensor per feature: "
            + "; ".join(
                part
                for part in (
                    unknown and f"not features of this version: {_listed(unknown)}",
                    missing and f"missing features: {_listed(missing)}",
                )
                if part
            )
        )
    columns = []
    for name in names:
        tensor = by_name[name]
        if len(tensor.shape) == 2 and tensor.shape[1] != 1:
            raise InvalidInference(
                f"input {name[:64]!r} has shape {list(tensor.shape)}: a feature's tensor is "
                "[N] or [N, 1]"
            )
        columns.append(tensor.values)
    return np.stack(columns, axis=1)


def _listed(names: Sequence[str], most: int = 10) -> str:
    shown = ", ".join(repr(n[:64]) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def one_ref(*candidates: str | None) -> str | None:
    """The ref the request names (URL version, ``?ref=``, ``parameters.ref``), if any."""
    named = {c for c in candidates if c is not None}
    if len(named) > 1:
        shown = ", ".join(repr(c[:64]) for c in sorted(named))
        raise InvalidInference(f"the request names several versions ({shown}): name one")
    return named.pop() if named else None


def version_parameters(version: Version) -> dict[str, str]:
    return {
        "commit_id": version.commit_id,
        "artifact_sha256": version.artifact_sha256,
        "ref": version.ref,
    }


def infer_response(
    model: str, request_id: str | None, version: Version, scores: np.ndarray
) -> dict[str, Any]:
    """The answer: ``scores`` (rows x outputs, exactly what the model computed) as ``predict``."""
    body: dict[str, Any] = {
        "model_name": model,
        "model_version": version.commit_id,
        "parameters": version_parameters(version),
        "outputs": [
            {
                "name": OUTPUT,
                "shape": list(scores.shape),
                "datatype": "FP64",
                "data": scores.ravel().tolist(),
            }
        ],
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def model_metadata(model: str, version: Version, signature: ModelSignature) -> dict[str, Any]:
    return {
        "name": model,
        "versions": [version.commit_id],
        "platform": PLATFORMS.get(signature.format, signature.format),
        "inputs": [
            {
                "name": MATRIX_INPUT,
                "datatype": "FP64",
                "shape": [-1, len(signature.inputs)],
                "parameters": {
                    "feature_names": list(signature.names),
                    "feature_types": [f.type for f in signature.inputs],
                },
            }
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1, signature.outputs]}],
        "parameters": version_parameters(version),
    }


def server_metadata(version: str) -> dict[str, Any]:
    # Binary inputs are read, but answers are JSON only: no extension is claimed in full.
    return {"name": SERVER_NAME, "version": version, "extensions": []}

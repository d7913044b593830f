"""ONNX models the tests build themselves (issue 14), shared by the unit and serving tests.

Each builder returns the model's bytes, as a user would upload them. The good ones are
an MLP written with ``onnx.helper`` and a scikit-learn pipeline converted by skl2onnx;
the bad ones are each refused for one reason. Nothing here loads a pickle.
"""

from __future__ import annotations

import itertools
import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# One past the validator's node bound (streams.formats.onnx.MAX_NODES), written here
# rather than imported so that a change of the bound shows in these tests.
_TOO_MANY_NODES = 10_001


def _model(graph: onnx.GraphProto, opset: int, metadata: dict[str, str] | None = None) -> bytes:
    # make_model_gen_version stamps the lowest IR version the opset needs, as exporters
    # do, instead of the newest one this onnx knows.
    model = helper.make_model_gen_version(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="modelvc-tests",
        producer_version="1",
    )
    if metadata:
        helper.set_model_props(model, metadata)
    return bytes(model.SerializeToString())


def mlp_bytes(
    inputs: int = 20,
    hidden: tuple[int, ...] = (64, 64),
    seed: int = 0,
    opset: int = 17,
    feature_names: Sequence[str] | None = None,
) -> bytes:
    """MatMul+Add+Relu layers then a Sigmoid: float input "input" [N, inputs] -> [N, 1]."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    previous, width = "input", inputs
    for layer, size in enumerate((*hidden, 1)):
        w = rng.normal(0.0, 1.0 / np.sqrt(width), (width, size)).astype(np.float32)
        b = rng.normal(0.0, 0.1, (size,)).astype(np.float32)
        weights += [
            numpy_helper.from_array(w, f"w{layer}"),
            numpy_helper.from_array(b, f"b{layer}"),
        ]
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
        nodes.append(helper.make_node("Add", [f"m{layer}", f"b{layer}"], [f"a{layer}"]))
        previous, width = f"a{layer}", size
        if layer < len(hidden):
            nodes.append(helper.make_node("Relu", [previous], [f"r{layer}"]))
            previous = f"r{layer}"
    nodes.append(helper.make_node("Sigmoid", [previous], ["output"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])],
        initializer=weights,
    )
    metadata = None if feature_names is None else {"feature_names": json.dumps(list(feature_names))}
    return _model(graph, opset, metadata)


def sklearn_pipeline_bytes(seed: int = 0, features: int = 4) -> bytes:
    """StandardScaler + LogisticRegression via skl2onnx (zipmap off): float input
    "input" [N, features] -> "label" (int64) and "probabilities" [N, 2]."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (200, features)).astype(np.float32)
    y = (x @ rng.normal(0.0, 1.0, features) > 0).astype(np.int64)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    model = to_onnx(
        pipeline,
        initial_types=[("input", _float_tensor_type(features))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return bytes(model.SerializeToString())


def _float_tensor_type(features: int) -> object:
    from skl2onnx.common.data_types import FloatTensorType

    return FloatTensorType([None, features])


def corrupt_bytes() -> bytes:
    """A good MLP cut off in the middle of its weights."""
    data = mlp_bytes(inputs=4, hidden=(8,))
    return data[: len(data) // 2]


def unsupported_opset_bytes() -> bytes:
    """An ai.onnx opset below the supported range (opset 6, before ONNX 1.2)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "old", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    return bytes(model.SerializeToString())


def external_data_bytes(directory: Path) -> bytes:
    """An MLP whose weights onnx saved to a file beside it (``weights.bin`` in ``directory``)."""
    model = onnx.load_from_string(mlp_bytes(inputs=4, hidden=(8,)))
    path = directory / "model.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path.read_bytes()


def oversized_bytes(max_bytes: int) -> bytes:
    """A graph of one node more than the validator allows (a chain of Relu), small in
    bytes; or, when ``max_bytes`` is too small even for that, one float initializer
    larger than ``max_bytes``."""
    names = ["input", *(f"t{i}" for i in range(1, _TOO_MANY_NODES)), "output"]
    nodes = [helper.make_node("Relu", [a], [b]) for a, b in itertools.pairwise(names)]
    graph = helper.make_graph(
        nodes,
        "deep",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2])],
    )
    data = _model(graph, 17)
    if len(data) <= max_bytes:
        return data
    big = np.zeros((max_bytes // 4 + 1,), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "big"], ["output"])],
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", big.size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", big.size])],
        initializer=[numpy_helper.from_array(big, "big")],
    )
    return _model(graph, 17)


def pickle_bytes() -> bytes:
    """The content of a pickle renamed to model.onnx (a plain dict; never loaded)."""
    return pickle.dumps({"weights": [0.5, 0.25], "kind": "not a model"})

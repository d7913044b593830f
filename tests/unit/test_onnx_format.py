"""The ONNX format (issue 14): our own wire walk refuses hostile or unservable graphs with
their reason before onnx or onnxruntime parse a byte; accepted graphs load, smoke-score
and predict exactly as a plain onnxruntime session with :func:`session_options` does.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from streams import formats
from streams.core.model_signature import CATEGORICAL, DOUBLE, Tensor
from streams.errors import ArtifactRejected, ArtifactTooLarge
from streams.formats import onnx as onnx_format
from streams.formats.base import Checked
from streams.formats.onnx import ONNX, session_options
from streams.formats.onnx_wire import MAX_NODES, MAX_SIZED_ELEMENTS, read_model
from streams.sandbox import Sandbox, SmokeFailed
from tests import onnx_models
from workers.settings import WorkerSettings

MAX = 64 << 20
LIGHTGBM_HEAD = b"tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\n"


def _graph_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    opsets: dict[str, int] | None = None,
    initializers: list[onnx.TensorProto] | None = None,
    **kwargs: object,
) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in (opsets or {"": 17}).items()],
        **kwargs,
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _float(name: str, shape: list[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _relu() -> bytes:
    return _graph_model(
        [helper.make_node("Relu", ["x"], ["y"])], [_float("x", ["N", 3])], [_float("y", ["N", 3])]
    )


# -- recognizes -------------------------------------------------------------------------


def test_recognizes_onnx_by_content_only() -> None:
    for data in (onnx_models.mlp_bytes(), onnx_models.sklearn_pipeline_bytes(), _relu()):
        assert ONNX.recognizes(data[:64])
    for other in (LIGHTGBM_HEAD, onnx_models.pickle_bytes(), b"PK\x03\x04" + bytes(60), b""):
        assert not ONNX.recognizes(other[:64])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_recognizes_never_raises(head: bytes) -> None:
    assert ONNX.recognizes(head) in (True, False)
    assert ONNX.recognizes(b"\x08" + head) in (True, False)


# -- validate: accepted graphs ----------------------------------------------------------


def test_the_mlp_signature_comes_from_the_graph() -> None:
    checked = ONNX.validate(onnx_models.mlp_bytes(inputs=5, hidden=(8,)), MAX)
    signature = checked.signature
    assert checked.format == signature.format == "onnx"
    assert signature.names == tuple(f"input_{i}" for i in range(5))
    assert set(signature.types().values()) == {DOUBLE}
    assert signature.outputs == 1
    assert signature.graph == (
        Tensor("input", "input", "float", ("N", "5")),
        Tensor("output", "output", "float", ("N", "1")),
    )
    details = checked.details
    assert details["served_output"] == "output"
    assert details["opsets"] == {"ai.onnx": 17}
    assert (details["nodes"], details["initializers"]) == (6, 4)  # 2x MatMul+Add, Relu, Sigmoid
    assert details["parameters"] == 5 * 8 + 8 + 8 + 1
    assert details["producer"] == "modelvc-tests 1"
    assert checked.model_bytes == 2 * 4 * details["parameters"] + 64 * 1024
    assert checked.bytes_per_row > 0
    plain = checked.plain()
    assert json.loads(json.dumps(plain)) == plain


def test_feature_names_come_from_the_metadata() -> None:
    names = ["age", "income", "score"]
    data = onnx_models.mlp_bytes(inputs=3, hidden=(4,), feature_names=names)
    assert ONNX.validate(data, MAX).signature.names == tuple(names)


def test_the_sklearn_pipeline_serves_its_probabilities() -> None:
    checked = ONNX.validate(onnx_models.sklearn_pipeline_bytes(features=4), MAX)
    assert checked.signature.outputs == 2
    assert checked.details["served_output"] == "probabilities"
    assert checked.details["opsets"] == {"ai.onnx": 17, "ai.onnx.ml": 1}
    assert [(t.name, t.kind, t.type, t.shape) for t in checked.signature.graph] == [
        ("input", "input", "float", ("?", "4")),
        ("label", "output", "int64", ("?",)),
        ("probabilities", "output", "float", ("?", "2")),
    ]


def test_several_inputs_become_features_by_name() -> None:
    data = _graph_model(
        [
            helper.make_node("Cast", ["codes"], ["c"], to=TensorProto.FLOAT),
            helper.make_node("Concat", ["a", "c"], ["joined"], axis=1),
            helper.make_node("ReduceSum", ["joined", "axes"], ["y"], keepdims=1),
        ],
        [
            _float("a", ["N", 1]),
            helper.make_tensor_value_info("codes", TensorProto.INT64, ["N", 2]),
        ],
        [_float("y", ["N", 1])],
        initializers=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    checked = ONNX.validate(data, MAX)
    assert [(f.name, f.type) for f in checked.signature.inputs] == [
        ("a", DOUBLE),
        ("codes_0", CATEGORICAL),
        ("codes_1", CATEGORICAL),
    ]
    matrix = np.array([[0.5, 1.0, 2.0], [-1.0, 3.0, 4.0]])
    scores = ONNX.load(data, checked).predict(matrix)
    assert scores.dtype == np.float64 and scores.tolist() == [[3.5], [6.0]]


# -- validate: refusals, each with its reason -------------------------------------------


def _zipmap_only() -> bytes:
    return _graph_model(
        [helper.make_node("ZipMap", ["x"], ["y"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])],
        [_float("x", ["N", 2])],
        [
            helper.make_value_info(
                "y",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(
                        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
                    )
                ),
            )
        ],
        opsets={"": 17, "ai.onnx.ml": 3},
    )


def _custom_domain() -> bytes:
    return _graph_model(
        [helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")],
        [_float("x", ["N", 3])],
        [_float("y", ["N", 3])],
        opsets={"": 17, "com.microsoft": 1},
    )


def _local_function() -> bytes:
    function = helper.make_function(
        "local",
        "Twice",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    return _graph_model(
        [helper.make_node("Twice", ["x"], ["y"], domain="local")],
        [_float("x", ["N", 3])],
        [_float("y", ["N", 3])],
        opsets={"": 17, "local": 1},
        functions=[function],
    )


def _future_opset() -> bytes:
    return _graph_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [_float("x", ["N", 3])],
        [_float("y", ["N", 3])],
        opsets={"": onnx_format.MAX_OPSET + 1},
    )


def _string_input() -> bytes:
    return _graph_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["N", 1])],
        [_float("y", ["N", 1])],
    )


def _no_batch_axis() -> bytes:
    return _graph_model(
        [helper.make_node("Relu", ["x"], ["y"])], [_float("x", [8, 3])], [_float("y", [8, 3])]
    )


def _too_many_elements() -> bytes:
    # An initializer whose dims promise far more than the bytes it holds.
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [10], [0.0] * 10)
    del tensor.dims[:]
    tensor.dims.extend([1000, 1000])
    return _graph_model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [_float("x", ["N", 1000])],
        [_float("y", ["N", 1000])],
        initializers=[tensor],
    )


REFUSALS: dict[str, tuple[Callable[[Path], bytes], int, str]] = {
    "corrupt": (lambda _: onnx_models.corrupt_bytes(), MAX, "not a well-formed ONNX model"),
    "old opset": (
        lambda _: onnx_models.unsupported_opset_bytes(),
        MAX,
        "opset 6; modelvc supports",
    ),
    "future opset": (lambda _: _future_opset(), MAX, "supports ai.onnx opsets 7 to"),
    "custom domain": (lambda _: _custom_domain(), MAX, "custom operators are not supported"),
    "external data": (onnx_models.external_data_bytes, MAX, "save_as_external_data=False"),
    "nodes": (lambda _: onnx_models.oversized_bytes(MAX), MAX, f"more than {MAX_NODES} nodes"),
    "bytes": (lambda _: onnx_models.oversized_bytes(1000), 1000, "limited to 1000 bytes"),
    "zipmap only": (lambda _: _zipmap_only(), MAX, "{'zipmap': False}"),
    "local functions": (lambda _: _local_function(), MAX, "model-local functions"),
    "pickle": (lambda _: onnx_models.pickle_bytes(), MAX, "not one modelvc reads"),
    "string input": (lambda _: _string_input(), MAX, "feeds float, double or int64"),
    "no batch axis": (lambda _: _no_batch_axis(), MAX, "dynamic batch axis"),
    "elements": (lambda _: _too_many_elements(), MAX, "declares 1000000 values but holds 10"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_say_why(case: str, tmp_path: Path) -> None:
    build, max_bytes, reason = REFUSALS[case]
    with pytest.raises(ArtifactRejected) as refused:
        ONNX.validate(build(tmp_path), max_bytes)
    assert reason in str(refused.value)
    if case in ("nodes", "bytes"):
        assert isinstance(refused.value, ArtifactTooLarge)


def test_a_truncated_model_is_refused_at_every_length() -> None:
    data = onnx_models.mlp_bytes(inputs=3, hidden=(4,))
    for end in range(len(data)):
        with pytest.raises(ArtifactRejected):
            ONNX.validate(data[:end], MAX)


_SEED = onnx_models.mlp_bytes(inputs=4, hidden=(8, 8), feature_names=["a", "b", "c", "d"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(_SEED)),
    st.binary(max_size=16),
)
def test_fuzz_mutated_models_are_refused_or_accepted_never_crash(
    edits: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    data = bytearray(_SEED)
    for position, value in edits:
        data[position] = value
    mutated = bytes(data[:cut]) + tail
    started = time.perf_counter()
    with contextlib.suppress(ArtifactRejected):
        ONNX.validate(mutated, MAX)
    assert time.perf_counter() - started < 10  # a hang, not a slow machine


# -- the supported versions are what the installed libraries run -----------------------


def test_opset_and_ir_bounds_match_the_installed_onnx_and_onnxruntime() -> None:
    assert onnx.defs.onnx_opset_version() == onnx_format.MAX_OPSET
    assert onnx.IR_VERSION == onnx_format.MAX_IR_VERSION
    ml = max(
        s.since_version
        for s in onnx.defs.get_all_schemas_with_history()
        if s.domain == "ai.onnx.ml"
    )
    assert ml == onnx_format.MAX_ML_OPSET

    def session(opset: int, ir: int) -> object:
        model = helper.make_model(
            helper.make_graph(
                [helper.make_node("Relu", ["x"], ["y"])],
                "g",
                [_float("x", ["N", 2])],
                [_float("y", ["N", 2])],
            ),
            opset_imports=[helper.make_opsetid("", opset)],
        )
        model.ir_version = ir
        return ort.InferenceSession(
            model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
        )

    session(onnx_format.MAX_OPSET, onnx_format.MAX_IR_VERSION)
    session(onnx_format.MIN_OPSET, onnx_format.MIN_IR_VERSION)
    with pytest.raises(Exception, match=r"[Oo]pset"):
        session(onnx_format.MAX_OPSET + 1, onnx_format.MAX_IR_VERSION)


# -- smoke (in process; the sandbox runs the same in its child) ----------------------------


@pytest.mark.parametrize("build", [onnx_models.mlp_bytes, onnx_models.sklearn_pipeline_bytes])
def test_smoke_scores_accepted_models(build: Callable[[], bytes]) -> None:
    data = build()
    checked = ONNX.validate(data, MAX)
    answer = ONNX.smoke(data, checked.plain(), 8)
    assert answer["outputs"] == checked.signature.outputs
    assert answer["finite"] is True
    assert [name for name, _, _ in answer["graph"]] == [t.name for t in checked.signature.graph]


def _dangling() -> bytes:
    # Well-formed bytes our walk accepts, but a node reads a tensor nothing defines.
    return _graph_model(
        [helper.make_node("Add", ["x", "nowhere"], ["y"])],
        [_float("x", ["N", 3])],
        [_float("y", ["N", 3])],
    )


def test_smoke_refuses_what_the_onnx_checker_refuses() -> None:
    data = _dangling()
    checked = ONNX.validate(data, MAX)
    with pytest.raises(SmokeFailed, match="onnx checker refuses"):
        ONNX.smoke(data, checked.plain(), 8)


def test_the_sandboxed_child_accepts_the_mlp_and_refuses_a_failing_graph() -> None:
    sandbox = Sandbox()
    data = onnx_models.mlp_bytes()
    result = sandbox.check(data, ONNX.validate(data, MAX))
    assert result.format == "onnx" and result.answer["outputs"] == 1
    bad = _dangling()
    with pytest.raises(
        ArtifactRejected, match="onnxruntime cannot load this model: the onnx checker"
    ):
        sandbox.check(bad, ONNX.validate(bad, MAX))


# -- load + predict: bit for bit what onnxruntime computes --------------------------------


@pytest.mark.parametrize("build", [onnx_models.mlp_bytes, onnx_models.sklearn_pipeline_bytes])
def test_predictions_equal_a_plain_session_bit_for_bit(build: Callable[[], bytes]) -> None:
    data = build()
    checked = ONNX.validate(data, MAX)
    predictor = ONNX.load(data, checked)
    assert predictor.signature == checked.signature
    assert predictor.runtime.startswith(f"onnxruntime {ort.__version__} threads=1 opt=basic ")
    matrix = np.random.default_rng(7).normal(0.0, 2.0, (257, len(checked.signature.inputs)))
    scores = predictor.predict(matrix)
    session = ort.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
    served = str(checked.details["served_output"])
    (expected,) = session.run([served], {"input": matrix.astype(np.float32)})
    expected = np.asarray(expected, dtype=np.float64).reshape(len(matrix), -1)
    assert scores.dtype == np.float64 and scores.shape == (257, checked.signature.outputs)
    assert scores.tobytes() == expected.tobytes()


# -- values must not pick sizes; floods of small fields; zip polyglots -----------------


def _int64(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def _if_graph() -> bytes:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["o"])], "b", [], [_float("o", None)]
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "t"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch),
    ]
    threshold = helper.make_tensor("t", TensorProto.FLOAT, [], [100.0])
    return _graph_model(
        nodes, [_float("x", ["N", 1])], [_float("y", ["N", 1])], initializers=[threshold]
    )


def _loop_graph() -> bytes:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            _float("v_in", None),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _float("v_out", None)],
    )
    nodes = [helper.make_node("Loop", ["", "go", "x"], ["y"], body=body)]
    go = helper.make_tensor("go", TensorProto.BOOL, [], [True])
    return _graph_model(nodes, [_float("x", ["N", 1])], [_float("y", ["N", 1])], initializers=[go])


def _sized_by(op: str, shape_source: str) -> bytes:
    """``op`` whose size input is a computed tensor (``computed``), a Constant node's output
    (``constant``) or an initializer (``initializer``); y = x + sum(op's output)."""
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    if shape_source == "computed":
        nodes += [
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            helper.make_node("Cast", ["m"], ["mi"], to=TensorProto.INT64),
            helper.make_node("Reshape", ["mi", "one_shape"], ["n"]),
        ]
        initializers.append(_int64("one_shape", [1]))
    elif shape_source == "constant":
        nodes.append(helper.make_node("Constant", [], ["n"], value=_int64("v", [3])))
    else:
        initializers.append(_int64("n", [3]))
    if op == "ConstantOfShape":
        nodes.append(helper.make_node("ConstantOfShape", ["n"], ["z"]))
    else:  # Expand
        initializers.append(helper.make_tensor("f", TensorProto.FLOAT, [1], [0.0]))
        nodes.append(helper.make_node("Expand", ["f", "n"], ["z"]))
    nodes += [
        helper.make_node("ReduceSum", ["z"], ["s"], keepdims=0),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    return _graph_model(
        nodes, [_float("x", ["N", 1])], [_float("y", ["N", 1])], initializers=initializers
    )


def _relu_with(**change: object) -> bytes:
    node = helper.make_node("Relu", ["x"], ["y"])
    if "attributes" in change:
        node.attribute.extend(
            helper.make_attribute(f"a{i}", i) for i in range(int(str(change["attributes"])))
        )
    if "inputs" in change:
        node.input.extend([""] * int(str(change["inputs"])))
    model = onnx.load_from_string(
        _graph_model([node], [_float("x", ["N", 3])], [_float("y", ["N", 3])])
    )
    if "opsets" in change:
        for domain, version in change["opsets"]:  # type: ignore[attr-defined]
            model.opset_import.append(helper.make_opsetid(domain, version))
    if "metadata" in change:
        for _ in range(int(str(change["metadata"]))):
            model.metadata_props.add(key="k", value="v")  # the same key each time
    if "doc_string" in change:
        model.doc_string = str(change["doc_string"])
    if "meta_value" in change:
        model.metadata_props.add(key="note", value=str(change["meta_value"]))
    return bytes(model.SerializeToString())


def _length_delimited(number: int, payload: bytes) -> bytes:
    size, length = len(payload), bytearray()
    while size >= 0x80:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return bytes([number << 3 | 2]) + bytes(length) + payload


def _unpacked_floats() -> bytes:
    # float_data is [packed = true] in onnx.proto, so onnx never writes it one field per
    # value (python protobuf re-packs on a round trip: the bytes are put together here).
    values = b"".join(b"\x25\x00\x00\x80\x3f" for _ in range(3))  # field 4, wire type 5
    tensor = b"\x08\x03\x10\x01" + values + b"\x42\x01w"  # dims [3], float, name "w"
    model = onnx.load_from_string(
        _graph_model(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            [_float("x", ["N", 3])],
            [_float("y", ["N", 3])],
        )
    )
    graph = model.graph.SerializeToString() + _length_delimited(5, tensor)
    model.ClearField("graph")
    return bytes(model.SerializeToString()) + _length_delimited(7, graph)


CONTROL_FLOW = "control flow (Loop/Scan/If) is not supported"
VALUE_SIZED = "which is computed at predict time"
ZIP = "zip archive signature"
HARDENING: dict[str, tuple[Callable[[], bytes], str, bool]] = {
    # name: (build, reason, is ArtifactTooLarge)
    "If": (_if_graph, CONTROL_FLOW, False),
    "Loop": (_loop_graph, CONTROL_FLOW, False),
    "ConstantOfShape computed": (
        lambda: _sized_by("ConstantOfShape", "computed"),
        VALUE_SIZED,
        False,
    ),
    "Expand computed": (lambda: _sized_by("Expand", "computed"), VALUE_SIZED, False),
    "attributes": (lambda: _relu_with(attributes=257), "more than 256 attributes", True),
    "node inputs": (lambda: _relu_with(inputs=1024), "more than 1024 inputs", True),
    "opsets": (lambda: _relu_with(opsets=[("", 17)] * 16), "more than 16 opset_import", False),
    "opset clash": (lambda: _relu_with(opsets=[("", 16)]), "twice, at two opsets", False),
    "metadata": (lambda: _relu_with(metadata=257), "more than 256 metadata_props", False),
    "unpacked": (_unpacked_floats, "one field each (unpacked)", False),
    "zip doc_string": (lambda: _relu_with(doc_string="PK\x05\x06" + "\x00" * 18), ZIP, False),
    "zip metadata": (lambda: _relu_with(meta_value="xPK\x03\x04rest"), ZIP, False),
}


@pytest.mark.parametrize("case", sorted(HARDENING))
def test_hardening_refusals_say_why(case: str) -> None:
    build, reason, too_large = HARDENING[case]
    with pytest.raises(ArtifactRejected) as refused:
        ONNX.validate(build(), MAX)
    assert reason in str(refused.value)
    assert isinstance(refused.value, ArtifactTooLarge) == too_large


@pytest.mark.parametrize("source", ["constant", "initializer"])
@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand"])
def test_sizes_from_constants_are_accepted(op: str, source: str) -> None:
    ONNX.validate(_sized_by(op, source), MAX)


# -- constant sizes: read, bounded, counted in the memory estimate ------------------------

SIZE_SOURCES = ("raw_data", "int64_data", "Constant value", "Constant value_ints")


def _size_tensor(
    values: list[int], source: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The int64 tensor "n" holding ``values``: an initializer (raw_data or int64_data) or
    a Constant node (a ``value`` tensor, ``value_ints``, or ``value_int`` for one value)."""
    if source == "raw_data":
        return [], [numpy_helper.from_array(np.array(values, dtype=np.int64), "n")]
    if source == "int64_data":
        return [], [_int64("n", values)]
    if source == "Constant value":
        return [helper.make_node("Constant", [], ["n"], value=_int64("v", values))], []
    if source == "Constant value_int":
        return [helper.make_node("Constant", [], ["n"], value_int=values[0])], []
    return [helper.make_node("Constant", [], ["n"], value_ints=values)], []


def _sizing(op: str, values: list[int], source: str = "int64_data", width: int = 4) -> bytes:
    """x [N, width] -> y [N, 1] through ``op`` sized by the constant "n" = ``values``:
    ConstantOfShape(n) or Expand(0.0, n) summed and added to each row's sum, or Tile(x, n)
    summed over its columns (the widest declared row is ``width``)."""
    nodes, initializers = _size_tensor(values, source)
    initializers.append(_int64("axes", [1]))
    if op == "Tile":
        nodes += [
            helper.make_node("Tile", ["x", "n"], ["z"]),
            helper.make_node("ReduceSum", ["z", "axes"], ["y"], keepdims=1),
        ]
    else:
        if op == "ConstantOfShape":
            nodes.append(helper.make_node("ConstantOfShape", ["n"], ["z"]))
        else:
            initializers.append(helper.make_tensor("f", TensorProto.FLOAT, [1], [0.0]))
            nodes.append(helper.make_node("Expand", ["f", "n"], ["z"]))
        nodes += [
            helper.make_node("ReduceSum", ["z"], ["s"], keepdims=0),
            helper.make_node("ReduceSum", ["x", "axes"], ["r"], keepdims=1),
            helper.make_node("Add", ["r", "s"], ["y"]),
        ]
    return _graph_model(
        nodes, [_float("x", ["N", width])], [_float("y", ["N", 1])], initializers=initializers
    )


@pytest.mark.parametrize("source", [*SIZE_SOURCES, "Constant value_int"])
def test_constant_sizes_are_read_in_every_encoding(source: str) -> None:
    values = [7] if source == "Constant value_int" else [1, -3, 1 << 40]
    nodes, initializers = _size_tensor(values, source)
    nodes.append(helper.make_node("Relu", ["x"], ["y"]))
    data = _graph_model(nodes, [_float("x", ["N", 3])], [_float("y", ["N", 3])], None, initializers)
    assert read_model(data, MAX).int_constants == {"n": tuple(values)}


@pytest.mark.parametrize("source", SIZE_SOURCES)
@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand", "Tile"])
def test_constant_sizes_grow_the_estimate_by_what_they_build(op: str, source: str) -> None:
    tiny = ONNX.validate(_sizing(op, [1, 1], source), MAX)
    data = _sizing(op, [1, 1000], source)
    checked = ONNX.validate(data, MAX)
    # 999 more elements of 8 bytes, built once (constant folding may build them at load)
    assert checked.model_bytes - tiny.model_bytes == 8 * 999
    if op == "ConstantOfShape":
        # its [1, 1000] is a row of 1000 (as an initializer's would be) instead of x's 4
        assert checked.bytes_per_row - tiny.bytes_per_row == 4 * 8 * (1000 - 4)
    else:
        # what a row becomes is the smoke's to measure (test_the_smoke_measures_...)
        assert checked.bytes_per_row == tiny.bytes_per_row
    answer = ONNX.smoke(data, checked.plain(), 8)  # the graphs are ones onnxruntime runs
    assert answer["outputs"] == 1 and answer["finite"] is True


HUGE_SIZES = {
    "ConstantOfShape": ([20000, 20000], 400_000_000),
    "Expand": ([1, 100_000_000], 100_000_000),
    "Tile": ([100_000, 1000], 100_000_000),
}


@pytest.mark.parametrize("op", sorted(HUGE_SIZES))
def test_huge_constant_sizes_are_refused(op: str) -> None:
    values, elements = HUGE_SIZES[op]
    with pytest.raises(ArtifactTooLarge) as refused:
        ONNX.validate(_sizing(op, values), MAX)
    message = str(refused.value)
    assert f"operator {op} input {0 if op == 'ConstantOfShape' else 1} ('n')" in message
    assert f"{elements} elements, more than the {MAX_SIZED_ELEMENTS} modelvc allows" in message
    assert "export the model with smaller sizes" in message


def _float_sizes() -> bytes:
    model = onnx.load_from_string(_sizing("Tile", [1, 2]))
    (size,) = [t for t in model.graph.initializer if t.name == "n"]
    size.CopyFrom(helper.make_tensor("n", TensorProto.FLOAT, [2], [1.0, 2.0]))
    return bytes(model.SerializeToString())


def _defined_twice() -> bytes:
    model = onnx.load_from_string(_sizing("Tile", [1, 2]))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["n"], value_ints=[1, 3]))
    return bytes(model.SerializeToString())


UNREADABLE_SIZES: dict[str, Callable[[], bytes]] = {
    "17 values": lambda: _sizing("ConstantOfShape", [1] * 17),
    "17 value_ints": lambda: _sizing("ConstantOfShape", [1] * 17, "Constant value_ints"),
    "float": _float_sizes,
    "defined twice": _defined_twice,
}


@pytest.mark.parametrize("case", sorted(UNREADABLE_SIZES))
def test_constant_sizes_modelvc_cannot_read_are_refused(case: str) -> None:
    with pytest.raises(ArtifactRejected) as refused:
        ONNX.validate(UNREADABLE_SIZES[case](), MAX)
    assert "('n') is a size modelvc cannot read: store it as an int64 initializer" in str(
        refused.value
    )
    assert not isinstance(refused.value, ArtifactTooLarge)


@pytest.mark.parametrize(
    ("op", "source"),
    [("ConstantOfShape", "raw_data"), ("Expand", "Constant value_ints"), ("Tile", "int64_data")],
)
def test_negative_constant_sizes_are_refused(op: str, source: str) -> None:
    with pytest.raises(ArtifactRejected, match=r"holds a negative size \[1, -2\]"):
        ONNX.validate(_sizing(op, [1, -2], source), MAX)


_SIZED_SEEDS = (
    _sizing("ConstantOfShape", [1, 3], "Constant value"),
    _sizing("Expand", [2, 3], "raw_data"),
    _sizing("Tile", [1, 3], "Constant value_ints"),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_SIZED_SEEDS),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8),
    st.integers(0, 1 << 20),
)
def test_fuzz_mutated_constant_sizes_are_refused_or_accepted_never_crash(
    seed: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    with contextlib.suppress(ArtifactRejected):
        ONNX.validate(bytes(data[: cut % (len(data) + 1)]), MAX)


def _budget_exceeded(checked: Checked) -> bool:
    """Whether a worker with the default settings refuses this version (a full batch)."""
    budget = WorkerSettings.worker_memory_mb << 20
    return checked.scoring_bytes(WorkerSettings.max_batch) > budget


def test_the_smoke_measures_what_a_row_becomes() -> None:
    # Tile(x [N, 4], [1, 1000]): each row becomes 4,000 floats (16,000 bytes), which no
    # reading of the bytes counts; the smoke's measuring run, in the sandbox, does.
    wide = formats.check(_sizing("Tile", [1, 1000]), Sandbox(), MAX)
    narrow = formats.check(_sizing("Tile", [1, 1]), Sandbox(), MAX)
    assert ONNX.validate(_sizing("Tile", [1, 1000]), MAX).bytes_per_row < 16_000
    assert wide.bytes_per_row >= 16_000 > narrow.bytes_per_row


def _broadcast_column(rows: int) -> bytes:
    """x [N, 1] reshaped to [N, 1, 1] plus ConstantOfShape([rows, 1]): [N, rows, 1], each
    row of the batch becoming ``rows`` floats by broadcasting, summed back to [N, 1]."""
    return _graph_model(
        [
            helper.make_node("ConstantOfShape", ["n"], ["c"]),
            helper.make_node("Reshape", ["x", "shape"], ["x3"]),
            helper.make_node("Add", ["x3", "c"], ["b"]),
            helper.make_node("ReduceSum", ["b", "axes"], ["y"], keepdims=0),
        ],
        [_float("x", ["N", 1])],
        [_float("y", ["N", 1])],
        initializers=[_int64("n", [rows, 1]), _int64("shape", [-1, 1, 1]), _int64("axes", [1])],
    )


# Each accepted by a reading of the bytes at a few KiB a row, and each far wider in fact.
WIDE_ROWS: dict[str, Callable[[], bytes]] = {
    "Tile repeats": lambda: _sizing("Tile", [1, 2000], width=64),  # 512 KB a row
    "broadcast": lambda: _broadcast_column(200_000),  # 800 KB a row
}


@pytest.mark.parametrize("case", sorted(WIDE_ROWS))
def test_a_worker_refuses_rows_wider_than_the_bytes_say(case: str) -> None:
    data = WIDE_ROWS[case]()
    assert not _budget_exceeded(ONNX.validate(data, MAX))  # the bytes alone: accepted
    checked = formats.check(data, Sandbox(), MAX)  # measured in the sandbox
    assert checked.bytes_per_row > 400_000 and _budget_exceeded(checked)


def _expand_first_column(width: int) -> bytes:
    """What torch.onnx.export makes of ``x[:, :1].expand(-1, width)`` (summed)."""
    return _graph_model(
        [
            helper.make_node("Constant", [], ["n"], value=_int64("v", [1, width])),
            helper.make_node("Slice", ["x", "zero", "one", "axes"], ["first"]),
            helper.make_node("Expand", ["first", "n"], ["e"]),
            helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=1),
        ],
        [_float("x", ["N", 16])],
        [_float("y", ["N", 1])],
        initializers=[_int64("zero", [0]), _int64("one", [1]), _int64("axes", [1])],
    )


def test_an_ordinary_expand_is_served() -> None:
    # 512 floats a row: about 2 KiB, a few MiB for a worker's batch (an estimate that
    # multiplied the expansion by the widest row refused it at 10 GiB).
    checked = formats.check(_expand_first_column(512), Sandbox(), MAX)
    assert not _budget_exceeded(checked)
    assert checked.scoring_bytes(WorkerSettings.max_batch) < 256 << 20


def _sequence_map() -> bytes:
    """A SequenceMap whose body expands by its own input "n" (a main-graph initializer
    has the same name): a subgraph onnxruntime runs on whatever the sequence holds."""
    body = helper.make_graph(
        [
            helper.make_node("Expand", ["xx", "n"], ["e"]),
            helper.make_node("ReduceSum", ["e"], ["o"], keepdims=0),
        ],
        "body",
        [
            helper.make_tensor_value_info("n", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("xx", TensorProto.FLOAT, None),
        ],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )
    return _graph_model(
        [
            helper.make_node("SequenceConstruct", ["n"], ["seq"]),
            helper.make_node("SequenceMap", ["seq", "zero"], ["outs"], body=body),
            helper.make_node("Relu", ["x"], ["y"]),
        ],
        [_float("x", ["N", 1])],
        [_float("y", ["N", 1])],
        initializers=[
            _int64("n", [1, 1]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )


def _window_sized_by_a_feature() -> bytes:
    """HannWindow's size computed from the batch's largest feature value."""
    return _graph_model(
        [
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            helper.make_node("Cast", ["m"], ["size"], to=TensorProto.INT64),
            helper.make_node("HannWindow", ["size"], ["w"]),
            helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        [_float("x", ["N", 1])],
        [_float("y", ["N", 1])],
    )


def test_a_subgraph_of_any_operator_is_refused() -> None:
    with pytest.raises(ArtifactRejected, match="nor any other operator that runs a subgraph"):
        ONNX.validate(_sequence_map(), MAX)


def test_a_window_sized_at_predict_time_is_refused() -> None:
    with pytest.raises(ArtifactRejected, match="HannWindow takes its output size from 'size'"):
        ONNX.validate(_window_sized_by_a_feature(), MAX)


def test_a_same_version_duplicate_opset_is_accepted() -> None:
    # skl2onnx imports "" twice at one version
    ONNX.validate(_relu_with(opsets=[("", 17)]), MAX)


def test_the_field_budget_bounds_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.formats import onnx_wire

    monkeypatch.setattr(onnx_wire, "MAX_FIELDS", 1000)
    node = helper.make_node("Relu", ["x"], ["y"])
    node.attribute.append(helper.make_attribute("pad", [0] * 2000))  # unpacked: a field each
    data = _graph_model([node], [_float("x", ["N", 3])], [_float("y", ["N", 3])])
    with pytest.raises(ArtifactTooLarge, match="more than 1000 protobuf fields"):
        ONNX.validate(data, MAX)


@pytest.mark.parametrize("kind", ["attributes", "inputs", "metadata", "opsets"])
def test_floods_of_small_fields_are_refused_quickly(kind: str) -> None:
    count = 2_000_000
    change: dict[str, object] = {kind: count}
    if kind == "opsets":
        change = {"opsets": [("", 17)] * 100_000}
    elif kind == "attributes":
        change = {"attributes": 100_000}
    data = _relu_with(**change)
    started = time.monotonic()
    with pytest.raises(ArtifactRejected):
        ONNX.validate(data, MAX)
    assert time.monotonic() - started < 10  # unbounded floods took minutes


def test_shipped_models_use_no_refused_operator() -> None:
    for data in (onnx_models.mlp_bytes(), onnx_models.sklearn_pipeline_bytes()):
        ONNX.validate(data, MAX)
        ops = {node.op_type for node in onnx.load_from_string(data).graph.node}
        assert not ops & {"Loop", "Scan", "If", "ConstantOfShape", "Expand", "Tile", "Range"}

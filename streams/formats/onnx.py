"""ONNX models: :data:`ONNX`, the :class:`~streams.formats.base.ModelFormat`.

Validation is our own walk of the protobuf wire bytes (:mod:`streams.formats.onnx_wire`,
standard library only): onnx's and onnxruntime's native parsers never see a file it
refuses. On top of the walk this module decides what modelvc serves:

- opsets: ``ai.onnx`` :data:`MIN_OPSET`..:data:`MAX_OPSET` (what both the installed onnx
  and onnxruntime know; a unit test checks the constant against them), ``ai.onnx.ml``
  1..:data:`MAX_ML_OPSET`; any other domain is a custom operator library, refused;
- the signature: the graph's inputs (those that are not initializers) are float/double
  (``double`` features) or int64 (``categorical``) tensors of shape ``[N]`` or ``[N, k]``;
  the first float/double output of shape ``[N]`` or ``[N, K]`` is the one served
  (``outputs = K``); the other outputs (a classifier's label, ZipMap's maps) are listed
  in ``signature.graph`` but never computed.

The smoke test (sandboxed child) runs onnx's full checker, then an onnxruntime session
with :func:`session_options`, and compares what onnxruntime reads with our walk.
Workers and auditors :meth:`~OnnxFormat.load` with the same options, so a re-score is bit
for bit under the same :attr:`~OnnxPredictor.runtime`. onnx and onnxruntime are imported
lazily: validation, and streams in general, never load them.
"""

from __future__ import annotations

import functools
import json
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.core.model_signature import (
    CATEGORICAL,
    DOUBLE,
    MAX_GRAPH_TENSORS,
    MAX_TENSOR_DIMS,
    TENSOR_NAME,
    TENSOR_TYPE,
    Feature,
    ModelSignature,
    Tensor,
)
from streams.errors import ArtifactRejected, ArtifactTooLarge
from streams.formats import memory
from streams.formats.base import Checked
from streams.formats.onnx_wire import ModelFacts, ValueInfo, read_model, varint
from streams.sandbox import SmokeFailed

if TYPE_CHECKING:
    import numpy as np

# IR versions: 3 (ONNX 1.0, the first with opset imports) to what onnx 1.23 writes.
MIN_IR_VERSION, MAX_IR_VERSION = 3, 14
# ai.onnx opsets: 7 is the oldest onnxruntime guarantees; 28 is the newest both onnx
# 1.23 and onnxruntime 1.32 implement (tests/unit/test_onnx_format.py checks both).
MIN_OPSET, MAX_OPSET = 7, 28
MAX_ML_OPSET = 5
DEFAULT_DOMAINS = ("", "ai.onnx")
ML_DOMAIN = "ai.onnx.ml"
MAX_FEATURES = 100_000
MAX_PRODUCER_CHARS = 128
SMOKE_ROWS_CAP = 64
# Rows of the smoke's measuring run: its peak memory over the smoke's, per row, is the
# version's measured scoring memory (broadcasting, outer products, Tile chains: what no
# reading of the bytes bounds). Under the sandbox's 1 GiB, a graph that needs more than
# about 3 MiB a row is refused here; a worker scales the figure to its batch.
MEASURE_ROWS = 256

# Element types modelvc feeds: a feature event's doubles become float or double
# tensors, its category codes int64 ones.
_FEED_TYPES = {"float": DOUBLE, "double": DOUBLE, "int64": CATEGORICAL}
_SERVED_TYPES = ("float", "double")
_FEATURE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", re.ASCII)
_DIM = re.compile(r"[0-9]{1,19}", re.ASCII)
_PRODUCER_JUNK = re.compile(r"[^\x20-\x7e]")
ZIPMAP_HINT = (
    "the graph has no float or double tensor output of shape [N] or [N, K] to serve; a "
    "scikit-learn classifier converts to one with skl2onnx options {'zipmap': False}"
)


def _sized(shape: tuple[str, ...] | None) -> tuple[int, bool] | None:
    """(width, batched) for a shape [N] or [N, k] with k fixed, else None; ``batched``
    is False when the first dimension is fixed to 1 (one row per run)."""
    if shape is None or len(shape) not in (1, 2):
        return None
    first = shape[0]
    if _DIM.fullmatch(first) and first != "1":
        return None
    if len(shape) == 2 and not (_DIM.fullmatch(shape[1]) and int(shape[1]) >= 1):
        return None
    return (int(shape[1]) if len(shape) == 2 else 1), first != "1"


def _check_opsets(facts: ModelFacts) -> dict[str, int]:
    opsets: dict[str, int] = {}
    for domain, version in facts.opsets:
        key = "ai.onnx" if domain in DEFAULT_DOMAINS else domain
        if key == "ai.onnx":
            low, high = MIN_OPSET, MAX_OPSET
        elif key == ML_DOMAIN:
            low, high = 1, MAX_ML_OPSET
        else:
            raise ArtifactRejected(
                f"the model imports operator domain {domain[:60]!r}: custom operators are "
                f"not supported (modelvc runs the ai.onnx and ai.onnx.ml operators only)"
            )
        if not low <= version <= high:
            raise ArtifactRejected(
                f"the model uses {key} opset {version}; modelvc supports {key} opsets "
                f"{low} to {high}: convert it (onnx.version_converter.convert_version(model, "
                f"{min(max(version, low), high)})) or export it again with that target opset"
            )
        if opsets.get(key, version) != version:
            raise ArtifactRejected(
                f"the model imports {key} twice, at opsets {opsets[key]} and {version}"
            )
        opsets[key] = version
    if "ai.onnx" not in opsets:
        raise ArtifactRejected("the model imports no ai.onnx opset; export it again with one")
    custom = sorted(d for d in facts.node_domains if d not in (*DEFAULT_DOMAINS, ML_DOMAIN))
    if custom:
        raise ArtifactRejected(
            f"a node uses operator domain {custom[0][:60]!r}: custom operators are not "
            f"supported (modelvc runs the ai.onnx and ai.onnx.ml operators only)"
        )
    if ML_DOMAIN in facts.node_domains and ML_DOMAIN not in opsets:
        raise ArtifactRejected(
            f"a node uses {ML_DOMAIN} but the model imports no {ML_DOMAIN} opset"
        )
    return opsets


def _graph_tensor(info: ValueInfo, kind: str) -> Tensor:
    if not TENSOR_NAME.fullmatch(info.name):
        raise ArtifactRejected(
            f"graph {kind} name {info.name[:60]!r} is not one modelvc records (letters, "
            f"digits and _ . : / -, at most 256); rename it before exporting"
        )
    if not TENSOR_TYPE.fullmatch(info.type):
        raise ArtifactRejected(f"graph {kind} {info.name!r} has a type modelvc cannot record")
    shape = info.shape or ()
    if len(shape) > MAX_TENSOR_DIMS:
        raise ArtifactRejected(
            f"graph {kind} {info.name!r} has {len(shape)} dimensions; at most {MAX_TENSOR_DIMS}"
        )
    return Tensor(info.name, kind, info.type, shape)


def _feature_names(facts: ModelFacts, name: str, width: int) -> tuple[str, ...]:
    """The names of one [N, k] input's columns: the model's ``feature_names`` metadata (a
    JSON array, or names joined by commas), else ``input_0``, ``input_1``, ..."""
    text = facts.metadata.get("feature_names")
    if text is None:
        return tuple(f"{name}_{i}" if width > 1 else name for i in range(width))
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = text.split(",")
    if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
        raise ArtifactRejected(
            "metadata feature_names is neither a JSON array of names nor names joined by commas"
        )
    names = tuple(p.strip() for p in parsed)
    if len(names) != width:
        raise ArtifactRejected(
            f"metadata feature_names holds {len(names)} names; input {name!r} has {width} columns"
        )
    bad = [n for n in names if not _FEATURE_NAME.fullmatch(n)]
    if bad:
        raise ArtifactRejected(
            f"feature name {bad[0][:60]!r} in metadata feature_names is not a name (letters, "
            "digits and _ . -, at most 128)"
        )
    return names


def _features(facts: ModelFacts, inputs: Sequence[ValueInfo]) -> tuple[Feature, ...]:
    if not inputs:
        raise ArtifactRejected("the graph has no inputs (other than its initializers)")
    features: list[Feature] = []
    for info in inputs:
        kind = _FEED_TYPES.get(info.type) if info.elem is not None else None
        if kind is None:
            raise ArtifactRejected(
                f"graph input {info.name!r} is {info.type}; modelvc feeds float, double or "
                "int64 tensors"
            )
        sized = _sized(info.shape)
        if sized is None:
            shape = "no shape" if info.shape is None else f"shape [{', '.join(info.shape)}]"
            raise ArtifactRejected(
                f"graph input {info.name!r} has {shape}; modelvc feeds [N] or [N, k] with k "
                "fixed: export with a dynamic batch axis (torch.onnx.export(..., "
                "dynamic_axes={'input': {0: 'N'}}))"
            )
        width = sized[0]
        # Before a name is made: a 100-byte graph may declare 10**12 columns.
        if width > MAX_FEATURES - len(features):
            raise ArtifactTooLarge(f"the graph takes more than {MAX_FEATURES} features")
        if len(inputs) == 1:
            names = _feature_names(facts, info.name, width)
        else:
            names = tuple(f"{info.name}_{j}" if width > 1 else info.name for j in range(width))
        features.extend(Feature(n, kind) for n in names)
        if len(features) > MAX_FEATURES:
            raise ArtifactTooLarge(f"the graph takes more than {MAX_FEATURES} features")
    if len({f.name for f in features}) != len(features):
        raise ArtifactRejected("two of the graph's input columns have the same feature name")
    return tuple(features)


def _served(outputs: Sequence[ValueInfo]) -> tuple[ValueInfo, int]:
    for info in outputs:
        if info.elem is not None and info.type in _SERVED_TYPES:
            sized = _sized(info.shape)
            if sized is not None:
                return info, sized[0]
    raise ArtifactRejected(ZIPMAP_HINT)


def _producer(facts: ModelFacts) -> str:
    text = f"{facts.producer_name} {facts.producer_version}".strip()
    return _PRODUCER_JUNK.sub("?", text)[:MAX_PRODUCER_CHARS]


def checked_of(facts: ModelFacts) -> Checked:
    """What modelvc serves of a walked model, or ArtifactRejected saying why not."""
    if not MIN_IR_VERSION <= facts.ir_version <= MAX_IR_VERSION:
        raise ArtifactRejected(
            f"the model's IR version is {facts.ir_version}; modelvc reads {MIN_IR_VERSION} to "
            f"{MAX_IR_VERSION} (onnx 1.23): save it with onnx 1.23 or older"
        )
    opsets = _check_opsets(facts)
    inputs = [i for i in facts.inputs if i.name not in facts.initializer_names]
    if len(inputs) + len(facts.outputs) > MAX_GRAPH_TENSORS:
        raise ArtifactTooLarge(f"the graph has more than {MAX_GRAPH_TENSORS} inputs and outputs")
    graph = tuple(
        [_graph_tensor(i, "input") for i in inputs]
        + [_graph_tensor(o, "output") for o in facts.outputs]
    )
    features = _features(facts, inputs)
    served, outputs = _served(facts.outputs)
    signature = ModelSignature("onnx", features, outputs, graph)
    tensor_bytes = facts.tensor_bytes
    # Memory estimate. Loaded: onnxruntime keeps the bytes it parsed and its own copy of
    # every initializer (2x), plus ~64 KiB of session, plus what ConstantOfShape, Expand
    # and Tile build from constant sizes (constant folding may build it at load; 8 bytes
    # an element). Per row of a batch: the float64 row and its float32/float64 feed (16
    # bytes a feature), the served output, and a few live intermediates as wide as the
    # widest tensor row the graph declares (its value_info and I/O dims after the batch
    # axis, an initializer's or a ConstantOfShape's last dim: a layer's width);
    # onnxruntime's arena reuses the buffers of tensors no longer needed. This reading of
    # the bytes is a floor: broadcasting, outer products and chains of Expand or Tile can
    # make a row far wider than anything declared, so the sandbox's smoke measures both
    # figures and :func:`streams.formats.check` keeps the larger of each.
    bytes_per_row = 16 * len(features) + 16 * outputs + 4 * 8 * facts.widest
    return Checked(
        format="onnx",
        signature=signature,
        model_bytes=2 * tensor_bytes + 64 * 1024 + facts.sized_bytes,
        bytes_per_row=bytes_per_row,
        details={
            "ir_version": facts.ir_version,
            "opsets": opsets,
            "nodes": facts.nodes,
            "initializers": facts.initializers,
            "parameters": facts.parameters,
            "served_output": served.name,
            "producer": _producer(facts),
        },
    )


# -- running: session options, the runtime stamp -----------------------------------------


def session_options() -> Any:
    """The one set of onnxruntime options for the smoke test, workers and auditors.

    One thread each way and sequential execution: sums run in one order, so a re-score
    reproduces a score bit for bit, and the worker's executor is the parallelism. Basic
    graph optimizations only (constant folding, removing no-op nodes), which do not
    change arithmetic; extended and layout ones fuse kernels chosen by the CPU, so a
    score would depend on the machine as well as on the runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    return options


PROVIDERS = ["CPUExecutionProvider"]


@functools.cache
def simd_level() -> str:
    """The CPU's widest vector instructions: onnxruntime's MLAS picks its kernels (and so
    the order of a sum's additions) by them, so a score is reproduced exactly only on
    the same level."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", "rb") as cpuinfo:
            for line in cpuinfo.read(1 << 20).decode("ascii", "replace").splitlines():
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:
        pass
    for flag, level in (
        ("avx512f", "avx512"),
        ("avx2", "avx2"),
        ("avx", "avx"),
        ("sse4_1", "sse4"),
        ("asimd", "neon"),
    ):
        if flag in flags:
            return level
    machine = platform.machine().lower()
    return "neon" if machine in ("arm64", "aarch64") else machine or "unknown"


def runtime() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} threads=1 opt=basic {simd_level()}"


# -- the predictor ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Feed:
    name: str
    dtype: str  # numpy's name: float32, float64, int64
    start: int  # first column of the matrix
    width: int
    rank: int  # 1: [N], 2: [N, k]
    batched: bool  # False: the first dimension is fixed to 1


_NUMPY_TYPES = {"float": "float32", "double": "float64", "int64": "int64"}


def _feeds(signature: ModelSignature) -> tuple[_Feed, ...]:
    feeds: list[_Feed] = []
    start = 0
    for tensor in signature.graph:
        if tensor.kind != "input":
            continue
        sized = _sized(tensor.shape)
        if sized is None or tensor.type not in _NUMPY_TYPES:
            raise ArtifactRejected(
                f"graph input {tensor.name!r} cannot be fed; commit the model again"
            )
        width, batched = sized
        feeds.append(
            _Feed(tensor.name, _NUMPY_TYPES[tensor.type], start, width, len(tensor.shape), batched)
        )
        start += width
    if start != len(signature.inputs):
        raise ArtifactRejected(
            "the signature's inputs do not cover the graph's; commit the model again"
        )
    return tuple(feeds)


def _scores(
    session: Any, feeds: Sequence[_Feed], served: str, matrix: np.ndarray, outputs: int
) -> np.ndarray:
    """The served output for the rows of ``matrix``, float64 (rows, outputs).

    A row's scores must not depend on which batch it came in, or an auditor could not
    re-score it: onnxruntime computes a one-row run by another path than a run of several
    (matrix-vector instead of matrix-matrix kernels, last bits differ), so a lone row runs
    beside a copy of itself and keeps its own scores. Runs of 2 rows or more agree bit for
    bit whatever their size (the smoke test refuses a graph for which they do not). A graph
    whose batch axis is fixed to 1 always runs a row at a time. Raises ValueError on an
    answer of another shape than the signature's (a graph may change shape with its input).
    """
    import numpy as np

    rows = len(matrix)
    if all(f.batched for f in feeds):
        lone = rows == 1
        batch = np.concatenate([matrix, matrix]) if lone else matrix
        parts = [_run(session, feeds, served, batch, 2 if lone else rows, outputs)[:rows]]
    else:
        parts = [_run(session, feeds, served, matrix[r : r + 1], 1, outputs) for r in range(rows)]
    return np.concatenate(parts) if parts else np.empty((0, outputs), dtype=np.float64)


def _run(
    session: Any, feeds: Sequence[_Feed], served: str, matrix: np.ndarray, rows: int, outputs: int
) -> np.ndarray:
    import numpy as np

    raw = np.asarray(session.run([served], _feed_dict(feeds, matrix))[0])
    if raw.shape not in ((rows,), (rows, outputs)) or (raw.ndim == 1 and outputs != 1):
        raise ValueError(
            f"the graph answered {rows} rows with shape {list(raw.shape)}, not "
            f"[{rows}, {outputs}] as its signature says"
        )
    return raw.astype(np.float64).reshape(rows, outputs)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def _feed_dict(feeds: Sequence[_Feed], matrix: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        columns = matrix[:, feed.start : feed.start + feed.width].astype(feed.dtype)
        out[feed.name] = columns.reshape(-1) if feed.rank == 1 else columns
    return out


class OnnxPredictor:
    """One onnxruntime session; ``predict`` from one thread at a time."""

    def __init__(self, session: Any, checked: Checked, runtime: str) -> None:
        self._session = session
        self._signature = checked.signature
        self._runtime = runtime
        self._feeds = _feeds(checked.signature)
        self._served = str(checked.details["served_output"])

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    @property
    def runtime(self) -> str:
        return self._runtime

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        width = len(self._signature.inputs)
        if matrix.ndim != 2 or matrix.shape[1] != width:
            raise ValueError(f"expected rows of {width} features, got {list(matrix.shape)}")
        return _scores(self._session, self._feeds, self._served, matrix, self._signature.outputs)


# -- the format ---------------------------------------------------------------------------


def _ort_type(text: str) -> str:
    # onnxruntime names a tensor "tensor(float)", our walk (and the signature) "float".
    return text[len("tensor(") : -1] if text.startswith("tensor(") and text.endswith(")") else text


def _measured_row_bytes(
    session: Any, feeds: Sequence[_Feed], served: str, outputs: int, width: int
) -> int:
    """Peak memory of scoring :data:`MEASURE_ROWS` rows over what the process held before,
    per row. The whole increase counts as per row (a fixed cost of a run too), so the
    figure errs high."""
    import numpy as np

    matrix = np.array(_smoke_matrix(MEASURE_ROWS, width), dtype=np.float64)
    matrix = matrix.reshape(MEASURE_ROWS, width)
    held = memory.resident()
    memory.reset_peak()
    _scores(session, feeds, served, matrix, outputs)
    return max(memory.peak() - held, 0) // MEASURE_ROWS


def _smoke_matrix(rows: int, width: int) -> list[list[float]]:
    """Ordinary rows: zeros, ones, minus ones, small integers (category codes), then
    pseudo-random values in [-3, 3]. Not LightGBM's smoke rows: a network maps NaN to NaN
    and 1e9 through an exp to infinity, which says nothing about a sound model."""
    state = 12345
    matrix: list[list[float]] = []
    for r in range(rows):
        row: list[float] = []
        for c in range(width):
            if r < 3:
                value = (0.0, 1.0, -1.0)[r]
            elif r == 3:
                value = float(c % 7)
            else:
                state = (1103515245 * state + 12345) % 2**31
                value = state / 2**31 * 6.0 - 3.0
            row.append(value)
        matrix.append(row)
    return matrix


@dataclass(frozen=True)
class OnnxFormat:
    name: str = "onnx"
    library: str = "onnxruntime"
    packages: tuple[str, ...] = ("onnx", "onnxruntime", "numpy")

    def recognizes(self, head: bytes) -> bool:
        """ModelProto bytes: ``ir_version`` (field 1, a varint) first, as every writer
        puts it, within the IR versions we read, then the tag of another ModelProto field."""
        try:
            if head[:1] != b"\x08":
                return False
            version, pos = varint(head, 1, len(head))
            if not MIN_IR_VERSION <= version <= MAX_IR_VERSION or pos >= len(head):
                return False
            key, _ = varint(head, pos, len(head))
        except ArtifactRejected:
            return False
        return key & 7 in (0, 2) and key >> 3 in (2, 3, 4, 5, 6, 7, 8, 14)

    def validate(self, data: bytes, max_bytes: int) -> Checked:
        return checked_of(read_model(data, max_bytes))

    def smoke(self, data: bytes, checked: Mapping[str, Any], rows: int) -> dict[str, Any]:
        import numpy as np
        import onnx
        import onnxruntime as ort

        signature = ModelSignature.from_plain(checked["signature"])
        try:
            onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        except Exception as exc:  # onnx raises ValidationError, DecodeError, others
            raise SmokeFailed(f"the onnx checker refuses it: {str(exc)[:300]}") from None
        before = memory.resident()
        memory.reset_peak()
        try:
            session = ort.InferenceSession(data, session_options(), providers=PROVIDERS)
        except Exception as exc:
            raise SmokeFailed(str(exc)[:300]) from None
        loading = memory.peak() - before  # what the load took at most (constant folding included)
        read = [(a.name, "input", _ort_type(a.type)) for a in session.get_inputs()]
        read += [(a.name, "output", _ort_type(a.type)) for a in session.get_outputs()]
        ours = [(t.name, t.kind, t.type) for t in signature.graph]
        if read != ours:
            raise ArtifactRejected(
                f"onnxruntime reads this graph differently from its bytes ({read[:4]} != "
                f"{ours[:4]}); export it again"
            )
        rows = max(1, min(rows, SMOKE_ROWS_CAP))
        matrix = np.array(_smoke_matrix(rows, len(signature.inputs)), dtype=np.float64)
        matrix = matrix.reshape(rows, len(signature.inputs))
        served = str(checked["served_output"])
        feeds = _feeds(signature)
        outputs = signature.outputs
        try:
            scores = _scores(session, feeds, served, matrix, outputs)
            # Each row alone, and the rows reversed: a graph whose scores depend on the other
            # rows of a batch (a mean over the batch axis) cannot be re-scored by an auditor.
            alone = np.concatenate(
                [_scores(session, feeds, served, r[None], outputs) for r in matrix]
            )
            reverse = _scores(session, feeds, served, matrix[::-1].copy(), outputs)[::-1]
            per_row = _measured_row_bytes(session, feeds, served, outputs, matrix.shape[1])
        except Exception as exc:
            raise SmokeFailed(f"scoring {rows} rows: {str(exc)[:300]}") from None
        if not (_same_bits(scores, alone) and _same_bits(scores, reverse)):
            raise ArtifactRejected(
                "a row's scores depend on the other rows of its batch (an operation across "
                "the batch axis?), so no prediction could be re-scored; export a model that "
                "scores each row on its own"
            )
        width = scores.shape[1]
        return {
            "outputs": width,
            "finite": bool(np.isfinite(scores).all()),
            "rows": rows,
            "graph": [list(t) for t in read],
            "measured_model_bytes": max(loading, 0),
            "measured_bytes_per_row": per_row,
        }

    def load(self, data: bytes, checked: Checked) -> OnnxPredictor:
        import onnxruntime as ort

        session = ort.InferenceSession(data, session_options(), providers=PROVIDERS)
        return OnnxPredictor(session, checked, runtime())


ONNX = OnnxFormat()

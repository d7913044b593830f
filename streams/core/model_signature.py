"""A model's input signature, what changes between two of them, and the typed Avro
schema of a feature event for it.

Pure (standard library only). The signature is read from the model file by the
server (the format's validator, :mod:`streams.formats`), recorded in the commit
(``schemas/commit.avsc``), shown by ``show``/``diff``/the API, checked when an alias moves
(:func:`required_missing`), and turned into the Avro record a feature producer
writes (:func:`feature_schema`) and a worker decodes by its fingerprint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Input types. LightGBM scores float64 rows; a categorical feature takes integer
# category codes, so a typed event carries it as an Avro long.
DOUBLE = "double"
CATEGORICAL = "categorical"
INPUT_TYPES = frozenset({DOUBLE, CATEGORICAL})
AVRO_TYPE = {DOUBLE: "double", CATEGORICAL: "long"}
FORMATS = frozenset({"lightgbm", "onnx"})
# An ONNX graph's tensors as a signature records them (bounded: it may come off a topic).
TENSOR_KINDS = ("input", "output")
MAX_GRAPH_TENSORS = 1024
MAX_TENSOR_DIMS = 8
# Names as exporters write them ("input", "input.1", "onnx::Gemm_0", "dense/BiasAdd:0").
TENSOR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,255}")
# An element type ("float", "int64"), or a non-tensor's ("seq(map(int64,tensor(float)))").
TENSOR_TYPE = re.compile(r"[a-z][a-z0-9(),]{0,63}")
# A dimension: its size, a symbolic name ("N", "batch_size", "unk__3"), or "?" (unknown).
TENSOR_DIM = re.compile(r"\?|[0-9]{1,19}|[A-Za-z_][A-Za-z0-9_.:/\-]{0,63}")

# The typed feature event: the same envelope as schemas/feature_event.avsc, then one
# record field per feature. Names are fixed so that two models (or versions) with the
# same inputs share one schema, hence one fingerprint.
TYPED_NAMESPACE = "modelvc.serving"
TYPED_EVENT_NAME = "TypedFeatureEvent"
TYPED_FEATURES_NAME = "TypedFeatures"
_AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RENAMED = re.compile(r"_[0-9]+_.*")  # the shape field_name gives a renamed feature
_ORIGINAL = "feature "  # the doc of a field whose name had to change starts with this


@dataclass(frozen=True)
class Feature:
    name: str
    type: str  # one of INPUT_TYPES


@dataclass(frozen=True)
class Tensor:
    """One of an ONNX graph's inputs or outputs, as the graph declares it."""

    name: str
    kind: str  # one of TENSOR_KINDS
    type: str  # the element type ("float", "double", "int64"), or a non-tensor's type
    shape: tuple[str, ...]  # dims: "20", a symbolic name ("N"), or "?"; () for a non-tensor

    def describe(self) -> str:
        """``float[N,20]``: how show and diff print it."""
        return f"{self.type}[{','.join(self.shape)}]" if self.shape else self.type

    def plain(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "type": self.type, "shape": list(self.shape)}

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> Tensor:
        """ValueError on anything out of bounds (it may come off a topic)."""
        shape = plain["shape"]
        if not isinstance(shape, list | tuple) or len(shape) > MAX_TENSOR_DIMS:
            raise ValueError(f"a graph tensor has at most {MAX_TENSOR_DIMS} dimensions")
        tensor = cls(str(plain["name"]), str(plain["kind"]), str(plain["type"]), tuple(shape))
        if not TENSOR_NAME.fullmatch(tensor.name):
            raise ValueError(f"graph tensor name {tensor.name[:40]!r} is not a tensor name")
        if tensor.kind not in TENSOR_KINDS or not TENSOR_TYPE.fullmatch(tensor.type):
            raise ValueError(f"graph tensor {tensor.name!r} has kind or type out of range")
        if not all(isinstance(d, str) and TENSOR_DIM.fullmatch(d) for d in tensor.shape):
            raise ValueError(f"graph tensor {tensor.name!r} has a malformed dimension")
        return tensor


@dataclass(frozen=True)
class ModelSignature:
    """Ordered inputs (the model's training order) and the number of outputs per row;
    for an ONNX model, also the graph's own inputs and outputs (``graph``, in graph order)."""

    format: str
    inputs: tuple[Feature, ...]
    outputs: int
    graph: tuple[Tensor, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.inputs)

    def types(self) -> dict[str, str]:
        return {f.name: f.type for f in self.inputs}

    def plain(self) -> dict[str, Any]:
        """The Avro/JSON form (the commit event's ``signature`` field, the API's answer).

        ``graph`` only when there is one: a commit id hashes this form, and every
        signature written before graphs existed must hash as it did."""
        plain: dict[str, Any] = {
            "format": self.format,
            "inputs": [{"name": f.name, "type": f.type} for f in self.inputs],
            "outputs": self.outputs,
        }
        if self.graph:
            plain["graph"] = [t.plain() for t in self.graph]
        return plain

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> ModelSignature:
        """Raises ValueError on anything but a well-formed signature (it may come off a topic)."""
        try:
            inputs = tuple(Feature(str(i["name"]), str(i["type"])) for i in plain["inputs"])
            tensors = plain.get("graph") or ()
            if len(tensors) > MAX_GRAPH_TENSORS:
                raise ValueError(f"a signature's graph has at most {MAX_GRAPH_TENSORS} tensors")
            graph = tuple(Tensor.from_plain(t) for t in tensors)
            signature = cls(str(plain["format"]), inputs, int(plain["outputs"]), graph)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a model signature: {exc!r}") from None
        if signature.format not in FORMATS:
            raise ValueError(f"unknown model format {signature.format!r}")
        bad = [f.type for f in inputs if f.type not in INPUT_TYPES]
        if bad:
            raise ValueError(f"unknown input type {bad[0]!r}")
        if len({(t.kind, t.name) for t in graph}) != len(graph):
            raise ValueError("a signature's graph names each input and output once")
        if len(set(signature.names)) != len(inputs) or signature.outputs < 1:
            raise ValueError("a signature names each input once and has at least one output")
        return signature


@dataclass(frozen=True)
class SignatureDiff:
    added: tuple[str, ...]  # in the new signature only
    removed: tuple[str, ...]  # in the old signature only
    retyped: tuple[tuple[str, str, str], ...]  # (name, old type, new type)
    outputs: tuple[int, int] | None  # (old, new) when the number of outputs changed
    format: tuple[str, str] | None = None  # (old, new) when the model's format changed
    # Graph tensors that changed: (kind, name, old, new), old/new as Tensor.describe()
    # writes them, "" where the tensor is absent.
    graph: tuple[tuple[str, str, str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.added or self.removed or self.retyped or self.outputs or self.format or self.graph
        )


def diff(old: ModelSignature, new: ModelSignature) -> SignatureDiff:
    old_types, new_types = old.types(), new.types()
    return SignatureDiff(
        added=tuple(n for n in new.names if n not in old_types),
        removed=tuple(n for n in old.names if n not in new_types),
        retyped=tuple(
            (n, old_types[n], t) for n, t in new_types.items() if old_types.get(n, t) != t
        ),
        outputs=(old.outputs, new.outputs) if old.outputs != new.outputs else None,
        format=(old.format, new.format) if old.format != new.format else None,
        graph=_graph_changes(old.graph, new.graph),
    )


def _graph_changes(
    old: Sequence[Tensor], new: Sequence[Tensor]
) -> tuple[tuple[str, str, str, str], ...]:
    """Tensors added, removed or changed in type or shape, old graph order then new."""
    before = {(t.kind, t.name): t.describe() for t in old}
    after = {(t.kind, t.name): t.describe() for t in new}
    keys = [*before, *(k for k in after if k not in before)]
    return tuple(
        (kind, name, before.get((kind, name), ""), after.get((kind, name), ""))
        for kind, name in keys
        if before.get((kind, name)) != after.get((kind, name))
    )


def required_missing(current: ModelSignature, target: ModelSignature) -> tuple[str, ...]:
    """Features ``target`` requires that producers for ``current`` do not send: moving an
    alias from ``current`` to ``target`` would dead-letter their events."""
    return diff(current, target).added


def field_name(index: int, feature: str) -> str:
    """The Avro field for a feature: its own name when Avro allows it, else a stable one
    (the field's doc then names the feature)."""
    # A feature already shaped like a renamed one is renamed too: its own index keeps
    # every field of a record distinct.
    if _AVRO_NAME.fullmatch(feature) and not _RENAMED.fullmatch(feature):
        return feature
    return f"_{index}_" + re.sub(r"[^A-Za-z0-9_]", "_", feature)[:64]


def feature_schema(signature: ModelSignature) -> dict[str, Any]:
    """The typed feature event for ``signature``: an Avro record schema (JSON form)."""
    fields: list[dict[str, Any]] = []
    for index, feature in enumerate(signature.inputs):
        field: dict[str, Any] = {"name": field_name(index, feature.name)}
        field["type"] = AVRO_TYPE[feature.type]
        if field["name"] != feature.name:
            field["doc"] = _ORIGINAL + feature.name
        fields.append(field)
    return {
        "type": "record",
        "name": TYPED_EVENT_NAME,
        "namespace": TYPED_NAMESPACE,
        "doc": "One row to score, typed for one model signature (GET "
        "/v1/models/{model}/feature-schema?ref=REF); written Avro single-object encoded on "
        "modelvc.features, key entity_key. ref null means the model's default ref.",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "model", "type": "string"},
            {"name": "ref", "type": ["null", "string"], "default": None},
            {"name": "entity_key", "type": "string"},
            {"name": "event_time", "type": "long", "doc": "milliseconds since the epoch"},
            {
                "name": "features",
                "type": {"type": "record", "name": TYPED_FEATURES_NAME, "fields": fields},
            },
        ],
    }


def feature_fields(schema: Mapping[str, Any]) -> dict[str, str]:
    """Avro field -> feature name, for a schema :func:`feature_schema` wrote (or a producer
    copied): what a reader renames to get the model's feature names back."""
    (features,) = [f for f in schema["fields"] if f["name"] == "features"]
    out: dict[str, str] = {}
    for field in features["type"]["fields"]:
        doc = field.get("doc", "")
        original = doc[len(_ORIGINAL) :] if doc.startswith(_ORIGINAL) else field["name"]
        out[field["name"]] = original
    return out


def typed_features(schema: Mapping[str, Any]) -> tuple[Feature, ...]:
    """The (feature, input type) pairs a typed schema carries, in its field order."""
    by_avro = {v: k for k, v in AVRO_TYPE.items()}
    (features,) = [f for f in schema["fields"] if f["name"] == "features"]
    names = feature_fields(schema)
    return tuple(
        Feature(names[f["name"]], by_avro.get(f["type"], str(f["type"])))
        for f in features["type"]["fields"]
    )


def mismatch(carried: Sequence[Feature], served: ModelSignature) -> str | None:
    """Why events typed with ``carried`` cannot be scored by ``served``; None when they can
    (every input it needs is there, with its type; extra features are ignored)."""
    have = {f.name: f.type for f in carried}
    missing = [n for n in served.names if n not in have]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        return f"the event's schema lacks feature(s) {shown}{more}"
    retyped = [f for f in served.inputs if have[f.name] != f.type]
    if retyped:
        f = retyped[0]
        return f"feature {f.name!r} is {have[f.name]} in the event's schema, {f.type} in the model"
    return None

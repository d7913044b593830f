"""A model's input signature, what changes between two of them, and the typed Avro
schema of a feature event for it.

Pure (standard library only). The signature is read from the model file by the
server (``streams.modelfile``), recorded in the commit (``schemas/commit.avsc``),
shown by ``show``/``diff``/the API, checked when an alias moves
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
FORMATS = frozenset({"lightgbm"})

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
class ModelSignature:
    """Ordered inputs (the model's training order) and the number of outputs per row."""

    format: str
    inputs: tuple[Feature, ...]
    outputs: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.inputs)

    def types(self) -> dict[str, str]:
        return {f.name: f.type for f in self.inputs}

    def plain(self) -> dict[str, Any]:
        """The Avro/JSON form (the commit event's ``signature`` field, the API's answer)."""
        return {
            "format": self.format,
            "inputs": [{"name": f.name, "type": f.type} for f in self.inputs],
            "outputs": self.outputs,
        }

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> ModelSignature:
        """Raises ValueError on anything but a well-formed signature (it may come off a topic)."""
        try:
            inputs = tuple(Feature(str(i["name"]), str(i["type"])) for i in plain["inputs"])
            signature = cls(str(plain["format"]), inputs, int(plain["outputs"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a model signature: {exc!r}") from None
        if signature.format not in FORMATS:
            raise ValueError(f"unknown model format {signature.format!r}")
        bad = [f.type for f in inputs if f.type not in INPUT_TYPES]
        if bad:
            raise ValueError(f"unknown input type {bad[0]!r}")
        if len(set(signature.names)) != len(inputs) or signature.outputs < 1:
            raise ValueError("a signature names each input once and has at least one output")
        return signature


@dataclass(frozen=True)
class SignatureDiff:
    added: tuple[str, ...]  # in the new signature only
    removed: tuple[str, ...]  # in the old signature only
    retyped: tuple[tuple[str, str, str], ...]  # (name, old type, new type)
    outputs: tuple[int, int] | None  # (old, new) when the number of outputs changed

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.retyped or self.outputs)


def diff(old: ModelSignature, new: ModelSignature) -> SignatureDiff:
    old_types, new_types = old.types(), new.types()
    return SignatureDiff(
        added=tuple(n for n in new.names if n not in old_types),
        removed=tuple(n for n in old.names if n not in new_types),
        retyped=tuple(
            (n, old_types[n], t) for n, t in new_types.items() if old_types.get(n, t) != t
        ),
        outputs=(old.outputs, new.outputs) if old.outputs != new.outputs else None,
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

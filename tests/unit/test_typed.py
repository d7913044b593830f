"""Typed feature events without Kafka: the registry by fingerprint, both forms to one
shape, the scorer's refusals (signature mismatch, unknown schema) and hostile bytes."""

from __future__ import annotations

import asyncio
import io
import random
import shlex
import struct
from pathlib import Path

import fastavro
import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelvc.cli import parser
from modelvc.streaming import FeatureRowError, TypedEncoder, feature_event, publish_features
from streams.artifacts import LocalStore
from streams.codec import FEATURES, MAGIC, PREDICTIONS, SingleObjectCodec, fingerprint
from streams.core import Command, CreateModel, MakeCommit, decide
from streams.core.model_signature import (
    CATEGORICAL,
    DOUBLE,
    Feature,
    ModelSignature,
    feature_schema,
)
from streams.modelfile import validate
from tests.unit.test_scoring import NAMES, booster_file, feature_events, incoming, tracker_with
from workers.artifacts import ArtifactLoader
from workers.errors import SignatureMismatch, Undecodable
from workers.metrics import Metrics
from workers.scorer import Incoming, Scorer
from workers.settings import WorkerSettings
from workers.typed import TypedRegistry, UnknownSchema, fetch_hint
from workers.versions import VersionTracker

__all__ = ["booster_file"]  # the fixture, shared with test_scoring

SIG = ModelSignature("lightgbm", tuple(Feature(n, DOUBLE) for n in NAMES), 1)
ODD = ModelSignature(
    "lightgbm",
    (Feature("tenure", DOUBLE), Feature("plan id", CATEGORICAL), Feature("x", DOUBLE)),
    1,
)


def event(features: dict[str, object], model: str = "churn", ref: str | None = None) -> dict:
    return feature_event(model, features, "k", ref, "e1", 5)


def typed_bytes(signature: ModelSignature, ev: dict) -> bytes:
    return TypedEncoder(feature_schema(signature)).encode(ev)


# -- the registry -------------------------------------------------------------------
def test_both_forms_decode_to_the_same_event_and_only_typed_ones_carry_features() -> None:
    registry = TypedRegistry()
    registry.add(SIG)
    ev = event({"tenure": 1.5, "spend": -2.0, "age": 30.0})
    typed, carried = registry.decode(typed_bytes(SIG, ev))
    mapped, none = registry.decode(FEATURES.encode(ev))
    assert typed == mapped == ev
    assert carried == SIG.inputs and none is None


def test_names_avro_refuses_come_back_as_the_models_feature_names() -> None:
    registry = TypedRegistry()
    registry.add(ODD)
    ev = event({"tenure": 1.0, "plan id": 3, "x": 2.0})
    decoded, carried = registry.decode(typed_bytes(ODD, ev))
    assert decoded["features"] == {"tenure": 1.0, "plan id": 3, "x": 2.0}
    assert carried == ODD.inputs


def test_a_signature_registers_once_and_the_registry_is_bounded() -> None:
    registry = TypedRegistry(max_schemas=3)
    fp = registry.add(SIG)
    assert fp == fingerprint(feature_schema(SIG)) and registry.add(SIG) == fp
    for i in range(5):
        registry.add(ModelSignature("lightgbm", (Feature(f"f{i}", DOUBLE),), 1))
    assert len(registry) == 3 and not registry.knows(fp)
    assert registry.knows(FEATURES.fingerprint)  # the map form is always known


def test_an_unknown_fingerprint_names_it_and_the_command_to_fetch_the_schema() -> None:
    data = typed_bytes(SIG, event({"tenure": 1.0, "spend": 2.0, "age": 3.0}, ref="main~1"))
    with pytest.raises(UnknownSchema) as caught:
        TypedRegistry().decode(data)
    fp = fingerprint(feature_schema(SIG)).hex()
    assert fp in str(caught.value)
    assert "modelvc schema -M churn --ref 'main~1'" in str(caught.value)
    assert (caught.value.model, caught.value.ref) == ("churn", "main~1")


@pytest.mark.parametrize(
    ("model", "ref"),
    [("churn", None), ("churn", "main~1"), ("bad name;rm", "x y"), (None, None), ("m", "\x1b[2J")],
)
def test_every_fetch_hint_is_a_command_the_cli_accepts(model: str | None, ref: str | None) -> None:
    argv = shlex.split(fetch_hint(model, ref).split(": ", 1)[1])
    assert argv[:2] == ["modelvc", "schema"]
    args = parser().parse_args(argv[1:])
    assert args.command == "schema" and args.model in ("churn", "MODEL", "m")
    assert args.ref in (ref, None, "REF")


def hostile(data: bytes) -> list[bytes]:
    """Truncations, flipped bytes, junk bodies and endless varints, behind a known header."""
    rng = random.Random(11)
    header = data[:10]
    out = [data[:n] for n in range(len(data))]
    out += [data + b"\x00"]  # trailing byte
    out += [header + b"\xff" * 20, header + b"\x80" * 64]  # varints that never end
    out += [header + b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01" + data[10:]]  # huge length
    for _ in range(300):
        flipped = bytearray(data)
        flipped[rng.randrange(10, len(data))] ^= 1 << rng.randrange(8)
        out.append(bytes(flipped))
        out.append(header + rng.randbytes(rng.randrange(0, 60)))
    out += [MAGIC + b"\x00" * 8 + data[10:], b"\xc3\x02" + data[2:], b"", b"\xc3"]
    return out


@pytest.mark.parametrize("form", ["typed", "map"])
def test_hostile_bytes_are_undecodable_never_a_crash(form: str) -> None:
    registry = TypedRegistry()
    registry.add(ODD)
    ev = event({"tenure": 1.0, "plan id": 3, "x": 2.0})
    data = typed_bytes(ODD, ev) if form == "typed" else FEATURES.encode(ev)
    refused = []
    for bad in hostile(data):
        try:
            decoded, _ = registry.decode(bad)
        except Undecodable:
            refused.append(bad)
            continue
        # A flipped bit inside a double (or a string) can still be a record: of that shape.
        assert set(decoded) == {"event_id", "model", "ref", "entity_key", "event_time", "features"}
    must = [data[:n] for n in range(len(data))] + [data + b"\x00", data[:10] + b"\x80" * 64]
    assert all(m in refused for m in must)


# -- producers ------------------------------------------------------------------------
def test_a_row_the_schema_cannot_carry_names_the_row_feature_and_the_way_out() -> None:
    schema = feature_schema(ODD)
    encoder = TypedEncoder(schema)
    assert encoder.encode(event({"tenure": 1, "plan id": 3.0, "x": 2.0}))  # 1 -> 1.0, 3.0 -> 3
    for features, why in [
        ({"tenure": 1.0, "x": 2.0}, "'plan id' is missing"),
        ({"tenure": 1.0, "plan id": 2.5, "x": 2.0}, "not a category code"),
        ({"tenure": "1", "plan id": 2, "x": 2.0}, "'tenure' is a str"),
        ({"tenure": True, "plan id": 2, "x": 2.0}, "'tenure' is a bool"),
    ]:
        with pytest.raises(FeatureRowError, match=why) as caught:
            encoder.encode(event(features))
        assert "modelvc publish FILE --untyped" in str(caught.value)
    rows = [event({"tenure": 1.0, "plan id": 1, "x": 0.0}), event({"tenure": 1.0})]
    # Every row is encoded before Kafka is reached: this broker address is never dialled.
    with pytest.raises(FeatureRowError, match=r"^row 2: event 'e1': feature 'plan id'"):
        publish_features("127.0.0.1:1", rows, schema_of=lambda m, r: schema)


# -- the scorer ----------------------------------------------------------------------
def score(scorer: Scorer, batch: list[Incoming]):  # type: ignore[no-untyped-def]
    return asyncio.run(scorer.score(batch))


def typed_incoming(signature: ModelSignature, ev: dict, offset: int) -> Incoming:
    return Incoming("modelvc.features", 0, offset, 1_000, b"k", typed_bytes(signature, ev))


def test_typed_and_map_events_score_bit_equal_to_booster_predict(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    path, booster, x = booster_file
    # A legacy commit (no signature in the log): the first typed event teaches the worker
    # its schema by loading the version, as a producer that fetched it expects.
    scorer = Scorer(tracker_with(tmp_path, path), Metrics(), "w1")
    events = feature_events(x, 40)
    batch = [typed_incoming(SIG, e, i) for i, e in enumerate(events[:20])]
    batch += [incoming(e, 20 + i) for i, e in enumerate(events[20:])]
    out = score(scorer, batch)
    assert out.rejected == []
    scores = [PREDICTIONS.decode(v)["scores"][0] for _, _, v in out.predictions]
    assert scores == booster.predict(x[:40]).tolist()


def test_the_log_registers_a_commits_signature_before_any_load(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    path, _, _ = booster_file
    signature = validate(path.read_bytes()).signature
    fp = fingerprint(feature_schema(signature))
    loader = ArtifactLoader(LocalStore(tmp_path))  # never read: nothing is loaded here
    following = VersionTracker(WorkerSettings(), loader, Metrics())
    assert not following.registry.knows(fp)
    for i, body in enumerate([CreateModel(), MakeCommit("a" * 64, "v1", signature=signature)]):
        state = following.fold.models.get("churn")
        for ev in decide(state, Command(f"c{i}", "churn", "t", i, body)):
            following.fold.apply(ev)
            following.learn(ev)  # as follow() does with each event it folds
    assert following.registry.knows(fp)
    # A tracker given a folded log (a benchmark's, a test's) knows its signatures too.
    given = VersionTracker(WorkerSettings(), loader, Metrics(), following.fold)
    assert given.registry.knows(fp)


def test_a_schema_missing_a_served_feature_is_dead_lettered_with_the_fix(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    path, _, x = booster_file
    tracker = tracker_with(tmp_path, path)
    older = ModelSignature("lightgbm", SIG.inputs[:2], 1)  # lacks "age"
    retyped = ModelSignature("lightgbm", (*SIG.inputs[:2], Feature("age", CATEGORICAL)), 1)
    tracker.registry.add(older)
    tracker.registry.add(retyped)
    ev = feature_events(x, 1)[0]
    lacking = {**ev, "features": {k: v for k, v in ev["features"].items() if k != "age"}}
    as_int = {**ev, "features": {**ev["features"], "age": 4}}
    batch = [typed_incoming(older, lacking, 0), typed_incoming(retyped, as_int, 1)]
    out = score(Scorer(tracker, Metrics(), "w1"), batch)
    assert out.predictions == []
    (_, first), (_, second) = out.rejected
    assert isinstance(first, SignatureMismatch) and first.reason == "signature_mismatch"
    assert "lacks feature(s) 'age'" in str(first)
    assert str(first).endswith("fetch the current schema: modelvc schema -M churn --ref main")
    assert "'age' is categorical in the event's schema, double in the model" in str(second)


def test_an_unknown_schema_and_garbage_are_dead_lettered_as_undecodable(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    path, _, x = booster_file
    scorer = Scorer(tracker_with(tmp_path, path), Metrics(), "w1")
    ev = feature_events(x, 1)[0]
    stranger = ModelSignature("lightgbm", (*SIG.inputs, Feature("extra", DOUBLE)), 1)
    foreign = SingleObjectCodec(
        {"type": "record", "name": "Other", "fields": [{"name": "a", "type": "long"}]}
    ).encode({"a": 1})
    extra = {**ev, "features": {**ev["features"], "extra": 1.0}}
    ghost = typed_bytes(stranger, {**extra, "model": "ghost"})
    batch = [typed_incoming(stranger, extra, 0)]
    batch += [Incoming("t", 0, i + 1, 1, None, v) for i, v in enumerate([foreign, ghost, None])]
    out = score(scorer, batch)
    assert out.predictions == []
    assert all(isinstance(r, Undecodable) for _, r in out.rejected)
    reasons = {item.offset: str(r) for item, r in out.rejected}
    # churn's schema was learned by loading what it serves: still not this one.
    assert "modelvc schema -M churn" in reasons[0]
    assert fingerprint(feature_schema(stranger)).hex() in reasons[0]
    assert "modelvc schema -M ghost" in reasons[2]
    assert sorted(reasons) == [0, 1, 2, 3]


def test_a_plain_fastavro_producer_with_only_the_schema_interoperates() -> None:
    schema = feature_schema(ODD)
    body = io.BytesIO()
    body.write(b"\xc3\x01" + fingerprint_by_hand(schema))
    ev = event({"tenure": 1.0, "plan id": 7, "x": 2.0})
    features = {"tenure": 1.0, "_1_plan_id": 7, "x": 2.0}
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), {**ev, "features": features})
    registry = TypedRegistry()
    registry.add(ODD)
    assert registry.decode(body.getvalue())[0] == ev


def fingerprint_by_hand(schema: dict) -> bytes:
    """CRC-64-AVRO of the canonical form, little-endian, as the Avro spec writes it."""
    canonical = fastavro.schema.to_parsing_canonical_form(schema).encode()
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in canonical:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


# -- the fast path of all-double typed events ---------------------------------------
_TEXT = st.text(max_size=40)
_DOUBLES = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _slow(schema: dict, data: bytes) -> dict | None:
    """What fastavro alone makes of a typed body (None: it refuses it, or leaves bytes)."""
    buf = io.BytesIO(data)
    buf.seek(10)
    try:
        out = fastavro.schemaless_reader(buf, fastavro.parse_schema(schema), None)
    except Exception:
        return None
    return out if buf.tell() == len(data) else None  # type: ignore[return-value]


@settings(max_examples=300, deadline=None)
@given(
    event_id=_TEXT,
    model=_TEXT,
    ref=st.none() | _TEXT,
    key=_TEXT,
    at=st.integers(-(2**63), 2**63 - 1),
    values=st.lists(_DOUBLES, min_size=len(NAMES), max_size=len(NAMES)),
)
def test_the_fast_path_reads_what_fastavro_reads(
    event_id: str, model: str, ref: str | None, key: str, at: int, values: list[float]
) -> None:
    registry = TypedRegistry()
    registry.add(SIG)
    ev = feature_event(model, dict(zip(NAMES, values, strict=True)), key, ref, event_id, at)
    data = typed_bytes(SIG, ev)
    read = registry.read(data)
    assert read.doubles is not None  # the fast path took it
    slow = _slow(feature_schema(SIG), data)
    assert slow is not None
    assert read.doubles == struct.pack(f"<{len(NAMES)}d", *slow["features"].values())
    del slow["features"]
    assert {k: v for k, v in read.event.items() if k != "features"} == slow


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_hostile_bytes_are_refused_or_read_exactly_as_fastavro_reads_them(
    data: st.DataObject,
) -> None:
    registry = TypedRegistry()
    fp = registry.add(SIG)
    good = typed_bytes(SIG, event({n: 0.5 for n in NAMES}))
    body = bytearray(good[10:])
    for _ in range(data.draw(st.integers(1, 4))):  # flip, cut or grow the body
        kind = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if kind == "flip" and body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
        elif kind == "cut" and body:
            del body[data.draw(st.integers(0, len(body) - 1)) :]
        else:
            body += data.draw(st.binary(min_size=1, max_size=9))
    raw = MAGIC + fp + bytes(body)
    slow = _slow(feature_schema(SIG), raw)
    if slow is None:
        with pytest.raises(Undecodable):
            registry.read(raw)
        return
    decoded, _ = registry.decode(raw)
    assert {k: v for k, v in decoded.items() if k != "features"} == {
        k: v for k, v in slow.items() if k != "features"
    }
    assert struct.pack(f"<{len(NAMES)}d", *decoded["features"].values()) == struct.pack(
        f"<{len(NAMES)}d", *slow["features"].values()
    )


def test_the_registry_is_bounded_by_the_fields_it_holds() -> None:
    registry = TypedRegistry(max_fields=50)
    wide = [
        ModelSignature("lightgbm", tuple(Feature(f"s{i}f{j}", DOUBLE) for j in range(30)), 1)
        for i in range(3)
    ]
    fps = [registry.add(s) for s in wide]
    assert len(registry) == 1
    assert registry.knows(fps[2]) and not registry.knows(fps[0]) and not registry.knows(fps[1])


def test_features_shaped_like_renamed_ones_keep_every_field_distinct() -> None:
    clash = ModelSignature(
        "lightgbm", (Feature("a-b", DOUBLE), Feature("_0_a_b", DOUBLE), Feature("ok", DOUBLE)), 1
    )
    schema = feature_schema(clash)
    fields = [f["name"] for f in schema["fields"][-1]["type"]["fields"]]
    assert len(set(fields)) == 3
    registry = TypedRegistry()
    registry.add(clash)
    ev = event({"a-b": 1.0, "_0_a_b": 2.0, "ok": 3.0})
    decoded, carried = registry.decode(typed_bytes(clash, ev))
    assert decoded["features"] == {"a-b": 1.0, "_0_a_b": 2.0, "ok": 3.0}
    assert carried is not None and [f.name for f in carried] == ["a-b", "_0_a_b", "ok"]

"""Signed predictions: what a worker signs, and what an auditor accepts (no Kafka)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from streams.codec import PREDICTIONS
from streams.settings import Settings
from streams.signing import SigningKey, public_path, verify
from tests.golden.make_fixtures import golden_key
from tests.unit.test_scoring import booster_file, feature_events, incoming, tracker_with
from workers.bootstrap import bootstrap
from workers.metrics import Metrics
from workers.scorer import Scorer
from workers.settings import WorkerSettings
from workers.signing import (
    BAD_SIGNATURE,
    OPTIONAL_FIELDS,
    PREDICTION_CONTEXT,
    SIGNED_FIELDS,
    UNKNOWN_KEY,
    UNPINNED,
    UNSIGNED,
    WorkerKeys,
    prediction_message,
    sign_prediction,
    signature_finding,
)

GOLDEN = Path(__file__).parents[1] / "golden"

__all__ = ["booster_file"]  # the fixture, imported for this module's tests


def record(**changes: Any) -> dict[str, Any]:
    return {
        "prediction_id": "p" * 64,
        "feature_event_id": "e1",
        "source_topic": "modelvc.features",
        "source_partition": 2,
        "source_offset": 17,
        "model": "churn",
        "requested_ref": "production",
        "commit_id": "c" * 64,
        "artifact_sha256": "a" * 64,
        "scores": [0.1, 0.7000000000000001],
        "worker_id": "worker-1",
        "event_time": 1_700_000_000_000,
        "scored_at": 1_700_000_000_500,
    } | changes


def pinned(*keys: SigningKey) -> WorkerKeys:
    return WorkerKeys({k.key_id: k.public_key for k in keys}, pinned=True)


def test_the_message_is_the_context_and_a_digest_of_every_field_but_the_signature() -> None:
    key = SigningKey.generate()
    signed = record()
    sign_prediction(signed, key)
    message = prediction_message(signed)
    assert message.startswith(PREDICTION_CONTEXT) and len(message) == len(PREDICTION_CONTEXT) + 32
    assert prediction_message(signed | {"signature": b"other"}) == message
    assert prediction_message(signed | {"key_id": "0" * 64}) != message
    assert signed["key_id"] == key.key_id
    assert verify(key.public_key, message, signed["signature"])


@pytest.mark.parametrize("name", [f for f in SIGNED_FIELDS if f != "key_id"])
def test_tampering_with_any_signed_field_fails_verification(name: str) -> None:
    key = SigningKey.generate()
    signed = record()
    sign_prediction(signed, key)
    assert signature_finding(signed, pinned(key), verify) is None
    value = signed[name]
    tampered = {
        int: lambda v: v + 1,
        str: lambda v: v + "x",
        list: lambda v: [v[0] + 1e-12, *v[1:]],
    }[type(value)](value)
    kind, detail = signature_finding(signed | {name: tampered}, pinned(key), verify) or ("", "")
    assert kind == BAD_SIGNATURE and key.key_id in detail


def test_a_signature_survives_the_wire_and_a_forged_one_does_not() -> None:
    key = SigningKey.generate()
    signed = record()
    sign_prediction(signed, key)
    decoded = PREDICTIONS.decode(PREDICTIONS.encode(signed))
    assert signature_finding(decoded, pinned(key), verify) is None
    forger = SigningKey.generate()
    forged = decoded | {"scores": [0.9, 0.1]}
    forged["signature"] = forger.sign(prediction_message(forged))  # keeps the honest key id
    assert signature_finding(forged, pinned(key), verify) == (
        BAD_SIGNATURE,
        f"the signature does not verify with worker key {key.key_id}",
    )


def test_unsigned_and_unpinned_predictions_are_findings_only_when_keys_are_pinned() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    plain = PREDICTIONS.decode(PREDICTIONS.encode(record(key_id="", signature=b"")))
    assert signature_finding(plain, WorkerKeys({}), verify) is None
    assert (signature_finding(plain, pinned(key), verify) or ("",))[0] == UNSIGNED
    by_other = record()
    sign_prediction(by_other, other)
    assert (signature_finding(by_other, pinned(key), verify) or ("",))[0] == UNPINNED
    assert (signature_finding(by_other, WorkerKeys({}), verify) or ("",))[0] == UNKNOWN_KEY
    found = WorkerKeys({other.key_id: other.public_key})  # lying about, not pinned
    assert signature_finding(by_other, found, verify) is None


STAMPS = {
    "entity_key": "customer-17",
    "rollout_id": "r0123456789a",
    "arm": "candidate",
    "runtime": "onnxruntime 1.23.2 threads=1 opt=basic avx2",
}


def test_a_prediction_signed_before_the_rollout_fields_still_verifies() -> None:
    """The golden signed-v1 prediction was written before entity_key, rollout_id, arm,
    shadow and runtime existed: it reads them as their defaults, which the message leaves
    out."""
    old = PREDICTIONS.decode((GOLDEN / "signed-v1" / "prediction-01.bin").read_bytes())
    assert {name: old[name] for name in OPTIONAL_FIELDS} == OPTIONAL_FIELDS
    worker = golden_key("worker")
    assert signature_finding(old, pinned(worker), verify) is None
    # The defaults are not in the message: saying them or not is the same message.
    assert prediction_message(old) == prediction_message(
        {k: v for k, v in old.items() if k not in OPTIONAL_FIELDS}
    )


@pytest.mark.parametrize("name", sorted(OPTIONAL_FIELDS))
def test_a_set_rollout_stamp_is_signed_and_tampering_with_it_fails(name: str) -> None:
    key = SigningKey.generate()
    signed = record(**STAMPS, shadow=True)
    sign_prediction(signed, key)
    decoded = PREDICTIONS.decode(PREDICTIONS.encode(signed))
    assert signature_finding(decoded, pinned(key), verify) is None
    value = signed[name]
    for tampered in (OPTIONAL_FIELDS[name], value + "x" if isinstance(value, str) else 0):
        # Another value, or the field put back to its default (the stamp removed).
        kind, _ = signature_finding(decoded | {name: tampered}, pinned(key), verify) or ("", "")
        assert kind == BAD_SIGNATURE, (name, tampered)


def test_a_default_stamp_added_to_an_old_record_keeps_its_message() -> None:
    plain = record(key_id="k" * 64)
    assert prediction_message(plain) == prediction_message(plain | dict(OPTIONAL_FIELDS))
    assert prediction_message(plain) != prediction_message(plain | {"shadow": True})


def test_a_field_outside_the_v1_message_is_refused_for_signing() -> None:
    with pytest.raises(ValueError, match="SIGNED_FIELDS"):
        sign_prediction(record(surprise=1), SigningKey.generate())


def test_the_scorer_signs_every_prediction_it_encodes(
    tmp_path: Path, booster_file: tuple[Path, lgb.Booster, np.ndarray]
) -> None:
    path, _, x = booster_file
    key = SigningKey.generate()
    scorer = Scorer(tracker_with(tmp_path, path), Metrics(), "w1", signer=key)
    events = feature_events(x, 20)
    scored = asyncio.run(scorer.score([incoming(e, i) for i, e in enumerate(events)]))
    predictions = [PREDICTIONS.decode(v) for _, _, v in scored.predictions]
    assert len(predictions) == 20
    assert {p["key_id"] for p in predictions} == {key.key_id}
    assert all(signature_finding(p, pinned(key), verify) is None for p in predictions)
    # The runtime is stamped, and signed: a re-score is exact only under the same one.
    (runtime,) = {p["runtime"] for p in predictions}
    assert runtime.startswith(f"lightgbm {lgb.__version__} ")
    kind, _ = signature_finding(predictions[0] | {"runtime": None}, pinned(key), verify) or ("", "")
    assert kind == BAD_SIGNATURE
    unsigned = Scorer(tracker_with(tmp_path / "u", path), Metrics(), "w1")
    plain = asyncio.run(unsigned.score([incoming(events[0], 0)])).predictions
    assert PREDICTIONS.decode(plain[0][2])["signature"] == b""


def test_settings_turn_signing_on_and_place_the_key_under_the_home(tmp_path: Path) -> None:
    env = {"MODELVC_HOME": str(tmp_path), "MODELVC_WORKER_ID": "w-1"}
    assert not WorkerSettings.from_env(env).sign_predictions
    on = WorkerSettings.from_env(env | {"MODELVC_SIGN_PREDICTIONS": "1"})
    assert on.sign_predictions and on.worker_key_path == tmp_path / "keys" / "worker-w-1.key"
    assert WorkerSettings.from_env(on.to_env()) == on
    moved = WorkerSettings.from_env(env | {"MODELVC_WORKER_KEY": str(tmp_path / "k")})
    assert moved.worker_key_path == tmp_path / "k"
    with pytest.raises(ValueError, match="MODELVC_SIGN_PREDICTIONS"):
        WorkerSettings.from_env(env | {"MODELVC_SIGN_PREDICTIONS": "yes"})
    with pytest.raises(ValueError, match="MODELVC_WORKER_KEY"):
        _ = WorkerSettings(worker_id="../../etc/x").worker_key_path


def test_a_signing_worker_makes_its_key_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    topics = Settings(data_dir=tmp_path / "streams")
    settings = WorkerSettings(topics=topics, worker_id="w1", sign_predictions=True)
    signer = bootstrap(settings).scorer.signer
    assert signer is not None
    key_file = tmp_path / "keys" / "worker-w1.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert public_path(key_file).read_text() == f"{signer.public_key}\n"  # type: ignore[attr-defined]
    again = bootstrap(settings).scorer.signer
    assert again is not None and again.key_id == signer.key_id
    assert bootstrap(WorkerSettings(topics=topics, worker_id="w1")).scorer.signer is None

"""Write golden wire fixtures: `python -m tests.golden.make_fixtures`.

Run it only to ADD fixtures for a new schema version; never rewrite old ones:
they are the bytes that earlier releases put on the wire, and every future
schema must still read them (tests/unit/test_wire_compat.py). It also adds
every current writer schema to ``schemas/released`` (the set every codec
reads), which a schema change must do before it ships.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas import RELEASED_DIR
from streams import codec
from streams.core import (
    Command,
    CreateBranch,
    CreateModel,
    DeleteBranch,
    MakeCommit,
    Merge,
    MoveAlias,
    Rollback,
    decide,
)
from streams.core.fold import Fold

HERE = Path(__file__).parent


def history() -> list[Command]:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    bodies = [
        CreateModel(),
        MakeCommit(a, "baseline", params={"num_leaves": "31"}, metrics={"auc": 0.81}),
        CreateBranch("exp"),
        MakeCommit(b, "bigger", branch="exp", metrics={"auc": 0.86}),
        MakeCommit(c, "fresh data"),
        Merge("exp", strategy="theirs"),
        CreateBranch("tmp", from_ref="main~1"),
        DeleteBranch("tmp"),
        Merge("main", target="exp"),
        MoveAlias("production", "main"),
        Rollback("main", "main~1", "latency regression"),
    ]
    return [
        Command(f"cmd-{i:02d}", "churn", "golden", 1_800_000_000_000 + i * 1000, body)
        for i, body in enumerate(bodies)
    ]


def serving_records() -> dict[str, tuple[codec.SingleObjectCodec, dict[str, Any]]]:
    feature = {
        "event_id": "ev-1",
        "model": "churn",
        "ref": None,
        "entity_key": "customer-17",
        "event_time": 1_800_000_000_000,
        "features": {"tenure": 3.0, "spend": 42.5, "plan": "gold", "missing": None, "flag": True},
    }
    prediction = {
        "prediction_id": "a" * 64,
        "feature_event_id": "ev-1",
        "source_topic": "modelvc.features",
        "source_partition": 2,
        "source_offset": 41,
        "model": "churn",
        "requested_ref": "production",
        "commit_id": "b" * 64,
        "artifact_sha256": "c" * 64,
        "scores": [0.25],
        "worker_id": "worker-1",
        "event_time": 1_800_000_000_000,
        "scored_at": 1_800_000_000_012,
    }
    return {
        "feature-01": (codec.FEATURES, feature),
        "prediction-01": (codec.PREDICTIONS, prediction),
    }


def _write_new(path: Path, data: bytes) -> None:
    # Old fixtures are history: never rewrite one.
    if not path.exists():
        path.write_bytes(data)


def main() -> None:
    out = HERE / "v1"
    out.mkdir(exist_ok=True)
    for c in codec.CODECS:
        released = RELEASED_DIR / f"{c.fingerprint.hex()}.avsc"
        _write_new(released, (json.dumps(c.schema, indent=1) + "\n").encode())
    state = Fold()
    for i, command in enumerate(history()):
        _write_new(out / f"command-{i:02d}.bin", codec.encode_command(command, "golden"))
        for event in decide(state.models.get("churn"), command):
            state.apply(event)
            stem = f"event-{event.seq:02d}-{event.type}"
            _write_new(out / f"{stem}.bin", codec.encode_event(event))
            plain = json.dumps(event.to_plain(), indent=1, sort_keys=True)
            _write_new(out / f"{stem}.json", plain.encode())
    for stem, (record_codec, record) in serving_records().items():
        _write_new(out / f"{stem}.bin", record_codec.encode(record))
        _write_new(out / f"{stem}.json", json.dumps(record, indent=1, sort_keys=True).encode())


if __name__ == "__main__":
    main()

"""Write golden wire fixtures: `python -m tests.golden.make_fixtures`.

Run it only to ADD fixtures for a new schema version; never rewrite old ones:
they are the bytes that earlier releases put on the wire, and every future
schema must still read them (tests/unit/test_wire_compat.py).
"""

from __future__ import annotations

import json
from pathlib import Path

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


def main() -> None:
    out = HERE / "v1"
    out.mkdir(exist_ok=True)
    schemas = HERE / "schemas"
    schemas.mkdir(exist_ok=True)
    for c in (codec.EVENTS, codec.COMMANDS):
        (schemas / f"{c.fingerprint.hex()}.avsc").write_text(json.dumps(c.schema, indent=1))
    state = Fold()
    for i, command in enumerate(history()):
        (out / f"command-{i:02d}.bin").write_bytes(codec.encode_command(command, "golden"))
        for event in decide(state.models.get("churn"), command):
            state.apply(event)
            stem = f"event-{event.seq:02d}-{event.type}"
            (out / f"{stem}.bin").write_bytes(codec.encode_event(event))
            (out / f"{stem}.json").write_text(
                json.dumps(event.to_plain(), indent=1, sort_keys=True)
            )


if __name__ == "__main__":
    main()

"""Write golden wire fixtures: `python -m tests.golden.make_fixtures`.

Run it only to ADD fixtures for a new schema version; never rewrite old ones:
they are the bytes that earlier releases put on the wire, and every future
schema must still read them (tests/unit/test_wire_compat.py). It also adds
every current writer schema to ``schemas/released`` (the set every codec
reads), which a schema change must do before it ships.

``v1/`` holds unsigned history (before issue 10); ``signature-v1/`` a log whose
commits record model signatures (issue 11: a move refused without, then allowed with
``allow_signature_change``, merges that keep or take a signature, a legacy commit
without one); ``rollout-v1/`` a log of shadows and canary rollouts (issue 12: commits with
reference bins, a shadow started and stopped, a rollout advanced by its controller, paused,
resumed and completed with its alias move, one aborted, one promoted by hand); ``console-v1/``
commands that carry the compare-and-set ``expect`` of a rollback and a rollout start (issue
13); ``signed-v1/``
a signed log of
events partition 0: its writer-key ring ``~keys.0`` (a first key trusted on
first use, a second one added, the first retired), the ``~security`` chain (a
token issued and revoked, refs protected and unprotected) and a model whose
events are signed by either key. The keys come from fixed seeds and Ed25519
signatures are deterministic, so regenerating it writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import RELEASED_DIR
from streams import codec, signing
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
    security,
    signatures,
)
from streams.core.commands import (
    AbortRollout,
    AddWriterKey,
    AdvanceRollout,
    IssueToken,
    PauseRollout,
    PromoteRollout,
    ProtectRef,
    ResumeRollout,
    RetireWriterKey,
    RevokeToken,
    StartRollout,
    StartShadow,
    StopShadow,
    UnprotectRef,
)
from streams.core.decide import decide_on
from streams.core.events import ModelEvent
from streams.core.fold import Fold, state_digest
from streams.core.hashing import canonical
from streams.core.model_signature import CATEGORICAL, DOUBLE, Feature, ModelSignature
from streams.core.rollout import Policy, rollout_id
from workers.signing import sign_prediction

HERE = Path(__file__).parent
SIGNED = HERE / "signed-v1"
SIGNATURE = HERE / "signature-v1"
ROLLOUT = HERE / "rollout-v1"
CONSOLE = HERE / "console-v1"
# Stand-ins for the secrets: in a fixture they must be public to be reproducible.
GOLDEN_TOKEN = "mvc_0123456789abcdef_" + "g" * 43
REVOKED_TOKEN = "mvc_fedcba9876543210_" + "r" * 43


def golden_key(name: str) -> signing.SigningKey:
    """A writer key from a fixed seed (sha256 of ``name``), the same on every run."""
    seed = hashlib.sha256(f"modelvc golden writer key {name}".encode()).digest()
    return signing.SigningKey(Ed25519PrivateKey.from_private_bytes(seed))


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


def _signature(*inputs: tuple[str, str], outputs: int = 1) -> ModelSignature:
    return ModelSignature("lightgbm", tuple(Feature(n, t) for n, t in inputs), outputs)


# x, y; then "a b" added (a name Avro does not allow; the move needs
# --allow-signature-change); then "a b" removed, x retyped and 3 outputs: a move that
# needs nothing new is allowed.
SIGNATURE_1 = _signature(("x", DOUBLE), ("y", CATEGORICAL))
SIGNATURE_2 = _signature(("x", DOUBLE), ("y", CATEGORICAL), ("a b", DOUBLE))
SIGNATURE_3 = _signature(("x", CATEGORICAL), ("y", CATEGORICAL), outputs=3)


def signature_history() -> list[Command]:
    a, b, c, d, e = (ch * 64 for ch in "abcde")
    bodies = [
        CreateModel(),
        MakeCommit(a, "baseline", signature=SIGNATURE_1),
        MoveAlias("production", "main"),
        MakeCommit(b, "adds a b", signature=SIGNATURE_2),
        MoveAlias("production", "main", allow_signature_change=True),
        CreateBranch("exp", from_ref="main~1"),
        MakeCommit(c, "a legacy commit: no signature", branch="exp"),
        Merge("exp", strategy="ours"),  # keeps main's file, so its signature
        MakeCommit(d, "more", branch="exp", signature=SIGNATURE_1),
        Merge("exp", artifact_sha256=e, signature=SIGNATURE_3, message="retrained"),
        MoveAlias("production", "main"),  # "a b" removed, x retyped: allowed
    ]
    return [
        Command(f"sgn-{i:02d}", "fraud", "golden", 1_860_000_000_000 + i * 1000, body)
        for i, body in enumerate(bodies)
    ]


def write_signature() -> None:
    _write_log(
        SIGNATURE,
        signature_history(),
        lambda body: isinstance(body, MakeCommit | Merge) and body.signature is not None,
    )


def _write_log(out: Path, commands: list[Command], keep: Callable[[Any], bool]) -> None:
    """Decide ``commands`` (of one model) and write each event, the commands whose body
    ``keep`` picks, and the fold's digest."""
    out.mkdir(exist_ok=True)
    state = Fold()
    count = 0
    for i, command in enumerate(commands):
        if keep(command.body):
            data = codec.encode_command(command, "golden", f"req-{i:02d}")
            _write_new(out / f"command-{i:02d}.bin", data)
        for event in decide(state.models.get(command.model), command):
            assert state.apply(event) is None, command.command_id
            stem = f"event-{event.seq:02d}-{event.type}"
            _write_new(out / f"{stem}.bin", codec.encode_event(event))
            plain = json.dumps(event.to_plain(), indent=1, sort_keys=True)
            _write_new(out / f"{stem}.json", plain.encode())
            count += 1
    summary = {"state_digest": state_digest(state.models), "events": count}
    _write_new(out / "index.json", (json.dumps(summary, indent=1) + "\n").encode())


def _judged(step: int, percent: int, baseline: float, candidate: float, ok: bool) -> str:
    """Evidence as the controller writes it (canary.judge), canonical JSON."""
    return canonical(
        {
            "step": step,
            "percent": percent,
            "baseline": {
                "predictions": 5000,
                "labeled": 4000,
                "logloss": baseline,
                "windows": ["w1"],
            },
            "candidate": {
                "predictions": 600,
                "labeled": 500,
                "logloss": candidate,
                "windows": ["w2"],
            },
            "criteria": [
                {
                    "name": "logloss",
                    "limit": 0.01,
                    "baseline": baseline,
                    "candidate": candidate,
                    "ok": ok,
                }
            ],
        }
    ).decode()


def rollout_history() -> list[Command]:
    """Shadows and rollouts of model "canary"; the controller's commands carry its actor and
    command ids (``rollout:<id>:<step>:<action>``) as the streams app sends them."""
    a, b, c = (ch * 64 for ch in "abc")
    first, second, third = (rollout_id("canary", f"can-{i:02d}") for i in (5, 14, 16))
    policy = Policy((10, 50, 100), 100, {"logloss": 0.01}, 50.0, 0.001, 600_000)
    steps: list[tuple[str, Any]] = [
        ("golden", CreateModel()),
        ("golden", MakeCommit(a, "baseline", reference_sha256="d" * 64)),
        ("golden", MoveAlias("production", "main")),
        ("golden", MakeCommit(b, "candidate", reference_sha256="e" * 64)),
        ("golden", StartShadow("production", "main")),
        ("golden", StartRollout("production", "main", policy)),
        (f"rollout:{first}", AdvanceRollout(first, 0, _judged(0, 10, 0.31, 0.29, True))),
        ("golden", PauseRollout(first, "weekend freeze")),
        ("golden", ResumeRollout(first)),
        (f"rollout:{first}", AdvanceRollout(first, 1, _judged(1, 50, 0.31, 0.295, True))),
        (f"rollout:{first}", AdvanceRollout(first, 2, _judged(2, 100, 0.31, 0.3, True))),
        ("golden", StopShadow("production")),
        ("golden", MakeCommit(c, "worse: no reference bins")),
        ("golden", StartShadow("production", "main~2")),  # the first baseline, again
        ("golden", StartRollout("production", "main", Policy((50, 100), 10, {"logloss": 0.01}))),
        (
            f"rollout:{second}",
            AbortRollout(
                second,
                "logloss: candidate 0.4 > baseline 0.3 + 0.01",
                _judged(0, 50, 0.3, 0.4, False),
                0,
            ),
        ),
        ("golden", StartRollout("production", "main", Policy((10, 100), 0, max_p99_ms=80.0))),
        ("golden", PromoteRollout(third, "hotfix: promote now")),
    ]
    commands = []
    for i, (actor, body) in enumerate(steps):
        command_id = f"can-{i:02d}"
        if actor.startswith("rollout:"):
            action = type(body).__name__.removesuffix("Rollout").lower()
            command_id = f"{actor}:{getattr(body, 'expect_step', 0)}:{action}"
        commands.append(Command(command_id, "canary", actor, 1_870_000_000_000 + i * 60_000, body))
    return commands


def write_rollout() -> None:
    _write_log(
        ROLLOUT, rollout_history(), lambda body: not isinstance(body, CreateModel | MoveAlias)
    )


def console_history() -> list[Command]:
    """Compare-and-set from the console (issue 13): a rollback and a rollout start that name
    what the caller saw (``expect``), and an abort that names the step it saw."""
    a, b = "a" * 64, "b" * 64
    first = Fold()
    steps: list[Any] = [CreateModel(), MakeCommit(a, "baseline"), MakeCommit(b, "candidate")]
    for command in _console_commands(steps):
        for event in decide(first.models.get("console"), command):
            first.apply(event)
    state = first.models["console"]
    head, base = state.branches["main"], state.commits[state.branches["main"]].parents[0]
    policy = Policy((10, 100), 0, max_p99_ms=80.0)
    started = rollout_id("console", "con-06")
    steps += [
        Rollback("main", "main~1", "latency regression", expect=head),
        MoveAlias("production", "main", expect="none"),
        MakeCommit(b, "candidate again"),
        StartRollout("production", "main", policy, expect=base),
        AbortRollout(started, "wrong candidate", expect_step=0),
    ]
    return _console_commands(steps)


def _console_commands(bodies: list[Any]) -> list[Command]:
    return [
        Command(f"con-{i:02d}", "console", "golden", 1_880_000_000_000 + i * 1000, body)
        for i, body in enumerate(bodies)
    ]


def write_console() -> None:
    _write_log(CONSOLE, console_history(), lambda body: getattr(body, "expect", None) is not None)


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


def signed_history() -> list[tuple[Command, str]]:
    """The commands of the signed log, each with the name of the golden key that signs it."""
    first, second = golden_key("first"), golden_key("second")
    keys, sec, a, b, c = signatures.keys_stream(0), security.SECURITY_STREAM, *"abc"
    steps: list[tuple[str, Any, str]] = [
        (keys, AddWriterKey(first.public_key, "golden writer"), "first"),
        (sec, IssueToken("0123456789abcdef", "admin", "admin", _sha(GOLDEN_TOKEN)), "first"),
        (sec, ProtectRef("alias", "production", model="churn"), "first"),
        (sec, ProtectRef("branch", "main", role="admin"), "first"),
        ("churn", CreateModel(), "first"),
        ("churn", MakeCommit(a * 64, "baseline", metrics={"auc": 0.81}), "first"),
        ("churn", MoveAlias("production", "main"), "first"),
        (
            sec,
            IssueToken(
                "fedcba9876543210", "bob", "releaser", _sha(REVOKED_TOKEN), 1_900_000_000_000
            ),
            "first",
        ),
        (keys, AddWriterKey(second.public_key, "rotation"), "first"),
        (sec, RevokeToken("fedcba9876543210", "bob left"), "second"),
        (sec, UnprotectRef("branch", "main"), "second"),
        ("churn", MakeCommit(b * 64, "signed by the second key"), "second"),
        (keys, RetireWriterKey(first.key_id, "rotated"), "second"),
        ("churn", MakeCommit(c * 64, "after the rotation"), "second"),
    ]
    return [
        (
            Command(
                f"sig-{i:02d}", model, "admin", 1_850_000_000_000 + i * 1000, body, role="admin"
            ),
            key,
        )
        for i, (model, body, key) in enumerate(steps)
    ]


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def signed_log() -> tuple[list[ModelEvent], Fold]:
    """The signed events in partition-0 order, and the fold that verified each of them."""
    keys = {name: golden_key(name) for name in ("first", "second")}
    state = Fold(verify=signing.verify, trusted=frozenset({keys["first"].key_id}))
    log: list[ModelEvent] = []
    for command, key_name in signed_history():
        key = keys[key_name]
        for event in signed_events(state, command, key):
            reason = state.apply(event, 0)
            assert reason is None, f"{command.command_id}: {reason}"
            log.append(event)
    return log, state


def signed_events(state: Fold, command: Command, key: signing.SigningKey) -> list[ModelEvent]:
    """What the writer appends for ``command``: decided with ``key``'s id, then signed."""
    return [
        ModelEvent(**{**e.__dict__, "signature": key.sign(signatures.event_message(e.hash()))})
        for e in decide_on(state, 0, command, key.key_id)
    ]


def write_signed() -> None:
    SIGNED.mkdir(exist_ok=True)
    log, state = signed_log()
    for offset, event in enumerate(log):
        stem = f"event-{offset:02d}-{event.type}"
        _write_new(SIGNED / f"{stem}.bin", codec.encode_event(event))
        plain = json.dumps(event.to_plain(), indent=1, sort_keys=True)
        _write_new(SIGNED / f"{stem}.json", plain.encode())
    # A command as the API sends it now: with the role and the instance's signature.
    command, key_name = signed_history()[6]
    signed = signing.sign_command(golden_key(key_name), command)
    _write_new(SIGNED / "command-01.bin", codec.encode_command(signed, "golden", "req-01"))
    prediction = dict(serving_records()["prediction-01"][1])
    sign_prediction(prediction, golden_key("worker"))
    _write_new(SIGNED / "prediction-01.bin", codec.PREDICTIONS.encode(prediction))
    plain_prediction = {k: v.hex() if isinstance(v, bytes) else v for k, v in prediction.items()}
    _write_new(SIGNED / "prediction-01.json", json.dumps(plain_prediction, indent=1).encode())
    summary = {
        "partition": 0,
        "trusted": [golden_key("first").key_id],
        "state_digest": state_digest(state.models),
        "events": len(log),
    }
    _write_new(SIGNED / "index.json", (json.dumps(summary, indent=1) + "\n").encode())


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
    write_signed()
    write_signature()
    write_rollout()
    write_console()


if __name__ == "__main__":
    main()

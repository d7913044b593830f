"""Issue 12 on the wire: the shadow and rollout events, a commit's reference and the new
commands encode with fastavro and read back equal, Apache Avro reads them alike, a reader
of the previous release still reads what this one writes (or refuses it cleanly), the
projections keep rollouts and shadows, and the read side and the terminal show them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelvc import render
from modelvc.reference_decoder import ReferenceDecoder, first_difference
from schemas import RELEASED_DIR
from streams import codec, queries
from streams.codec import SingleObjectCodec, decode_event, encode_event, fingerprint, full_name
from streams.core import Command, MakeCommit, decide
from streams.core.commands import (
    AbortRollout,
    AdvanceRollout,
    Merge,
    PauseRollout,
    PromoteRollout,
    ResumeRollout,
    StartRollout,
    StartShadow,
    StopShadow,
)
from streams.core.events import (
    Commit,
    Committed,
    Merged,
    ModelEvent,
    RolloutAborted,
    RolloutAdvanced,
    RolloutPaused,
    RolloutResumed,
    RolloutStarted,
    ShadowStarted,
    ShadowStopped,
)
from streams.core.fold import Fold, fold, state_digest
from streams.core.hashing import GENESIS_HASH, canonical
from streams.core.rollout import COMPLETED, RUNNING, Policy
from streams.errors import UndecodableMessage
from streams.projection import MemoryProjection, Projection, RocksDBProjection
from tests.golden.make_fixtures import rollout_history

GOLDEN = Path(__file__).parents[1] / "golden"
ROLLOUT_LOG = GOLDEN / "rollout-v1"
ROLLOUT_EVENTS = sorted(ROLLOUT_LOG.glob("event-*.bin"))
# The ModelEvent and Command writer schemas of the release before issue 12.
PREVIOUS_EVENTS = "c5779b9129e7d218"
PREVIOUS_COMMANDS = "19ebd25d6231e635"
NEW_TYPES = (
    "ShadowStarted",
    "ShadowStopped",
    "RolloutStarted",
    "RolloutAdvanced",
    "RolloutAborted",
    "RolloutPaused",
    "RolloutResumed",
)
A, B, C = "a" * 64, "b" * 64, "c" * 64
EVIDENCE = canonical(
    {
        "step": 0,
        "percent": 10,
        "baseline": {"predictions": 900, "labeled": 800, "logloss": 0.3, "windows": ["w1"]},
        "candidate": {"predictions": 100, "labeled": 90, "logloss": 0.25, "windows": ["w2"]},
        "criteria": [
            {"name": "logloss", "limit": 0.01, "baseline": 0.3, "candidate": 0.25, "ok": True}
        ],
    }
).decode()


def _commit(reference: str | None) -> Commit:
    return Commit(B, (A,), C, {"k": "v"}, {"auc": 0.9}, "m", "alice", 7, None, reference)


PAYLOADS: list[Any] = [
    ShadowStarted("production", B),
    ShadowStopped("production", B),
    RolloutStarted("r0123456789a", "production", A, B, (10, 50, 100), 100, {}, None, None, 0),
    RolloutStarted(
        "r0123456789a",
        "production",
        A,
        B,
        (1, 100),
        0,
        {"logloss": 0.01, "auc": 0.0},
        50.0,
        0.001,
        600_000,
        True,
    ),
    RolloutAdvanced("r0123456789a", 0, 1, 50, False, EVIDENCE),
    RolloutAdvanced("r0123456789a", 2, 2, 100, True, '{"by":"alice","manual":true}'),
    RolloutAborted("r0123456789a", 1, "logloss regressed", EVIDENCE),
    RolloutAborted("r0123456789a", 0, "by hand", ""),
    RolloutPaused("r0123456789a", "weekend"),
    RolloutResumed("r0123456789a"),
    Committed("main", _commit("d" * 64)),
    Committed("main", _commit(None)),
    Merged("exp", "main", B, A, False, None, _commit("e" * 64)),
]


def _event(payload: Any, seq: int = 3) -> ModelEvent:
    return ModelEvent("churn", seq, GENESIS_HASH, f"cmd-{seq}", "rollout:r0123456789a", 9, payload)


EVENTS = [_event(p) for p in PAYLOADS]
REFERENCE = ReferenceDecoder.from_files(codec.EVENT_SCHEMA_FILES)


# -- every new event, through both decoders ------------------------------------------------
@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.type)
def test_each_new_event_round_trips_bit_exact_with_its_hash(event: ModelEvent) -> None:
    data = encode_event(event)
    assert data[2:10] == codec.EVENTS.fingerprint
    back = decode_event(data)
    assert back == event and type(back.payload) is type(event.payload)
    assert back.hash() == event.hash()
    assert encode_event(back) == data
    assert json.loads(json.dumps(back.to_plain())) == back.to_plain()


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.type)
def test_apache_avro_decodes_each_new_event_as_fastavro_does(event: ModelEvent) -> None:
    data = encode_event(event)
    ours = REFERENCE.decode(data)
    assert first_difference(codec.EVENTS.decode(data), ours) is None
    assert ours["payload"][0] == "modelvc.events." + event.type


def test_the_union_gains_the_new_events_at_its_end_in_order() -> None:
    """A branch is written as its index: old branches keep theirs, new ones follow."""
    payload = next(f for f in codec.EVENTS.schema["fields"] if f["name"] == "payload")
    names = [b["name"] if isinstance(b, dict) else b for b in payload["type"]]
    assert names[-len(NEW_TYPES) :] == ["modelvc.events." + t for t in NEW_TYPES]
    previous = json.loads((RELEASED_DIR / f"{PREVIOUS_EVENTS}.avsc").read_text())
    (old,) = [f for f in previous["fields"] if f["name"] == "payload"]
    assert [b["name"] for b in old["type"]] == names[: -len(NEW_TYPES)]


def test_a_commit_without_a_reference_keeps_its_bytes_and_json() -> None:
    """reference_sha256 is appended with a null default: absent from the JSON (and so the
    hash) of a commit that has none, written as one null byte."""
    without, with_one = encode_event(EVENTS[-2]), encode_event(EVENTS[-3])
    assert len(with_one) - len(without) == 1 + 1 + 64  # branch index, length, the digest
    assert "reference_sha256" not in EVENTS[-2].to_plain()["payload"]["commit"]  # type: ignore[index]
    assert EVENTS[-3].to_plain()["payload"]["commit"]["reference_sha256"] == "d" * 64  # type: ignore[index]


# -- the previous release's reader ----------------------------------------------------------
def _previous(fp: str) -> SingleObjectCodec:
    old = SingleObjectCodec(json.loads((RELEASED_DIR / f"{fp}.avsc").read_text()))
    return old


def test_the_previous_reader_reads_old_kinds_written_now_and_refuses_new_ones() -> None:
    """Old reader, new writer (Avro resolution): a Committed written today reads as it did
    (the reference is dropped); an event of a kind it never knew is undecodable, not junk."""
    old = _previous(PREVIOUS_EVENTS)
    old.add_writer(codec.EVENTS.schema)
    for event in EVENTS:
        data = encode_event(event)
        if event.type in NEW_TYPES:
            with pytest.raises(UndecodableMessage):
                old.decode(data)
            continue
        record = old.decode(data)
        name, payload = record["payload"]
        commit = payload["commit"]
        commit = commit[1] if isinstance(commit, tuple) else commit
        assert "reference_sha256" not in commit and commit["id"] == B
        assert name == "modelvc.events." + event.type


def test_every_earlier_writer_is_read_without_resolution() -> None:
    """Replay speed: the reader only appends, so every released ModelEvent writer (and the
    previous Command writer) is decoded by its own schema plus defaults (the fast path)."""
    events = codec.EVENTS
    released = {fingerprint(s) for s in codec.released_writers().get(full_name(events.schema), [])}
    assert len(released) > 2 and released - {events.fingerprint} <= set(events.prefixes)
    assert bytes.fromhex(PREVIOUS_EVENTS) in codec.EVENTS.prefixes
    assert bytes.fromhex(PREVIOUS_COMMANDS) in codec.COMMANDS.prefixes


# -- the new commands -------------------------------------------------------------------------
POLICY = Policy((10, 50, 100), 200, {"logloss": 0.01}, 50.0, None, 600_000)
BODIES: list[Any] = [
    StartShadow("production", "main"),
    StopShadow("production"),
    StartRollout("production", "main", POLICY),
    StartRollout("production", "exp", Policy((100,)), allow_signature_change=True),
    AdvanceRollout("r0123456789a", 1, EVIDENCE),
    AbortRollout("r0123456789a", "p99 too high", EVIDENCE, 2),
    AbortRollout("r0123456789a", "by hand"),
    PauseRollout("r0123456789a", "weekend"),
    ResumeRollout("r0123456789a"),
    PromoteRollout("r0123456789a", "looks good"),
    MakeCommit(A, "with bins", reference_sha256="d" * 64),
    Merge("exp", artifact_sha256=B, reference_sha256="d" * 64),
]
COMMAND_REFERENCE = ReferenceDecoder.from_files(["command.avsc"])


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_each_new_command_round_trips_and_apache_avro_agrees(body: Any) -> None:
    command = Command("c-1", "churn", "alice", 5, body, role="releaser")
    data = codec.encode_command(command, "instance-1", "req-1")
    assert codec.decode_command(data) == (command, codec.ReplyTo("instance-1", "req-1"))
    assert codec.encode_command(codec.decode_command(data)[0], "instance-1", "req-1") == data
    fast = codec.COMMANDS.decode(data)
    assert first_difference(fast, COMMAND_REFERENCE.decode(data)) is None


# -- a log with shadows and rollouts, decided by the core -------------------------------------
def rollout_log() -> tuple[list[ModelEvent], Fold]:
    state = Fold()
    events: list[ModelEvent] = []
    for command in rollout_history():
        for event in decide(state.models.get(command.model), command):
            assert state.apply(event) is None, command.command_id
            events.append(event)
    return events, state


def test_the_golden_rollout_log_has_every_new_event_and_its_commands() -> None:
    kinds = {p.stem.split("-", 2)[2] for p in ROLLOUT_EVENTS}
    assert kinds >= set(NEW_TYPES)
    index = json.loads((ROLLOUT_LOG / "index.json").read_text())
    assert index["events"] == len(ROLLOUT_EVENTS)
    for path in sorted(ROLLOUT_LOG.glob("command-*.bin")):
        command, _ = codec.decode_command(path.read_bytes())
        assert codec.decode_command(codec.encode_command(command, "golden", "r"))[0] == command
        assert (
            first_difference(
                codec.COMMANDS.decode(path.read_bytes()),
                COMMAND_REFERENCE.decode(path.read_bytes()),
            )
            is None
        )


@pytest.mark.parametrize("fixture", ROLLOUT_EVENTS, ids=lambda p: p.stem)
def test_every_golden_rollout_event_reads_back_in_both_decoders(fixture: Path) -> None:
    data = fixture.read_bytes()
    event = decode_event(data)
    assert event.to_plain() == json.loads(fixture.with_suffix(".json").read_text())
    assert first_difference(codec.EVENTS.decode(data), REFERENCE.decode(data)) is None
    if data[2:10] == codec.EVENTS.fingerprint:
        assert encode_event(event) == data


def test_the_golden_rollout_log_folds_to_its_recorded_digest() -> None:
    index = json.loads((ROLLOUT_LOG / "index.json").read_text())
    result = fold([decode_event(p.read_bytes()) for p in ROLLOUT_EVENTS])
    assert result.voided == 0 and state_digest(result.models) == index["state_digest"]
    state = result.models["canary"]
    statuses = [r.status for r in state.rollouts.values()]
    assert COMPLETED in statuses and "aborted" in statuses


def _apply(projection: Projection, events: list[ModelEvent]) -> None:
    records = [(offset, encode_event(e)) for offset, e in enumerate(events)]
    for start in range(0, len(records), 4):  # batches that split the multi-event decisions
        assert all(a.void_reason is None for a in projection.apply(0, records[start : start + 4]))


def test_the_memory_projection_keeps_rollouts_and_shadows() -> None:
    events, expected = rollout_log()
    projection = MemoryProjection()
    _apply(projection, events)
    state, want = projection.models["canary"], expected.models["canary"]
    assert list(state.rollouts.items()) == list(want.rollouts.items())
    assert dict(state.shadows) == dict(want.shadows) and state.shadows
    assert state_digest(projection.models) == state_digest(expected.models)


def test_rocksdb_reopened_keeps_rollouts_in_order_and_shadows(tmp_path: Path) -> None:
    events, expected = rollout_log()
    want = expected.models["canary"]
    projection = RocksDBProjection(tmp_path / "db")
    try:
        _apply(projection, events[:9])  # a rollout running, a shadow on
        assert dict(projection.models["canary"].shadows)
        _apply_rest(projection, events, 9)
    finally:
        projection.close()
    reopened = RocksDBProjection(tmp_path / "db")
    try:
        state = reopened.models["canary"]
        # Read back from its rows: the same rollouts, in the order they started (not the
        # ids' order: the rows come back sorted by key).
        assert list(state.rollouts.items()) == list(want.rollouts.items())
        assert list(state.rollouts) != sorted(state.rollouts)
        assert dict(state.shadows) == dict(want.shadows) and state.shadows
        assert state_digest(reopened.models) == state_digest(expected.models)
        assert [e for _, e in reopened.history("canary")] == events
    finally:
        reopened.close()


def _apply_rest(projection: Projection, events: list[ModelEvent], start: int) -> None:
    records = [(offset, encode_event(e)) for offset, e in enumerate(events)][start:]
    assert all(a.void_reason is None for a in projection.apply(0, records))


# -- the read side ---------------------------------------------------------------------------
def test_queries_show_rollouts_their_decisions_and_shadows() -> None:
    events, folded = rollout_log()
    state = folded.models["canary"]
    listed = queries.rollouts(state)
    assert [r["status"] for r in listed] == [r.status for r in state.rollouts.values()]
    first = listed[0]
    assert queries.rollout(state, first["id"]) == first
    assert queries.rollout_from_plain(json.loads(json.dumps(first))) == state.rollouts[first["id"]]
    decisions = queries.rollout_decisions(events, first["id"])
    assert decisions[0]["type"] == "RolloutStarted"
    assert all(d["actor"] and d["at"] for d in decisions)
    evidence = [d["evidence"] for d in decisions if d.get("evidence")]
    assert evidence and all(isinstance(e, dict) for e in evidence)
    json.dumps(decisions, allow_nan=False)  # plain JSON, as the API sends it
    assert queries.shadows(state) == [
        queries.plain_shadow(s) for _, s in sorted(state.shadows.items())
    ]
    with pytest.raises(Exception, match="rollout status"):
        queries.rollout(state, "r-none")


def test_decisions_keep_junk_evidence_as_written() -> None:
    forged = _event(RolloutAborted("r1", 0, "x", '{"a": NaN}'))
    (decision,) = queries.rollout_decisions([forged], "r1")
    assert decision["evidence"] == {"unparsed": '{"a": NaN}'}
    assert queries.rollout_decisions([forged], "r2") == []


def _status(step: int, status: str) -> dict[str, Any]:
    return {
        "id": "r0123456789a",
        "alias": "production",
        "baseline": A,
        "candidate": B,
        "policy": queries.plain_policy(POLICY),
        "step": step,
        "percent": (10, 50, 100)[step] if status == RUNNING else 0,
        "status": status,
        "started_at": 1_800_000_000_000,
        "step_started_at": 1_800_000_060_000,
        "allow_signature_change": False,
        "reason": "",
    }


def test_rollout_status_shows_steps_arms_and_each_decision_with_its_figures() -> None:
    decisions = queries.rollout_decisions(
        [_event(RolloutAdvanced("r0123456789a", 0, 1, 50, False, EVIDENCE), 5)], "r0123456789a"
    )
    out = render.rollout_status(_status(1, RUNNING), decisions)
    assert "10% ✓  50% ▶  100%" in out
    assert "serves 50% of entities" in out and f"candidate {B[:10]}" in out
    assert "advanced to 50%  by rollout:r0123456789a" in out
    assert "logloss" in out and "baseline 0.3  candidate 0.25  limit 0.01  ok" in out
    aborted = render.rollout_status({**_status(1, "aborted"), "reason": "p99"}, [])
    assert "10% ✓  50% ✗  100%" in aborted and "aborted (p99)" in aborted


def test_rollout_status_escapes_what_came_from_the_log() -> None:
    hostile = "\x1b[2J\u202e"
    decisions = queries.rollout_decisions(
        [_event(RolloutAborted("r0123456789a", 0, hostile, json.dumps({"by": hostile})))],
        "r0123456789a",
    )
    out = render.rollout_status({**_status(0, "aborted"), "reason": hostile}, decisions)
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b[2J" in out


def test_log_and_show_name_shadows_canaries_and_references() -> None:
    _, folded = rollout_log()
    state = folded.models["canary"]
    answer = queries.log(state, None)
    for with_graph in (False, True):
        out = render.log(answer, with_graph)
        for s in state.shadows.values():
            assert f"shadow of @{s.alias}" in out
    shown = render.commit(queries.commit_json(state, next(iter(state.commits))))
    with_reference = [c for c in state.commits.values() if c.reference_sha256]
    assert with_reference
    shown = render.commit(queries.commit_json(state, with_reference[0].id))
    assert f"reference: sha256:{with_reference[0].reference_sha256}" in shown


def test_log_lines_name_each_rollout_event_and_its_actor() -> None:
    events, folded = rollout_log()
    state = folded.models["canary"]
    out = render.log(queries.log(state, None, None, events), False)
    for kind in NEW_TYPES:
        assert kind in out, kind
    assert (
        f"@production    rollout {next(iter(state.rollouts))} at 50%  RolloutAdvanced by rollout:"
        in out
    )
    history = out[out.index("ref history") :].splitlines()[1:]
    seqs = [int(line.split()[0][1:]) for line in history]
    assert seqs == sorted(seqs, reverse=True) and seqs == [e.seq for e in events[:0:-1]]


def test_decoding_a_rollout_started_gives_tuples_as_decide_made_them() -> None:
    event = decode_event(encode_event(EVENTS[3]))
    assert isinstance(event.payload, RolloutStarted)
    assert event.payload.steps == (1, 100) and type(event.payload.steps) is tuple


def _never() -> Iterator[ModelEvent]:
    raise AssertionError("the history was read")
    yield  # a generator: it fails only when read


def test_the_log_reads_the_history_only_of_a_model_that_had_a_shadow_or_rollout() -> None:
    events, _ = rollout_log()
    before = fold(events[:4]).models["canary"]  # commits and an alias, nothing else yet
    assert queries.log(before, None, None, _never())["traffic_events"] == []
    cut = fold(events[:9]).models["canary"]  # as of seq 9: later events are not shown
    shown = queries.log(cut, None, None, events)["traffic_events"]
    assert [e["seq"] for e in shown] == [9, 8, 7, 6, 5]

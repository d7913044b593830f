"""Tamper evidence: every way of damaging the log is found, classified and located."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelvc import render
from modelvc.audit import Mismatch, OtherRuntime, Verification, replay, rescored, rollout_behind
from streams.archive import Archive, Record
from streams.codec import decode_event, encode_event
from streams.core import decide, fold, state_digest
from streams.core.audit import Where
from streams.core.events import ModelEvent
from streams.core.fold import Fold
from tests.golden.make_fixtures import history


def events() -> list:
    state = Fold()
    out = []
    for command in history():  # every command kind
        for event in decide(state.models.get("churn"), command):
            state.apply(event)
            out.append(event)
    return out


def write_archive(root: Path, values: list[bytes], segment_records: int = 4) -> Archive:
    archive = Archive(root, "modelvc.events", segment_records=segment_records)
    for offset, value in enumerate(values):
        archive.append(Record("modelvc.events", 0, offset, 1000 + offset, b"churn", value))
    archive.flush()
    return Archive(root)


def kinds(result) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    return [(f.kind, f.seq, f.where.offset) for f in result.violations]


def test_an_intact_archive_replays_to_the_live_digest(tmp_path: Path) -> None:
    log = events()
    write_archive(tmp_path, [encode_event(e) for e in log])
    result = replay(None, "modelvc.events", tmp_path)
    assert result.clean and result.auditor.events == len(log)
    assert result.digest == state_digest(fold(log).models)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [s["count"] for s in index["partitions"]["0"]] == [4, 4, 3]  # fixed-size segments


def test_an_identical_duplicate_is_harmless(tmp_path: Path) -> None:
    values = [encode_event(e) for e in events()]
    write_archive(tmp_path, [*values[:5], values[4], *values[5:]])
    result = replay(None, "modelvc.events", tmp_path)
    assert result.clean and result.auditor.duplicates() == 1
    assert result.digest == state_digest(fold(events()).models)


def test_a_dropped_event_is_a_gap(tmp_path: Path) -> None:
    values = [encode_event(e) for e in events()]
    write_archive(tmp_path, values[:5] + values[6:])
    found = kinds(replay(None, "modelvc.events", tmp_path))
    assert found[0] == ("gap", 7, 5)  # seq 6 missing before seq 7, which sits at offset 5


def test_two_swapped_events_are_reported_as_reordered(tmp_path: Path) -> None:
    values = [encode_event(e) for e in events()]
    values[5], values[6] = values[6], values[5]
    write_archive(tmp_path, values)
    found = kinds(replay(None, "modelvc.events", tmp_path))
    assert found[0] == ("reordered", 7, 5)


def test_two_different_events_with_one_sequence_number_conflict(tmp_path: Path) -> None:
    log = events()
    from dataclasses import replace

    forged = replace(log[3], actor="mallory")
    write_archive(tmp_path, [encode_event(e) for e in [*log[:4], forged, *log[4:]]])
    assert kinds(replay(None, "modelvc.events", tmp_path))[0] == ("conflict", 4, 4)


@pytest.mark.parametrize("position", [3, 6, 9])
def test_flipping_one_byte_names_the_first_bad_event(tmp_path: Path, position: int) -> None:
    values = [encode_event(e) for e in events()]
    # Change one character of the actor ("golden" -> "golden" with one letter altered):
    value = bytearray(values[position])
    at = value.index(b"golden")
    value[at] ^= 0x01
    values[position] = bytes(value)
    write_archive(tmp_path, values)
    archive = Archive(tmp_path)
    segment = tmp_path / archive.segments[0][position // 4]["file"]
    result = replay(None, "modelvc.events", tmp_path)
    first = result.violations[0]
    assert (first.kind, first.where.offset) == ("broken_hash", position)
    assert not result.problems  # the archive itself was written that way: only the chain knows
    # Now flip a byte of the written segment file instead: the index catches it too.
    data = bytearray(segment.read_bytes())
    data[data.index(b"golden")] ^= 0x01
    segment.write_bytes(bytes(data))
    again = replay(None, "modelvc.events", tmp_path)
    assert again.problems and "sha256" in again.problems[0].detail
    assert not again.clean


def test_an_undecodable_message_is_a_violation_with_coordinates(tmp_path: Path) -> None:
    values = [encode_event(e) for e in events()]
    # A released schema's header with a body cut short: bytes an event was written as.
    write_archive(tmp_path, [*values[:2], values[2][:14], *values[2:]])
    result = replay(None, "modelvc.events", tmp_path)
    assert next((f.kind, f.where.offset) for f in result.violations) == ("undecodable", 2)


def test_parallel_replay_by_partition_finds_the_same_as_one_pass(tmp_path: Path) -> None:
    from bench.history import model_history

    source = Fold()
    archive = Archive(tmp_path, "modelvc.events", segment_records=50)
    offsets = {0: 0, 1: 0, 2: 0}
    for m in range(6):
        name, partition = f"model-{m}", m % 3
        for event in model_history(source, name, 40):
            value = encode_event(event)
            if m == 4 and event.seq == 10:  # damage one event of one model
                value = value.replace(b"bench", b"bunch", 1)
            archive.append(Record("modelvc.events", partition, offsets[partition], 0, b"", value))
            offsets[partition] += 1
    archive.flush()
    one = replay(None, "modelvc.events", tmp_path, jobs=1)
    two = replay(None, "modelvc.events", tmp_path, jobs=2)
    assert one.digest == two.digest and one.events == two.events == sum(offsets.values())
    assert [(f.kind, f.model, f.where.offset) for f in one.violations] == [
        (f.kind, f.model, f.where.offset) for f in two.violations
    ]
    assert one.violations[0].model == "model-4" and one.violations[0].kind == "broken_hash"


# -- audit served: the rollout and arm behind a prediction ----------------------------------
def rollout_history() -> tuple[list[tuple[ModelEvent, Where]], str, dict[str, str]]:
    """A rollout of production started at t=100, advanced to 50% at t=200, aborted at t=300;
    the events where a replay read them, the rollout id and the two arms' commits."""
    from streams.core import Command, CreateModel, MakeCommit, MoveAlias
    from streams.core.commands import AbortRollout, AdvanceRollout, StartRollout
    from streams.core.rollout import Policy

    state = Fold()
    out: list[tuple[ModelEvent, Where]] = []
    bodies = [
        (1, CreateModel()),
        (2, MakeCommit("a" * 64, "baseline")),
        (3, MoveAlias("production", "main")),
        (4, MakeCommit("b" * 64, "candidate")),
        (100, StartRollout("production", "main", Policy((10, 50, 100), 0, {"logloss": 0.01}))),
    ]
    for at, body in bodies:
        for event in decide(state.models.get("churn"), Command(f"c{at}", "churn", "ann", at, body)):
            state.apply(event)
            out.append((event, Where("modelvc.events", 0, len(out))))
    model = state.models["churn"]
    rid = next(iter(model.rollouts))
    later = [
        (200, AdvanceRollout(rid, 0, '{"step":0}')),
        (300, AbortRollout(rid, "logloss regressed", '{"step":1}', expect_step=1)),
    ]
    for at, body in later:
        command = Command(f"c{at}", "churn", f"rollout:{rid}", at, body)
        for event in decide(state.models["churn"], command):
            state.apply(event)
            out.append((event, Where("modelvc.events", 0, len(out))))
    found = model.rollouts[rid]
    return out, rid, {"baseline": found.baseline, "candidate": found.candidate}


def entity_in(rid: str, low: int, high: int, prefix: str = "customer-") -> str:
    """A key whose bucket of rollout ``rid`` lies in [low, high) percent."""
    from streams.core.rollout import BUCKETS, bucket

    scale = BUCKETS // 100
    return next(
        key
        for key in (f"{prefix}{n}" for n in range(100_000))
        if low * scale <= bucket(rid, key) < high * scale
    )


def scored(
    rid: str, commit: str, arm: str, entity: str, at: int, event_id: str = "e1"
) -> dict[str, object]:
    return {
        "model": "churn",
        "requested_ref": "production",
        "commit_id": commit,
        "rollout_id": rid,
        "arm": arm,
        "entity_key": entity,
        "feature_event_id": event_id,
        "scored_at": at,
    }


def test_served_names_the_rollout_arm_and_the_decision_in_effect() -> None:
    history, rid, commits = rollout_history()
    first, second = entity_in(rid, 0, 10), entity_in(rid, 10, 50)
    answer, findings = rollout_behind(
        scored(rid, commits["candidate"], "candidate", first, 150), history
    )
    assert findings == [] and answer is not None
    assert (answer["id"], answer["arm"], answer["percent"]) == (rid, "candidate", 10)
    decision = answer["decision"]
    assert (decision["event"], decision["actor"], decision["offset"]) == (
        "RolloutStarted",
        "ann",
        4,
    )
    # At 50% the second entity is the candidate's too, by the controller's decision.
    answer, findings = rollout_behind(
        scored(rid, commits["candidate"], "candidate", second, 250), history
    )
    assert findings == [] and answer is not None and answer["percent"] == 50
    assert answer["decision"]["actor"] == f"rollout:{rid}"
    assert answer["decision"]["event"] == "RolloutAdvanced"
    prediction = {
        "prediction_id": "p1",
        "scored_at": 250,
        "worker_id": "w1",
        "model": "churn",
        "requested_ref": "production",
        "scores": [0.5],
        "feature_event_id": "e1",
        "source_topic": "modelvc.features",
        "source_partition": 0,
        "source_offset": 9,
    }
    shown = render.served({"prediction": prediction, "rollout": answer, "findings": []})
    assert f"rollout  {rid} of @production: the candidate arm served entity {second!r}" in shown
    assert f"50% since RolloutAdvanced #6 by rollout:{rid}" in shown


def test_served_routes_an_event_without_an_entity_by_its_id_as_the_workers_do() -> None:
    from streams.core.rollout import bucket

    history, rid, commits = rollout_history()
    # At 10%: one event on each side of the line; the workers hash the event's id (an
    # empty key would be one bucket, so one of the two would be found misrouted).
    on_candidate, on_baseline = entity_in(rid, 0, 10, "ev-"), entity_in(rid, 50, 100, "ev-")
    for event_id, side in ((on_candidate, "candidate"), (on_baseline, "baseline")):
        prediction = scored(rid, commits[side], side, "", 150, event_id)
        answer, findings = rollout_behind(prediction, history)
        assert findings == [] and answer is not None
        assert answer["bucket"] == bucket(rid, event_id) and answer["arm"] == side


def test_served_finds_an_arm_the_rollout_did_not_route_there() -> None:
    history, rid, commits = rollout_history()
    second = entity_in(rid, 10, 50)
    # At 10% the second entity belonged to the baseline.
    _, findings = rollout_behind(
        scored(rid, commits["candidate"], "candidate", second, 150), history
    )
    assert len(findings) == 1 and "as of its scoring" in findings[0]
    # The candidate's arm named with the baseline's commit.
    _, findings = rollout_behind(
        scored(rid, commits["baseline"], "candidate", entity_in(rid, 0, 10), 150), history
    )
    assert len(findings) == 1 and commits["baseline"] in findings[0]
    answer, findings = rollout_behind(
        scored("r0123456789a", commits["candidate"], "candidate", second, 150), history
    )
    assert answer is None and "not in the log of churn" in findings[0]
    answer, findings = rollout_behind(
        scored(rid, commits["candidate"], "candidate", second, 50), history
    )
    assert answer is None and "had not started" in findings[0]


def test_served_tells_a_worker_that_had_not_switched_yet_by_how_long() -> None:
    history, rid, commits = rollout_history()
    # Scored 30 ms after the rollout went to 50% as if it still were at 10%:
    answer, findings = rollout_behind(
        scored(rid, commits["baseline"], "baseline", entity_in(rid, 10, 50), 230), history
    )
    assert answer is not None and answer["percent"] == 50
    assert findings == [
        "RolloutAdvanced #6 had changed what production serves 30 ms before this prediction "
        "was scored (the worker had not switched yet)"
    ]
    # Scored on the candidate 20 ms after the abort:
    answer, findings = rollout_behind(
        scored(rid, commits["candidate"], "candidate", entity_in(rid, 0, 10), 320), history
    )
    assert answer is not None and answer["status"] == "aborted" and answer["percent"] == 0
    assert findings and findings[0].startswith("RolloutAborted #7 had changed")


# -- audit replay: the rollout events, as released ---------------------------------------
def rollout_values() -> list[bytes]:
    """The released rollout log (tests/golden/rollout-v1): shadows, a rollout advanced by
    its controller, paused, resumed and completed, one aborted, one promoted by hand."""
    folder = Path(__file__).parent.parent / "golden" / "rollout-v1"
    return [p.read_bytes() for p in sorted(folder.glob("event-*.bin"))]


@pytest.mark.parametrize("decoder", ["fastavro", "reference"])
def test_the_released_rollout_log_replays_clean_to_its_digest(tmp_path: Path, decoder: str) -> None:
    values = rollout_values()
    index = json.loads((Path(__file__).parent.parent / "golden/rollout-v1/index.json").read_text())
    write_archive(tmp_path, values)
    result = replay(None, "modelvc.events", tmp_path, decoder=decoder)
    assert result.clean and result.events == index["events"] == len(values)
    assert result.digest == index["state_digest"]


def test_altered_evidence_breaks_the_chain_at_that_decision(tmp_path: Path) -> None:
    values = rollout_values()
    at = next(i for i, v in enumerate(values) if decode_event(v).type == "RolloutAdvanced")
    value = bytearray(values[at])
    # The evidence claims 5000 labelled predictions instead of 4000: still canonical JSON.
    value[value.index(b'"labeled":4000') + len(b'"labeled":')] ^= 0x01
    values[at] = bytes(value)
    write_archive(tmp_path, values)
    first = replay(None, "modelvc.events", tmp_path).violations[0]
    assert (first.kind, first.where.offset) == ("broken_hash", at)


def test_a_correctly_chained_decision_out_of_order_is_void(tmp_path: Path) -> None:
    """A stranger re-appends the last step's decision, chained properly: the fold voids it
    (the rollout has completed), and the replay says so where it lies."""
    from dataclasses import replace

    log = [decode_event(v) for v in rollout_values()]
    state = fold(log).models[log[-1].model]
    advanced = next(e for e in log if e.type == "RolloutAdvanced")
    forged = replace(advanced, seq=state.seq + 1, prev_hash=state.last_hash)
    write_archive(tmp_path, [*map(encode_event, log), encode_event(forged)])
    found = replay(None, "modelvc.events", tmp_path).violations
    assert [(f.kind, f.seq, f.where.offset) for f in found] == [("invalid", forged.seq, len(log))]


# -- re-scoring: the same bits, or why not -----------------------------------------------
ORT = "onnxruntime 1.23.2 threads=1 opt=basic avx2"


def prediction(scores: list[float], runtime: str | None) -> dict[str, object]:
    return {"prediction_id": "p1", "feature_event_id": "e1", "scores": scores, "runtime": runtime}


def test_a_rescore_is_compared_bit_for_bit() -> None:
    assert rescored(prediction([0.25, -0.0], ORT), [0.25, -0.0], ORT) is None
    # == would call these equal: -0.0 is not 0.0, and one ulp is a difference.
    zero = rescored(prediction([0.0], ORT), [-0.0], ORT)
    ulp = rescored(prediction([0.1], None), [0.1 + 2**-56], ORT)
    assert isinstance(zero, Mismatch) and isinstance(ulp, Mismatch)
    assert ulp.detail == "re-scored differently" and 0 < ulp.difference < 1e-16
    assert isinstance(rescored(prediction([0.1], ORT), [0.1, 0.2], ORT), Mismatch)


def test_a_score_made_under_another_runtime_is_reported_apart() -> None:
    other = rescored(prediction([0.5], "onnxruntime 1.22.0 threads=1 opt=basic avx2"), [0.6], ORT)
    assert isinstance(other, OtherRuntime)
    assert other.detail == (
        "made under 'onnxruntime 1.22.0 threads=1 opt=basic avx2'; this auditor runs "
        f"{ORT!r}: install that version to re-score exactly"
    )
    # The same bits under another runtime are verified all the same.
    assert rescored(prediction([0.5], "lightgbm 4.5.0 threads=1"), [0.5], ORT) is None
    assert not Verification(other_runtime=[other]).clean
    text = render.verification(
        {"checked": 1, "mismatches": [], "seconds": 0.1, "other_runtime": [other.__dict__]}
    )
    assert "1 differ but were made under another runtime" in text and "1.22.0" in text

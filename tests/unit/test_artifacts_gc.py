"""`modelvc artifacts gc`: what a record of the events or commands topic mentions is kept,
whatever the record; only old objects go; a record written while it runs spares what it
names; an empty events topic (a wrong cluster or namespace) deletes nothing."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from modelvc import render
from modelvc.artifacts_gc import LogEmpty, candidates, collect, mentioned, referenced
from modelvc.cli import UsageError, main, older_than, parser
from streams.artifacts import LocalStore, StoredObject
from streams.codec import encode_command, encode_event
from streams.core import Command, CreateModel, MakeCommit, decide
from streams.core.fold import Fold
from streams.statuses import STATUS_BY_CODE
from tests.golden.make_fixtures import history

DAY = 86_400.0
NOW = 1_800_000_000.0


def digest(n: int) -> str:
    return hashlib.sha256(f"model {n}".encode()).hexdigest()


def committed_log() -> tuple[list[bytes], set[str]]:
    """The encoded events of a history with every command kind, and the artifacts it commits."""
    state, values = Fold(), []
    for command in history():
        for event in decide(state.models.get("churn"), command):
            state.apply(event)
            values.append(encode_event(event))
    artifacts = {c.artifact_sha256 for c in state.models["churn"].commits.values()}
    return values, artifacts


def test_every_artifact_a_real_commit_names_is_found_in_the_encoded_events() -> None:
    values, artifacts = committed_log()
    unrelated = {digest(n) for n in range(5)}
    assert artifacts and referenced(values, artifacts | unrelated) == artifacts


def test_a_mention_counts_anywhere_in_any_bytes_in_either_case() -> None:
    d = digest(1)
    wanted = {d, digest(2)}
    assert mentioned(b"\x00\xff" + d.encode() + b"\x01", wanted) == {d}
    assert mentioned(d.upper().encode(), wanted) == {d}  # undecodable or forged: still kept
    assert mentioned(b"cafe" + d.encode() + b"beef", wanted) == {d}  # inside a longer hex run
    assert mentioned(d.encode()[:63], wanted) == set()
    assert mentioned(None, wanted) == mentioned(b"", wanted) == set()
    assert mentioned(d.encode(), set()) == set()


def obj(n: int, age_days: float, size: int = 10) -> StoredObject:
    return StoredObject(digest(n), size, NOW - age_days * DAY)


def test_candidates_are_unreferenced_and_at_least_as_old_as_the_cutoff() -> None:
    objects = [obj(1, 40), obj(2, 40), obj(3, 1), obj(4, 30)]
    chosen = candidates(objects, {digest(2)}, NOW - 30 * DAY)
    assert [o.digest for o in chosen] == [digest(1), digest(4)]
    assert candidates(objects, set(), NOW) == objects  # --older-than 0d: any age


class Log:
    """A topic: partitions of raw values; ``written_meanwhile`` lands on partition 1 just
    after the first scan has read to its end, before anything is deleted."""

    def __init__(self, values: list[bytes], written_meanwhile: bytes | None = None) -> None:
        self.partitions: dict[int, list[bytes | None]] = {0: list(values), 1: []}
        self.meanwhile = written_meanwhile
        self.reads: list[list[int] | None] = []

    def ends(self) -> dict[int, int]:
        return {p: len(v) for p, v in self.partitions.items()}

    def values(self, partitions: Iterable[int] | None = None) -> Iterator[bytes | None]:
        wanted = None if partitions is None else list(partitions)
        self.reads.append(wanted)
        for p, values in self.partitions.items():
            if wanted is None or p in wanted:
                yield from list(values)
        if self.meanwhile is not None:
            self.partitions[1].append(self.meanwhile)
            self.meanwhile = None


def stored(tmp_path: Path, *ages_days: float) -> tuple[LocalStore, list[str]]:
    store = LocalStore(tmp_path / "artifacts")
    digests = []
    for n, days in enumerate(ages_days):
        data = f"model {n}".encode()
        d = hashlib.sha256(data).hexdigest()
        store.put(io.BytesIO(data), d)
        os.utime(store.path_for(d), (NOW - days * DAY, NOW - days * DAY))
        digests.append(d)
    return store, digests


def test_gc_deletes_only_old_objects_no_event_mentions(tmp_path: Path) -> None:
    store, (kept, orphan, young) = stored(tmp_path, 40, 40, 1)
    values, _ = committed_log()
    log, commands = Log([*values, b"commit of " + kept.encode()]), Log([])
    dry = collect(store, log, commands, NOW - 30 * DAY, dry_run=True)
    assert [o.digest for o in dry.chosen] == [orphan] and dry.total_bytes == len(b"model 1")
    assert {o.digest for o in store.list()} == {kept, orphan, young}  # a dry run deletes nothing
    done = collect(store, log, commands, NOW - 30 * DAY, dry_run=False)
    assert [o.digest for o in done.chosen] == [orphan] and done.objects == 3
    assert {o.digest for o in store.list()} == {kept, young}
    assert collect(store, log, commands, NOW - 30 * DAY, dry_run=False).chosen == []


def test_a_commit_accepted_but_not_yet_decided_keeps_its_object(tmp_path: Path) -> None:
    """Between the API writing a commit command and the streams app deciding it, only the
    commands topic names the digest."""
    store, (pending, orphan) = stored(tmp_path, 40, 40)
    events, commands = Log([b"an unrelated event"]), Log([b"commit of " + pending.encode()])
    result = collect(store, events, commands, NOW, dry_run=False)
    assert [o.digest for o in result.chosen] == [orphan]
    assert {o.digest for o in store.list()} == {pending}


def test_a_drift_reference_linked_from_a_commit_is_kept(tmp_path: Path) -> None:
    """`commit --reference` stores the bins as an object the commit names by digest
    (reference_sha256): gc keeps it like the model itself, from the event or the command."""
    store, (model, reference, orphan) = stored(tmp_path, 40, 40, 40)
    command = Command("cmd-r", "churn", "golden", 1_800_000_100_000, CreateModel())
    state = Fold()
    for event in decide(None, command):
        state.apply(event)
    commit = Command(
        "cmd-r1",
        "churn",
        "golden",
        1_800_000_101_000,
        MakeCommit(model, "with bins", reference_sha256=reference),
    )
    events = [encode_event(e) for e in decide(state.models["churn"], commit)]
    for log, commands in ((Log(events), Log([])), (Log([b"x"]), Log([encode_command(commit)]))):
        result = collect(store, log, commands, NOW, dry_run=True)
        assert [o.digest for o in result.chosen] == [orphan]


@pytest.mark.parametrize("topic", ["events", "commands"])
def test_a_record_written_during_the_scan_spares_what_it_names(tmp_path: Path, topic: str) -> None:
    store, (named_late, orphan) = stored(tmp_path, 40, 40)
    late = b"commit of " + named_late.encode()
    logs = {
        "events": Log([b"nothing here"], written_meanwhile=late if topic == "events" else None),
        "commands": Log([], written_meanwhile=late if topic == "commands" else None),
    }
    result = collect(store, logs["events"], logs["commands"], NOW, dry_run=False)
    assert [o.digest for o in result.spared] == [named_late]
    assert [o.digest for o in result.chosen] == [orphan]
    assert {o.digest for o in store.list()} == {named_late}
    assert logs[topic].reads == [None, [1]]  # the whole topic, then the partition that moved


def test_an_empty_events_topic_deletes_nothing(tmp_path: Path) -> None:
    """A wrong cluster or namespace shows an empty log: every object would look orphaned."""
    store, digests = stored(tmp_path, 40, 40)
    for dry_run in (True, False):
        with pytest.raises(LogEmpty) as refused:
            collect(store, Log([]), Log([b"a command"]), NOW, dry_run=dry_run)
        assert refused.value.objects == 2
    assert {o.digest for o in store.list()} == set(digests)


def test_when_nothing_is_old_enough_the_log_is_not_read(tmp_path: Path) -> None:
    store, _ = stored(tmp_path, 1, 2)
    events, commands = Log([]), Log([])
    assert collect(store, events, commands, NOW - 30 * DAY, dry_run=False).chosen == []
    assert events.reads == commands.reads == []


def test_older_than_takes_what_token_expiry_takes_and_zero() -> None:
    now_ms = int(NOW * 1000)
    assert older_than("30d", now_ms) == now_ms - 30 * 86_400_000
    assert older_than("12h", now_ms) == now_ms - 12 * 3_600_000
    assert older_than("0d", now_ms) == now_ms
    assert older_than("2027-01-31", now_ms) == 1_801_353_600_000
    for bad in ("30", "-1d", "1y", "00d", "2027-02-30", "30d ", "1" * 100 + "d"):
        with pytest.raises(UsageError, match="--older-than"):
            older_than(bad, now_ms)


def test_artifacts_help_describes_each_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["artifacts", "--help"])
    shown = capsys.readouterr().out
    assert exited.value.code == 0
    for action, words in (("ls", "every object"), ("verify", "re-hash"), ("gc", "delete")):
        assert f"    {action}  " in shown and words in shown


def test_gc_help_states_what_is_kept_and_the_limits() -> None:
    shown = parser().parse_args(["artifacts", "gc"]).command_parser.format_help()
    flat = " ".join(shown.split())
    for words in (
        "commands topic",
        "makes its object young again",
        "KAFKA_BOOTSTRAP or MODELVC_NAMESPACE",
        "its own store (bucket or prefix)",
        "noncurrent version",
        "between that last read and the delete",
    ):
        assert words in flat, words


def test_the_command_a_dry_run_suggests_parses_as_the_delete() -> None:
    store = "s3://modelvc-artifacts/some prefix"  # quoted as a shell would need it
    shown = render.artifacts_gc(
        {
            "store": store,
            "dry_run": True,
            "older_than": "12h",
            "objects": 1,
            "chosen": [{"digest": digest(1), "size": 3, "modified": NOW, "age_s": DAY}],
            "spared": [],
            "total_bytes": 3,
        }
    )
    (suggested,) = [line for line in shown.splitlines() if "modelvc " in line]
    argv = shlex.split(suggested.split("modelvc ", 1)[1])
    args = parser().parse_args(argv)
    assert (args.command, args.action, args.older_than, args.store) == (
        "artifacts",
        "gc",
        "12h",
        store,
    )
    assert not args.dry_run


# -- the README says what the artifacts code does ---------------------------------------
REPO = Path(__file__).resolve().parents[2]


def readme() -> str:
    return " ".join((REPO / "README.md").read_text().split())


def test_the_readme_lists_every_benchmark_make_bench_runs() -> None:
    makefile = (REPO / "Makefile").read_text()
    target = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    benches = re.findall(r"-m (bench\.\w+)", target)
    assert "bench.artifacts" in benches
    text = readme()
    for bench in benches:
        assert f"| `python -m {bench}` —" in text, f"README's benchmark table lacks {bench}"


def test_the_readme_names_every_store_error_code_and_the_gc_limits() -> None:
    text = readme()
    for code in STATUS_BY_CODE:
        if code.startswith("store_"):
            assert f"`{code}`" in text, code
    for words in (
        "modelvc artifacts init",
        "`MODELVC_MAX_MODEL_MB`",
        "`modelvc.commands`",
        "One store per namespace",
        "NoncurrentVersionExpiration",
        "One window remains",
        "`MODELVC_WORKER_SHARED_STORE=0`",
        "tier 5 (`tests/store`",
        "the timed test tiers",
    ):
        assert words in text, words
    # Claims that were not true: a model "never in memory", leftovers aborted "at startup".
    assert "2 GB" not in text and "aborts, at startup" not in text

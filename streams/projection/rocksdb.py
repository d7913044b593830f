"""The projection in RocksDB: restarts resume from the stored offsets.

Each applied batch writes the touched models' rows *and* the partition's next
offset in one RocksDB write batch, so after any crash the stored graph is
exactly the fold of the log up to the stored offset, and resuming from that
offset neither skips nor repeats an event. Deleting the directory rebuilds
everything from offset 0.

Layout (raw bytes keys, JSON values):
  o/<partition>                 next offset to read
  m/<model>/meta                seq, last_hash, default branch, branches, aliases, shadows,
                                the ids of its rollouts in the order they started
  m/<model>/c/<seq:012>         commit added by event <seq>
  m/<model>/o/<rollout id>      a rollout as its last event left it
  m/<model>/r/<command_id>      receipt of an accepted command (the key is (model, command id))
  m/<model>/l/<seq:012>         reflog entry of event <seq>
  v/<model>                     count of void events seen for the model
  e/<model>/<seq:012>           offset + bytes of each applied event (point-in-time queries)
  s/<chain>                     the partition of a system chain (~security, ~keys.P)

A system chain keeps only its applied events (e/<chain>/...): they are few (tokens,
rules, writer keys), so loading re-folds them in (partition, offset) order, the order
they were applied in (a signature check depends on the ring as it was then), which
keeps their state in one place: the core's fold, never a second encoding of it here.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

from streams.codec import decode_event
from streams.core.events import (
    Commit,
    Committed,
    Merged,
    ModelEvent,
    commit_from_plain,
    plain_commit,
)
from streams.core.signatures import Verify
from streams.core.state import ModelState, Receipt, Reflog, RefMove
from streams.projection.base import Projection, Transaction
from streams.queries import plain_rollout, plain_shadow, rollout_from_plain, shadow_from_plain
from streams.signing import verify as verify_signature

log = logging.getLogger("modelvc.streams")

_OFFSET = struct.Struct(">q")


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class _Batch(Transaction):
    def __init__(self, db: Rdict) -> None:
        self._db = db
        self._batch = WriteBatch(raw_mode=True)

    def event(
        self, partition: int, offset: int, value: bytes, event: ModelEvent, state: ModelState | None
    ) -> None:
        if state is None:
            self._batch.put(f"s/{event.model}".encode(), str(partition).encode())
        else:
            _put_event_rows(self._batch, state, event)
        # The applied event itself, for point-in-time questions (--as-of).
        self._batch.put(f"e/{event.model}/{event.seq:012d}".encode(), _OFFSET.pack(offset) + value)

    def void(self, model: str, count: int) -> None:
        self._batch.put(f"v/{model}".encode(), str(count).encode())

    def commit(self, partition: int, next_offset: int, touched: Mapping[str, ModelState]) -> None:
        for model, state in touched.items():
            self._batch.put(f"m/{model}/meta".encode(), _dumps(_meta(state)))
        self._batch.put(f"o/{partition}".encode(), str(next_offset).encode())
        self._db.write(self._batch)


class RocksDBProjection(Projection):
    def __init__(
        self,
        path: Path,
        verify: Verify | None = verify_signature,
        trusted: frozenset[str] | None = None,
    ) -> None:
        super().__init__(verify, trusted)
        path.parent.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(path), options)
        self._load()

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> Transaction:
        return _Batch(self._db)

    # -- loading -------------------------------------------------------------
    def _load(self) -> None:
        per_model: dict[str, dict[str, list[tuple[bytes, bytes]]]] = {}
        for key, value in self._scan(b"m/", b"o/", b"v/"):
            parts = key.decode().split("/")
            if parts[0] == "o":
                self._next_offsets[int(parts[1])] = int(value)
            elif parts[0] == "v":
                self.fold.void_reasons[parts[1]] = int(value)
                self.fold.voided += int(value)
            elif parts[0] == "m":
                per_model.setdefault(parts[1], {}).setdefault(parts[2], []).append((key, value))
        for model, rows in per_model.items():
            self.fold.models[model] = _state_from_rows(model, rows)
        chains = {bytes(k).decode()[2:]: int(v) for k, v in self._scan(b"s/")}
        stored = [
            (chains[name], offset, event) for name in chains for offset, event in self.history(name)
        ]
        # In the live order, (partition, offset): whether an event verifies depends on
        # its partition's ring as it was then, not as it ended (a retired key's events).
        stored.sort(key=lambda row: (row[0], row[1]))
        for partition, offset, event in stored:
            reason = self.fold.apply(event, partition)
            if reason is not None:  # applied once, so only a changed trust rule gets here
                log.warning(
                    "stored %s#%d (offset %d) is void now: %s",
                    event.model,
                    event.seq,
                    offset,
                    reason,
                )

    def _scan(self, *prefixes: bytes) -> Iterator[tuple[bytes, bytes]]:
        for prefix in prefixes:
            for raw_key, value in self._db.items(from_key=prefix):
                key = bytes(raw_key)  # type: ignore[arg-type]  # raw mode: keys are bytes
                if not key.startswith(prefix):
                    break
                yield key, bytes(value)

    def history(self, model: str) -> Iterator[tuple[int, ModelEvent]]:
        for _, value in self._scan(f"e/{model}/".encode()):
            (offset,) = _OFFSET.unpack_from(value)
            yield offset, decode_event(value[_OFFSET.size :])

    def event_offset(self, model: str, seq: int) -> int | None:
        value = self._db.get(f"e/{model}/{seq:012d}".encode())
        if value is None:
            return None
        (offset,) = _OFFSET.unpack_from(bytes(value))
        return int(offset)


def _meta(state: ModelState) -> dict[str, object]:
    return {
        "default_branch": state.default_branch,
        "created_at": state.created_at,
        "seq": state.seq,
        "last_hash": state.last_hash,
        "branches": dict(state.branches),
        "aliases": dict(state.aliases),
        "shadows": {alias: plain_shadow(s) for alias, s in state.shadows.items()},
        # Rows come back in key order; this keeps the order the rollouts started in.
        "rollouts": list(state.rollouts),
    }


def _put_event_rows(batch: WriteBatch, state: ModelState, event: ModelEvent) -> None:
    prefix = f"m/{event.model}/"
    commit: Commit | None = None
    if isinstance(event.payload, Committed | Merged):
        commit = event.payload.commit
    if commit is not None:
        batch.put(f"{prefix}c/{event.seq:012d}".encode(), _dumps(plain_commit(commit)))
    rollout_id = getattr(event.payload, "rollout_id", None)
    if rollout_id is not None:
        rollout = state.rollouts[rollout_id]
        batch.put(f"{prefix}o/{rollout_id}".encode(), _dumps(plain_rollout(rollout)))
    receipt = state.receipts[event.command_id]
    batch.put(f"{prefix}r/{event.command_id}".encode(), _dumps(asdict(receipt)))
    if state.reflog is not None and state.reflog.entry.seq == event.seq:
        batch.put(f"{prefix}l/{event.seq:012d}".encode(), _dumps(asdict(state.reflog.entry)))


def _state_from_rows(model: str, rows: dict[str, list[tuple[bytes, bytes]]]) -> ModelState:
    meta = json.loads(rows["meta"][0][1])
    # RocksDB iterates keys in order, so zero-padded seqs come back in log order.
    commits = {c.id: c for c in (commit_from_plain(json.loads(v)) for _, v in rows.get("c", []))}
    receipts = {
        bytes(k).decode().split("/", 3)[3]: Receipt(**json.loads(v)) for k, v in rows.get("r", [])
    }
    reflog: Reflog | None = None
    for _, value in rows.get("l", []):
        reflog = Reflog(RefMove(**json.loads(value)), reflog)
    stored = {r.id: r for r in (rollout_from_plain(json.loads(v)) for _, v in rows.get("o", []))}
    # A store written before rollouts existed has neither key: none happened then.
    rollouts = {rollout_id: stored[rollout_id] for rollout_id in meta.get("rollouts", [])}
    shadows = {alias: shadow_from_plain(s) for alias, s in meta.get("shadows", {}).items()}
    return ModelState(
        name=model,
        default_branch=meta["default_branch"],
        created_at=meta["created_at"],
        seq=meta["seq"],
        last_hash=meta["last_hash"],
        commits=commits,
        branches=meta["branches"],
        aliases=meta["aliases"],
        receipts=receipts,
        reflog=reflog,
        shadows=shadows,
        rollouts=rollouts,
    )

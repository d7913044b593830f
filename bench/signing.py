"""What signatures cost: per event against the commit round trip, and fold/replay rates.

`python -m bench.signing [EVENTS] [COMMITS]`

- Per commit the service makes two signatures (the API signs the command, the writer
  the event) and two verifications (the writer checks the command, the follower the
  event). Their median cost is compared with the median (p50) commit round trip on
  the embedded broker, measured in the same run (target: at most 10%).
- Fold and decode+fold of one generated log, signed (one ring on partition 0) and
  unsigned, with the cyclic GC paused as a replay tool does (``bench.fold_replay``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.fold_replay import timed_fold
from bench.history import model_history
from bench.report import percentile, report
from modelvc.client import Client
from modelvc.stack import Stack
from streams.codec import decode_event, encode_event
from streams.core.commands import AddWriterKey, Command
from streams.core.decide import decide_on
from streams.core.events import ModelEvent
from streams.core.fold import Fold
from streams.core.signatures import command_message, event_message, keys_stream
from streams.signing import SigningKey, sign_event, verify
from tests.conftest import train_model


def per_call_us(fn: object, calls: int, runs: int = 5) -> float:
    """Median over ``runs`` of the mean microseconds per call of ``fn()``."""
    assert callable(fn)
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(samples)


def commit_p50_ms(commits: int) -> float:
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp:
        stack = Stack.up(Path(tmp) / "home")
        try:
            c = Client(stack.url, token=stack.token)
            digest = c.upload(train_model(Path(tmp) / "m.txt"))["sha256"]
            c.create("bench")
            took = []
            for i in range(commits):
                t = time.perf_counter()
                c.commit("bench", digest, f"commit {i}", metrics={"auc": i / commits})
                took.append((time.perf_counter() - t) * 1000)
        finally:
            stack.down()
    return percentile(took, 50)


def signed_log(total: int, key: SigningKey) -> tuple[list[ModelEvent], list[ModelEvent]]:
    """The same generated history unsigned, and signed behind a ring on partition 0."""
    source = Fold()
    unsigned: list[ModelEvent] = []
    model = 0
    while len(unsigned) < total:
        unsigned.extend(model_history(source, f"model-{model:06d}", 100))
        model += 1
    unsigned = unsigned[:total]
    ring = Fold(verify=verify)
    add = Command("ring", keys_stream(0), "bench", 1, AddWriterKey(key.public_key))
    signed = [sign_event(key, e) for e in decide_on(ring, 0, add, key.key_id)]
    # Re-chain every model under the key: the key id is part of each event's hash.
    last: dict[str, str] = {}
    for event in unsigned:
        event = replace(event, key_id=key.key_id, prev_hash=last.get(event.model, event.prev_hash))
        last[event.model] = event.hash()
        signed.append(sign_event(key, event))
    return unsigned, signed


def fold_rate(events: list[ModelEvent], signed: bool) -> float:
    runs = []
    for _ in range(3):
        seconds, replay = _fold(events, Fold(verify=verify) if signed else Fold())
        assert replay.voided == 0, replay.void_reasons
        runs.append(len(events) / seconds)
    return statistics.median(runs)


def _fold(events: list[ModelEvent], into: Fold) -> tuple[float, Fold]:
    # timed_fold builds a plain Fold; this one is given its verifier.
    t = time.process_time()
    for event in events:
        into.apply(event)
    return time.process_time() - t, into


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    commits = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    key = SigningKey.generate()
    message = event_message("ab" * 32)
    signature = key.sign(message)
    sign_us = per_call_us(lambda: key.sign(message), 2000)
    verify_us = per_call_us(lambda: verify(key.public_key, message, signature), 2000)
    command = Command("c", "m", "alice", 1, AddWriterKey(key.public_key), role="admin")
    command_us = per_call_us(lambda: command_message(command), 2000)
    per_commit_us = 2 * sign_us + 2 * verify_us + command_us
    p50 = commit_p50_ms(commits)
    share = per_commit_us / 1000 / p50 * 100

    unsigned, signed = signed_log(total, key)
    plain_rate = fold_rate(unsigned, signed=False)
    signed_rate = fold_rate(signed, signed=True)
    encoded_plain = [encode_event(e) for e in unsigned]
    encoded_signed = [encode_event(e) for e in signed]
    t = time.process_time()
    decoded = [decode_event(b) for b in encoded_plain]
    replay_plain_s = time.process_time() - t + timed_fold(decoded, time.process_time)[0]
    t = time.process_time()
    decoded = [decode_event(b) for b in encoded_signed]
    replay_signed_s = time.process_time() - t + _fold(decoded, Fold(verify=verify))[0]
    report(
        "signing",
        [
            ("Ed25519 sign", sign_us, "us", ""),
            ("Ed25519 verify", verify_us, "us", ""),
            ("command message", command_us, "us", ""),
            ("per commit (2 signs + 2 verifies)", per_commit_us, "us", ""),
            ("commit round trip p50", p50, "ms", ""),
            ("signing share of the p50", share, "%", "<= 10"),
            ("events folded", total, "events", ""),
            ("fold, unsigned", plain_rate, "events/s", ""),
            ("fold, signed + verified", signed_rate, "events/s", ""),
            ("fold ratio unsigned/signed", plain_rate / signed_rate, "x", ""),
            ("decode + fold, unsigned", len(unsigned) / replay_plain_s, "events/s", ""),
            ("decode + fold, signed", len(signed) / replay_signed_s, "events/s", ""),
        ],
    )


if __name__ == "__main__":
    main()

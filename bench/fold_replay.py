"""Pure fold replay of a generated 1,000,000-event log (target >= 50,000 events/s).

`python -m bench.fold_replay [EVENTS] [EVENTS_PER_MODEL]`

`python -m bench.fold_replay scaling [EVENTS] [RUNS]` folds EVENTS events of one
model and the same number spread over models of 100 events each (the median of
RUNS runs of each): a fold linear in its events runs both at the same rate. Both
histories have no merges, as deciding one walks every ancestor (which would make
generating a long history quadratic; the fold checks a merge commit in O(1)).
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable

from bench.history import model_history
from bench.report import report
from streams.codec import decode_event, encode_event
from streams.core.events import ModelEvent
from streams.core.fold import Fold, state_digest


def timed_fold(
    events: list[ModelEvent], clock: Callable[[], float] = time.perf_counter
) -> tuple[float, Fold]:
    """Seconds (of ``clock``) to fold ``events``, with the cyclic GC paused.

    The decoded log is long-lived: a replay tool keeps the cyclic GC from
    rescanning it on every pass. The fold allocates no reference cycles (frozen
    values, dicts, persistent maps whose links point one way), so reference
    counting still frees everything it drops.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        t = clock()
        replay = Fold()
        for event in events:
            replay.apply(event)
        return clock() - t, replay
    finally:
        gc.enable()
        gc.unfreeze()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "scaling":
        scaling(
            int(sys.argv[2]) if len(sys.argv) > 2 else 100_000,
            int(sys.argv[3]) if len(sys.argv) > 3 else 5,
        )
        return
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    per_model = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    started = time.perf_counter()
    source = Fold()
    encoded: list[bytes] = []
    model = 0
    while len(encoded) < total:
        for event in model_history(source, f"model-{model:06d}", per_model):
            encoded.append(encode_event(event))
        model += 1
    encoded = encoded[:total]
    print(
        f"generated {len(encoded):,} events over {model:,} models in "
        f"{time.perf_counter() - started:.1f}s",
        flush=True,
    )

    gc.collect()
    t = time.perf_counter()
    events = [decode_event(b) for b in encoded]
    decode_s = time.perf_counter() - t
    fold_s, replay = timed_fold(events)
    digest = state_digest(replay.models)
    assert replay.voided == 0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(
        "fold_replay",
        [
            ("events", len(events), "events", ""),
            ("fold (decoded events)", len(events) / fold_s, "events/s", ">= 50,000"),
            ("decode + fold", len(events) / (fold_s + decode_s), "events/s", ""),
            ("fold time", fold_s, "s", ""),
            ("decode time", decode_s, "s", ""),
            ("peak RSS (whole bench)", peak_mb, "MB", ""),
        ],
        {"digest": digest, "models": model},
    )


def scaling(total: int, runs: int) -> None:
    """Fold events/s of one model of ``total`` events vs ``total / 100`` models of 100."""
    shapes = {"one model": (1, total), "models of 100": (total // 100, 100)}
    logs: dict[str, tuple[list[ModelEvent], str]] = {}
    for label, (models, per_model) in shapes.items():
        source = Fold()
        encoded = [
            encode_event(event)
            for m in range(models)
            for event in model_history(source, f"model-{m:06d}", per_model, merges=False)
        ]
        logs[label] = [decode_event(b) for b in encoded], state_digest(source.models)
        print(f"{label}: {models:,} x {per_model:,}, {len(encoded):,} events", flush=True)
    samples: dict[str, list[float]] = {label: [] for label in shapes}
    for _ in range(runs):  # interleaved, so both shapes see the same machine
        for label, (events, digest) in logs.items():
            # CPU time: on a shared machine, wall time mostly measures the neighbours.
            seconds, replay = timed_fold(events, time.process_time)
            assert replay.voided == 0 and state_digest(replay.models) == digest
            samples[label].append(len(events) / seconds)
            del replay
    one, many = (statistics.median(samples[label]) for label in shapes)
    # The best run too: on a shared machine it is the one least disturbed by others.
    best_one, best_many = (max(samples[label]) for label in shapes)
    report(
        "fold_replay_scaling",
        [
            ("one model: fold", one, "events/s", "median"),
            ("models of 100: fold", many, "events/s", "median"),
            ("ratio one / many", one / many, "", "~1"),
            ("one model: best run", best_one, "events/s", ""),
            ("models of 100: best run", best_many, "events/s", ""),
            ("ratio of best runs", best_one / best_many, "", "~1"),
        ],
        {"events": total, "runs": runs, "samples": samples},
    )


if __name__ == "__main__":
    main()

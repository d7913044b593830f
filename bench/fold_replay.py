"""Pure fold replay of a generated 1,000,000-event log (target >= 50,000 events/s).

`python -m bench.fold_replay [EVENTS] [EVENTS_PER_MODEL]`
"""

from __future__ import annotations

import gc
import resource
import sys
import time

from bench.history import model_history
from bench.report import report
from streams.codec import decode_event, encode_event
from streams.core.fold import Fold, state_digest


def main() -> None:
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
    # The decoded log is long-lived: keep the cyclic GC from rescanning it on every pass
    # (what a replay tool does for its input; the fold itself allocates no cycles).
    # The fold allocates no reference cycles (frozen values, plain dicts), so a replay
    # tool can pause the cyclic collector while it runs; reference counting still frees.
    gc.freeze()
    gc.disable()
    t = time.perf_counter()
    replay = Fold()
    for event in events:
        replay.apply(event)
    fold_s = time.perf_counter() - t
    gc.enable()
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


if __name__ == "__main__":
    main()

"""Peak RSS of the streams app holding 100 models x 100 commits (target <= 400 MB).

The history is decided with the real core and appended straight to the log;
the app folds it like any other, then its VmHWM is read from /proc.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from kafka import KafkaProducer

from bench.history import model_history
from bench.report import report
from modelvc.stack import Stack
from streams.codec import encode_event
from streams.core.fold import Fold, state_digest
from streams.topics import home_partition


def vm(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def main() -> None:
    models = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    commits = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    source = Fold()
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp:
        stack = Stack.up(Path(tmp) / "home")
        try:
            pid = stack.processes["streams"].pid
            idle = vm(pid, "VmRSS")
            producer = KafkaProducer(
                bootstrap_servers=stack.settings.bootstrap, acks="all", linger_ms=5
            )
            partitions = stack.settings.partitions
            for m in range(models):
                name = f"model-{m:03d}"
                # The service's rule: a model lives on its key's default-partitioner partition.
                part = home_partition(name, partitions)
                for event in model_history(source, name, 0, commits=commits):
                    producer.send(
                        stack.settings.events_topic,
                        key=name.encode(),
                        value=encode_event(event),
                        partition=part,
                    )
            producer.flush()
            producer.close()
            expected = state_digest(source.models)
            c = stack.client()
            deadline = time.monotonic() + 300
            while c.digest()["digest"] != expected:
                if time.monotonic() > deadline:
                    raise SystemExit("the streams app did not converge on the expected digest")
                time.sleep(0.5)
            held = sum(len(s.commits) for s in source.models.values())
            peak = vm(pid, "VmHWM")
            now = vm(pid, "VmRSS")
        finally:
            stack.down()
    report(
        "streams_memory",
        [
            ("models", models, "", ""),
            ("commits held", held, "", ""),
            ("events", sum(s.seq for s in source.models.values()), "", ""),
            ("RSS idle", idle, "MB", ""),
            ("RSS holding the graph", now, "MB", ""),
            ("peak RSS (VmHWM)", peak, "MB", "<= 400"),
        ],
    )


if __name__ == "__main__":
    main()

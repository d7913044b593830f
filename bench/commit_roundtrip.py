"""Commit round trip on the embedded broker: API call -> accepted -> visible in `log`.

`python -m bench.commit_roundtrip [COMMITS]` (target p99 <= 50 ms over 1,000 commits, issue 11)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.report import percentile, report
from modelvc.stack import Stack
from tests.conftest import train_model


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp:
        stack = Stack.up(Path(tmp) / "home")
        try:
            c = stack.client()
            digest = c.upload(train_model(Path(tmp) / "m.txt"))["sha256"]
            c.create("bench")
            accepted_ms: list[float] = []
            visible_ms: list[float] = []
            for i in range(count):
                t0 = time.perf_counter()
                answer = c.commit("bench", digest, f"commit {i}", metrics={"auc": i / count})
                t1 = time.perf_counter()
                shown = c.log("bench", answer["head"])  # reads with after=<offset>
                t2 = time.perf_counter()
                assert shown["commits"][0]["id"] == answer["head"]
                accepted_ms.append((t1 - t0) * 1000)
                visible_ms.append((t2 - t0) * 1000)
        finally:
            stack.down()
    report(
        "commit_roundtrip",
        [
            ("commits", count, "", ""),
            ("accepted p50", percentile(accepted_ms, 50), "ms", ""),
            ("accepted p99", percentile(accepted_ms, 99), "ms", ""),
            ("visible in log p50", percentile(visible_ms, 50), "ms", ""),
            ("visible in log p99", percentile(visible_ms, 99), "ms", "<= 50"),
        ],
    )


if __name__ == "__main__":
    main()

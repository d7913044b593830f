"""`make demo`: the version story on the embedded stack, printed as CLI sessions."""

from __future__ import annotations

import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelvc.cli import main as cli
from modelvc.stack import Stack


def train(path: Path, seed: int, rounds: int, leaves: int) -> Path:
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.3, size=500) > 0).astype(int)
    params = {"objective": "binary", "num_leaves": leaves, "verbosity": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=rounds)
    booster.save_model(str(path))
    return path


def run(home: Path, line: str, expect: int = 0) -> None:
    print(f"\n$ modelvc {line}", flush=True)
    code = cli(["--home", str(home), "--actor", "demo", *shlex.split(line)])
    sys.stdout.flush()
    if code != expect:
        raise SystemExit(f"demo step failed with exit code {code}: modelvc {line}")


def story(home: Path, work: Path) -> None:
    m1 = train(work / "churn-v1.txt", seed=1, rounds=10, leaves=7)
    m2 = train(work / "churn-v2.txt", seed=2, rounds=40, leaves=15)
    m3 = train(work / "churn-v1-fresh.txt", seed=3, rounds=10, leaves=7)
    run(home, "create churn")
    run(
        home,
        f"commit {m1} -m 'baseline: 10 rounds' --param num_leaves=7 --param rounds=10 "
        "--metric auc=0.81 --metric logloss=0.47",
    )
    run(home, "branch create exp")
    run(
        home,
        f"commit {m2} --branch exp -m 'bigger model: 40 rounds' --param num_leaves=15 "
        "--param rounds=40 --metric auc=0.86 --metric logloss=0.39",
    )
    run(
        home,
        f"commit {m3} -m 'baseline retrained on fresh data' --param num_leaves=7 "
        "--param rounds=10 --metric auc=0.82 --metric logloss=0.46",
    )
    run(home, "merge exp --into main", expect=1)
    run(home, "merge exp --into main --strategy theirs")
    run(home, "alias set production main")
    run(home, f"commit {m1} -m 'stale writer' --expect-head main~1", expect=1)
    run(home, "rollback main --to main~1 --reason 'latency regression in canary'")
    run(home, "log --graph")
    run(home, "diff main exp")
    run(home, "refs")
    run(home, "digest")


def serving(home: Path, stack: Stack, events: int = 6000, rate: float = 2000.0) -> str:
    """Score a stream while production is promoted and rolled back; show the switch."""
    from modelvc.streaming import FeatureProducer, subscribe_predictions

    print("\n--- streaming inference ---", flush=True)
    worker = stack.add_worker()
    print(f"started worker-1 (http://127.0.0.1:{worker.port}/metrics)", flush=True)
    client = stack.client(actor="demo")
    before = client.resolve("churn", "production")["commit"]
    promoted = client.resolve("churn", "main")["commit"]  # the retrained baseline
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(500, 5))
    received: list[tuple[float, dict[str, Any]]] = []
    reader_done = threading.Event()

    def read() -> None:
        for p in subscribe_predictions(
            stack.settings.access,
            topic=stack.settings.predictions_topic,
            from_beginning=True,
            idle_timeout_s=5,
        ):
            received.append((time.time(), p))
            if len(received) >= events:
                break
        reader_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    print(f"publishing {events:,} feature events at ~{rate:,.0f}/s for model churn (ref: default)")
    started = time.time()
    moves = {events // 3: ("promote", promoted), 2 * events // 3: ("rollback", before)}
    with FeatureProducer(stack.settings.access, stack.settings.features_topic) as producer:
        for i in range(events):
            if i in moves:
                label, target = moves[i]
                producer.flush()
                print(
                    f"  event {i:>5}: $ modelvc alias set production {target[:10]}   ({label})",
                    flush=True,
                )
                client.set_alias("churn", "production", target)
            row = rows[i % len(rows)]
            producer.publish(
                "churn",
                {f"Column_{j}": float(v) for j, v in enumerate(row)},
                entity_key=f"customer-{i % 97}",
                event_id=f"demo-{i}",
            )
            if i % 200 == 199:
                producer.flush()
                time.sleep(max(0.0, started + (i + 1) / rate - time.time()))
    published = time.time() - started
    reader_done.wait(60)
    print("\n$ modelvc tail predictions   (first 3 and the switches)")
    last = None
    for n, (_, p) in enumerate(
        sorted(received, key=lambda r: int(str(r[1]["feature_event_id"])[5:]))
    ):
        if n < 3 or p["commit_id"] != last:
            print(
                f"  {p['feature_event_id']:<11} {p['model']}@{p['requested_ref']}  "
                f"commit {str(p['commit_id'])[:10]}  score {p['scores'][0]:.4f}"
            )
        last = p["commit_id"]
    commits: dict[str, int] = {}
    for _, p in received:
        commits[str(p["commit_id"])[:10]] = commits.get(str(p["commit_id"])[:10], 0) + 1
    latencies = sorted((t - int(p["event_time"]) / 1000) * 1000 for t, p in received)
    span = max(t for t, _ in received) - started if received else 1.0
    print(f"\npredictions by commit: {commits}")
    print(
        f"published {events:,} events in {published:.1f}s; {len(received):,} predictions read "
        f"in {span:.1f}s ({len(received) / span:,.0f}/s at this offered load)"
    )
    if latencies:
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"end-to-end latency (published -> prediction read): p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )
    switched = [p for _, p in received if p["commit_id"] == promoted]
    return str((switched or [p for _, p in received])[0]["prediction_id"])


def auditing(home: Path, prediction_id: str) -> None:
    print("\n--- audit: trust nothing, check everything ---", flush=True)
    run(home, "audit replay")
    run(home, f"audit served {prediction_id}")
    run(home, "audit verify-predictions --sample 500")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="modelvc-demo-") as tmp:
        home = Path(tmp) / "home"
        print("starting the embedded stack (Tansu broker on loopback + streams app)…", flush=True)
        # The admin token `up` writes is demo's, so `--actor demo` below is a check that holds.
        stack = Stack.up(home, admin_actor="demo")
        print(f"API {stack.url}, broker {stack.settings.bootstrap} (memory only)")
        try:
            story(home, Path(tmp))
            auditing(home, serving(home, stack))
        finally:
            stack.down()
            print("\nstopped the broker, archiver, streams app and worker this demo started")


if __name__ == "__main__":
    main()

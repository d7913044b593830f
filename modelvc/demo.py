"""`make demo`: the version story on the embedded stack, printed as CLI sessions."""

from __future__ import annotations

import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from modelvc.cli import main as cli
from modelvc.stack import Stack

# Labels for a batch of feature rows, drawn from the truth the demo's data follows.
Truth = Callable[[np.ndarray, np.random.Generator], np.ndarray]
FEATURES = [f"Column_{j}" for j in range(5)]
# Short monitor windows, so that a canary step is judged within seconds of its labels.
MONITOR_TUNING = {"window_ms": 1000, "lateness_ms": 500}
CANARY_POLICY = "--steps 10,50,100 --min-labels 300 --max-regression logloss=0.05"


def churn_truth(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whether a customer churned: the function every churn model here tries to learn."""
    noise = rng.normal(scale=0.3, size=len(x))
    churned: np.ndarray = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + noise > 0).astype(int)
    return churned


def train(
    path: Path, seed: int, rounds: int, leaves: int, rows: int = 500, stale: bool = False
) -> Path:
    """A churn model; ``stale``: trained on a feature map with two columns swapped."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    y = churn_truth(x, rng)
    if stale:
        x = x[:, [3, 1, 2, 0, 4]]
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


@contextmanager
def labelled_traffic(
    stack: Stack,
    model: str,
    names: Sequence[str],
    truth: Truth,
    *,
    prefix: str,
    seed: int,
    rate: float = 1000.0,
    entities: int = 1000,
    ref: str = "production",
    batch: int = 100,
) -> Iterator[dict[str, str]]:
    """Feature events for ``model@ref`` at about ``rate`` per second, from a thread; the
    labels of each batch (drawn by ``truth``) follow with the next batch, as truth arrives
    after the prediction it judges. Yields event id -> entity key of what was sent so far;
    the thread stops, and its failure is raised, when the block ends."""
    from modelvc.streaming import FeatureProducer

    sent: dict[str, str] = {}
    stop = threading.Event()
    failed: list[BaseException] = []

    def flow() -> None:
        rng = np.random.default_rng(seed)
        settings = stack.settings
        pending: list[tuple[str, int]] = []
        n = 0
        try:
            with FeatureProducer(
                settings.access, settings.features_topic, labels_topic=settings.labels_topic
            ) as producer:
                while not stop.is_set():
                    started = time.monotonic()
                    for event_id, y in pending:
                        producer.publish_label(model, [float(y)], feature_event_id=event_id)
                    pending = []
                    x = rng.normal(size=(batch, len(names)))
                    for row, y in zip(x, truth(x, rng), strict=True):
                        event_id, entity = f"{prefix}-{n}", f"customer-{n % entities}"
                        features = dict(zip(names, map(float, row), strict=True))
                        producer.publish(model, features, entity, ref, event_id)
                        sent[event_id] = entity
                        pending.append((event_id, int(y)))
                        n += 1
                    producer.flush()
                    stop.wait(max(0.0, batch / rate - (time.monotonic() - started)))
        except BaseException as exc:  # raised in the caller's thread below
            failed.append(exc)

    thread = threading.Thread(target=flow, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join(30)
    if failed:
        raise RuntimeError(f"the traffic thread failed: {failed[0]!r}") from failed[0]


def latest_rollout(stack: Stack, model: str) -> str:
    return str(stack.client().rollouts(model)["rollouts"][-1]["id"])


def follow(stack: Stack, model: str, rollout_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Print each step the controller takes until the rollout ends; its final state."""
    client = stack.client()
    started, shown = time.monotonic(), None
    while time.monotonic() - started < timeout:
        state = client.rollout(model, rollout_id)
        now = (state["status"], state["percent"])
        if now != shown:
            print(
                f"  {time.monotonic() - started:5.1f}s  rollout {rollout_id}: candidate serves "
                f"{state['percent']:>3}% of the entities ({state['status']})",
                flush=True,
            )
            shown = now
        if state["status"] in ("completed", "aborted"):
            return dict(state)
        time.sleep(0.25)
    raise SystemExit(
        f"rollout {rollout_id} did not end within {timeout:.0f}s; see the monitor's log in "
        f"{stack.home / 'logs'} and `modelvc rollout status {rollout_id}`"
    )


def canary(home: Path, stack: Stack, work: Path) -> str:
    """A better candidate promoted step by step, a worse one aborted, both on live labels,
    with nobody deciding but the controller; returns a prediction of the first's canary."""
    from streams.codec import PREDICTIONS
    from streams.logreader import read_topic

    print("\n--- canary rollouts: live labels decide ---", flush=True)
    monitor = stack.add_monitor(**MONITOR_TUNING)
    print(f"started the monitor (http://127.0.0.1:{monitor.port}/metrics), 1 s windows")
    better = train(work / "churn-v4.txt", seed=4, rounds=100, leaves=15, rows=5000)
    worse = train(work / "churn-v4-stale.txt", seed=5, rounds=40, leaves=15, stale=True)
    print("labels: each feature event's true outcome, published a moment after its prediction")
    rollouts: list[str] = []
    for path, message, prefix in (
        (better, "ten times the data, 100 rounds", "better"),
        (worse, "retrained on a stale feature map", "stale"),
    ):
        run(home, f"commit {path} -m '{message}'")
        with labelled_traffic(
            stack, "churn", FEATURES, churn_truth, prefix=prefix, seed=len(rollouts), rate=2000.0
        ):
            run(home, f"rollout start production --to main {CANARY_POLICY}")
            rollout_id = latest_rollout(stack, "churn")
            follow(stack, "churn", rollout_id)
        run(home, f"rollout status {rollout_id}")
        rollouts.append(rollout_id)
    run(home, "monitor")
    run(home, "log --graph")
    first = rollouts[0]
    return next(
        str(p["prediction_id"])
        for r in read_topic(stack.settings.access, stack.settings.predictions_topic)
        if r.value
        and (p := PREDICTIONS.decode(r.value)).get("rollout_id") == first
        and p.get("arm") == "candidate"
    )


def auditing(home: Path, prediction_ids: Sequence[str]) -> None:
    print("\n--- audit: trust nothing, check everything ---", flush=True)
    run(home, "audit replay")
    for prediction_id in prediction_ids:
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
            switched = serving(home, stack)
            auditing(home, [switched, canary(home, stack, Path(tmp))])
        finally:
            stack.down()
            print(
                "\nstopped the broker, archiver, streams app, worker and monitor this demo started"
            )


if __name__ == "__main__":
    main()

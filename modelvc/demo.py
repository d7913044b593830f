"""`make demo`: the version story on the embedded stack, printed as CLI sessions."""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path

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


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="modelvc-demo-") as tmp:
        home = Path(tmp) / "home"
        print("starting the embedded stack (Tansu broker on loopback + streams app)…", flush=True)
        stack = Stack.up(home)
        print(f"API {stack.url}, broker {stack.settings.bootstrap} (memory only)")
        try:
            story(home, Path(tmp))
        finally:
            stack.down()
            print("\nstopped the broker and the streams app this demo started")


if __name__ == "__main__":
    main()

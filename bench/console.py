"""The console with a big history: page weight and time to the graph drawn.

50 models, one of them with 1,000 commits (ten rounds of commits on main and a branch
merged back, so the graph has lanes). The history page of the big model is loaded
LOADS times in Chromium, each in a fresh browser context (nothing cached):

- **time to graph drawn**: from the navigation's start to every commit of the log being in
  the graph (median and worst of the loads; target: under 1 s);
- **page weight**: bytes of the answers' bodies the load fetched, by kind: the HTML, the
  JavaScript, the CSS, the log's JSON (``GET /v1/models/{m}/log``), and the rest of the
  API's JSON; and the count of log fetches (one per view, never one per commit).

`python -m bench.console [COMMITS] [MODELS] [LOADS]` (defaults 1,000, 50 and 5).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from playwright.sync_api import Browser, Response

from bench.report import report
from modelvc.client import Client
from modelvc.stack import Stack
from tests.ui.console import artifacts, chromium, line_history

BIG = "big"
ROUNDS = 10  # of (main commits, a branch of BRANCH commits, its merge)
BRANCH = 10
THREADS = 8  # commits in flight at once: the service orders them on the branch
DEFAULTS = (1000, 50, 5)  # commits of the big model, models, loads


def in_parallel(calls: list[Callable[[], Any]]) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        for done in [pool.submit(call) for call in calls]:
            done.result()


def commit(client: Client, digest: str, r: int, n: int, branch: str) -> Callable[[], Any]:
    params = {"learning_rate": f"0.{n % 9 + 1}", "round": str(r)}
    metrics = {"auc": 0.7 + n / 10_000}
    return lambda: client.commit(BIG, digest, f"{branch} {r}.{n}", branch, params, metrics)


def big_history(client: Client, digest: str, commits: int) -> int:
    """``commits`` commits in ROUNDS rounds of main commits and a merged branch."""
    client.create(BIG)
    per_round = commits // ROUNDS
    made = 0
    for r in range(ROUNDS):
        main = per_round - BRANCH - 1 if r < ROUNDS - 1 else commits - made - BRANCH - 1

        branch = f"exp-{r}"
        in_parallel([commit(client, digest, r, n, "main") for n in range(main - 1)])
        client.create_branch(BIG, branch)
        in_parallel([commit(client, digest, r, n, branch) for n in range(BRANCH)])
        # One more on main after the fork, so the merge is a merge commit, not a fast-forward.
        commit(client, digest, r, main - 1, "main")()
        client.merge(BIG, branch, strategy="ours", message=f"merge {branch}")
        made += main + BRANCH + 1
    head = client.log(BIG, "main")["commits"][0]["id"]
    client.set_alias(BIG, "production", head)
    return len(client.log(BIG)["commits"])


def kind_of(response: Response, model: str) -> str:
    path = urlparse(response.url).path
    if path == f"/v1/models/{model}/log":
        return "log json"
    content_type = response.headers.get("content-type", "")
    for kind, mark in (("html", "text/html"), ("js", "javascript"), ("css", "text/css")):
        if mark in content_type:
            return kind
    return "other json" if "json" in content_type else "other"


def load(browser: Browser, url: str, token: str, commits: int) -> tuple[float, Counter[str]]:
    """One cold load of the big model's history: ms to the graph drawn, bytes by kind
    (and the count of log fetches under "log fetches")."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        signed = context.request.post(f"{url}/ui/session", data={"token": token})
        assert signed.status == 200, signed.text()
        page = context.new_page()
        weight: Counter[str] = Counter()

        def count(response: Response) -> None:
            kind = kind_of(response, BIG)
            weight[kind] += len(response.body()) if response.status == 200 else 0
            weight["log fetches"] += kind == "log json"

        page.on("response", count)
        page.goto(f"{url}/ui/#/m/{BIG}")
        # A locator, not wait_for_function: the console's CSP forbids the eval that a
        # string predicate needs.
        page.locator("[data-testid=commit]").nth(commits - 1).wait_for(
            state="attached", timeout=60_000
        )
        drawn = float(page.evaluate("performance.now()"))
        page.wait_for_load_state("networkidle")
        return drawn, weight
    finally:
        context.close()


def main(argv: list[str]) -> None:
    commits, models, loads = [*map(int, argv), *DEFAULTS[len(argv) :]][:3]
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp:
        stack = Stack.up(Path(tmp) / "home")
        try:
            client = stack.client()
            (digest,) = artifacts(client, Path(tmp) / "models", 1)
            started = time.perf_counter()
            made = big_history(client, digest, commits)
            in_parallel(
                [
                    lambda n=n: line_history(client, f"model-{n:02d}", [digest], 3)
                    for n in range(models - 1)
                ]
            )
            setup_s = time.perf_counter() - started
            with chromium() as browser:
                runs = [load(browser, stack.url, stack.token, made) for _ in range(loads)]
        finally:
            stack.down()
    times = [t for t, _ in runs]
    weight = runs[-1][1]  # every load is cold: the last one's bytes stand for all
    page = weight["html"] + weight["js"] + weight["css"]
    rows = [
        ("commits in the graph", made, "commits", ""),
        ("models", models, "models", ""),
        ("time to graph drawn (median)", statistics.median(times), "ms", "< 1000"),
        ("time to graph drawn (worst)", max(times), "ms", ""),
        ("html", weight["html"], "bytes", ""),
        ("javascript", weight["js"], "bytes", ""),
        ("css", weight["css"], "bytes", ""),
        ("html + js + css", page, "bytes", ""),
        ("log json", weight["log json"], "bytes", ""),
        ("other api json", weight["other json"], "bytes", ""),
        ("total", page + weight["log json"] + weight["other json"] + weight["other"], "bytes", ""),
        ("log fetches per load", weight["log fetches"], "requests", "1"),
    ]
    report("console", rows, {"loads_ms": times, "setup_s": round(setup_s, 1)})


if __name__ == "__main__":
    main(sys.argv[1:])

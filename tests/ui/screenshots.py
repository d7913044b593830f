"""`make screenshots`: the console's pages at a laptop's and a phone's size, from a
demo-like history on an embedded stack of their own.

`python -m tests.ui.screenshots [OUT_DIR]` (default docs/screenshots) writes
``{laptop,phone}-{models,history,serving,rollouts,audit}.png`` (1280x800 and 375x812).
The stack runs under a temporary home and is brought down, even on failure.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from playwright.sync_api import Browser, Page

from modelvc.client import Client
from modelvc.stack import Stack
from tests.integration.test_workers import wait_for
from tests.ui.console import (
    LAPTOP,
    PAGES,
    PHONE,
    NoBrowser,
    artifacts,
    chromium,
    churn_history,
    feature_producer,
    line_history,
    open_page,
    send_rows,
    sign_in,
)

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
MODEL = "churn"
OTHER_MODELS = ("fraud", "ltv", "ranking")
TRAFFIC_S = 20.0  # of features and labels, so each chart has a score of points
MONITOR_TUNING = {"window_ms": 1000, "lateness_ms": 300}


def build(stack: Stack, work: Path) -> str:
    """The history and the traffic the screenshots show; the token of the user shown."""
    admin = stack.client()
    digests = artifacts(admin, work, 3)
    churn = churn_history(admin, MODEL, digests)
    for name in OTHER_MODELS:
        line_history(admin, name, digests, 4)
    token = str(admin.create_token("ada", "releaser")["token"])
    stack.add_worker()
    stack.add_monitor(**MONITOR_TUNING)
    # A canary of the retrained model at 10% of production, held there (it needs more
    # labels than the screenshots send), so every page has something to show.
    admin.start_rollout(
        MODEL,
        "production",
        churn.commits["retrained"],
        [10, 50, 100],
        min_labels=1_000_000,
        max_regression={"logloss": 0.05},
    )
    producer = feature_producer(stack)
    rng = np.random.default_rng(3)
    try:
        deadline = time.monotonic() + TRAFFIC_S
        while time.monotonic() < deadline:
            send_rows(producer, MODEL, 40, rng)
            time.sleep(0.25)
    finally:
        producer.close()

    def windows() -> bool:
        versions = Client(stack.url, token=token).monitor(MODEL, last=60)["versions"]
        return any(len(v["windows"]) >= 5 for v in versions)

    wait_for(windows, 30, "the monitor's windows of churn")
    return token


def shoot(page: Page, url: str, name: str, out: Path, prefix: str) -> Path:
    open_page(page, url, name, "churn")
    if name == "history":
        page.locator("[data-testid=commit]").nth(1).click()
        page.locator("[data-testid=commit-detail]").wait_for()
    elif name == "serving":
        page.locator("svg[data-testid=chart][data-points]").first.wait_for()
    elif name == "audit":
        page.locator("button[data-testid=replay-run]").click()
        page.locator("[data-testid=replay-result]").wait_for(timeout=60_000)
    page.evaluate("window.scrollTo(0, 0)")
    path = out / f"{prefix}-{name}.png"
    page.screenshot(path=str(path))
    return path


def screenshots(browser: Browser, url: str, token: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for prefix, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        try:
            page = context.new_page()
            sign_in(page, url, token)
            written += [shoot(page, url, name, out, prefix) for name in PAGES]
        finally:
            context.close()
    return written


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    with tempfile.TemporaryDirectory(prefix="modelvc-screenshots-") as tmp:
        stack = Stack.up(Path(tmp) / "home")
        try:
            # Before the browser: Kafka's client runs asyncio, Playwright's loop would be
            # running on this thread.
            token = build(stack, Path(tmp) / "models")
            with chromium() as browser:
                for path in screenshots(browser, stack.url, token, out):
                    print(path)
        except NoBrowser as exc:
            print(f"screenshots: {exc}", file=sys.stderr)
            return 1
        except Exception:
            # The home goes with the temporary directory: show what its processes said.
            for log in sorted((Path(tmp) / "home" / "logs").glob("*.log")):
                print(f"--- {log.name}", *log.read_text().splitlines()[-15:], sep="\n")
            raise
        finally:
            stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

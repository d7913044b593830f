"""The browser tier: one stack (Tansu) and one Chromium for the whole tier, a fresh browser
context (cookies, storage) per test.

No browser here: the tier is skipped with the reason, except under CI=true, where that is a
failure. The stack is brought down in a finally, so a failing test leaves no process behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Error, Page, expect

from modelvc.client import Client
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from tests.integration.test_workers import wait_for
from tests.ui.console import (
    LAPTOP,
    History,
    NoBrowser,
    artifacts,
    chromium,
    churn_history,
    feature_producer,
    line_history,
    send_rows,
    unique,
)

# Under a loaded machine (the suite's tiers run side by side) a redraw can take seconds.
expect.set_options(timeout=15_000)
WINDOW_MS = 1000  # the monitor's shortest window: a chart gains a point each second
COMMITTER = "uma"  # the console's user in these tests (role releaser)
READER = "rita"


@dataclass
class Console:
    stack: Stack
    client: Client  # the admin's, as the CLI would use it
    digests: list[str]
    churn: History
    rollouts: History  # production on c0, a rollout of it to c1 running
    tokens: dict[str, str] = field(default_factory=dict)  # by actor

    @property
    def url(self) -> str:
        return self.stack.url

    def model(self, prefix: str, commits: int = 3) -> History:
        """A model of the test's own (a fresh name), so tests that act do not meet."""
        return line_history(self.client, unique(prefix), self.digests, commits)


def browser_or_skip(exc: NoBrowser) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true needs the browser tier: {exc}", pytrace=False)
    pytest.skip(f"UI tier skipped, no browser: {exc}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with ExitStack() as stack:
        try:
            launched = stack.enter_context(chromium())
        except NoBrowser as exc:
            browser_or_skip(exc)
        yield launched


@pytest.fixture(scope="session")
def console(
    browser: Browser, bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Console]:
    """One stack for the tier, with the histories every page shows; down even on failure."""
    home = tmp_path_factory.mktemp("console") / "home"
    stack = Stack.up(home, bootstrap=bootstrap, namespace=f"ui{uuid.uuid4().hex[:8]}")
    try:
        client = stack.client()
        digests = artifacts(client, tmp_path_factory.mktemp("models"))
        churn = churn_history(client, "churn", digests)
        rollouts = line_history(client, "ro", digests, 2)
        client.start_rollout("ro", "production", rollouts.commits["c1"], [10, 100], max_p99_ms=1e6)
        world = Console(stack, client, digests, churn, rollouts)
        for actor, role in ((COMMITTER, "releaser"), (READER, "reader")):
            world.tokens[actor] = str(client.create_token(actor, role)["token"])
        client.log("ro")  # read after the writes: the API shows all of them from here on
        yield world
    finally:
        stack.down()


@dataclass
class Served:
    """A worker scoring churn's features and a monitor (1 s windows) judging them. The
    producer lives on a thread of its own: Kafka's client runs asyncio, which cannot
    share the main thread with Playwright's loop."""

    producer: FeatureProducer
    rng: np.random.Generator
    thread: ThreadPoolExecutor

    def send(self, rows: int = 20) -> None:
        self.thread.submit(send_rows, self.producer, "churn", rows, self.rng).result()


@pytest.fixture(scope="session")
def served(console: Console) -> Iterator[Served]:
    """Started on first use (stopped with the stack); returns once churn has windows."""
    console.stack.add_worker()
    console.stack.add_monitor(window_ms=WINDOW_MS, lateness_ms=200)
    with ThreadPoolExecutor(1) as thread:
        producer = thread.submit(feature_producer, console.stack).result()
        served = Served(producer, np.random.default_rng(7), thread)
        try:

            def windows() -> list[Any]:
                served.send()
                versions = console.client.monitor("churn", last=60)["versions"]
                return [v for v in versions if v["windows"]]

            wait_for(windows, 90, "a window of churn from the monitor")
            yield served
        finally:
            thread.submit(producer.close).result()


@dataclass
class Troubles:
    """What went wrong inside the page: uncaught errors and CSP refusals."""

    seen: list[str] = field(default_factory=list)

    def error(self, error: Error) -> None:
        self.seen.append(f"page error: {error}")

    def message(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.seen.append(f"CSP: {message.text}")


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport=LAPTOP)  # type: ignore[arg-type]
    try:
        yield made
    finally:
        made.close()


def signed_in(context: BrowserContext, console: Console, actor: str) -> Iterator[Page]:
    """A blank page of ``context`` whose cookie is ``actor``'s session (signing in through
    the form is tested once, in test_console_actions); at the end, nothing went wrong in it
    (no uncaught error, no CSP refusal)."""
    answer = context.request.post(
        f"{console.url}/ui/session", data={"token": console.tokens[actor]}
    )
    assert answer.status == 200, answer.text()
    opened = context.new_page()
    troubles = Troubles()
    opened.on("pageerror", troubles.error)
    opened.on("console", troubles.message)
    yield opened
    assert not troubles.seen, troubles.seen


@pytest.fixture
def page(context: BrowserContext, console: Console) -> Iterator[Page]:
    """A page signed in as the committer (role releaser)."""
    yield from signed_in(context, console, COMMITTER)


@pytest.fixture
def reader_page(context: BrowserContext, console: Console) -> Iterator[Page]:
    yield from signed_in(context, console, READER)

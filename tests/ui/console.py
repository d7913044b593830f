"""The browser tier's shared pieces: Debian's Chromium under Playwright, signing in to the
console, the histories the pages are driven over, and the features a worker scores.

Used by the tests (tests/ui/conftest.py), the screenshots (tests/ui/screenshots.py) and the
page-weight bench (bench/console.py), so each builds its pages the same way.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from modelvc.client import Client
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from tests.conftest import train_model

CHROMIUM_ENV = "MODELVC_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# No sandbox (containers run as root), no GPU, and nothing the browser would fetch on its
# own: the tier talks to the stack on loopback only.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
FEATURES = tuple(f"Column_{j}" for j in range(4))  # what tests.conftest.train_model reads
# The routes of the one page (spec "The pages"), by name, with what shows they have drawn.
PAGES = {
    "models": ("#/", "[data-testid=model-row]"),
    "history": ("#/m/{model}", "[data-testid=commit]"),
    "serving": ("#/m/{model}/serving", "section[data-testid=version]"),
    "rollouts": ("#/m/{model}/rollouts", "[data-testid=rollout]"),
    "audit": ("#/audit", "[data-testid=digest]"),
}


class NoBrowser(Exception):
    """Chromium could not start here; the message says what was tried and how to fix it."""


def chromium_path() -> str:
    return os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium under Playwright (Playwright's own download is not reachable
    here); NoBrowser when it cannot start. Closed, with Playwright's driver, on exit."""
    path = chromium_path()
    if not Path(path).exists():
        raise NoBrowser(
            f"no Chromium at {path}: install it (apt-get install chromium) or set "
            f"{CHROMIUM_ENV} to a Chromium binary"
        )
    with sync_playwright() as playwright:
        browser = launch(playwright, path)
        try:
            yield browser
        finally:
            browser.close()


def launch(playwright: Playwright, path: str) -> Browser:
    try:
        return playwright.chromium.launch(executable_path=path, args=list(CHROMIUM_FLAGS))
    except Exception as exc:  # Playwright raises its own Error with the browser's output
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        raise NoBrowser(
            f"Chromium at {path} did not start ({first}); check it runs with "
            f"`{path} --headless --no-sandbox --dump-dom about:blank`"
        ) from exc


def open_page(page: Page, url: str, name: str, model: str = "churn") -> None:
    """Go to the console's page ``name`` (a key of PAGES) and wait until it has drawn."""
    route, drawn = PAGES[name]
    page.goto(f"{url}/ui/{route.format(model=model)}")
    page.locator(drawn).first.wait_for()


def sign_in(page: Page, url: str, token: str) -> str:
    """Sign in through the form, as a user who pastes a token; the "actor (role)" shown."""
    page.goto(f"{url}/ui/")
    form = page.locator("form[data-testid=signin]")
    form.locator("input#token").fill(token)
    form.get_by_role("button", name="Sign in").click()
    whoami = page.locator("[data-testid=whoami]")
    whoami.wait_for()
    return whoami.inner_text().strip()


def no_horizontal_scroll(page: Page) -> bool:
    """The page is no wider than the viewport (nothing to scroll sideways)."""
    return bool(
        page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    )


# -- histories ------------------------------------------------------------------------------
@dataclass
class History:
    """A model's commits by the name its builder gave them, and the artifacts it used."""

    model: str
    commits: dict[str, str] = field(default_factory=dict)


def artifacts(client: Client, work: Path, count: int = 2) -> list[str]:
    """``count`` small LightGBM models uploaded (different seeds): their digests."""
    work.mkdir(parents=True, exist_ok=True)
    return [
        client.upload(train_model(work / f"model-{n}.txt", seed=n))["sha256"] for n in range(count)
    ]


def churn_history(client: Client, model: str, digests: list[str]) -> History:
    """A demo-like history: three commits on main, an experiment branch merged back,
    production on the second commit and staging on main's head."""
    history = History(model)
    client.create(model)

    def commit(name: str, digest: str, lr: str, auc: float, branch: str = "main") -> None:
        answer = client.commit(
            model,
            digest,
            f"{name}: lr {lr}",
            branch=branch,
            params={"learning_rate": lr, "num_leaves": "4"},
            metrics={"auc": auc},
        )
        history.commits[name] = str(answer["head"])

    commit("baseline", digests[0], "0.1", 0.81)
    commit("tuned", digests[1], "0.05", 0.84)
    client.create_branch(model, "experiment", history.commits["tuned"])
    commit("wider", digests[0], "0.2", 0.83, branch="experiment")
    commit("retrained", digests[1], "0.05", 0.85)
    merged = client.merge(model, "experiment", strategy="ours", message="merge experiment")
    history.commits["merged"] = str(merged["head"])
    client.set_alias(model, "production", history.commits["tuned"])
    client.set_alias(model, "staging", history.commits["merged"])
    return history


def line_history(client: Client, model: str, digests: list[str], commits: int = 3) -> History:
    """``commits`` commits on main (alternating artifacts), production on the first."""
    history = History(model)
    client.create(model)
    for n in range(commits):
        answer = client.commit(
            model,
            digests[n % len(digests)],
            f"{model} {n}",
            params={"learning_rate": f"0.{n + 1}"},
            metrics={"auc": 0.8 + n / 100},
        )
        history.commits[f"c{n}"] = str(answer["head"])
    client.set_alias(model, "production", history.commits["c0"])
    return history


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def feature_producer(stack: Stack) -> FeatureProducer:
    settings = stack.settings
    return FeatureProducer(
        settings.access, settings.features_topic, labels_topic=settings.labels_topic
    )


def send_rows(
    producer: FeatureProducer, model: str, rows: int, rng: np.random.Generator, labels: bool = True
) -> None:
    """``rows`` feature events for ``model`` now (with ``labels``, a label for each, as a
    labeller would send it), sent before this returns."""
    for row in rng.normal(size=(rows, len(FEATURES))):
        features = dict(zip(FEATURES, map(float, row), strict=True))
        event = producer.publish(model, features, entity_key=unique("e"))
        if labels:
            producer.publish_label(model, [float(row[0] > 0)], feature_event_id=event)
    producer.flush()


def answer_of(page: Page, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    """``fetch`` from inside the page (its cookie, its origin): {"status", "body"}."""
    return page.evaluate(
        """async ([method, path, body, headers]) => {
            const r = await fetch(path, {method, credentials: "same-origin", headers,
                                         body: body === null ? undefined : JSON.stringify(body)});
            const text = await r.text();
            let parsed = null;
            try { parsed = JSON.parse(text); } catch (e) { parsed = text; }
            return {status: r.status, body: parsed};
        }""",
        [method, path, body, headers],
    )

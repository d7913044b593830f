"""Every page passes axe-core (no serious or critical violation) and fits a phone's width."""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import BrowserContext, Page, expect

from tests.ui.conftest import Console, Served
from tests.ui.console import PAGES, PHONE, no_horizontal_scroll, open_page

pytestmark = pytest.mark.broker

SERIOUS = ("serious", "critical")


def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical findings on the page as it is, one line each."""
    found = Axe().run(page).response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(n["target"]) for n in v["nodes"][:5])
        for v in found
        if v["impact"] in SERIOUS
    ]


def model_of(name: str) -> str:
    return "ro" if name == "rollouts" else "churn"


@pytest.mark.parametrize("name", PAGES)
def test_axe_finds_no_serious_violation(
    page: Page, console: Console, served: Served, name: str
) -> None:
    open_page(page, console.url, name, model_of(name))
    if name == "serving":
        page.locator("svg[data-testid=chart]").first.wait_for()
    assert serious_violations(page) == []


def test_axe_finds_no_serious_violation_in_sign_in_or_a_dialog(
    context: BrowserContext, page: Page, console: Console
) -> None:
    open_page(page, console.url, "history")
    page.locator("[data-testid=commit]").first.click()
    page.locator("[data-testid=action-move-alias]").click()
    expect(page.locator("dialog[data-testid=action-dialog]")).to_be_visible()
    assert serious_violations(page) == []

    context.clear_cookies()
    signed_out = context.new_page()
    signed_out.goto(f"{console.url}/ui/")
    expect(signed_out.locator("form[data-testid=signin]")).to_be_visible()
    assert serious_violations(signed_out) == []


def test_every_page_fits_a_phone_without_sideways_scrolling(
    page: Page, console: Console, served: Served
) -> None:
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    wide = []
    for name in PAGES:
        open_page(page, console.url, name, model_of(name))
        if not no_horizontal_scroll(page):
            wide.append(name)
    assert wide == [], f"wider than {PHONE['width']} px: {wide}"

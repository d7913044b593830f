"""The serving page: a version's charts follow the monitor's windows while features stream,
redrawn in place (no reload)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.integration.test_workers import wait_for
from tests.ui.conftest import Console, Served
from tests.ui.console import open_page

pytestmark = pytest.mark.broker

METRICS = ("throughput", "p50_ms", "p99_ms", "dead_letter_rate", "metric", "coverage", "psi")


def test_a_serving_chart_changes_while_features_stream(
    page: Page, console: Console, served: Served
) -> None:
    serving = console.churn.commits["tuned"]  # what production serves
    open_page(page, console.url, "serving")
    version = page.locator(f"section[data-testid=version][data-commit='{serving}']")
    expect(version).to_be_visible(timeout=15_000)
    for metric in METRICS:
        chart = version.locator(f"svg[data-testid=chart][data-metric={metric}]")
        expect(chart).to_have_count(1)
        expect(chart.locator("title")).to_have_count(1)  # named for screen readers
    chart = version.locator("svg[data-testid=chart][data-metric=throughput]")
    expect(chart).to_have_attribute("data-points", re.compile(r"[1-9][0-9]*"))
    before = (chart.get_attribute("data-points"), chart.get_attribute("data-last"))
    page.evaluate("window.notReloaded = true")  # gone if the page loads again

    def changed() -> bool:
        served.send()
        now = (chart.get_attribute("data-points"), chart.get_attribute("data-last"))
        return now != before

    wait_for(changed, 30, "a new point on the throughput chart")
    assert page.evaluate("window.notReloaded === true")
    points = int(chart.get_attribute("data-points") or 0)
    assert 0 < points <= 60
    assert float(chart.get_attribute("data-last") or "nan") > 0  # events per second

"""Reading in the console: the models list, the commit graph with its labels, a commit's
details and download, a diff of two commits, the ref timeline and the time control."""

from __future__ import annotations

import hashlib

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.ui.conftest import Console
from tests.ui.console import open_page

pytestmark = pytest.mark.broker


def attribute(locator: Locator, name: str) -> list[str]:
    """``name`` of every element ``locator`` finds, in document order."""
    return list(locator.evaluate_all(f"els => els.map(e => e.getAttribute('{name}'))"))


def shown_commits(page: Page) -> list[str]:
    return attribute(page.locator("[data-testid=commit]"), "data-commit")


def shown_refs(page: Page) -> set[str]:
    """The names the graph labels (an alias's label may be written "@name")."""
    return {
        r.removeprefix("@") for r in attribute(page.locator("[data-testid=ref-label]"), "data-ref")
    }


def test_models_page_lists_every_model_with_what_it_serves_and_searches(
    page: Page, console: Console
) -> None:
    open_page(page, console.url, "models")
    listed = {m["name"]: m for m in console.client.models()["models"]}
    rows = page.locator("[data-testid=model-row]")
    expect(rows).to_have_count(len(listed))
    assert sorted(attribute(rows, "data-model")) == sorted(listed)
    churn = page.locator("[data-testid=model-row][data-model=churn]")
    for name in ("main", "experiment", "production", "staging"):
        expect(churn).to_contain_text(name)
    # The short commit each alias serves.
    expect(churn).to_contain_text(console.churn.commits["tuned"][:10])
    expect(churn).to_contain_text(console.churn.commits["merged"][:10])

    page.locator("input#model-search").fill("chur")
    expect(page.locator("[data-testid=model-row]:visible")).to_have_count(1)
    expect(page.locator("[data-testid=model-row][data-model=churn]")).to_be_visible()
    churn.click()  # a link to its history
    expect(page.locator("svg[data-testid=graph]")).to_be_visible()
    assert page.url.endswith("#/m/churn")


def test_graph_shows_every_commit_and_label_in_log_order(page: Page, console: Console) -> None:
    open_page(page, console.url, "history")
    expect(page.locator("svg[data-testid=graph]")).to_be_visible()
    log = console.client.log("churn")
    # Newest first, as `log --graph` draws them, each commit once.
    assert shown_commits(page) == [c["id"] for c in log["commits"]]
    refs = console.client.refs("churn")
    assert shown_refs(page) >= {*refs["branches"], *refs["aliases"]}
    assert {"main", "experiment", "production", "staging"} <= shown_refs(page)
    timeline = page.locator("ol[data-testid=timeline] > li")
    expect(timeline).to_have_count(len(log["ref_moves"]))
    expect(page.locator("ol[data-testid=timeline]")).to_contain_text("production")


def test_selecting_a_commit_shows_its_details_and_download(page: Page, console: Console) -> None:
    open_page(page, console.url, "history")
    tuned = console.client.show("churn", console.churn.commits["tuned"])
    commit = page.locator(f"[data-testid=commit][data-commit='{tuned['id']}']")
    commit.click()
    detail = page.locator("[data-testid=commit-detail]")
    for text in (
        tuned["message"],
        tuned["author"],
        "learning_rate",
        "0.05",
        "auc",
        "0.84",
        tuned["artifact_sha256"],
    ):
        expect(detail).to_contain_text(text)
    for feature in tuned["signature"]["inputs"]:
        expect(detail).to_contain_text(feature["name"])
    download = detail.locator("a[data-testid=download]")
    href = download.get_attribute("href")
    assert href == f"/v1/artifacts/{tuned['artifact_sha256']}"
    # The link works with the session's cookie: the bytes are the artifact's.
    answer = page.request.get(console.url + href)
    assert answer.status == 200
    assert hashlib.sha256(answer.body()).hexdigest() == tuned["artifact_sha256"]

    # The keyboard selects too: Enter on another commit shows that one.
    baseline = console.churn.commits["baseline"]
    page.locator(f"[data-testid=commit][data-commit='{baseline}']").focus()
    page.keyboard.press("Enter")
    expect(detail).to_contain_text("baseline: lr 0.1")


def test_diff_of_two_picked_commits(page: Page, console: Console) -> None:
    open_page(page, console.url, "history")
    baseline, tuned = console.churn.commits["baseline"], console.churn.commits["tuned"]
    opener = page.locator("button[data-testid=diff-open]")
    expect(opener).to_be_disabled()
    page.locator(f"input[type=checkbox][data-testid=diff-pick][value='{baseline}']").check()
    expect(opener).to_be_disabled()  # one is not a diff
    page.locator(f"input[type=checkbox][data-testid=diff-pick][value='{tuned}']").check()
    expect(opener).to_be_enabled()
    opener.click()
    diff = page.locator("[data-testid=diff]")
    for text in ("learning_rate", "0.1", "0.05", "auc", "0.81", "0.84"):
        expect(diff).to_contain_text(text)
    unchanged = console.client.diff("churn", baseline, tuned)
    assert unchanged["artifact_changed"] is True  # and the page says the file changed
    expect(diff).to_contain_text(console.client.show("churn", tuned)["artifact_sha256"][:10])


def test_time_control_redraws_the_graph_and_aliases_as_they_were(
    page: Page, console: Console
) -> None:
    history = console.model("asof", 3)
    c0, c1, c2 = (history.commits[f"c{n}"] for n in range(3))
    console.client.set_alias(history.model, "production", c2)
    open_page(page, console.url, "history", history.model)
    expect(page.locator("[data-testid=commit]")).to_have_count(3)

    slider = page.locator("input[type=range][data-testid=as-of]")
    label = page.locator("[data-testid=as-of-label]")
    now_label = label.inner_text()
    # One step per event: the model's creation, c0, c1 (then c2 and two alias moves).
    slider.focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator("[data-testid=commit]")).to_have_count(2)
    assert sorted(shown_commits(page)) == sorted([c0, c1])
    assert "production" not in shown_refs(page)  # set after c2 was made
    assert "as_of=" in page.url
    expect(label).not_to_have_text(now_label)

    page.keyboard.press("ArrowRight")  # c2 made, production not yet set
    expect(page.locator("[data-testid=commit]")).to_have_count(3)
    assert "production" not in shown_refs(page)

    page.locator("button[data-testid=as-of-now]").click()
    expect(page.locator("[data-testid=commit]")).to_have_count(3)
    expect(page.locator("[data-testid=ref-label][data-ref$=production]")).to_have_count(1)
    assert "as_of=" not in page.url
    # A reload keeps a chosen time: the URL holds it.
    slider.focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    expect(page.locator("[data-testid=commit]")).to_have_count(1)
    page.reload()
    expect(page.locator("[data-testid=commit]")).to_have_count(1)
    assert shown_commits(page) == [c0]

"""Acting in the console: moving an alias, rolling back, a compare-and-set conflict made from
the CLI while the dialog is open, aborting a rollout; what a reader sees; the session's
cookie, its CSRF token, sign-in by a login code and sign-out."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect

from modelvc.cli import main as cli
from modelvc.client import Client
from tests.integration.test_workers import wait_for
from tests.ui.conftest import COMMITTER, READER, Console
from tests.ui.console import answer_of, open_page, sign_in

pytestmark = pytest.mark.broker


def dialog_of(page: Page, action: str, commit: str | None = None) -> Locator:
    """Select ``commit`` (when given), press the action's button, and the dialog it opens."""
    if commit is not None:
        page.locator(f"[data-testid=commit][data-commit='{commit}']").click()
    page.locator(f"[data-testid=action-{action}]").click()
    dialog = page.locator("dialog[data-testid=action-dialog]")
    expect(dialog).to_be_visible()
    return dialog


def set_field(dialog: Locator, name: str, value: str) -> None:
    """Type or choose ``value`` in the dialog's field ``name``, as a user would."""
    field = dialog.locator(f"[name={name}]")
    if field.evaluate("e => e.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)


def values(dialog: Locator) -> dict[str, str]:
    """Every named field of the dialog and its value."""
    return dict(
        dialog.locator("[name]").evaluate_all(
            "els => els.filter(e => 'value' in e).map(e => [e.name, e.value])"
        )
    )


def moves_of(console: Console, model: str, name: str) -> list[dict[str, Any]]:
    """The moves of ref ``name``, oldest first."""
    moves = [m for m in console.client.log(model)["ref_moves"] if m["name"] == name]
    return sorted(moves, key=lambda m: int(m["seq"]))


def last_move(console: Console, model: str, name: str) -> dict[str, Any]:
    return moves_of(console, model, name)[-1]


def test_move_production_through_the_ui_is_in_the_log_as_the_ui_user(
    page: Page, console: Console
) -> None:
    history = console.model("move")
    c0, c2 = history.commits["c0"], history.commits["c2"]
    open_page(page, console.url, "history", history.model)
    dialog = dialog_of(page, "move-alias", c2)
    set_field(dialog, "alias", "production")
    set_field(dialog, "to", c2)
    expect(dialog).to_contain_text(c0[:10])  # what it serves now, which it expects
    dialog.locator("button[data-testid=confirm]").click()
    expect(dialog).to_be_hidden()

    assert console.client.refs(history.model)["aliases"]["production"] == c2
    move = last_move(console, history.model, "production")
    assert (move["kind"], move["old"], move["new"], move["actor"]) == ("alias", c0, c2, COMMITTER)
    # Re-drawn: the label moved to the new commit without a reload.
    label = page.locator("[data-testid=ref-label][data-ref$=production]")
    expect(label).to_have_count(1)
    expect(page.locator("ol[data-testid=timeline]")).to_contain_text(COMMITTER)


def test_rollback_needs_a_reason_and_moves_the_branch(page: Page, console: Console) -> None:
    history = console.model("back")
    c0, c2 = history.commits["c0"], history.commits["c2"]
    open_page(page, console.url, "history", history.model)
    dialog = dialog_of(page, "rollback", c0)
    reason = dialog.locator("input[name=reason]")
    expect(reason).to_have_attribute("required", "")
    dialog.locator("button[data-testid=confirm]").click()
    expect(dialog).to_be_visible()  # the form is not sent without a reason
    assert console.client.refs(history.model)["branches"]["main"] == c2

    reason.fill("auc fell on Tuesday's data")
    dialog.locator("button[data-testid=confirm]").click()
    expect(dialog).to_be_hidden()
    assert console.client.refs(history.model)["branches"]["main"] == c0
    move = last_move(console, history.model, "main")
    assert (move["old"], move["new"], move["reason"], move["actor"]) == (
        c2,
        c0,
        "auc fell on Tuesday's data",
        COMMITTER,
    )
    expect(page.locator("ol[data-testid=timeline]")).to_contain_text("auc fell on Tuesday")


def test_a_conflict_from_the_cli_is_shown_without_losing_input_and_retry_succeeds(
    page: Page, console: Console
) -> None:
    history = console.model("cas")
    c0, c1, c2 = (history.commits[f"c{n}"] for n in range(3))
    open_page(page, console.url, "history", history.model)
    dialog = dialog_of(page, "move-alias", c1)
    set_field(dialog, "alias", "production")
    set_field(dialog, "to", c1)
    typed = values(dialog)

    # Someone moves production from the CLI while the dialog is open.
    home = str(console.stack.home)
    assert cli(["--home", home, "-M", history.model, "alias", "set", "production", c2]) == 0
    fresh = Client(console.url, token=console.stack.token)  # no read-after-write position
    wait_for(lambda: fresh.refs(history.model)["aliases"]["production"] == c2, 20, "the move")
    dialog.locator("button[data-testid=confirm]").click()
    conflict = dialog.locator("[data-testid=conflict]")
    expect(conflict).to_be_visible()
    expect(conflict).to_contain_text(c2[:10])  # what production serves now
    expect(dialog).to_be_visible()
    assert values(dialog) == typed
    assert console.client.refs(history.model)["aliases"]["production"] == c2

    dialog.locator("button[data-testid=retry]").click()
    expect(conflict).to_be_hidden()
    assert values(dialog) == typed
    if dialog.is_visible():  # retry re-read the state; the user confirms again
        dialog.locator("button[data-testid=confirm]").click()
    expect(dialog).to_be_hidden()
    assert console.client.refs(history.model)["aliases"]["production"] == c1
    moves = moves_of(console, history.model, "production")
    assert [(m["old"], m["new"], m["actor"]) for m in moves[-2:]] == [
        (c0, c2, console.stack.admin_actor),
        (c2, c1, COMMITTER),
    ]


def test_a_rollout_shows_its_decisions_and_aborts_with_a_reason(
    page: Page, console: Console
) -> None:
    (rollout,) = console.client.rollouts("ro")["rollouts"]
    open_page(page, console.url, "rollouts", "ro")
    shown = page.locator(f"[data-testid=rollout][data-rollout='{rollout['id']}']")
    for text in ("running", "10", "100", rollout["candidate"][:10]):
        expect(shown).to_contain_text(text)
    decisions = console.client.rollout("ro", rollout["id"])["decisions"]
    expect(shown.locator("[data-testid=decision]")).to_have_count(len(decisions))

    dialog = dialog_of(page, "abort-rollout")
    dialog.locator("[name=reason]").fill("latency looks wrong")
    dialog.locator("button[data-testid=confirm]").click()
    expect(dialog).to_be_hidden()
    expect(shown).to_contain_text("aborted")
    after = console.client.rollout("ro", rollout["id"])
    assert after["status"] == "aborted"
    assert (after["decisions"][-1]["type"], after["decisions"][-1]["actor"]) == (
        "RolloutAborted",
        COMMITTER,
    )
    expect(shown.locator("[data-testid=decision]")).to_have_count(len(after["decisions"]))


def test_a_reader_sees_everything_with_the_actions_disabled_naming_the_role(
    reader_page: Page, console: Console
) -> None:
    page = reader_page
    open_page(page, console.url, "history")
    expect(page.locator("[data-testid=commit]")).to_have_count(len(console.churn.commits))
    for action in ("move-alias", "rollback"):
        button = page.locator(f"[data-testid=action-{action}]")
        expect(button).to_be_disabled()
        expect(button).to_contain_text("needs committer")
    open_page(page, console.url, "rollouts", "ro")
    for action in ("start-rollout", "abort-rollout"):
        for button in page.locator(f"[data-testid=action-{action}]").all():
            expect(button).to_be_disabled()
            expect(button).to_contain_text("needs committer")


def test_signing_in_with_a_token_through_the_form(
    context: BrowserContext, console: Console
) -> None:
    page = context.new_page()
    shown = sign_in(page, console.url, console.tokens[COMMITTER])
    assert shown == f"{COMMITTER} (releaser)"
    page.reload()  # the session outlives the page: its cookie signs the reload in
    expect(page.locator("[data-testid=whoami]")).to_have_text(shown)
    # A wrong token is refused, with the API's message, and nothing is signed in.
    context.clear_cookies()
    other = context.new_page()
    other.goto(f"{console.url}/ui/")
    other.locator("input#token").fill("mvc_" + "x" * 40)
    other.get_by_role("button", name="Sign in").click()
    expect(other.locator("[data-testid=error]")).to_be_visible()
    expect(other.locator("[data-testid=whoami]")).to_be_hidden()


def test_the_session_cookie_needs_the_csrf_header_to_write(
    page: Page, context: BrowserContext, console: Console
) -> None:
    (cookie,) = [c for c in context.cookies() if c["name"] == "modelvc_session"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")

    history = console.model("csrf")
    open_page(page, console.url, "models")  # the page's own origin, for its fetches
    c0, c1 = history.commits["c0"], history.commits["c1"]
    path, body = f"/v1/models/{history.model}/aliases/production", {"ref": c1}
    json_type = {"Content-Type": "application/json"}
    for headers in (json_type, {**json_type, "X-CSRF-Token": "not-the-token"}):
        refused = answer_of(page, "PUT", path, body, headers)
        assert refused["status"] == 403, refused
        assert "csrf" in (refused["body"].get("code"), refused["body"].get("error")), refused
    assert console.client.refs(history.model)["aliases"]["production"] == c0
    # Reads need no header; the page's own token makes the same write pass.
    session = answer_of(page, "GET", "/ui/session", None, {})
    assert session["status"] == 200 and session["body"]["actor"] == COMMITTER
    csrf = session["body"]["csrf"]
    moved = answer_of(page, "PUT", path, body, {**json_type, "X-CSRF-Token": csrf})
    assert moved["status"] in (200, 201), moved
    assert last_move(console, history.model, "production")["actor"] == COMMITTER

    page.locator("[data-testid=signout]").click()
    expect(page.locator("form[data-testid=signin]")).to_be_visible()
    assert answer_of(page, "GET", "/v1/whoami", None, {})["status"] == 401


def test_a_login_code_in_the_fragment_signs_in_once_and_leaves_the_address_bar(
    context: BrowserContext, console: Console
) -> None:
    reader = Client(console.url, token=console.tokens[READER])
    code = reader.request("POST", "/v1/ui/login-codes", {})["code"]
    page = context.new_page()
    page.goto(f"{console.url}/ui/#code={code}")
    expect(page.locator("[data-testid=whoami]")).to_have_text(f"{READER} (reader)")
    assert "code" not in page.url
    # Single-use: the same link signs no one in again.
    context.clear_cookies()
    again = context.new_page()
    again.goto(f"{console.url}/ui/#code={code}")
    expect(again.locator("form[data-testid=signin]")).to_be_visible()


def test_a_code_link_asks_before_it_replaces_a_live_session(page: Page, console: Console) -> None:
    """Someone else's `#code=` link (login CSRF) switches no one silently: the page asks,
    and a No keeps the session it had."""
    reader = Client(console.url, token=console.tokens[READER])
    code = reader.request("POST", "/v1/ui/login-codes", {})["code"]
    asked: list[str] = []

    def refuse(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", refuse)
    # A full load of the link, as a click from elsewhere makes: from the page itself it
    # would only change the fragment, and a reload racing the question would hang on it.
    page.goto("about:blank")
    page.goto(f"{console.url}/ui/#code={code}")
    expect(page.locator("[data-testid=whoami]")).to_have_text(f"{COMMITTER} (releaser)")
    assert asked and COMMITTER in asked[0], asked
    assert "code" not in page.url

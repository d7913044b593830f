"""Human output never hands a terminal the control characters that came with the data."""

from __future__ import annotations

import unicodedata
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from modelvc import render

HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x9b31m\u202egnp.exe\u2066x\u2069\u200e\r\ncommit " + "f" * 64
C1, C2 = "a" * 64, "b" * 64


def _commit(cid: str, parents: list[str], **over: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "parents": parents,
        "refs": [],
        "author": "alice",
        "at": 1_700_000_000_000,
        "artifact_sha256": "c" * 64,
        "message": "v1",
        "params": {},
        "metrics": {},
        "reachable": True,
        **over,
    }


def _assert_terminal_safe(text: str) -> None:
    for line in text.split("\n"):
        bad = [ch for ch in line if not ch.isprintable() and unicodedata.category(ch) != "Zs"]
        assert bad == [], f"unescaped {bad!r} in {line!r}"


def test_finding_6_log_escapes_ansi_and_bidi_from_commit_messages() -> None:
    answer = {
        "ref": None,
        "commits": [
            _commit(C2, [C1], message=HOSTILE, author="eve\x1b[8m", refs=["main"]),
            _commit(C1, []),
        ],
        "ref_moves": [
            {
                "seq": 3,
                "kind": "alias",
                "name": "production",
                "old": C1,
                "new": C2,
                "cause": "AliasMoved",
                "actor": "mallory\u202e",
                "reason": "oops\x1b[1A\x1b[2K",
            }
        ],
    }
    for with_graph in (False, True):
        out = render.log(answer, with_graph)
        _assert_terminal_safe(out)
        assert "\x1b" not in out and "\u202e" not in out and "\r" not in out
        assert "\\x1b[2J" in out and "\\u202egnp.exe" in out and "\\x9b31m" in out
        assert "\\u2066x\\u2069\\u200e\\r\\ncommit ffff" in out
        assert "mallory\\u202e" in out and "oops\\x1b[1A" in out
        # The message's newline did not become a line of its own (a forged commit).
        assert not any(line.startswith("commit f") for line in out.split("\n"))
    assert "Author: eve\\x1b[8m" in render.log(answer, False)


def test_every_renderer_escapes_what_it_shows() -> None:
    hostile = _commit(C2, [C1], message=HOSTILE, params={"k\x1b": "v\u202e"}, metrics={"auc": 0.5})
    outputs = [
        render.commit(hostile),
        render.diff(
            {
                "a": _commit(C1, []),
                "b": hostile,
                "artifact_changed": False,
                "params": [{"key": "lr\x1b[31m", "old": "1\u2067", "new": "2"}],
                "metrics": [{"key": "auc", "old": 0.5, "new": 0.75}],
            }
        ),
        render.refs(
            {
                "model": "m",
                "seq": 4,
                "default_branch": "main",
                "branches": {"main": C1, "x\x1b": C2},
                "aliases": {"p\u202e": C2},
            }
        ),
    ]
    for out in outputs:
        _assert_terminal_safe(out)
    assert "param    k\\x1b = v\\u202e" in outputs[0] and "metric   auc = 0.5" in outputs[0]
    assert "lr\\x1b[31m: 1\\u2067 -> 2" in outputs[1] and "(+0.25)" in outputs[1]
    assert "@p\\u202e" in outputs[2]


def test_ordinary_text_is_left_alone() -> None:
    text = "café ünïcode 日本語 — ok\u00a0nbsp (a no-break space)"
    assert render.escape(text) == text
    assert render.escaped({"n": 1.5, "l": [text, None, True]}) == {
        "n": 1.5,
        "l": [text, None, True],
    }
    assert render.terminal("line one\nline\x1b two") == "line one\nline\\x1b two"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_escape_leaves_nothing_a_terminal_acts_on_and_is_idempotent(text: str) -> None:
    out = render.escape(text)
    _assert_terminal_safe(out)
    assert "\n" not in out
    assert render.escape(out) == out
    if text.isprintable():
        assert out == text


def test_attack_times_no_calendar_holds_print_instead_of_raising() -> None:
    """A forged event or prediction with at = 2**62 crashed `log`, `show` and `tail`."""
    assert render.when(0) == "1970-01-01 00:00:00 UTC"
    for forged in (2**62, -(2**62), 10**30, float("nan"), "soon", None):
        assert "not a calendar time" in render.when(forged)


def test_identity_and_protection_renderers_escape_what_the_service_sends() -> None:
    """Actors, reasons and key notes come from whoever holds a token: shown escaped."""
    token = "mvc_0123456789abcdef_" + "A" * 43
    outputs = [
        render.whoami({"actor": HOSTILE, "role": "admin", "token_id": "0" * 16, "expires_at": 0}),
        render.token_created(
            {"token": token, "token_id": "0123456789abcdef", "actor": HOSTILE, "role": "reader"}
        ),
        render.tokens(
            {
                "tokens": [
                    {
                        "token_id": "0123456789abcdef",
                        "actor": HOSTILE,
                        "role": "committer",
                        "state": "revoked",
                        "expires_at": 0,
                        "issued_at": 1_700_000_000_000,
                        "issued_by": "root\x1b[31m",
                        "revoked_at": 1_700_000_100_000,
                        "revoked_by": "admin",
                        "reason": HOSTILE,
                    }
                ]
            }
        ),
        render.protections(
            {"rules": [{"kind": "alias", "model": "", "name": HOSTILE, "role": "releaser"}]}
        ),
        render.writer_keys(
            {
                "instance_key": "k\u202e",
                "partitions": {"0": {"active": {HOSTILE: "00"}, "retired": {}}},
            }
        ),
    ]
    for out in outputs:
        _assert_terminal_safe(out)
    assert "expires never" in outputs[0]
    assert f"\n{token}\n" in outputs[1] and f"export MODELVC_TOKEN={token}" in outputs[1]
    assert "revoked by admin" in outputs[2] and "root\\x1b[31m" in outputs[2]
    assert "(every model)" in outputs[3] and "needs releaser" in outputs[3]
    assert "active on partitions 0" in outputs[4]

"""The console's session and login-code store: bounded per token and in all (full, it
refuses rather than evict another caller's), expiring on its clock, one use
per code, ids and CSRF tokens that are secret and of the cookie's form."""

from __future__ import annotations

import pytest

from streams import auth
from streams.console import sessions
from streams.console.sessions import ConsoleFull, Sessions

T0 = 1_800_000_000.0  # seconds, as time.time() gives them
TOKEN = "mvc_0123456789abcdef_" + "t" * 43
OTHER = "mvc_fedcba9876543210_" + "o" * 43


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_bounds_are_the_contracts() -> None:
    assert sessions.SESSION_TTL_MS == 12 * 3600 * 1000
    assert sessions.MAX_SESSIONS == 10_000
    assert sessions.MAX_SESSIONS_PER_TOKEN == 16
    assert sessions.MAX_CODES_PER_TOKEN == 5
    assert sessions.CODE_TTL_MS == 60_000
    assert sessions.MAX_CODES == 1_000


def test_a_session_has_a_fresh_id_and_csrf_token_of_the_cookies_form() -> None:
    store = Sessions(Clock())
    one, two = store.open(TOKEN), store.open(TOKEN)
    for session in (one, two):
        assert auth.SESSION_ID.fullmatch(session.session_id)
        assert auth.SESSION_ID.fullmatch(session.csrf)
        assert session.csrf != session.session_id
        assert TOKEN not in (session.session_id, session.csrf)
    assert len({one.session_id, two.session_id, one.csrf, two.csrf}) == 4
    assert store.find(one.session_id) == one and one.expires_ms == T0 * 1000 + 12 * 3_600_000


def test_a_session_expires_after_twelve_hours_and_ends_when_closed() -> None:
    clock = Clock()
    store = Sessions(clock)
    session = store.open(TOKEN)
    clock.now += 12 * 3600 - 0.001
    assert store.find(session.session_id) == session
    clock.now += 0.001
    assert store.find(session.session_id) is None and store.open_sessions == 0
    again = store.open(TOKEN)
    store.close(again.session_id)
    assert store.find(again.session_id) is None
    store.close(again.session_id)  # closing twice is harmless


def test_a_tokens_sessions_are_bounded_and_its_oldest_goes() -> None:
    store = Sessions(Clock(), max_sessions=10, max_sessions_per_token=3)
    other = store.open(OTHER)
    opened = [store.open(TOKEN) for _ in range(5)]
    assert store.open_sessions == 4
    assert [store.find(s.session_id) for s in opened[:2]] == [None, None]
    assert all(store.find(s.session_id) == s for s in opened[2:])
    assert store.find(other.session_id) == other  # another token's session is untouched


def test_a_full_store_refuses_a_session_and_keeps_everyones() -> None:
    clock = Clock()
    store = Sessions(clock, max_sessions=3, max_sessions_per_token=2)
    kept = [store.open(OTHER), store.open(OTHER), store.open(TOKEN)]
    for _ in range(20):  # a flood by one caller
        with pytest.raises(ConsoleFull) as refused:
            store.open(f"{TOKEN}x")
        assert refused.value.code == "sessions_full" and "retry later" in refused.value.message
    assert all(store.find(s.session_id) == s for s in kept)
    # A token at its own limit may still replace its own oldest; a closed one frees a place.
    again = store.open(OTHER)
    assert store.find(kept[0].session_id) is None and store.find(again.session_id) == again
    store.close(kept[2].session_id)
    assert store.find(store.open(f"{TOKEN}x").session_id) is not None
    clock.now += 12 * 3600  # expired sessions free their places too
    assert store.open_sessions == 0 and store.open(TOKEN).token == TOKEN


def test_a_login_code_works_once_within_its_minute() -> None:
    clock = Clock()
    store = Sessions(clock)
    code = store.issue_code(TOKEN)
    assert auth.SESSION_ID.fullmatch(code.code) and TOKEN not in code.code
    assert code.expires_ms == T0 * 1000 + 60_000
    assert store.redeem(code.code) == TOKEN
    assert store.redeem(code.code) is None  # spent
    late = store.issue_code(TOKEN)
    clock.now += 60
    assert store.redeem(late.code) is None  # expired
    assert store.redeem("x" * 43) is None  # never issued


def test_login_codes_are_bounded_at_their_own_limit() -> None:
    store = Sessions(Clock(), max_codes=2, max_sessions=1)
    codes = [store.issue_code(f"{TOKEN}{i}") for i in range(2)]
    store.open(TOKEN)
    with pytest.raises(ConsoleFull):
        store.open(OTHER)  # sessions have their own bound: codes are untouched
    assert store.open_codes == 2 and store.open_sessions == 1
    with pytest.raises(ConsoleFull) as refused:
        store.issue_code(OTHER)
    assert refused.value.code == "codes_full" and "modelvc ui" in refused.value.message
    assert [store.redeem(c.code) for c in codes] == [f"{TOKEN}0", f"{TOKEN}1"]
    assert store.redeem(store.issue_code(OTHER).code) == OTHER  # a spent code frees a place


def test_a_token_has_five_live_codes_and_its_sixth_drops_its_oldest() -> None:
    store = Sessions(Clock())
    other = store.issue_code(OTHER)
    codes = [store.issue_code(TOKEN) for _ in range(6)]
    assert store.open_codes == 6
    assert store.redeem(codes[0].code) is None
    assert [store.redeem(c.code) for c in codes[1:]] == [TOKEN] * 5
    assert store.redeem(other.code) == OTHER

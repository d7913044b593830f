"""The console's session and login-code store: bounded, expiring on its clock, one use
per code, ids and CSRF tokens that are secret and of the cookie's form."""

from __future__ import annotations

from streams import auth
from streams.console import sessions
from streams.console.sessions import Sessions

T0 = 1_800_000_000.0  # seconds, as time.time() gives them
TOKEN = "mvc_0123456789abcdef_" + "t" * 43


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_bounds_are_the_contracts() -> None:
    assert sessions.SESSION_TTL_MS == 12 * 3600 * 1000
    assert sessions.MAX_SESSIONS == 10_000
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


def test_sessions_are_bounded_and_the_oldest_goes() -> None:
    store = Sessions(Clock(), max_sessions=3)
    opened = [store.open(TOKEN) for _ in range(5)]
    assert store.open_sessions == 3
    assert [store.find(s.session_id) for s in opened[:2]] == [None, None]
    assert all(store.find(s.session_id) == s for s in opened[2:])


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
    codes = [store.issue_code(f"{TOKEN}{i}") for i in range(3)]
    store.open(TOKEN)
    store.open(TOKEN)  # sessions have their own bound: codes are untouched
    assert store.open_codes == 2 and store.open_sessions == 1
    assert store.redeem(codes[0].code) is None
    assert [store.redeem(c.code) for c in codes[1:]] == [f"{TOKEN}1", f"{TOKEN}2"]

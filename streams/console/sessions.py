"""The console's sign-in state, in this process's memory: sessions and login codes.

A session is what the console's cookie names: it holds the caller's token
server-side (the cookie holds only the session's id), the CSRF token its writes
must carry, and when it ends. A login code is what ``modelvc ui`` puts in the
console's address (its fragment): it stands for the token that asked for it, once,
for a minute.

Both stores are bounded (the oldest entry goes first) and expire on the injected
clock; ids, CSRF tokens and codes come from :mod:`secrets`. Nothing here is
shared between streams instances or kept across a restart: a browser signs in
again on another instance (the token itself is checked by every instance alike).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

SESSION_TTL_MS = 12 * 3_600_000  # the cookie's Max-Age says the same
MAX_SESSIONS = 10_000
CODE_TTL_MS = 60_000  # long enough for a browser to open, too short to be worth stealing
MAX_CODES = 1_000
SECRET_BYTES = 32  # token_urlsafe: 43 characters (streams.auth.SESSION_ID)


@dataclass(frozen=True)
class Session:
    session_id: str
    token: str  # re-authenticated on every request: a revoked token ends the session
    csrf: str
    expires_ms: int


@dataclass(frozen=True)
class LoginCode:
    code: str
    token: str
    expires_ms: int


class Sessions:
    """Sessions by id and login codes by code, each in creation order (so also in order
    of expiry: every entry lives as long as the others of its kind)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        session_ttl_ms: int = SESSION_TTL_MS,
        max_sessions: int = MAX_SESSIONS,
        code_ttl_ms: int = CODE_TTL_MS,
        max_codes: int = MAX_CODES,
    ) -> None:
        self.clock = clock
        self.session_ttl_ms = session_ttl_ms
        self.max_sessions = max_sessions
        self.code_ttl_ms = code_ttl_ms
        self.max_codes = max_codes
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._codes: OrderedDict[str, LoginCode] = OrderedDict()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _prune(self) -> int:
        """Drop what has expired (from the oldest end); the time now, in ms."""
        now = self.now_ms()
        while self._sessions and next(iter(self._sessions.values())).expires_ms <= now:
            self._sessions.popitem(last=False)
        while self._codes and next(iter(self._codes.values())).expires_ms <= now:
            self._codes.popitem(last=False)
        return now

    # -- sessions --------------------------------------------------------------------
    def open(self, token: str) -> Session:
        """A new session for ``token`` (already authenticated by the caller)."""
        now = self._prune()
        session = Session(
            secrets.token_urlsafe(SECRET_BYTES),
            token,
            secrets.token_urlsafe(SECRET_BYTES),
            now + self.session_ttl_ms,
        )
        self._sessions[session.session_id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def find(self, session_id: str) -> Session | None:
        """The live session of that id; None when unknown, ended or expired."""
        self._prune()
        return self._sessions.get(session_id)

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    @property
    def open_sessions(self) -> int:
        self._prune()
        return len(self._sessions)

    # -- login codes -------------------------------------------------------------------
    def issue_code(self, token: str) -> LoginCode:
        """A code that opens a session for ``token`` once, within the code's minute."""
        now = self._prune()
        code = LoginCode(secrets.token_urlsafe(SECRET_BYTES), token, now + self.code_ttl_ms)
        self._codes[code.code] = code
        while len(self._codes) > self.max_codes:
            self._codes.popitem(last=False)
        return code

    def redeem(self, code: str) -> str | None:
        """The token ``code`` stands for, and the code is spent; None when unknown,
        spent or expired."""
        self._prune()
        found = self._codes.pop(code, None)
        return None if found is None else found.token

    @property
    def open_codes(self) -> int:
        self._prune()
        return len(self._codes)

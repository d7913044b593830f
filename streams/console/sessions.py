"""The console's sign-in state, in this process's memory: sessions and login codes.

A session is what the console's cookie names: it holds the caller's token
server-side (the cookie holds only the session's id), the CSRF token its writes
must carry, and when it ends. A login code is what ``modelvc ui`` puts in the
console's address (its fragment): it stands for the token that asked for it, once,
for a minute.

Both stores are bounded and expire on the injected clock. Each token has a small limit
of its own (a token at it loses its own oldest entry); a store full of entries refuses
the next one (:class:`ConsoleFull`) rather than evict another caller's: any reader could
otherwise sign everyone out, or spend everyone's codes, by asking again and again. Ids,
CSRF tokens and codes come from :mod:`secrets`. Nothing here is
shared between streams instances or kept across a restart: a browser signs in
again on another instance (the token itself is checked by every instance alike).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

SESSION_TTL_MS = 12 * 3_600_000  # the cookie's Max-Age says the same
MAX_SESSIONS = 10_000
MAX_SESSIONS_PER_TOKEN = 16  # browsers and devices of one caller
CODE_TTL_MS = 60_000  # long enough for a browser to open, too short to be worth stealing
MAX_CODES = 1_000
MAX_CODES_PER_TOKEN = 5
SECRET_BYTES = 32  # token_urlsafe: 43 characters (streams.auth.SESSION_ID)


class ConsoleFull(Exception):
    """The store holds its limit of live entries: the new one is refused (the HTTP edge
    answers 503 with ``code``), the others' are kept."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


def _sessions_full(total: int) -> ConsoleFull:
    return ConsoleFull(
        "sessions_full",
        f"the console has its limit of {total} open sessions: retry later, or sign out of "
        "the console in another browser to free one",
    )


def _codes_full(total: int) -> ConsoleFull:
    return ConsoleFull(
        "codes_full",
        f"the console holds its limit of {total} unused login codes: run `modelvc ui` "
        "again in a minute (each code lasts a minute)",
    )


class _Entry(Protocol):
    @property
    def token(self) -> str: ...

    @property
    def expires_ms(self) -> int: ...


E = TypeVar("E", bound=_Entry)


class _Bounded(Generic[E]):
    """Entries by key in creation order (so also in order of expiry: every entry lives as
    long as the others), and each token's keys in the same order."""

    def __init__(self, total: int, per_token: int, full: Callable[[int], ConsoleFull]) -> None:
        self.total = total
        self.per_token = per_token
        self.full = full  # the refusal when ``total`` entries are live
        self._entries: OrderedDict[str, E] = OrderedDict()
        self._of_token: dict[str, OrderedDict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> E | None:
        return self._entries.get(key)

    def prune(self, now_ms: int) -> None:
        """Drop what has expired, from the oldest end."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_ms > now_ms:
                return
            self.pop(key)

    def add(self, key: str, entry: E) -> E:
        """Keep ``entry``: a token at its own limit loses its oldest entry; when the store
        is full, ``full`` is raised and nothing is kept or dropped."""
        own = self._of_token.get(entry.token)
        if own is not None and len(own) >= self.per_token:
            self.pop(next(iter(own)))
        if len(self._entries) >= self.total:
            raise self.full(self.total)
        self._entries[key] = entry
        self._of_token.setdefault(entry.token, OrderedDict())[key] = None
        return entry

    def pop(self, key: str) -> E | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            own = self._of_token[entry.token]
            del own[key]
            if not own:
                del self._of_token[entry.token]
        return entry


class Sessions:
    """Sessions by id and login codes by code (:class:`_Bounded` each)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        session_ttl_ms: int = SESSION_TTL_MS,
        max_sessions: int = MAX_SESSIONS,
        max_sessions_per_token: int = MAX_SESSIONS_PER_TOKEN,
        code_ttl_ms: int = CODE_TTL_MS,
        max_codes: int = MAX_CODES,
        max_codes_per_token: int = MAX_CODES_PER_TOKEN,
    ) -> None:
        self.clock = clock
        self.session_ttl_ms = session_ttl_ms
        self.code_ttl_ms = code_ttl_ms
        self._sessions: _Bounded[Session] = _Bounded(
            max_sessions, max_sessions_per_token, _sessions_full
        )
        self._codes: _Bounded[LoginCode] = _Bounded(max_codes, max_codes_per_token, _codes_full)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _prune(self) -> int:
        """Drop what has expired; the time now, in ms."""
        now = self.now_ms()
        self._sessions.prune(now)
        self._codes.prune(now)
        return now

    # -- sessions --------------------------------------------------------------------
    def open(self, token: str) -> Session:
        """A new session for ``token`` (already authenticated by the caller); past the
        token's own limit, its oldest session closes. Raises :class:`ConsoleFull` when
        the store is full."""
        now = self._prune()
        session_id = secrets.token_urlsafe(SECRET_BYTES)
        csrf = secrets.token_urlsafe(SECRET_BYTES)
        session = Session(session_id, token, csrf, now + self.session_ttl_ms)
        return self._sessions.add(session_id, session)

    def find(self, session_id: str) -> Session | None:
        """The live session of that id; None when unknown, ended or expired."""
        self._prune()
        return self._sessions.get(session_id)

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id)

    @property
    def open_sessions(self) -> int:
        self._prune()
        return len(self._sessions)

    # -- login codes -------------------------------------------------------------------
    def issue_code(self, token: str) -> LoginCode:
        """A code that opens a session for ``token`` once, within the code's minute; past
        the token's own limit, its oldest code goes. Raises :class:`ConsoleFull` when the
        store is full."""
        now = self._prune()
        code = LoginCode(secrets.token_urlsafe(SECRET_BYTES), token, now + self.code_ttl_ms)
        return self._codes.add(code.code, code)

    def redeem(self, code: str) -> str | None:
        """The token ``code`` stands for, and the code is spent; None when unknown,
        spent or expired."""
        self._prune()
        found = self._codes.pop(code)
        return None if found is None else found.token

    @property
    def open_codes(self) -> int:
        self._prune()
        return len(self._codes)

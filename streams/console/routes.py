"""The console's routes: its pages and assets at ``/ui/``, its sign-in, and login codes.

The pages are files of this package (``static/``), read once at start-up and served
from memory with a strong ETag (``Cache-Control: no-cache``: a browser asks again
each time and gets a 304 until an upgrade changes them). Every ``/ui`` answer
carries a Content-Security-Policy that lets a page run only this server's own
scripts and styles, never inline ones, and be framed by nobody.

Signing in (``POST /ui/session``) takes a token, or a login code that ``modelvc ui``
got for its own token (``POST /v1/ui/login-codes``, a minute, once), and opens a
session (``streams.console.sessions``) whose id is the ``modelvc_session`` cookie; a
store at its limit answers 503 (``sessions_full``, ``codes_full``) and evicts nobody. From
then on ``streams.auth`` lets that cookie stand for the token, and wants the
session's CSRF token on every write. The session lives in this instance's memory.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from typing import Any

from aiohttp import web

from streams import auth, parse
from streams.console.sessions import ConsoleFull, Session, Sessions
from streams.core.errors import InvalidCommand, Unauthenticated
from streams.core.security import MAX_TOKEN_LENGTH, Identity, authenticate
from streams.http_edge import Handler, error_response

CONSOLE_PREFIX = "/ui"
INDEX = "index.html"
ASSET_NAME = re.compile(r"[a-z0-9_-]{1,40}\.(js|css|svg)", re.ASCII)  # fullmatch
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
# Only this server's own files run or style a page (no inline script or style, no other
# site), it talks only to this server, and no other site may frame it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
MAX_IF_NONE_MATCH_CHARS = 1024


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # strong: a digest of the bytes


def load_assets(folder: Traversable | None = None) -> dict[str, Asset]:
    """The console's files by name (``index.html`` and the assets ``ASSET_NAME`` allows),
    from the package's ``static`` folder unless told otherwise. A package without
    ``index.html`` was built without its data: refused at start-up, not at the first visit."""
    if folder is None:
        folder = importlib.resources.files("streams.console").joinpath("static")
    assets = {}
    for entry in folder.iterdir():
        name = entry.name
        if entry.is_file() and (name == INDEX or ASSET_NAME.fullmatch(name)):
            body = entry.read_bytes()
            etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
            assets[name] = Asset(body, CONTENT_TYPES[name.rpartition(".")[2]], etag)
    if INDEX not in assets:
        raise RuntimeError(
            f"the console's {INDEX} is missing from {folder}: the package was built without "
            "its data files; reinstall modelvc (pip install --force-reinstall modelvc)"
        )
    return assets


def is_console_path(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


@web.middleware
async def console_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The console's security headers on every ``/ui`` answer, errors included (outermost)."""
    response = await handler(request)
    if is_console_path(request.path):
        response.headers.update(SECURITY_HEADERS)
    return response


def _fresh(if_none_match: str | None, etag: str) -> bool:
    """Whether the browser's copy (its If-None-Match) is ``etag``."""
    if not if_none_match or len(if_none_match) > MAX_IF_NONE_MATCH_CHARS:
        return False
    return any(tag.strip() in (etag, "*") for tag in if_none_match.split(","))


def _served(request: web.Request, asset: Asset) -> web.Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache"}
    if _fresh(request.headers.get("If-None-Match"), asset.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def _https(request: web.Request) -> bool:
    """Whether the browser reached us over https: directly, or through a TLS proxy (its
    Origin, which the origin guard has checked names this server, says https)."""
    return request.secure or request.headers.get("Origin", "").startswith("https://")


def _full(exc: ConsoleFull) -> web.Response:
    """A store at its limit: the caller retries later (503); nobody else's entry went."""
    return error_response(503, exc.code, exc.message)


def _no_store(response: web.Response) -> web.Response:
    response.headers["Cache-Control"] = "no-store"  # it carries the CSRF token or a code
    return response


class Console:
    """The console's handlers over the security state and this instance's sessions."""

    def __init__(
        self,
        security: auth.SecuritySource,
        sessions: Sessions,
        assets: Mapping[str, Asset] | None = None,
    ) -> None:
        self.security = security
        self.sessions = sessions
        self.assets = dict(assets) if assets is not None else load_assets()

    def routes(self) -> list[web.RouteDef]:
        """Every route of the console (``streams.auth`` says which are open)."""
        return [
            web.get(CONSOLE_PREFIX, self.to_index),
            web.get(f"{CONSOLE_PREFIX}/", self.index),
            web.get(f"{CONSOLE_PREFIX}/static/{{name}}", self.asset),
            web.post(f"{CONSOLE_PREFIX}/session", self.sign_in),
            web.get(f"{CONSOLE_PREFIX}/session", self.session),
            web.delete(f"{CONSOLE_PREFIX}/session", self.sign_out),
            web.post("/v1/ui/login-codes", self.login_code),
        ]

    # -- pages and assets ------------------------------------------------------------
    async def to_index(self, request: web.Request) -> web.Response:
        # Relative links of the page resolve against /ui/, so it is always served there.
        return web.Response(status=308, headers={"Location": f"{CONSOLE_PREFIX}/"})

    async def index(self, request: web.Request) -> web.Response:
        return _served(request, self.assets[INDEX])

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        asset = self.assets.get(name) if ASSET_NAME.fullmatch(name) else None
        if asset is None:
            return error_response(
                404, "not_found", f"the console has no file {name[:60]!r}; its pages are at /ui/"
            )
        return _served(request, asset)

    # -- sessions ----------------------------------------------------------------------
    def _answer(self, identity: Identity, session: Session) -> web.Response:
        # The session ends at 12 hours, or sooner when its token expires.
        ends = [session.expires_ms, *([identity.expires_at] if identity.expires_at else [])]
        body = {
            "actor": identity.actor,
            "role": identity.role,
            "csrf": session.csrf,
            "expires_ms": min(ends),
        }
        return _no_store(web.json_response(body))

    def _token_of(self, body: Mapping[str, Any]) -> str:
        """The token a sign-in names: itself, or the one its login code stands for."""
        token = parse.opt_text(body, "token", MAX_TOKEN_LENGTH)
        code = parse.opt_text(body, "code", MAX_TOKEN_LENGTH)
        if (token is None) == (code is None):
            raise InvalidCommand(
                'send one of {"token": "mvc_..."} (a token an admin gave you) or '
                '{"code": "..."} (from `modelvc ui`)'
            )
        if token is not None:
            return token
        spendable = code is not None and auth.SESSION_ID.fullmatch(code)
        redeemed = self.sessions.redeem(code) if code is not None and spendable else None
        if redeemed is None:
            raise Unauthenticated(
                "this login code is unknown, used or older than a minute: run `modelvc ui` "
                "again, or sign in with a token"
            )
        return redeemed

    async def sign_in(self, request: web.Request) -> web.Response:
        """Open a session for a token or a login code; its id goes into the cookie."""
        body = await parse.json_body(request)
        try:
            token = self._token_of(body)
            identity = authenticate(self.security(), token, self.sessions.now_ms())
        except Unauthenticated as exc:
            return auth.refusal(exc, "reader")
        previous = auth.cookie_session_id(request)
        if previous is not None:
            self.sessions.close(previous)  # signing in again replaces the session
        try:
            session = self.sessions.open(token)
        except ConsoleFull as exc:
            return _full(exc)
        answer = self._answer(identity, session)
        max_age_s = self.sessions.session_ttl_ms // 1000
        auth.set_session_cookie(answer, session.session_id, max_age_s, secure=_https(request))
        return answer

    def _own_session(self, request: web.Request) -> Session | None:
        session_id = auth.cookie_session_id(request)
        return None if session_id is None else self.sessions.find(session_id)

    async def session(self, request: web.Request) -> web.Response:
        """The caller's session again (a reloaded page needs its CSRF token)."""
        session = self._own_session(request)
        if session is None or "Authorization" in request.headers:
            return auth.refusal(
                Unauthenticated("no console session: sign in at /ui/ (POST /ui/session)"),
                "reader",
            )
        return self._answer(auth.identity_of(request), session)

    async def sign_out(self, request: web.Request) -> web.Response:
        session_id = auth.cookie_session_id(request)
        if session_id is not None:
            self.sessions.close(session_id)
        answer = web.Response(status=204)
        auth.set_session_cookie(answer, "", 0, secure=_https(request))
        return answer

    # -- login codes (the API's: modelvc ui) -----------------------------------------------
    async def login_code(self, request: web.Request) -> web.Response:
        """A code that signs a browser in as the caller, once, within a minute."""
        try:
            code = self.sessions.issue_code(request[auth.CREDENTIAL])
        except ConsoleFull as exc:
            return _full(exc)
        return _no_store(
            web.json_response({"code": code.code, "expires_ms": code.expires_ms}, status=201)
        )

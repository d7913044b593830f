"""Who is calling: bearer tokens at the HTTP edge, and the least role of every route.

Every request but a few open ones (health, the OpenAPI document) carries
``Authorization: Bearer <token>``. The token is checked against the
``~security`` chain as folded from the log (only its sha256 is there), and the
caller's :class:`~streams.core.security.Identity` is put on the request
(``request[IDENTITY]``, read with :func:`identity_of`); handlers take the actor
from it, never from the body.

The route table below is the one home of "which role does this route need":
the middleware enforces it and ``streams.openapi`` documents it. A route missing
from the table needs ``admin`` (closed by default, and the OpenAPI test finds
the gap). Roles of individual refs (a protected ``production``) are the
writer's business (``streams.core.security.authorize``): the route's role is
only the floor.

The web console (``streams.console``) signs a browser in with a session cookie
instead: the session, kept server-side, holds the token, which is authenticated
again on every request (a revoked token ends its sessions at once). A cookie
is sent by the browser on its own, so a write it authenticates must also carry
the session's CSRF token in ``X-CSRF-Token``; a bearer token is never ambient
and needs none.

The statuses 401 and 403 are chosen here, at the edge; the workers use this
module too, and must not import the streams service's status table.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDictProxy

from streams.core.errors import ActorMismatch, Forbidden, Unauthenticated
from streams.core.security import (
    ROLES,
    TOKEN_FORMAT,
    Identity,
    SecurityState,
    at_least,
    authenticate,
    token_sha256,
)
from streams.http_edge import Handler, error_response

IDENTITY = web.RequestKey("identity", Identity)  # where the caller is kept on a request
# The token the caller was authenticated with (from its header or its session): a login
# code is bound to it.
CREDENTIAL = web.RequestKey("credential", str)
# "Bearer " and a token (mvc_ + 16 + _ + 43 = 64 characters), with room for spaces;
# anything longer is not one of ours and is not looked at further.
MAX_AUTHORIZATION_CHARS = 128
CHALLENGE = 'Bearer realm="modelvc"'
IDENTITY_HEADERS = ("Authorization", "X-Modelvc-Actor")  # each at most once per request

# Open to anyone who can reach the server: nothing in them needs hiding, and a
# load balancer or a client must read them before it has a token. "/" is Faust's
# index page, which Faust always mounts.
OPEN_PATHS = frozenset({"/", "/healthz", "/v1/openapi.json", "/metrics"})

# (route path as registered, method) -> the least role it needs.
ROUTE_ROLES: Mapping[tuple[str, str], str] = {
    ("/v1/whoami", "get"): "reader",
    ("/v1/models", "get"): "reader",
    ("/v1/models", "post"): "committer",
    ("/v1/models/{model}/commits", "post"): "committer",
    ("/v1/models/{model}/branches", "get"): "reader",
    ("/v1/models/{model}/branches", "post"): "committer",
    ("/v1/models/{model}/branches/{branch}", "delete"): "committer",
    ("/v1/models/{model}/merges", "post"): "committer",
    ("/v1/models/{model}/rollbacks", "post"): "committer",
    ("/v1/models/{model}/aliases/{alias}", "put"): "committer",
    ("/v1/models/{model}/log", "get"): "reader",
    ("/v1/models/{model}/refs", "get"): "reader",
    ("/v1/models/{model}/commits/{ref}", "get"): "reader",
    ("/v1/models/{model}/resolve/{ref}", "get"): "reader",
    ("/v1/models/{model}/diff", "get"): "reader",
    ("/v1/models/{model}/feature-schema", "get"): "reader",
    ("/v1/state/digest", "get"): "reader",
    ("/v1/audit/replay", "post"): "reader",  # reads the log, changes nothing
    # Uploading stores bytes but moves nothing: the commit that names them needs committer.
    ("/v1/artifacts", "post"): "committer",
    ("/v1/artifacts/{digest}", "get"): "reader",
    ("/v1/tokens", "get"): "admin",
    ("/v1/tokens", "post"): "admin",
    ("/v1/tokens/{token_id}", "delete"): "admin",
    ("/v1/protections", "get"): "reader",
    ("/v1/protections/{kind}/{name}", "put"): "admin",
    ("/v1/protections/{kind}/{name}", "delete"): "admin",
    ("/v1/writer-keys", "get"): "reader",
    ("/v1/writer-keys", "post"): "admin",
    ("/v1/writer-keys/{key_id}", "delete"): "admin",
    # Monitoring and rollouts (issue 12). Shadows and rollouts change what an alias serves,
    # as a move does (committer; a protected alias's rule is the writer's to apply); the
    # controller's own decisions carry the role the rollout's start needed.
    ("/v1/models/{model}/monitor", "get"): "reader",
    ("/v1/models/{model}/shadow", "get"): "reader",
    ("/v1/models/{model}/shadow", "post"): "committer",
    ("/v1/models/{model}/shadow/stop", "post"): "committer",
    ("/v1/models/{model}/rollouts", "get"): "reader",
    ("/v1/models/{model}/rollouts", "post"): "committer",
    ("/v1/models/{model}/rollouts/{rollout_id}", "get"): "reader",
    ("/v1/models/{model}/rollouts/{rollout_id}/pause", "post"): "committer",
    ("/v1/models/{model}/rollouts/{rollout_id}/resume", "post"): "committer",
    ("/v1/models/{model}/rollouts/{rollout_id}/abort", "post"): "committer",
    ("/v1/models/{model}/rollouts/{rollout_id}/promote", "post"): "committer",
    # A reference is bytes in the store, like an upload; the commit naming it needs committer.
    ("/v1/references", "post"): "committer",
    ("/v1/references/{digest}", "get"): "reader",
    # A one-minute code that signs a browser in to the console as the caller (`modelvc ui`).
    ("/v1/ui/login-codes", "post"): "reader",
}
# The web console's own routes (``streams.console``), outside the API and its document.
# Its pages, assets and sign-in are open: a browser loads them before it has a session.
CONSOLE_OPEN_ROUTES = frozenset(
    {("/ui", "get"), ("/ui/", "get"), ("/ui/static/{name}", "get"), ("/ui/session", "post")}
)
# Reading or ending one's session needs one (and ending it, its CSRF token).
CONSOLE_ROUTE_ROLES: Mapping[tuple[str, str], str] = {
    ("/ui/session", "get"): "reader",
    ("/ui/session", "delete"): "reader",
}
# Every guarded route a streams instance serves.
STREAMS_ROUTE_ROLES: Mapping[tuple[str, str], str] = {**ROUTE_ROLES, **CONSOLE_ROUTE_ROLES}
# The workers' guarded routes: predicting, and the Open Inference Protocol's model routes.
WORKER_ROUTE_ROLES: Mapping[tuple[str, str], str] = {
    ("/v1/models/{model}/predict", "post"): "reader",
    **{
        (prefix + suffix, method): "reader"
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
        for suffix, method in (("/infer", "post"), ("", "get"), ("/ready", "get"))
    },
}
# Open: probes and scrapers carry no token, and these name no model.
WORKER_OPEN_PATHS = frozenset(
    {"/healthz", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready"}
)

# Where the security state comes from: the projection's fold of ``~security``
# (None before the first token is issued: then nobody is let in).
SecuritySource = Callable[[], SecurityState | None]

# The console's cookie: it holds a session id (secrets.token_urlsafe(32)) and nothing else.
SESSION_COOKIE = "modelvc_session"
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)  # fullmatch; CSRF tokens too
CSRF_HEADER = "X-CSRF-Token"
# Methods a cookie may authenticate without the CSRF token: they change nothing.
SAFE_METHODS = frozenset({"GET", "HEAD"})


class CookieSession(Protocol):
    """What the token middleware needs of a console session."""

    @property
    def token(self) -> str: ...

    @property
    def csrf(self) -> str: ...


class SessionStore(Protocol):
    """The console's sessions, by the id its cookie holds (``streams.console.sessions``)."""

    def find(self, session_id: str) -> CookieSession | None:
        """The live session of that id; None when unknown or expired."""
        ...

    def close(self, session_id: str) -> None: ...


def create_command(actor: str, role: str) -> str:
    """The CLI line an admin runs to give ``actor`` a token of ``role``."""
    return f"modelvc token create {actor} --role {role}"


def needed_role(roles: Mapping[tuple[str, str], str], path: str, method: str) -> str:
    """The least role for ``method`` on the route registered as ``path`` (admin if unlisted)."""
    method = "get" if method.upper() == "HEAD" else method.lower()
    return roles.get((path, method), ROLES[-1])


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; Unauthenticated else."""
    if header is None:
        raise Unauthenticated(
            "this request needs a token: send the header 'Authorization: Bearer <token>' "
            f"(an admin creates one with `{create_command('ACTOR', 'reader')}`; the CLI "
            "reads MODELVC_TOKEN, MODELVC_TOKEN_FILE or $MODELVC_HOME/admin.token)"
        )
    if len(header) > MAX_AUTHORIZATION_CHARS:
        raise Unauthenticated(
            f"the Authorization header is {len(header)} characters; a modelvc token is "
            f"'Bearer mvc_…' (64 characters after 'Bearer '), from "
            f"`{create_command('ACTOR', 'reader')}`"
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated(
            f"the Authorization header must be 'Bearer {TOKEN_FORMAT}', a token "
            f"from `{create_command('ACTOR', 'reader')}`"
        )
    return token.strip()  # its form is checked by security.authenticate


def repeated_header(headers: CIMultiDictProxy[str]) -> str | None:
    """Why the request is refused when it names its token or actor twice; None if it does not.

    Proxies and frameworks disagree on which of two copies wins, so one that
    checks the first and one that reads the last could see different callers.
    """
    for name in IDENTITY_HEADERS:
        count = len(headers.getall(name, ()))
        if count > 1:
            return f"the request has {count} {name} headers: send exactly one"
    return None


def cookie_session_id(request: web.Request) -> str | None:
    """The session id the request's cookie names, if it has the form of one."""
    value = request.cookies.get(SESSION_COOKIE)
    return value if value is not None and SESSION_ID.fullmatch(value) else None


def set_session_cookie(
    response: web.StreamResponse, session_id: str, max_age_s: int, secure: bool
) -> None:
    """The console's cookie: script cannot read it, other sites' requests do not carry it,
    and over https (``secure``) it is never sent in the clear. Empty with 0: cleared."""
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=max_age_s,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure or None,
    )


def csrf_matches(session: CookieSession, sent: str | None) -> bool:
    """Whether ``sent`` (the X-CSRF-Token header) is the session's CSRF token."""
    # Its form first: compare_digest refuses non-ASCII text, and the length is then fixed.
    return (
        sent is not None
        and SESSION_ID.fullmatch(sent) is not None
        and hmac.compare_digest(sent, session.csrf)
    )


def csrf_refusal() -> web.Response:
    return error_response(
        403,
        "csrf",
        f"a write signed in by the console's session cookie must carry the header "
        f"{CSRF_HEADER}: the csrf value of GET /ui/session (reload the console to get it)",
    )


def check_role(identity: Identity, needed: str, what: str) -> None:
    """Forbidden (naming the missing role and how to get it) unless ``identity`` has ``needed``."""
    if at_least(identity.role, needed):
        return
    raise Forbidden(
        f"{what} needs role {needed}; the token of {identity.actor!r} has role {identity.role}. "
        f"Ask an admin for a {needed} token: `{create_command(identity.actor, needed)}`",
        needed=needed,
        role=identity.role,
        actor=identity.actor,
    )


def refusal(exc: Unauthenticated | Forbidden, needed: str) -> web.Response:
    """The JSON answer to a refused request: 401 with a challenge, or 403."""
    details: dict[str, Any] = {"needed": needed, "role": None, "actor": None, **exc.details}
    if isinstance(exc, Forbidden):
        return error_response(403, exc.code, exc.message, **details)
    answer = error_response(401, exc.code, exc.message, **details)
    answer.headers["WWW-Authenticate"] = CHALLENGE
    return answer


def _route(request: web.Request) -> tuple[str, str]:
    """The route's path as registered, and the method (HEAD as GET)."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    method = "get" if request.method == "HEAD" else request.method.lower()
    return path, method


def _session_of(
    request: web.Request, sessions: SessionStore | None
) -> tuple[str, CookieSession] | None:
    """The console session a request without an Authorization header is signed in with;
    Unauthenticated when its cookie names one that has ended."""
    if sessions is None or "Authorization" in request.headers:
        return None  # a bearer token wins: the cookie is ambient, the header is not
    session_id = cookie_session_id(request)
    if session_id is None:
        return None
    session = sessions.find(session_id)
    if session is None:
        raise Unauthenticated(
            "your console session has ended (signed out, 12 hours old, or opened on another "
            "streams instance, or this one restarted): sign in again at /ui/ "
            "(`modelvc ui` opens it signed in)"
        )
    return session_id, session


def require_tokens(
    security: SecuritySource,
    roles: Mapping[tuple[str, str], str],
    open_paths: frozenset[str],
    clock: Callable[[], float] = time.time,
    *,
    open_routes: frozenset[tuple[str, str]] = frozenset(),
    sessions: SessionStore | None = None,
) -> Middleware:
    """Authenticate every request outside ``open_paths`` and ``open_routes`` (path,
    method) and check its route's role.

    The caller is the bearer token's or, with ``sessions`` and no Authorization header,
    the token of the console session its cookie names (a write then needs its CSRF
    token). Placed after the origin guard (which answers unknown routes and foreign
    pages first) and before the handlers, which find the caller in ``request["identity"]``.
    """

    @web.middleware
    async def tokens(request: web.Request, handler: Handler) -> web.StreamResponse:
        path, method = _route(request)
        if path in open_paths or (path, method) in open_routes:
            return await handler(request)
        needed = needed_role(roles, path, request.method)
        repeated = repeated_header(request.headers)
        if repeated is not None:
            return error_response(400, "bad_request", repeated)
        signed_in: tuple[str, CookieSession] | None = None
        try:
            signed_in = _session_of(request, sessions)
            token = (
                bearer(request.headers.get("Authorization"))
                if signed_in is None
                else signed_in[1].token
            )
            identity = authenticate(security(), token, int(clock() * 1000))
        except Unauthenticated as exc:
            answer = refusal(exc, needed)
            if sessions is not None and "Authorization" not in request.headers:
                if signed_in is not None:
                    sessions.close(signed_in[0])  # its token was revoked or has expired
                if SESSION_COOKIE in request.cookies:
                    set_session_cookie(answer, "", 0, secure=request.secure)
            return answer
        csrf = request.headers.get(CSRF_HEADER)
        if (
            signed_in is not None
            and request.method not in SAFE_METHODS
            and not csrf_matches(signed_in[1], csrf)
        ):
            return csrf_refusal()
        try:
            check_role(identity, needed, f"{request.method} {path}")
        except Forbidden as exc:
            return refusal(exc, needed)
        request[IDENTITY] = identity
        request[CREDENTIAL] = token
        return await handler(request)

    return tokens


def identity_of(request: web.Request) -> Identity:
    """The caller, as the middleware authenticated it."""
    try:
        return request[IDENTITY]
    except KeyError:
        # An open route reached a handler that needs a caller: a bug of the route table.
        raise RuntimeError(f"{request.path} was not authenticated; add it to ROUTE_ROLES") from None


def check_actor(identity: Identity, *claims: object) -> None:
    """ActorMismatch unless every claimed actor (None: no claim) is the token's own."""
    for claim in claims:
        if claim is not None and claim != identity.actor:
            shown = claim[:64] if isinstance(claim, str) else type(claim).__name__
            raise ActorMismatch(
                f"this token belongs to {identity.actor!r}, but the request claims actor "
                f"{shown!r}: the token says who you are, so drop the 'actor' field and the "
                "X-Modelvc-Actor header (`modelvc whoami` shows who your token is), or "
                f"send that actor's own token (`{create_command('ACTOR', identity.role)}`)",
                actor=identity.actor,
                claimed=shown,
            )


def new_token() -> tuple[str, str, str]:
    """A fresh token, its id and its sha256 (the only part of it that is kept)."""
    token_id = secrets.token_hex(8)
    token = f"mvc_{token_id}_{secrets.token_urlsafe(32)}"
    return token, token_id, token_sha256(token)

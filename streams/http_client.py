"""The one small HTTP client of modelvc (standard library ``urllib``).

Used by the CLI's API client, the workers' artifact fetch and the embedded
stack's health checks. Every answer is read with bounds: at most
``max_bytes`` of body, each socket operation within ``timeout`` and the whole
exchange within ``deadline_s`` (a server that dribbles bytes cannot hold a
caller forever). Every failure is one exception type, :class:`HttpError`,
carrying the HTTP status (0 when the server could not be reached or did not
answer in time) and the JSON error body the service sent (or one made up in
the same shape: ``{"error": ..., "message": ...}``).

Every request carries ``Authorization: Bearer <token>`` when the client is given
one (``token=``; None sends none): constructors never read the environment. The
edges (the CLI, the embedded stack, a worker's bootstrap) find the token once:
``$MODELVC_TOKEN``, else the file ``$MODELVC_TOKEN_FILE``, else
``$MODELVC_HOME/admin.token`` when it exists (:func:`resolve_token`, the one home of
that order, :func:`token_from_env` its reading of the environment, and
:func:`read_token_file` the one reading of a token file).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, Protocol

from streams.core.security import TOKEN, TOKEN_FORMAT
from streams.files import PrivateFileError, read_private

DEFAULT_MAX_BYTES = 64 << 20
ERROR_BODY_BYTES = 64 << 10  # an error answer is a short JSON object; more is not read
_CHUNK = 1 << 16

TOKEN_ENV = "MODELVC_TOKEN"
TOKEN_FILE_ENV = "MODELVC_TOKEN_FILE"
ADMIN_TOKEN_FILE = "admin.token"  # in $MODELVC_HOME, written 0600 by `modelvc up`
MAX_TOKEN_FILE_BYTES = 1024  # a token is 64 characters; a larger file is not one
_CREATE = "modelvc token create ACTOR --role reader"


class TokenError(ValueError):
    """A token that cannot be used as given: its message says what to do instead."""


def checked_token(token: str, source: str) -> str:
    """``token`` (surrounding whitespace dropped) when it is shaped like a modelvc token."""
    token = token.strip()
    if not TOKEN.fullmatch(token):
        raise TokenError(
            f"{source} does not hold a modelvc token ({TOKEN_FORMAT}); "
            f"an admin makes one with `{_CREATE}`"
        )
    return token


def read_token_file(path: Path) -> str:
    """The token in ``path``, which must be a regular file only its owner can read or write.

    A token readable by the group or others is refused, not used: anyone who read it
    can act as its actor until it is revoked.
    """
    try:
        data = read_private(path, MAX_TOKEN_FILE_BYTES)
    except PrivateFileError as exc:
        advice = ", and revoke the token if others may have read it" if exc.exposed else ""
        raise TokenError(f"token file {exc}{advice}") from None
    return checked_token(data.decode("ascii", errors="replace"), f"token file {path}")


def default_home(environ: Mapping[str, str]) -> Path:
    """$MODELVC_HOME, else .modelvc (as the CLI's --home)."""
    return Path(environ.get("MODELVC_HOME") or ".modelvc")


def resolve_token(
    token: str | None, token_file: Path | None, admin_file: Path | None
) -> str | None:
    """The caller's token: ``token`` (as $MODELVC_TOKEN gives it), else the one in
    ``token_file`` ($MODELVC_TOKEN_FILE), else the one in ``admin_file``
    ($MODELVC_HOME/admin.token) when that file exists; None when there is none.
    A named source that is unusable is a TokenError."""
    if token:
        return checked_token(token, TOKEN_ENV)
    if token_file is not None:
        return read_token_file(token_file)
    if admin_file is not None and admin_file.exists():
        return read_token_file(admin_file)
    return None


def token_from_env(
    environ: Mapping[str, str] | None = None, home: Path | None = None
) -> str | None:
    """:func:`resolve_token` of the environment (``home`` defaults to :func:`default_home`);
    call only at an edge, and pass the answer to the clients it builds."""
    env = os.environ if environ is None else environ
    token_file = Path(env[TOKEN_FILE_ENV]) if env.get(TOKEN_FILE_ENV) else None
    admin = (home if home is not None else default_home(env)) / ADMIN_TOKEN_FILE
    return resolve_token(env.get(TOKEN_ENV) or None, token_file, admin)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: our API never redirects, and urllib would send the
    Authorization header (the bearer token) along to wherever the answer points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError, answered in HttpClient


# The one opener: urlopen's defaults (proxies from the environment, https), no redirects.
_OPENER = urllib.request.build_opener(_NoRedirects)


class HttpError(Exception):
    """Raised when a request fails: ``status`` (0: unreachable or too slow) and ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message") or body.get("error") or f"HTTP {status}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:  # UnicodeDecodeError included
            raise HttpError(
                self.status, {"error": "bad_response", "message": f"the answer is not JSON: {exc}"}
            ) from None


class _Readable(Protocol):
    def read1(self, size: int = -1, /) -> bytes: ...


def _read(stream: _Readable, limit: int, deadline: float, url: str) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of ``stream``, and whether there was more.

    ``read1`` returns what has arrived instead of waiting for a whole chunk, so the
    deadline (monotonic) is checked between the server's writes.
    """
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        if time.monotonic() > deadline:
            raise HttpError(
                0, {"error": "timeout", "message": f"the answer of {url} took too long"}
            )
        chunk = stream.read1(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(parts), False
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)[:limit], True


def _error_body(status: int, headers: Message, text: bytes) -> dict[str, Any]:
    if headers.get_content_type() == "application/json":
        try:
            answer = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(answer, dict):
                return answer
    message = text.decode("utf-8", errors="replace").strip()[:1000] or f"HTTP {status}"
    return {"error": "http", "message": message}


def _redirected(url: str, status: int, headers: Message) -> dict[str, Any]:
    target = (headers.get("Location") or "elsewhere")[:200]
    return {
        "error": "redirect",
        "message": f"{url} answered {status}, a redirect to {target!r}; modelvc does not "
        "follow redirects (the token would go along): use the server's own address as the "
        "URL (MODELVC_URL or --url)",
    }


class HttpClient:
    """Requests to one base URL; ``unreachable`` is what to do when the server does not answer.

    ``token``: the bearer token every request carries; None (or "") sends none, as
    for open routes such as /healthz. The caller finds it (:func:`token_from_env`).
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        deadline_s: float = 120.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        unreachable: str = "",
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = checked_token(token, "the token given") if token else None
        self.timeout = timeout
        self.deadline_s = deadline_s
        self.max_bytes = max_bytes
        self.unreachable = unreachable

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> Response:
        """Send one request; the answer when its status is 2xx, else HttpError."""
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        sent = dict(headers or {})
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, method=method, headers=sent)
        deadline = time.monotonic() + self.deadline_s
        limit = self.max_bytes if max_bytes is None else max_bytes
        try:
            with _OPENER.open(request, timeout=self.timeout) as answer:
                body, more = _read(answer, limit, deadline, url)
                if more:
                    raise HttpError(
                        0,
                        {
                            "error": "too_large",
                            "message": f"the answer of {url} is larger than {limit:,} bytes",
                        },
                    )
                return Response(answer.status, answer.headers.get_content_type(), body)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                exc.close()
                raise HttpError(exc.code, _redirected(url, exc.code, exc.headers)) from None
            refused = exc  # a status >= 400: its body says why, read below
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timeout
            hint = f"; {self.unreachable}" if self.unreachable else ""
            raise HttpError(
                0, {"error": "unreachable", "message": f"cannot reach {url} ({exc}){hint}"}
            ) from None
        with refused:
            try:
                text, _ = _read(refused, ERROR_BODY_BYTES, deadline, url)
            except (OSError, HttpError):
                text = b""  # the status alone still says what happened
        raise HttpError(refused.code, _error_body(refused.code, refused.headers, text))

    def get_json(self, path: str, max_bytes: int | None = None) -> Any:
        return self.request("GET", path, max_bytes=max_bytes).json()

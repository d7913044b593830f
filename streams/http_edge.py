"""HTTP hygiene shared by the streams API and the workers' endpoints (aiohttp middlewares).

Strangers can reach these servers: a web page in the user's browser can send
"simple" cross-site requests (a text/plain or blob body, no preflight) and, by
DNS rebinding, can even appear same-origin. So:

* a request whose ``Origin`` is not this server's own host and port is refused
  (403), and so is a ``Host`` other than a loopback name when the server only
  listens on loopback;
* a write must declare the one content type its route takes (415), uncompressed;
* every error is a JSON object ``{"error": code, "message": text, ...}``: the
  route table's 404/405/413 included, and a 500 (always a bug) too.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from yarl import URL

log = logging.getLogger("modelvc.http")

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
_HTTP_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Maps a fault of the application's own to its answer; None for "not mine".
DomainErrors = Callable[[Exception], web.Response | None]


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


def http_error(exc: web.HTTPException, body_limit: int) -> web.Response:
    """aiohttp's own 4xx (unknown route, wrong method, body too large) as JSON."""
    if exc.status == 404:
        return error_response(404, "not_found", "no such route")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        response = error_response(
            405,
            "method_not_allowed",
            f"{exc.method} is not allowed here; use {', '.join(allowed)}",
            allowed=allowed,
        )
        response.headers["Allow"] = ",".join(allowed)
        return response
    if exc.status == 413:
        return error_response(413, "too_large", f"request bodies are limited to {body_limit} bytes")
    return error_response(exc.status, _HTTP_CODES.get(exc.status, f"http_{exc.status}"), exc.reason)


def render_errors(domain: DomainErrors, body_limit: int) -> Middleware:
    """The one place a fault becomes an answer; outermost, so the guard's faults render too."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return http_error(exc, body_limit)
        except HttpProcessingError as exc:
            # A body that does not decode as its headers say: the client's fault.
            return error_response(400, "bad_request", f"unreadable request body: {exc.message}")
        except ConnectionResetError:
            return error_response(400, "bad_request", "the client closed the connection mid-body")
        except Exception as exc:
            answer = domain(exc)
            if answer is not None:
                return answer
            log.error(
                "unhandled %s on %s %s",
                type(exc).__name__,
                request.method,
                request.path,
                exc_info=exc,
            )
            return error_response(
                500,
                "internal",
                f"internal error ({type(exc).__name__}); this is a bug: the server log has "
                "the traceback, please report it",
            )

    return errors


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _authority(authority: str, scheme: str) -> tuple[str, int | None]:
    url = URL.build(scheme=scheme, authority=authority)
    return (url.raw_host or "").lower(), url.port


def same_origin(origin: str, request_host: str) -> bool:
    """``origin`` names the host and port the request was sent to (its Host header)."""
    try:
        theirs = URL(origin)
        # An Origin header is scheme://host[:port], nothing more: user info, a query or a
        # fragment mean it was forged by hand. (https: a TLS proxy in front of us.)
        if (
            theirs.scheme not in ("http", "https")
            or theirs.raw_user is not None
            or theirs.raw_password is not None
            or theirs.path not in ("", "/")
            or theirs.raw_query_string
            or theirs.raw_fragment
        ):
            return False
        return _authority(theirs.raw_authority, theirs.scheme) == _authority(
            request_host, theirs.scheme
        )
    except ValueError:
        return False  # "null", garbage


# A Host header is a name or an address, and a port: nothing else. Checked before parsing,
# so the loopback check never rests on how a URL parser reads "evil.com#@127.0.0.1".
HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253})(:[0-9]{1,5})?", re.ASCII)


def _request_host(request: web.Request) -> str | None:
    if HOST_HEADER.fullmatch(request.host) is None:
        return None
    try:
        return _authority(request.host, "http")[0]
    except ValueError:
        return None


def _content_type_problem(request: web.Request, wanted: str) -> web.Response | None:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        return error_response(
            415,
            "unsupported_media_type",
            f"Content-Encoding {encoding[:40]!r} is not accepted; send the body uncompressed",
        )
    # aiohttp reports a missing Content-Type as octet-stream; a blob sent by a
    # foreign page has none, so only an explicit header counts.
    sent = request.content_type if "Content-Type" in request.headers else None
    if sent != wanted:
        return error_response(
            415,
            "unsupported_media_type",
            f"{request.method} {request.path[:200]} needs Content-Type: {wanted} "
            f"(got {(sent or 'none')[:80]})",
        )
    return None


def guard(web_host: str, web_port: int, content_type: Callable[[web.Request], str]) -> Middleware:
    """Refuse foreign origins and hosts, and writes without ``content_type(request)``."""
    loopback_only = is_loopback(web_host)

    @web.middleware
    async def checks(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:
            raise request.match_info.http_exception  # 404/405 come first
        host = _request_host(request)
        if loopback_only and not (host and (is_loopback(host) or host == web_host)):
            # A DNS-rebound name reaching a loopback-only server is a web page, not a user.
            return error_response(
                403,
                "foreign_host",
                f"Host {request.host[:100]!r} is not this server; use http://127.0.0.1:{web_port}",
            )
        origin = request.headers.get("Origin")
        if origin is not None and not same_origin(origin, request.host):
            return error_response(
                403,
                "foreign_origin",
                f"requests from {origin[:100]!r} are refused: only the CLI, scripts and "
                "pages served by this server may call it",
            )
        if request.method in WRITE_METHODS and request.body_exists:
            # A body must say what it is; a bodyless DELETE carries nothing to forge.
            problem = _content_type_problem(request, content_type(request))
            if problem is not None:
                return problem
        response = await handler(request)
        if not response.prepared:
            # No answer of ours is to be sniffed into another type (an artifact as HTML).
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return checks


# -- requests aiohttp's parser refuses before any middleware runs -------------------------
class JsonErrorHandler(RequestHandler):
    """A connection whose parser-level refusals (a request line or header over 8190
    bytes, too many headers, garbage) are JSON like every other answer, and never
    echo the request back."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs, and refuses when too late
        if isinstance(exc, LineTooLong):
            why = "the request line or a header is too long (8190 bytes at most); send less"
        elif status >= 500:
            why = "internal error; this is a bug: the server log has the traceback"
        else:
            why = "this is not an HTTP request the server can read"
        response = error_response(status, _HTTP_CODES.get(status, "internal"), why)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are :class:`JsonErrorHandler`s."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _JsonErrorServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )

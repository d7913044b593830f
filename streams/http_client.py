"""The one small HTTP client of modelvc (standard library ``urllib``).

Used by the CLI's API client, the workers' artifact fetch and the embedded
stack's health checks. Every answer is read with bounds: at most
``max_bytes`` of body, each socket operation within ``timeout`` and the whole
exchange within ``deadline_s`` (a server that dribbles bytes cannot hold a
caller forever). Every failure is one exception type, :class:`HttpError`,
carrying the HTTP status (0 when the server could not be reached or did not
answer in time) and the JSON error body the service sent (or one made up in
the same shape: ``{"error": ..., "message": ...}``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any, Protocol

DEFAULT_MAX_BYTES = 64 << 20
ERROR_BODY_BYTES = 64 << 10  # an error answer is a short JSON object; more is not read
_CHUNK = 1 << 16


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


class HttpClient:
    """Requests to one base URL; ``unreachable`` is what to do when the server does not answer."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        deadline_s: float = 120.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        unreachable: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
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
        request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
        deadline = time.monotonic() + self.deadline_s
        limit = self.max_bytes if max_bytes is None else max_bytes
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
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

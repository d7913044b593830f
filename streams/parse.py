"""Reading HTTP requests: bounded fields, parsed once, refused with the field named.

The limits live here, with the code that enforces them; the OpenAPI document
(``streams.openapi``) states the same numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from streams.core import refs
from streams.core.errors import InvalidCommand
from streams.core.security import MAX_TEXT, PROTECTING_ROLES, REF_KINDS, ROLES, TOKEN_ID
from streams.core.signatures import PUBLIC_KEY
from streams.queries import Cutoff

# A JSON body becomes one event on the broker, whose message limit is ~1 MB; a
# merge copies a commit's params, so a body must stay well under half of that.
MAX_JSON_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
MAX_REASON_BYTES = 4 * 1024
MAX_KEY_BYTES = 128
MAX_VALUE_BYTES = 4 * 1024
MAX_ENTRIES = 256
MAX_ID_BYTES = 128  # command_id, actor
MAX_TEXT_BYTES = 1024  # names, refs, strategies: the core bounds them further
MAX_AS_OF_CHARS = 64
MAX_AFTER_ITEMS = 1024
MAX_METRIC_CHARS = 64  # a metric sent as text, e.g. "0.81"

_OFFSET = re.compile(r"[0-9]{1,18}", re.ASCII)
_AFTER_ITEM = re.compile(r"([0-9]{1,9}):([0-9]{1,18})", re.ASCII)
DIGEST = re.compile(r"[0-9a-f]{64}", re.ASCII)
# Token expiry: epoch ms, no later than the last millisecond of year 9999.
MAX_EXPIRES_AT = 253_402_300_799_999
MAX_NOTE_BYTES = MAX_TEXT  # reasons and notes of security commands: the core's bound


def utf8(value: str, field: str, limit: int) -> str:
    """``value`` when it encodes as UTF-8 within ``limit`` bytes; 422 naming ``field`` else."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        # JSON allows a lone surrogate ("\\ud800"); UTF-8, Avro and Kafka keys do not.
        raise InvalidCommand(
            f"field {field!r} is not valid Unicode (a lone surrogate?)", field=field
        ) from None
    if size > limit:
        raise InvalidCommand(
            f"field {field!r} is {size} bytes; at most {limit} are accepted", field=field
        )
    return value


async def json_body(request: web.Request) -> dict[str, Any]:
    declared = request.content_length
    if declared is not None and declared > MAX_JSON_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_JSON_BYTES, declared)
    raw = await request.read()  # bounded by client_max_size
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InvalidCommand(f"request body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise InvalidCommand("request body must be a JSON object")
    if "at" in body:
        # Finding 8: event times come from the server's clock only, so `as_of` means what
        # it says; a client-chosen time (year 3000, say) would freeze point-in-time reads.
        raise InvalidCommand(
            "field 'at' is not accepted: the server stamps every event with its own clock; "
            "drop the field",
            field="at",
        )
    return body


def text(body: Mapping[str, Any], key: str, default: str | None = None, limit: int = 0) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise InvalidCommand(f"field {key!r} must be a non-empty string", field=key)
    return utf8(value, key, limit or MAX_TEXT_BYTES)


def opt_text(body: Mapping[str, Any], key: str, limit: int = 0) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidCommand(f"field {key!r} must be a string", field=key)
    return utf8(value, key, limit or MAX_TEXT_BYTES)


def flag(body: Mapping[str, Any], key: str) -> bool:
    """A JSON boolean, false when absent: "true", 1 or null are refused, never guessed."""
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidCommand(f"field {key!r} must be true or false", field=key)
    return value


def _entries(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidCommand(f"field {key!r} must be an object", field=key)
    if len(value) > MAX_ENTRIES:
        raise InvalidCommand(
            f"field {key!r} has {len(value)} entries; at most {MAX_ENTRIES}", field=key
        )
    for name in value:
        utf8(name, f"{key}.{name[:32]}", MAX_KEY_BYTES)
    return value


def params(body: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in _entries(body, "params").items():
        field = f"params.{name[:32]}"
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InvalidCommand(f"field {field!r} must be a string or a number", field=field)
        as_text = value if isinstance(value, str) else repr(value)
        out[name] = utf8(as_text, field, MAX_VALUE_BYTES)
    return out


def metrics(body: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for name, value in _entries(body, "metrics").items():
        field = f"metrics.{name[:32]}"
        number: float | None = None
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            with contextlib.suppress(ValueError, OverflowError):
                # A 400-digit integer overflows float(); 1e400 parses as inf. A long
                # string is refused whole, never cut: its number would silently change.
                if not isinstance(value, str) or len(value) <= MAX_METRIC_CHARS:
                    number = float(value)
        if number is None or not math.isfinite(number):
            raise InvalidCommand(
                f"field {field!r} must be a finite number (got {str(value)[:40]!r})", field=field
            )
        out[name] = number
    return out


def digest(value: str, field: str) -> str:
    """A sha256 hex digest as the store names artifacts; 422 naming ``field`` else."""
    if not DIGEST.fullmatch(value):
        raise InvalidCommand(f"field {field!r} must be 64 lowercase hex digits", field=field)
    return value


def check_path(match: Mapping[str, str]) -> None:
    for key, value in match.items():
        utf8(value, key, MAX_TEXT_BYTES)


def as_of(value: str) -> Cutoff:
    """("offset", N) for a plain integer, else ("time", epoch ms) for an ISO-8601 time."""
    if _OFFSET.fullmatch(value):
        return "offset", int(value)
    try:
        if len(value) > MAX_AS_OF_CHARS:
            raise ValueError(value)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return "time", int(moment.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise InvalidCommand(
            f"as_of={value[:MAX_AS_OF_CHARS]!r}: give an event offset (e.g. 42) or an ISO-8601 "
            "time (e.g. 2026-11-27T07:00:00Z)",
            field="as_of",
        ) from None


def after(value: str, partitions: int) -> list[tuple[int, int]]:
    """``P:O,...`` as pairs; every partition must exist."""
    items = [item for item in value.split(",", MAX_AFTER_ITEMS) if item]
    pairs = []
    for item in items:
        found = _AFTER_ITEM.fullmatch(item)
        if found is None:
            raise InvalidCommand(
                f"after={value[:80]!r}: use PARTITION:OFFSET[,...] (e.g. 0:41,3:7)", field="after"
            )
        partition, offset = int(found[1]), int(found[2])
        if partition >= partitions:
            raise InvalidCommand(
                f"after: there is no partition {partition}; the events topic has {partitions}",
                field="after",
            )
        pairs.append((partition, offset))
    return pairs


# -- tokens, protection rules and writer keys ------------------------------------------
def actor(body: Mapping[str, Any], key: str) -> str:
    """An actor's name: the rule of model names (``refs.NAME``, matched whole)."""
    return refs.check_name(key, text(body, key))


def role(body: Mapping[str, Any], key: str, among: tuple[str, ...] = ROLES) -> str:
    value = body.get(key)
    if value not in among:
        raise InvalidCommand(
            f"field {key!r} must be one of {', '.join(among)} (got {str(value)[:40]!r})",
            field=key,
        )
    return str(value)


def protecting_role(body: Mapping[str, Any], key: str) -> str:
    """The role a protection rule asks for: releaser unless the body names another."""
    return role({key: body.get(key, "releaser")}, key, PROTECTING_ROLES)


def expires_at(body: Mapping[str, Any], key: str, now_ms: int) -> int:
    """Epoch ms in the future, or 0 (never) for an absent, null or 0 value."""
    value = body.get(key)
    if value is None or value == 0:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_EXPIRES_AT:
        raise InvalidCommand(
            f"field {key!r} must be a time in epoch milliseconds (at most {MAX_EXPIRES_AT}), "
            "or null for a token that never expires",
            field=key,
        )
    if value <= now_ms:
        raise InvalidCommand(
            f"field {key!r} is {now_ms - value} ms in the past; a token must expire later",
            field=key,
        )
    return value


def token_id(value: str, field: str) -> str:
    """A token's id: the 16 hex digits after ``mvc_`` (``modelvc token list`` shows them)."""
    if not TOKEN_ID.fullmatch(value):
        raise InvalidCommand(
            f"{field} {value[:40]!r} is not a token id: 16 lowercase hex digits, as "
            "`modelvc token list` shows them",
            field=field,
        )
    return value


def protected_ref(kind: str, name: str) -> tuple[str, str]:
    """The ``{kind}/{name}`` of a protection rule: a branch or alias name."""
    if kind not in REF_KINDS:
        raise InvalidCommand(
            f"{kind[:40]!r} cannot be protected: use branch or alias", field="kind"
        )
    return kind, refs.check_name(kind, name)


def model_or_all(body: Mapping[str, Any]) -> str:
    """The ``model`` a rule is for: a model name, or "" (absent) for every model."""
    model = text(body, "model", "")
    return model and refs.check_name("model", model)


def public_key(body: Mapping[str, Any], key: str) -> str:
    """A raw Ed25519 public key: 64 lowercase hex digits (the writer key's ``.pub`` file)."""
    value = body.get(key)
    if not isinstance(value, str) or not PUBLIC_KEY.fullmatch(value):
        raise InvalidCommand(
            f"field {key!r} must be a raw Ed25519 public key in 64 lowercase hex digits "
            "(the contents of a writer.key.pub file)",
            field=key,
        )
    return value


def expect_step(body: Mapping[str, Any]) -> int | None:
    """``expect_step``: the rollout step a caller saw (a whole number), or None."""
    step = body.get("expect_step")
    if step is None:
        return None
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 2**31:
        raise InvalidCommand(
            f"expect_step {str(step)[:40]!r} is not a step number (0, 1, ...)", field="expect_step"
        )
    return step

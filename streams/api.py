"""HTTP API (JSON, /v1) on the Faust web server, for the CLI and other services.

Statuses: 201 applied, 200 repeated command or query, 400 unreadable request,
403 foreign origin, 404 unknown model, ref or route, 405 wrong method, 409
conflict (the body carries ``current``), 413 too large, 415 wrong content type
or encoding, 422 invalid input, 504 no answer in time (retry with the same
``command_id``), 507 the artifact store cannot take the upload. Every error is
a JSON object ``{"error": code, "message": text, ...}``; ``/v1/openapi.json``
describes every route.

Strangers can reach this server (a web page in the user's browser, at least),
so the edge middleware refuses requests from foreign origins, requires the
declared content type on every write, and bounds every body and field.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import faust
from aiohttp import web
from aiohttp.typedefs import Middleware
from faust.web import View as FaustView

from streams import openapi
from streams.core import refs
from streams.core.commands import (
    Body,
    Command,
    CreateBranch,
    CreateModel,
    DeleteBranch,
    MakeCommit,
    Merge,
    MoveAlias,
    Rollback,
)
from streams.core.errors import InvalidCommand, UnknownModel, VersionGraphError
from streams.core.events import plain_commit
from streams.core.fold import Fold, state_digest
from streams.core.state import ModelState
from streams.errors import (
    ArtifactCorrupted,
    ArtifactEmpty,
    ArtifactError,
    ArtifactNotFound,
    ArtifactStoreUnavailable,
    ArtifactTooLarge,
    SandboxUnavailable,
)
from streams.http_edge import (
    JSON,
    OCTET_STREAM,
    error_response,
    guard,
    render_errors,
)
from streams.service import VersionService
from streams.settings import Settings

# -- limits (the OpenAPI document states the same numbers) ---------------------
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

UPLOAD_PATH = "/v1/artifacts"
# What a full, read-only or refused artifact directory raises; the client cannot
# fix it, the operator can, so it is 507 and never a 500.
STORE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM})
_OFFSET = re.compile(r"[0-9]{1,18}", re.ASCII)
_AFTER_ITEM = re.compile(r"([0-9]{1,9}):([0-9]{1,18})", re.ASCII)
_DIGEST = re.compile(r"[0-9a-f]{64}", re.ASCII)


# -- the edge: errors as JSON, foreign origins and undeclared bodies refused ----------
def domain_error(exc: Exception) -> web.Response | None:
    """The answer to a fault of ours (the core's, the store's), or None for a bug."""
    if isinstance(exc, VersionGraphError):
        return web.json_response(exc.to_dict(), status=exc.status)
    if isinstance(exc, ArtifactNotFound):
        return error_response(404, "unknown_artifact", str(exc))
    if isinstance(exc, ArtifactCorrupted):
        return error_response(422, "digest_mismatch", str(exc))
    if isinstance(exc, ArtifactTooLarge):
        return error_response(413, "too_large", str(exc))
    if isinstance(exc, ArtifactEmpty):
        return error_response(422, "empty", str(exc))
    if isinstance(exc, SandboxUnavailable):
        return error_response(503, "sandbox_unavailable", f"{exc}; nothing was stored, retry")
    if isinstance(exc, ArtifactError):
        return error_response(422, "artifact_rejected", str(exc))
    if isinstance(exc, ArtifactStoreUnavailable):
        return error_response(507, "store_unavailable", str(exc))
    if isinstance(exc, OSError) and exc.errno in STORE_ERRNOS:
        # A store fault that escaped ArtifactStore's own translation.
        return error_response(
            507,
            "store_unavailable",
            f"the artifact store cannot take this upload ({os.strerror(exc.errno or 0)}); "
            "free space or fix the permissions of MODELVC_ARTIFACTS, then upload again",
        )
    if isinstance(exc, TimeoutError):
        return error_response(
            504, "timeout", "the projection did not reach that offset in time; retry"
        )
    return None


def _content_type(request: web.Request) -> str:
    resource = request.match_info.route.resource
    upload = resource is not None and resource.canonical == UPLOAD_PATH
    return OCTET_STREAM if upload else JSON


def middlewares(settings: Settings) -> list[Middleware]:
    """For the Faust app's ``web_application_options``: errors outermost."""
    return [
        render_errors(domain_error, MAX_JSON_BYTES),
        guard(settings.web_host, settings.web_port, _content_type),
    ]


# -- reading requests ---------------------------------------------------------------
def _utf8(value: str, field: str, limit: int) -> str:
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


async def _json_body(request: web.Request) -> dict[str, Any]:
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


def _str(body: Mapping[str, Any], key: str, default: str | None = None, limit: int = 0) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise InvalidCommand(f"field {key!r} must be a non-empty string", field=key)
    return _utf8(value, key, limit or MAX_TEXT_BYTES)


def _opt_str(body: Mapping[str, Any], key: str, limit: int = 0) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidCommand(f"field {key!r} must be a string", field=key)
    return _utf8(value, key, limit or MAX_TEXT_BYTES)


def _entries(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidCommand(f"field {key!r} must be an object", field=key)
    if len(value) > MAX_ENTRIES:
        raise InvalidCommand(
            f"field {key!r} has {len(value)} entries; at most {MAX_ENTRIES}", field=key
        )
    for name in value:
        _utf8(name, f"{key}.{name[:32]}", MAX_KEY_BYTES)
    return value


def _params(body: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in _entries(body, "params").items():
        field = f"params.{name[:32]}"
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InvalidCommand(f"field {field!r} must be a string or a number", field=field)
        text = value if isinstance(value, str) else repr(value)
        out[name] = _utf8(text, field, MAX_VALUE_BYTES)
    return out


def _metrics(body: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for name, value in _entries(body, "metrics").items():
        field = f"metrics.{name[:32]}"
        number: float | None = None
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            with contextlib.suppress(ValueError, OverflowError):
                # A 400-digit integer overflows float(); 1e400 parses as inf.
                number = float(value[:64] if isinstance(value, str) else value)
        if number is None or not math.isfinite(number):
            raise InvalidCommand(
                f"field {field!r} must be a finite number (got {str(value)[:40]!r})", field=field
            )
        out[name] = number
    return out


def _check_path(match: Mapping[str, str]) -> None:
    for key, value in match.items():
        _utf8(value, key, MAX_TEXT_BYTES)


def parse_as_of(text: str) -> tuple[str, int]:
    """("offset", N) for a plain integer, else ("time", epoch ms) for an ISO-8601 time."""
    if _OFFSET.fullmatch(text):
        return "offset", int(text)
    try:
        if len(text) > MAX_AS_OF_CHARS:
            raise ValueError(text)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return "time", int(moment.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise InvalidCommand(
            f"as_of={text[:MAX_AS_OF_CHARS]!r}: give an event offset (e.g. 42) or an ISO-8601 "
            "time (e.g. 2026-11-27T07:00:00Z)",
            field="as_of",
        ) from None


def parse_after(text: str, partitions: int) -> list[tuple[int, int]]:
    """``P:O,...`` as pairs; every partition must exist."""
    items = [item for item in text.split(",", MAX_AFTER_ITEMS) if item]
    pairs = []
    for item in items:
        found = _AFTER_ITEM.fullmatch(item)
        if found is None:
            raise InvalidCommand(
                f"after={text[:80]!r}: use PARTITION:OFFSET[,...] (e.g. 0:41,3:7)", field="after"
            )
        partition, offset = int(found[1]), int(found[2])
        if partition >= partitions:
            raise InvalidCommand(
                f"after: there is no partition {partition}; the events topic has {partitions}",
                field="after",
            )
        pairs.append((partition, offset))
    return pairs


def commit_json(state: ModelState, commit_id: str) -> dict[str, Any]:
    out = plain_commit(state.commits[commit_id])
    out["refs"] = refs.labels(state).get(commit_id, [])
    return out


class Api:
    """The handlers; one instance shared by every view."""

    def __init__(self, service: VersionService) -> None:
        self.service = service

    @property
    def models(self) -> dict[str, ModelState]:
        return self.service.projection.fold.models

    def model(self, name: str, as_of: str | None = None) -> ModelState:
        """The model now, or as it was at ``as_of`` (an ISO-8601 time or an event offset)."""
        state = self.models.get(name)
        if state is None:
            raise UnknownModel(
                f"model {name!r} does not exist; create it with `modelvc create {name}`",
                model=name,
            )
        if as_of is None:
            return state
        kind, cutoff = parse_as_of(as_of)
        past = Fold()
        # The longest prefix of the model's events (in seq order) at or before the
        # cutoff: a later event stamped earlier (clock skew between instances) never
        # pulls the state past an event that was not yet there at the cutoff.
        for offset, event in self.service.projection.history(name):
            if (event.at if kind == "time" else offset) > cutoff:
                break
            past.apply(event)
        if name not in past.models:
            raise UnknownModel(f"model {name!r} did not exist yet as of {as_of}", model=name)
        return past.models[name]

    async def consistent(self, request: web.Request) -> None:
        """Honour ``?after=P:O,...``: wait until those event offsets are applied."""
        after = request.query.get("after")
        if not after:
            return
        settings = self.service.settings
        for partition, offset in parse_after(after, settings.partitions):
            await self.service.wait_applied(
                partition, offset, timeout=settings.consistency_timeout_s
            )

    async def command(
        self, request: web.Request, model: str, body: Mapping[str, Any], make: Body
    ) -> web.Response:
        actor = body.get("actor") or request.headers.get("X-Modelvc-Actor") or "anonymous"
        if not isinstance(actor, str):
            raise InvalidCommand("field 'actor' must be a string", field="actor")
        command_id = _opt_str(body, "command_id", MAX_ID_BYTES) or str(uuid.uuid4())
        command = Command(
            command_id=command_id,
            model=_utf8(model, "model", MAX_TEXT_BYTES),
            actor=_utf8(actor, "actor", MAX_ID_BYTES),
            at=int(time.time() * 1000),
            body=make,
        )
        answer = await self.service.submit(command)
        return web.json_response(answer.body, status=answer.status)

    # -- commands ---------------------------------------------------------------
    async def create_model(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        name = _str(body, "name")
        refs.check_name("model", name)
        return await self.command(
            request, name, body, CreateModel(_str(body, "default_branch", "main"))
        )

    def _stored(self, digest: str | None, field: str) -> None:
        if digest is None:
            return
        if not _DIGEST.fullmatch(digest):
            raise InvalidCommand(f"field {field!r} must be 64 lowercase hex digits", field=field)
        if not self.service.store.has(digest):
            raise InvalidCommand(
                f"artifact {digest} is not in the store; upload it first (POST /v1/artifacts)",
                field=field,
            )

    async def commit(self, request: web.Request, model: str, body: dict[str, Any]) -> web.Response:
        digest = _str(body, "artifact_sha256")
        self._stored(digest, "artifact_sha256")
        make = MakeCommit(
            artifact_sha256=digest,
            message=_str(body, "message", limit=MAX_MESSAGE_BYTES),
            branch=_str(body, "branch", "main"),
            params=_params(body),
            metrics=_metrics(body),
            expect_head=_opt_str(body, "expect_head"),
        )
        return await self.command(request, model, body, make)

    async def create_branch(
        self, request: web.Request, model: str, body: dict[str, Any]
    ) -> web.Response:
        make = CreateBranch(_str(body, "name"), _opt_str(body, "from"))
        return await self.command(request, model, body, make)

    async def delete_branch(self, request: web.Request, model: str, branch: str) -> web.Response:
        return await self.command(request, model, request.query, DeleteBranch(branch))

    async def merge(self, request: web.Request, model: str, body: dict[str, Any]) -> web.Response:
        artifact = _opt_str(body, "artifact_sha256")
        self._stored(artifact, "artifact_sha256")
        make = Merge(
            source=_str(body, "source"),
            target=_str(body, "into", "main"),
            strategy=_opt_str(body, "strategy"),
            artifact_sha256=artifact,
            message=_opt_str(body, "message", MAX_MESSAGE_BYTES),
        )
        return await self.command(request, model, body, make)

    async def rollback(
        self, request: web.Request, model: str, body: dict[str, Any]
    ) -> web.Response:
        make = Rollback(
            _str(body, "branch"), _str(body, "to"), _str(body, "reason", limit=MAX_REASON_BYTES)
        )
        return await self.command(request, model, body, make)

    async def move_alias(
        self, request: web.Request, model: str, alias: str, body: dict[str, Any]
    ) -> web.Response:
        make = MoveAlias(alias, _str(body, "ref"), _opt_str(body, "expect"))
        return await self.command(request, model, body, make)

    # -- queries ----------------------------------------------------------------
    def list_models(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": s.name,
                    "seq": s.seq,
                    "commits": len(s.commits),
                    "branches": dict(s.branches),
                    "aliases": dict(s.aliases),
                }
                for s in sorted(self.models.values(), key=lambda s: s.name)
            ]
        }

    def log(self, model: str, ref: str | None, as_of: str | None = None) -> dict[str, Any]:
        state = self.model(model, as_of)
        commits = refs.log(state, ref)
        reachable: set[str] = set()
        for head in [*(h for h in state.branches.values() if h), *state.aliases.values()]:
            reachable |= refs.ancestors(state.commits, head)
        entries = [commit_json(state, c.id) | {"reachable": c.id in reachable} for c in commits]
        moves = [m.__dict__ for m in state.ref_moves()]
        return {"model": model, "ref": ref, "as_of": as_of, "commits": entries, "ref_moves": moves}

    def refs(self, model: str, as_of: str | None = None) -> dict[str, Any]:
        state = self.model(model, as_of)
        return {
            "model": model,
            "as_of": as_of,
            "default_branch": state.default_branch,
            "branches": dict(sorted(state.branches.items())),
            "aliases": dict(sorted(state.aliases.items())),
            "seq": state.seq,
            "last_hash": state.last_hash,
        }

    def show(self, model: str, ref: str) -> dict[str, Any]:
        state = self.model(model)
        return commit_json(state, refs.resolve(state, ref))

    def diff(self, model: str, a: str, b: str) -> dict[str, Any]:
        d = refs.diff(self.model(model), a, b)
        return {
            "a": plain_commit(d.a),
            "b": plain_commit(d.b),
            "artifact_changed": d.artifact_changed,
            "params": [c.__dict__ for c in d.params],
            "metrics": [c.__dict__ for c in d.metrics],
        }

    def resolve(self, model: str, ref: str) -> dict[str, Any]:
        state = self.model(model)
        commit = state.commits[refs.resolve(state, ref)]
        return {
            "model": model,
            "ref": ref,
            "commit": commit.id,
            "artifact_sha256": commit.artifact_sha256,
        }

    def digest(self) -> dict[str, Any]:
        projection = self.service.projection
        return {
            "digest": state_digest(self.models),
            "models": len(self.models),
            "offsets": {str(p): o for p, o in sorted(projection.next_offsets.items())},
            "void_events": projection.fold.voided,
        }

    # -- artifacts --------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        """Stream the body into the store; it validates, and removes its temp file on failure.

        A full or read-only disk, a client that disconnects (the read raises) and a
        cancelled handler all leave nothing behind (``ArtifactStore.receive``).
        """
        expected = request.query.get("sha256")
        if expected is not None and not _DIGEST.fullmatch(expected):
            raise InvalidCommand("sha256 must be 64 lowercase hex digits", field="sha256")
        store = self.service.store
        declared = request.content_length
        if declared is not None and declared > store.max_bytes:
            raise ArtifactTooLarge(f"artifacts are limited to {store.max_bytes} bytes")
        digest, summary, size = await store.receive(request.content.iter_chunked(1 << 16), expected)
        return web.json_response({"sha256": digest, "size": size, **summary.__dict__}, status=201)

    async def download(self, digest: str) -> web.StreamResponse:
        if not _DIGEST.fullmatch(digest):
            raise ArtifactNotFound(f"{digest[:80]!r} is not a sha256 hex digest")
        try:
            data = await asyncio.get_running_loop().run_in_executor(
                None, self.service.store.read, digest
            )
        except ArtifactCorrupted as exc:
            return error_response(500, "artifact_corrupted", str(exc))
        return web.Response(body=data, content_type="text/plain", headers={"X-Sha256": digest})


class _View(FaustView):  # type: ignore[misc]
    async def on_request_error(self, request: Any, exc: Any) -> Any:
        # Faust's own faults (HEAD on a route without GET, say) render like ours.
        code = "method_not_allowed" if exc.code == 405 else f"http_{exc.code}"
        return error_response(int(exc.code), code, str(exc.detail))


def register(app: faust.App, service: VersionService) -> None:
    api = Api(service)

    def page(path: str, **methods: Callable[..., Any]) -> None:
        attrs = {name: as_view_method(fn) for name, fn in methods.items()}
        view = type(
            "View_" + path.replace("/", "_").replace("{", "").replace("}", "").replace(".", "_"),
            (_View,),
            attrs,
        )
        app.page(path)(view)

    def as_view_method(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def method(self: Any, request: web.Request, **match: str) -> Any:
            _check_path(match)
            result = await fn(request, **match)
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(result)

        return method

    async def models_post(request: web.Request) -> Any:
        return await api.create_model(request, await _json_body(request))

    async def models_get(request: web.Request) -> Any:
        return api.list_models()

    async def commits_post(request: web.Request, model: str) -> Any:
        return await api.commit(request, model, await _json_body(request))

    async def branches_post(request: web.Request, model: str) -> Any:
        return await api.create_branch(request, model, await _json_body(request))

    async def branches_get(request: web.Request, model: str) -> Any:
        await api.consistent(request)
        return {"branches": api.refs(model)["branches"]}

    async def branch_delete(request: web.Request, model: str, branch: str) -> Any:
        return await api.delete_branch(request, model, branch)

    async def merges_post(request: web.Request, model: str) -> Any:
        return await api.merge(request, model, await _json_body(request))

    async def rollbacks_post(request: web.Request, model: str) -> Any:
        return await api.rollback(request, model, await _json_body(request))

    async def alias_put(request: web.Request, model: str, alias: str) -> Any:
        return await api.move_alias(request, model, alias, await _json_body(request))

    async def log_get(request: web.Request, model: str) -> Any:
        await api.consistent(request)
        return api.log(model, request.query.get("ref") or None, request.query.get("as_of"))

    async def refs_get(request: web.Request, model: str) -> Any:
        await api.consistent(request)
        return api.refs(model, request.query.get("as_of"))

    async def show_get(request: web.Request, model: str, ref: str) -> Any:
        await api.consistent(request)
        return api.show(model, ref)

    async def resolve_get(request: web.Request, model: str, ref: str) -> Any:
        await api.consistent(request)
        return api.resolve(model, ref)

    async def diff_get(request: web.Request, model: str) -> Any:
        await api.consistent(request)
        return api.diff(model, request.query.get("a", ""), request.query.get("b", ""))

    async def digest_get(request: web.Request) -> Any:
        await api.consistent(request)
        return api.digest()

    async def artifacts_post(request: web.Request) -> Any:
        return await api.upload(request)

    async def artifact_get(request: web.Request, digest: str) -> Any:
        return await api.download(digest)

    async def health_get(request: web.Request) -> Any:
        ready = service.ready.is_set()
        return web.json_response(
            {
                "ready": ready,
                "instance": service.settings.instance_id,
                "pid": os.getpid(),
                "offsets": service.projection.next_offsets,
                "dead_letters": service.dead_letters,
                "dead_letter_failures": service.dead_letter_failures,
                "void_events": service.projection.fold.voided,
            },
            status=200 if ready else 503,
        )

    async def openapi_get(request: web.Request) -> Any:
        return openapi.document()

    page("/v1/models", post=models_post, get=models_get)
    page("/v1/models/{model}/commits", post=commits_post)
    page("/v1/models/{model}/branches", post=branches_post, get=branches_get)
    page("/v1/models/{model}/branches/{branch}", delete=branch_delete)
    page("/v1/models/{model}/merges", post=merges_post)
    page("/v1/models/{model}/rollbacks", post=rollbacks_post)
    page("/v1/models/{model}/aliases/{alias}", put=alias_put)
    page("/v1/models/{model}/log", get=log_get)
    page("/v1/models/{model}/refs", get=refs_get)
    page("/v1/models/{model}/commits/{ref}", get=show_get)
    page("/v1/models/{model}/resolve/{ref}", get=resolve_get)
    page("/v1/models/{model}/diff", get=diff_get)
    page("/v1/state/digest", get=digest_get)
    page("/v1/artifacts", post=artifacts_post)
    page("/v1/artifacts/{digest}", get=artifact_get)
    page("/v1/openapi.json", get=openapi_get)
    page("/healthz", get=health_get)

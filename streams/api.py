"""HTTP API (JSON, /v1) on the Faust web server, for the CLI and other services.

Statuses: 201 applied, 200 repeated command or query, 404 unknown model or
ref, 409 conflict (the body carries ``current``), 422 invalid input, 504 no
answer in time (retry with the same ``command_id``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from aiohttp import web

from streams.artifacts import check_digest
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
from streams.errors import ArtifactCorrupted, ArtifactError, ArtifactNotFound
from streams.service import VersionService

MAX_ARTIFACT_BYTES = 512 * 1024 * 1024


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


def _fault(exc: VersionGraphError) -> web.Response:
    return web.json_response(exc.to_dict(), status=exc.status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidCommand(f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidCommand("request body must be a JSON object")
    return body


def _str(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise InvalidCommand(f"field {key!r} must be a non-empty string", field=key)
    return value


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidCommand(f"field {key!r} must be a string", field=key)
    return value


def _mapping(body: dict[str, Any], key: str, kind: Callable[[Any], Any]) -> dict[str, Any]:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidCommand(f"field {key!r} must be an object", field=key)
    try:
        return {str(k): kind(v) for k, v in value.items()}
    except (TypeError, ValueError) as exc:
        raise InvalidCommand(f"field {key!r}: {exc}", field=key) from exc


def parse_as_of(text: str) -> tuple[str, int]:
    """("offset", N) for a plain integer, else ("time", epoch ms) for an ISO-8601 time."""
    if text.isdigit():
        return "offset", int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidCommand(
            f"as_of={text!r}: give an event offset (e.g. 42) or an ISO-8601 time "
            "(e.g. 2026-11-27T07:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return "time", int(moment.timestamp() * 1000)


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
        try:
            pairs = [tuple(int(x) for x in item.split(":")) for item in after.split(",") if item]
        except ValueError as exc:
            raise InvalidCommand(f"after={after!r}: use PARTITION:OFFSET[,...]") from exc
        for partition, offset in pairs:
            await self.service.wait_applied(partition, offset, timeout=10.0)

    async def command(
        self, request: web.Request, model: str, body: dict[str, Any], make: Body
    ) -> web.Response:
        actor = body.get("actor") or request.headers.get("X-Modelvc-Actor") or "anonymous"
        command = Command(
            command_id=str(body.get("command_id") or uuid.uuid4()),
            model=model,
            actor=str(actor),
            at=int(body.get("at") or time.time() * 1000),
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

    async def commit(self, request: web.Request, model: str, body: dict[str, Any]) -> web.Response:
        digest = _str(body, "artifact_sha256")
        if not self.service.store.has(check_digest(digest)):
            raise InvalidCommand(
                f"artifact {digest} is not in the store; upload it first (POST /v1/artifacts)",
                field="artifact_sha256",
            )
        make = MakeCommit(
            artifact_sha256=digest,
            message=_str(body, "message"),
            branch=_str(body, "branch", "main"),
            params=_mapping(body, "params", str),
            metrics=_mapping(body, "metrics", float),
            expect_head=_opt_str(body, "expect_head"),
        )
        return await self.command(request, model, body, make)

    async def create_branch(
        self, request: web.Request, model: str, body: dict[str, Any]
    ) -> web.Response:
        make = CreateBranch(_str(body, "name"), _opt_str(body, "from"))
        return await self.command(request, model, body, make)

    async def delete_branch(self, request: web.Request, model: str, branch: str) -> web.Response:
        body = dict(request.query)
        return await self.command(request, model, body, DeleteBranch(branch))

    async def merge(self, request: web.Request, model: str, body: dict[str, Any]) -> web.Response:
        artifact = _opt_str(body, "artifact_sha256")
        if artifact is not None and not self.service.store.has(check_digest(artifact)):
            raise InvalidCommand(f"artifact {artifact} is not in the store; upload it first")
        make = Merge(
            source=_str(body, "source"),
            target=_str(body, "into", "main"),
            strategy=_opt_str(body, "strategy"),
            artifact_sha256=artifact,
            message=_opt_str(body, "message"),
        )
        return await self.command(request, model, body, make)

    async def rollback(
        self, request: web.Request, model: str, body: dict[str, Any]
    ) -> web.Response:
        make = Rollback(_str(body, "branch"), _str(body, "to"), _str(body, "reason"))
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
        expected = request.query.get("sha256")
        store = self.service.store
        size = 0
        with store.temp_file() as handle:
            async for chunk in request.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > MAX_ARTIFACT_BYTES:
                    handle.close()
                    Path(handle.name).unlink(missing_ok=True)
                    return _error(
                        413, "too_large", f"artifacts are limited to {MAX_ARTIFACT_BYTES} bytes"
                    )
                handle.write(chunk)
        temp = Path(handle.name)
        if size == 0:
            temp.unlink(missing_ok=True)
            return _error(422, "empty", "the upload was empty; send the model file as the body")
        loop = asyncio.get_running_loop()
        try:
            digest, summary = await loop.run_in_executor(None, store.commit_temp, temp, expected)
        except ArtifactCorrupted as exc:
            return _error(422, "digest_mismatch", str(exc))
        except ArtifactError as exc:
            return _error(422, "artifact_rejected", str(exc))
        return web.json_response({"sha256": digest, "size": size, **summary.__dict__}, status=201)

    async def download(self, digest: str) -> web.StreamResponse:
        try:
            data = await asyncio.get_running_loop().run_in_executor(
                None, self.service.store.read, check_digest(digest)
            )
        except ArtifactNotFound as exc:
            return _error(404, "unknown_artifact", str(exc))
        except ArtifactCorrupted as exc:
            return _error(500, "artifact_corrupted", str(exc))
        return web.Response(body=data, content_type="text/plain", headers={"X-Sha256": digest})


def _guard(handler: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            result = handler(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
        except VersionGraphError as exc:
            return _fault(exc)
        except ArtifactNotFound as exc:
            return _error(404, "unknown_artifact", str(exc))
        except ArtifactError as exc:
            return _error(422, "artifact_rejected", str(exc))
        except TimeoutError:
            return _error(504, "timeout", "the projection did not reach that offset in time; retry")
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result)

    return wrapped


def register(app: faust.App, service: VersionService) -> None:
    api = Api(service)
    g = _guard

    def page(path: str, **methods: Callable[..., Any]) -> None:
        attrs = {name: as_view_method(fn) for name, fn in methods.items()}
        view = type(
            "View_" + path.replace("/", "_").replace("{", "").replace("}", ""),
            (faust.web.View,),
            attrs,
        )
        app.page(path)(view)

    def as_view_method(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def method(self: Any, request: web.Request, **match: str) -> Any:
            return await g(fn)(request, **match)

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
            },
            status=200 if ready else 503,
        )

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
    page("/healthz", get=health_get)

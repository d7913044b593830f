"""HTTP API (JSON, /v1) on the Faust web server, for the CLI and other services.

Thin handlers: read the request (``streams.parse``), ask the read side
(``streams.queries``) or submit a command (``streams.service.replies``), and
answer JSON. Statuses come from one table (``streams.statuses``): 201 applied,
200 repeated command or query, 400 unreadable request, 401 no valid token, 403
foreign origin, a role too low (``forbidden``) or a claimed actor that is not the
token's (``actor_mismatch``), 404
unknown model, ref or route, 405 wrong method, 409 conflict (the body carries
``current``), 413 too large, 415 wrong content type or encoding, 422 invalid
input, 503 not ready, busy, or an artifact store that does not answer in time
(``store_unreachable``, Retry-After) or refuses this server's credentials
(``store_refused``: the operator fixes them; retry then), 504 no answer in time
(retry with the same ``command_id``), 507 a store directory that is full or
read-only (``store_full``: the operator frees space or fixes its permissions).
Every error is a JSON object ``{"error": code, "message": text, ...}``;
``/v1/openapi.json`` describes every route.

The store is reached (a lookup for a commit, a download) in the API's own few
threads, each call under a deadline: a store that hangs answers 503 and cannot take
the threads the rest of the server shares.

Strangers can reach this server (a web page in the user's browser, at least),
so the edge middleware refuses requests from foreign origins, requires the
declared content type on every write, and bounds every body and field; then
``streams.auth`` wants a bearer token with the route's role, and every command
is sent as the token's actor and role, signed by this instance's writer key so
the writer decides only what an API instance vouched for.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from streams import auth, formats, openapi, parse, queries, replay
from streams.artifacts import ArtifactStore, Intake
from streams.artifacts.store import read
from streams.codec import fingerprint
from streams.core import model_signature, refs
from streams.core.commands import (
    AbortRollout,
    AddWriterKey,
    Body,
    Command,
    CreateBranch,
    CreateModel,
    DeleteBranch,
    IssueToken,
    MakeCommit,
    Merge,
    MoveAlias,
    PauseRollout,
    PromoteRollout,
    ProtectRef,
    ResumeRollout,
    RetireWriterKey,
    RevokeToken,
    Rollback,
    StartRollout,
    StartShadow,
    StopShadow,
    UnprotectRef,
)
from streams.core.errors import InvalidCommand, VersionGraphError
from streams.core.model_signature import ModelSignature
from streams.core.monitoring import Reference, reference_from_json
from streams.core.rollout import Policy, rollout_id
from streams.core.security import SECURITY_STREAM
from streams.core.signatures import keys_stream
from streams.core.state import ModelState
from streams.errors import (
    ArtifactCorrupted,
    ArtifactEmpty,
    ArtifactError,
    ArtifactNotFound,
    ArtifactStoreRefused,
    ArtifactStoreUnavailable,
    ArtifactTooLarge,
    SandboxUnavailable,
    UploadsBusy,
    UploadStalled,
)
from streams.http_edge import JSON, OCTET_STREAM, Handler, error_response, guard, render_errors
from streams.monitoring.controller import DecisionMetrics
from streams.monitoring.references import (
    MAX_REFERENCE_BYTES,
    ReferenceRejected,
    get_reference,
    put_reference,
)
from streams.monitoring.report import DEFAULT_LAST, MAX_LAST, monitor_report, references_used
from streams.monitoring.windows import Version, WindowStore
from streams.parse import MAX_JSON_BYTES
from streams.projection import Projection
from streams.service.answers import Answer
from streams.service.follower import Follower
from streams.service.letters import DeadLetters
from streams.service.replies import Replies
from streams.settings import Settings
from streams.signing import WriterKey, key_id_of, sign_command
from streams.statuses import STATUS_BY_CODE, status_of

T = TypeVar("T")
log = logging.getLogger("modelvc.streams")

UPLOAD_PATH = "/v1/artifacts"
REFERENCES_PATH = "/v1/references"
DEFAULT_STEPS = (10, 50, 100)  # the CLI's --steps default too
# What a store directory (or the staging directory) that is full or read-only raises:
# the client cannot fix it, the operator can (free space, fix permissions), so it is
# store_full, never a 500. A store's other faults (an endpoint that does not answer, a
# network fault, a deadline passed) are store_unreachable, and credentials the store
# refuses (ArtifactStoreRefused, whatever its errno) store_refused.
STORE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM, errno.EFBIG}
)
# Store calls run in the API's own threads (a lookup is an S3 round trip, a download
# reads a whole model): a few, so a hung store holds those and nothing else.
STORE_THREADS = 8
# How long a store call may take, retries included, before the client is told to retry:
# boto3 bounds each attempt, nothing bounds them all (nor a directory on a hung mount).
STORE_DEADLINE_S = 30.0
# A download gets more time, at this slowest rate for the largest model it may read.
MIN_STORE_RATE = 8 << 20  # bytes per second
# Reading a signature also parses the model (~4 MB/s on a busy core): its deadline grows
# at this slowest rate too.
MIN_PARSE_RATE = 2 << 20  # bytes per second
# Signatures by artifact digest: content-addressed, so an entry is never stale; bounded
# so that commits of many distinct models cannot grow it.
SIGNATURES_CACHED = 1024
REFERENCES_CACHED = 64  # parsed drift references (each up to 1 MiB of JSON) by digest
# Answers that go away on their own say when to try again.
RETRY_AFTER = {"busy": "5", "store_unreachable": "10"}
# The code of each fault of an upload (first match wins: subclasses first).
ARTIFACT_CODES: tuple[tuple[type[Exception], str], ...] = (
    (ArtifactNotFound, "unknown_artifact"),
    (ReferenceRejected, "reference_rejected"),
    (ArtifactCorrupted, "digest_mismatch"),
    (ArtifactTooLarge, "too_large"),
    (ArtifactEmpty, "empty"),
    (UploadsBusy, "busy"),
    (UploadStalled, "upload_stalled"),
    (SandboxUnavailable, "sandbox_unavailable"),
    (ArtifactError, "artifact_rejected"),
)


# -- the edge: errors as JSON, foreign origins and undeclared bodies refused ----------
def coded(code: str, message: str, **extra: Any) -> web.Response:
    """An error answer whose status is the table's for ``code``."""
    return error_response(STATUS_BY_CODE[code], code, message, **extra)


def store_code(exc: ArtifactStoreUnavailable) -> str:
    """The code of a fault of the artifact store itself (the request was fine)."""
    if isinstance(exc, ArtifactStoreRefused):
        return "store_refused"
    return "store_full" if exc.errno in STORE_ERRNOS else "store_unreachable"


def _answer(code: str, message: str) -> web.Response:
    answer = coded(code, message)
    if code in RETRY_AFTER:
        answer.headers["Retry-After"] = RETRY_AFTER[code]
    return answer


def domain_error(exc: Exception) -> web.Response | None:
    """The answer to a fault of ours (the core's, the store's), or None for a bug."""
    if isinstance(exc, VersionGraphError):
        return web.json_response(exc.to_dict(), status=STATUS_BY_CODE[exc.code])
    if isinstance(exc, ArtifactStoreUnavailable):
        # Its own text: str() of an OSError starts "[Errno N]", which helps nobody.
        return _answer(store_code(exc), exc.strerror or str(exc))
    for kind, code in ARTIFACT_CODES:
        if isinstance(exc, kind):
            message = str(exc)
            if code == "sandbox_unavailable":
                message += "; nothing was stored, retry"
            return _answer(code, message)
    if isinstance(exc, OSError) and exc.errno in STORE_ERRNOS:
        # A store fault that escaped the store's own translation.
        return coded(
            "store_full",
            f"the artifact store cannot take this upload ({os.strerror(exc.errno or 0)}); "
            "free space or fix the permissions of MODELVC_ARTIFACTS, then upload again",
        )
    if isinstance(exc, TimeoutError):
        return coded("timeout", "the projection did not reach that offset in time; retry")
    return None


def _content_type(request: web.Request) -> str:
    resource = request.match_info.route.resource
    upload = resource is not None and resource.canonical == UPLOAD_PATH
    return OCTET_STREAM if upload else JSON


@web.middleware
async def _bounded_path(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every path parameter within the text limit, and the model a valid model name,
    before any handler reads them: ``~security`` and ``~keys.P`` are chains of the log,
    not models, so no model route may read or send a command to one."""
    parse.check_path(request.match_info)
    if "model" in request.match_info:
        refs.check_name("model", request.match_info["model"])
    return await handler(request)


def middlewares(
    settings: Settings,
    security: auth.SecuritySource,
    sessions: auth.SessionStore | None = None,
) -> list[Middleware]:
    """For the Faust app's ``web_application_options``: errors outermost, then the
    origin guard (foreign pages and unknown routes), then tokens (a bearer token, or
    the cookie of one of the console's ``sessions``), then the handlers."""
    return [
        render_errors(domain_error, MAX_JSON_BYTES),
        guard(settings.web_host, settings.web_port, _content_type),
        auth.require_tokens(
            security,
            auth.STREAMS_ROUTE_ROLES,
            auth.OPEN_PATHS,
            open_routes=auth.CONSOLE_OPEN_ROUTES,
            sessions=sessions,
        ),
        _bounded_path,
    ]


def answered(answer: Answer, **extra: Any) -> web.Response:
    """A command's answer, with the status its body calls for (``extra`` joins a receipt)."""
    body = {**answer.body, **extra} if answer.ok else answer.body
    return web.json_response(body, status=status_of(answer.body, answer.wire_status))


def answered_each(answers: Sequence[Answer], **extra: Any) -> web.Response:
    """One command sent to every events partition: each partition's answer, under the
    status of the first refusal (201 when all applied, 200 when all were repeats)."""
    partitions = {str(p): answer.body for p, answer in enumerate(answers)}
    refused = [answer for answer in answers if not answer.ok]
    if refused:
        first = refused[0]
        body = {
            **first.body,
            "message": f"{first.body.get('message', '')} (partitions that applied it keep "
            "it; send the request again with the same command_id to finish)",
            **extra,
            "partitions": partitions,
        }
        return web.json_response(body, status=status_of(first.body, first.wire_status))
    repeated = all(answer.body.get("repeated") for answer in answers)
    return web.json_response(
        {**extra, "repeated": repeated, "partitions": partitions}, status=200 if repeated else 201
    )


class Api:
    """The handlers, bound to the instance's collaborators."""

    def __init__(
        self,
        settings: Settings,
        projection: Projection,
        follower: Follower,
        replies: Replies,
        letters: DeadLetters,
        store: ArtifactStore,
        intake: Intake,
        signer: WriterKey,
        clock: Any = time.time,
        store_threads: int = STORE_THREADS,
        store_deadline_s: float = STORE_DEADLINE_S,
        windows: WindowStore | None = None,
        decisions: DecisionMetrics | None = None,
        replays: replay.SingleFlight | None = None,
    ) -> None:
        self.settings = settings
        self.projection = projection
        self.follower = follower
        self.replies = replies
        self.letters = letters
        self.store = store
        self.intake = intake
        self.signer = signer  # this instance's writer key: it signs every command sent
        self.clock = clock
        self.store_deadline_s = store_deadline_s
        self._store_io = ThreadPoolExecutor(store_threads, thread_name_prefix="artifact-store")
        self._signatures: OrderedDict[str, ModelSignature] = OrderedDict()  # LRU, oldest first
        # The monitor's windows as this instance follows them, and the controller's metrics.
        self.windows = windows if windows is not None else WindowStore.in_memory()
        self._references: OrderedDict[str, Reference] = OrderedDict()  # LRU, oldest first
        self.decisions = decisions if decisions is not None else DecisionMetrics()
        # The replay check (POST /v1/audit/replay): in its own thread, one run at a time.
        self.replays = (
            replays
            if replays is not None
            else replay.SingleFlight(self._replay, self._replay_answer)
        )

    async def close(self) -> None:
        """Let the store's threads go (a call still running ends on its own)."""
        self._store_io.shutdown(wait=False, cancel_futures=True)
        self.replays.close()

    async def _in_store(self, deadline_s: float, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in the store's threads; ArtifactStoreUnavailable past the deadline
        (the call may still end in its thread: its answer is dropped)."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._store_io, call, *args), deadline_s
            )
        except TimeoutError:
            raise ArtifactStoreUnavailable(
                errno.ETIMEDOUT,
                f"the artifact store {self.store.location} did not answer within "
                f"{deadline_s:g} s; retry in a moment (if it goes on, the operator checks "
                "MODELVC_ARTIFACTS, MODELVC_S3_ENDPOINT and the network)",
            ) from None

    def _remember(self, digest: str, signature: ModelSignature) -> None:
        self._signatures[digest] = signature
        self._signatures.move_to_end(digest)
        while len(self._signatures) > SIGNATURES_CACHED:
            self._signatures.popitem(last=False)

    def _read_signature(self, digest: str, limit: int) -> ModelSignature:
        """In a store thread: the verified bytes, then our validator for their format (CPU:
        never on the loop; no native library: the upload's sandbox check already ran)."""
        data = read(self.store, digest, limit)
        return formats.detect(data).validate(data, limit).signature

    async def signature_of(self, digest: str) -> ModelSignature:
        """The input signature of the stored model ``digest``, read from the file itself.

        ArtifactNotFound when the store lacks it, ArtifactRejected when the parser refuses
        it (a model stored before a rule was added), ArtifactStoreUnavailable past the
        deadline. Remembered by digest: an upload or an earlier commit costs nothing here.
        """
        digest = parse.digest(digest, "artifact_sha256")
        known = self._signatures.get(digest)
        if known is not None:
            self._signatures.move_to_end(digest)
            return known
        limit = self.settings.max_model_bytes
        deadline_s = self.store_deadline_s + limit / MIN_STORE_RATE + limit / MIN_PARSE_RATE
        signature = await self._in_store(deadline_s, self._read_signature, digest, limit)
        self._remember(digest, signature)
        return signature

    def routes(self) -> list[web.RouteDef]:
        """Every route; ``streams.openapi`` documents exactly these."""
        return [
            web.post("/v1/models", self.create_model),
            web.get("/v1/models", self.list_models),
            web.post("/v1/models/{model}/commits", self.commit),
            web.post("/v1/models/{model}/branches", self.create_branch),
            web.get("/v1/models/{model}/branches", self.branches),
            web.delete("/v1/models/{model}/branches/{branch}", self.delete_branch),
            web.post("/v1/models/{model}/merges", self.merge),
            web.post("/v1/models/{model}/rollbacks", self.rollback),
            web.put("/v1/models/{model}/aliases/{alias}", self.move_alias),
            web.get("/v1/models/{model}/log", self.log),
            web.get("/v1/models/{model}/refs", self.refs),
            web.get("/v1/models/{model}/commits/{ref}", self.show),
            web.get("/v1/models/{model}/resolve/{ref}", self.resolve),
            web.get("/v1/models/{model}/diff", self.diff),
            web.get("/v1/models/{model}/feature-schema", self.feature_schema),
            web.get("/v1/state/digest", self.digest),
            web.post("/v1/audit/replay", self.audit_replay),
            web.post(UPLOAD_PATH, self.upload),
            web.get("/v1/artifacts/{digest}", self.download),
            web.get("/v1/whoami", self.whoami),
            web.post("/v1/tokens", self.issue_token),
            web.get("/v1/tokens", self.tokens),
            web.delete("/v1/tokens/{token_id}", self.revoke_token),
            web.get("/v1/protections", self.protections),
            web.put("/v1/protections/{kind}/{name}", self.protect),
            web.delete("/v1/protections/{kind}/{name}", self.unprotect),
            web.get("/v1/writer-keys", self.writer_keys),
            web.post("/v1/writer-keys", self.add_writer_key),
            web.delete("/v1/writer-keys/{key_id}", self.retire_writer_key),
            web.get("/v1/models/{model}/monitor", self.monitor),
            web.get("/v1/models/{model}/shadow", self.shadows),
            web.post("/v1/models/{model}/shadow", self.start_shadow),
            web.post("/v1/models/{model}/shadow/stop", self.stop_shadow),
            web.get("/v1/models/{model}/rollouts", self.rollouts),
            web.post("/v1/models/{model}/rollouts", self.start_rollout),
            web.get("/v1/models/{model}/rollouts/{rollout_id}", self.rollout),
            *(
                web.post(f"/v1/models/{{model}}/rollouts/{{rollout_id}}/{action}", handler)
                for action, handler in (
                    ("pause", self.pause_rollout),
                    ("resume", self.resume_rollout),
                    ("abort", self.abort_rollout),
                    ("promote", self.promote_rollout),
                )
            ),
            web.post(REFERENCES_PATH, self.upload_reference),
            web.get("/v1/references/{digest}", self.reference),
            web.get("/v1/openapi.json", self.openapi),
            web.get("/healthz", self.health),
            web.get("/metrics", self.prometheus),
        ]

    # -- reading ------------------------------------------------------------------
    async def _state(self, request: web.Request, with_as_of: bool = False) -> ModelState:
        """The path's model after ``?after=``, now or (``with_as_of``) at ``?as_of=``."""
        await self._consistent(request)
        name = request.match_info["model"]
        state = queries.model(self.projection.models, name)
        as_of = request.query.get("as_of") if with_as_of else None
        if as_of is None:
            return state
        return queries.as_of(name, self.projection.history(name), parse.as_of(as_of), as_of)

    async def _consistent(self, request: web.Request) -> None:
        """Honour ``?after=P:O,...``: wait until those event offsets are applied."""
        after = request.query.get("after")
        if not after:
            return
        for partition, offset in parse.after(after, self.settings.partitions):
            await self.follower.wait_applied(
                partition, offset, timeout=self.settings.consistency_timeout_s
            )

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response(queries.list_models(self.projection.models))

    async def branches(self, request: web.Request) -> web.Response:
        state = await self._state(request)
        return web.json_response({"branches": queries.ref_table(state)["branches"]})

    async def log(self, request: web.Request) -> web.Response:
        state = await self._state(request, with_as_of=True)
        ref = request.query.get("ref") or None
        # The history is read only for a model that had a shadow or a rollout (their events).
        history = (event for _, event in self.projection.history(state.name))
        drawn = request.query.get("graph") in ("1", "true")  # the console's lanes, on demand
        answer = queries.log(state, ref, request.query.get("as_of"), history, drawn)
        return web.json_response(answer)

    async def refs(self, request: web.Request) -> web.Response:
        state = await self._state(request, with_as_of=True)
        return web.json_response(queries.ref_table(state, request.query.get("as_of")))

    async def show(self, request: web.Request) -> web.Response:
        state = await self._state(request)
        return web.json_response(queries.show(state, request.match_info["ref"]))

    async def resolve(self, request: web.Request) -> web.Response:
        state = await self._state(request)
        return web.json_response(queries.resolve(state, request.match_info["ref"]))

    async def diff(self, request: web.Request) -> web.Response:
        state = await self._state(request)
        a, b = request.query.get("a", ""), request.query.get("b", "")
        return web.json_response(queries.diff(state, a, b))

    async def feature_schema(self, request: web.Request) -> web.Response:
        """The typed Avro schema a feature producer writes for a ref (by default the ref a
        worker scores an event without one by), and its single-object fingerprint."""
        state = await self._state(request)
        ref = request.query.get("ref") or refs.default_ref(state)
        commit = state.commits[refs.resolve(state, ref)]
        # A commit made before commits recorded a signature: read from its file.
        signature = commit.signature or await self.signature_of(commit.artifact_sha256)
        schema = model_signature.feature_schema(signature)
        answer = {
            "model": state.name,
            "ref": ref,
            "commit_id": commit.id,
            "signature": signature.plain(),
            "schema": schema,
            "fingerprint": fingerprint(schema).hex(),
        }
        return web.json_response(answer)

    async def digest(self, request: web.Request) -> web.Response:
        await self._consistent(request)
        projection = self.projection
        return web.json_response(
            queries.digest(projection.models, projection.next_offsets, projection.voided)
        )

    def _replay(self, deadline: float) -> replay.Replay:
        """In the replay's thread: the events topic from offset 0 to its high watermarks."""
        settings = self.settings
        done = replay.replay_kafka(settings.access, settings.events_topic, deadline=deadline)
        done.auditor, done.kept = None, []  # its fold is as large as the projection: let it go
        return done

    async def audit_replay(self, request: web.Request) -> web.Response:
        """Replay the log as `modelvc audit replay` does, and compare the digests (a call
        soon after a run gets that run's answer: see :class:`replay.SingleFlight`)."""
        try:
            return web.json_response(await self.replays())
        except TimeoutError:
            return coded(
                "timeout",
                f"the replay did not finish within {self.replays.timeout_s:g} s; run it "
                "without a time limit with `modelvc audit replay`",
            )

    async def _replay_answer(self, done: replay.Replay) -> dict[str, Any]:
        """A replay's answer, against the live digest."""
        # The live digest once this instance has applied what the replay read: on a log
        # that was quiet meanwhile they describe the same events.
        for partition, offset in sorted(done.ends.items()):
            try:
                await self.follower.wait_applied(partition, offset, timeout=5.0)
            except TimeoutError:
                break  # compared as it is: `matches` says whether it agrees
        projection = self.projection
        live = queries.digest(projection.models, projection.next_offsets, projection.voided)
        took_ms = round(done.seconds * 1000)
        return replay.answer(done, live["digest"], took_ms)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.document())

    async def health(self, request: web.Request) -> web.Response:
        ready = self.follower.ready.is_set()
        return web.json_response(
            {
                "ready": ready,
                "instance": self.settings.instance_id,
                "pid": os.getpid(),
                "offsets": dict(self.projection.next_offsets),
                "dead_letters": self.letters.sent,
                "dead_letter_failures": self.letters.failures,
                "void_events": self.projection.voided,
            },
            status=200 if ready else 503,
        )

    # -- commands -------------------------------------------------------------------
    def _command(
        self,
        request: web.Request,
        model: str,
        body: Mapping[str, Any],
        make: Body,
        claimed: object = None,
    ) -> Command:
        """``make`` on ``model`` as the token's actor and role, signed by this instance.

        ``claimed`` is the actor the body names (None when the body has no such
        claim); it and the ``X-Modelvc-Actor`` header may only repeat the token's.
        """
        identity = auth.identity_of(request)
        auth.check_actor(identity, claimed, request.headers.get("X-Modelvc-Actor"))
        command_id = parse.opt_text(body, "command_id", parse.MAX_ID_BYTES) or str(uuid.uuid4())
        command = Command(
            command_id=command_id,
            model=parse.utf8(model, "model", parse.MAX_TEXT_BYTES),
            actor=identity.actor,
            at=int(self.clock() * 1000),  # the writer stamps its own; this is a placeholder
            body=make,
            role=identity.role,
        )
        return sign_command(self.signer, command)

    async def _submit(
        self, request: web.Request, model: str, body: Mapping[str, Any], make: Body
    ) -> web.Response:
        command = self._command(request, model, body, make, body.get("actor"))
        return answered(await self.replies.submit(command))

    async def _submit_each(
        self, request: web.Request, body: Mapping[str, Any], make: Body, **extra: Any
    ) -> web.Response:
        """``make`` once per events partition, to that partition's writer-key ring."""
        command_id = parse.opt_text(body, "command_id", parse.MAX_ID_BYTES) or str(uuid.uuid4())
        # One command id for all: each ring keeps its own receipts, so a retry with
        # the same id repeats what applied and applies the rest.
        body = {**body, "command_id": command_id}
        commands = [
            self._command(request, keys_stream(p), body, make, body.get("actor"))
            for p in range(self.settings.partitions)
        ]
        answers = await asyncio.gather(*(self.replies.submit(c) for c in commands))
        return answered_each(answers, **extra)

    async def _stored(self, digest: str | None, field: str) -> None:
        if digest is None:
            return
        checked = parse.digest(digest, field)
        if not await self._in_store(self.store_deadline_s, self.store.has, checked):
            raise InvalidCommand(
                f"artifact {digest} is not in the store; upload it first (POST /v1/artifacts)",
                field=field,
            )

    async def create_model(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        name = parse.text(body, "name")
        refs.check_name("model", name)
        make = CreateModel(parse.text(body, "default_branch", "main"))
        return await self._submit(request, name, body, make)

    async def commit(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        digest = parse.text(body, "artifact_sha256")
        await self._stored(digest, "artifact_sha256")
        # The server's own reading of the file: a body cannot claim a signature.
        signature = await self.signature_of(digest)
        reference = await self._reference_of(parse.opt_text(body, "reference_sha256"))
        make = MakeCommit(
            artifact_sha256=digest,
            message=parse.text(body, "message", limit=parse.MAX_MESSAGE_BYTES),
            branch=parse.text(body, "branch", "main"),
            params=parse.params(body),
            metrics=parse.metrics(body),
            expect_head=parse.opt_text(body, "expect_head"),
            signature=signature,
            reference_sha256=reference,
        )
        return await self._submit(request, request.match_info["model"], body, make)

    async def create_branch(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        make = CreateBranch(parse.text(body, "name"), parse.opt_text(body, "from"))
        return await self._submit(request, request.match_info["model"], body, make)

    async def delete_branch(self, request: web.Request) -> web.Response:
        make = DeleteBranch(request.match_info["branch"])
        return await self._submit(request, request.match_info["model"], request.query, make)

    async def merge(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        artifact = parse.opt_text(body, "artifact_sha256")
        await self._stored(artifact, "artifact_sha256")
        # A merge that keeps a parent's artifact keeps its recorded signature (decide copies it).
        signature = None if artifact is None else await self.signature_of(artifact)
        reference = await self._reference_of(parse.opt_text(body, "reference_sha256"))
        make = Merge(
            source=parse.text(body, "source"),
            target=parse.text(body, "into", "main"),
            strategy=parse.opt_text(body, "strategy"),
            artifact_sha256=artifact,
            message=parse.opt_text(body, "message", parse.MAX_MESSAGE_BYTES),
            signature=signature,
            reference_sha256=reference,
        )
        return await self._submit(request, request.match_info["model"], body, make)

    async def rollback(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        make = Rollback(
            parse.text(body, "branch"),
            parse.text(body, "to"),
            parse.text(body, "reason", limit=parse.MAX_REASON_BYTES),
            expect=parse.opt_text(body, "expect"),  # the head the caller saw
        )
        return await self._submit(request, request.match_info["model"], body, make)

    async def move_alias(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        alias = request.match_info["alias"]
        make = MoveAlias(
            alias,
            parse.text(body, "ref"),
            parse.opt_text(body, "expect"),
            allow_signature_change=parse.flag(body, "allow_signature_change"),
        )
        return await self._submit(request, request.match_info["model"], body, make)

    # -- identity, tokens, protection rules, writer keys ---------------------------------
    async def whoami(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(auth.identity_of(request)))

    async def issue_token(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        actor = parse.actor(body, "actor")
        role = parse.role(body, "role")
        now_ms = int(self.clock() * 1000)
        expires_at = parse.expires_at(body, "expires_at", now_ms)
        token, token_id, token_sha256 = auth.new_token()
        # Only the hash is sent: the token is in this answer and nowhere else.
        make = IssueToken(token_id, actor, role, token_sha256, expires_at)
        # The body's "actor" is the new token's holder, not a claim about the caller.
        command = self._command(request, SECURITY_STREAM, body, make, claimed=None)
        answer = await self.replies.submit(command)
        if answer.body.get("repeated"):
            return answered(answer)  # the token was shown once, when it was issued
        shown = {"token_id": token_id, "actor": actor, "role": role, "expires_at": expires_at}
        issued = answered(answer, token=token, **shown)
        # The token itself is in this answer: no cache on the way may keep a copy.
        issued.headers["Cache-Control"] = "no-store"
        return issued

    async def tokens(self, request: web.Request) -> web.Response:
        security = self.projection.security
        return web.json_response(queries.tokens(security, int(self.clock() * 1000)))

    async def revoke_token(self, request: web.Request) -> web.Response:
        token_id = parse.token_id(request.match_info["token_id"], "token_id")
        reason = parse.text(request.query, "reason", "", parse.MAX_NOTE_BYTES)
        make = RevokeToken(token_id, reason)
        return await self._submit(request, SECURITY_STREAM, request.query, make)

    async def protections(self, request: web.Request) -> web.Response:
        return web.json_response(queries.protections(self.projection.security))

    async def protect(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        kind, name = parse.protected_ref(request.match_info["kind"], request.match_info["name"])
        make = ProtectRef(kind, name, parse.model_or_all(body), parse.protecting_role(body, "role"))
        return await self._submit(request, SECURITY_STREAM, body, make)

    async def unprotect(self, request: web.Request) -> web.Response:
        kind, name = parse.protected_ref(request.match_info["kind"], request.match_info["name"])
        make = UnprotectRef(kind, name, parse.model_or_all(request.query))
        return await self._submit(request, SECURITY_STREAM, request.query, make)

    async def writer_keys(self, request: web.Request) -> web.Response:
        rings = self.projection.rings
        answer = queries.writer_keys(rings, self.settings.partitions, self.signer.key_id)
        return web.json_response(answer)

    async def add_writer_key(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        public_key = parse.public_key(body, "public_key")
        note = parse.text(body, "note", "", parse.MAX_NOTE_BYTES)
        key_id = key_id_of(public_key)
        make = AddWriterKey(public_key, note)
        return await self._submit_each(request, body, make, key_id=key_id)

    async def retire_writer_key(self, request: web.Request) -> web.Response:
        key_id = parse.digest(request.match_info["key_id"], "key_id")
        reason = parse.text(request.query, "reason", "", parse.MAX_NOTE_BYTES)
        make = RetireWriterKey(key_id, reason)
        return await self._submit_each(request, request.query, make, key_id=key_id)

    # -- artifacts --------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        """Stream the body into the store; it validates, and removes its temp file on failure.

        A full or read-only disk, a store that does not answer or refuses, a client that
        disconnects (the read raises) and a cancelled handler all leave nothing behind
        (``Intake.receive``). ``stored`` is false when the store already held these bytes
        (checked intact on the way: nothing was written).
        """
        expected = request.query.get("sha256")
        if expected is not None:
            parse.digest(expected, "sha256")
        declared = request.content_length
        if declared is not None and declared > self.intake.max_bytes:
            raise ArtifactTooLarge(f"artifacts are limited to {self.intake.max_bytes} bytes")
        chunks = request.content.iter_chunked(1 << 16)
        received = await self.intake.receive(chunks, expected)
        self._remember(received.digest, received.summary.signature)
        body = {
            "sha256": received.digest,
            "size": received.size,
            "stored": received.stored,
            **received.summary.plain(),
        }
        return web.json_response(body, status=201)

    async def download(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        if not parse.DIGEST.fullmatch(digest):
            raise ArtifactNotFound(f"{digest[:80]!r} is not a sha256 hex digest")
        limit = self.settings.max_model_bytes
        try:
            # A whole model is read: the deadline grows with the most it may be.
            deadline_s = self.store_deadline_s + limit / MIN_STORE_RATE
            data = await self._in_store(deadline_s, read, self.store, digest, limit)
        except ArtifactCorrupted as exc:
            # Stored bytes that no longer hash to their name: the store's fault, not the client's.
            return coded("artifact_corrupted", str(exc))
        return web.Response(body=data, content_type="text/plain", headers={"X-Sha256": digest})

    # -- monitoring: windows, references, shadows and rollouts ----------------------------
    async def prometheus(self, request: web.Request) -> web.Response:
        """The controller's decisions and their time to decision, for Prometheus."""
        return web.Response(
            body=generate_latest(self.decisions.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def monitor(self, request: web.Request) -> web.Response:
        """Each version's figures over the monitor's windows: cumulative, and the newest
        ``last`` windows; ``ref``: only the versions served for that ref or by its commit."""
        state = await self._state(request)
        last = parse_last(request.query.get("last"))
        ref = request.query.get("ref") or None
        chosen = None if ref is None else _served_for(state, parse.utf8(ref, "ref", 1024))
        known = {}
        for digest in sorted(references_used(self.windows, state.name)):
            reference = await self._reference(digest)
            if reference is not None:
                known[digest] = reference
        answer = monitor_report(self.windows, state.name, last, chosen or (lambda _: True), known)
        return web.json_response(answer)

    async def _reference(self, digest: str) -> Reference | None:
        """The parsed reference ``digest`` (remembered: content-addressed), or None when the
        store lacks it or it is no reference (its PSI is then left out)."""
        known = self._references.get(digest)
        if known is not None:
            self._references.move_to_end(digest)
            return known
        try:
            data = await self._in_store(self.store_deadline_s, get_reference, self.store, digest)
        except (ArtifactError, ArtifactStoreUnavailable) as exc:
            log.warning("reference %s cannot be read, PSI left out: %s", digest[:16], exc)
            return None
        reference = reference_from_json(data)
        self._references[digest] = reference
        while len(self._references) > REFERENCES_CACHED:
            self._references.popitem(last=False)
        return reference

    async def _reference_of(self, digest: str | None) -> str | None:
        """``digest`` when it names a stored drift reference; InvalidCommand else."""
        if digest is None:
            return None
        checked = parse.digest(digest, "reference_sha256")
        try:
            await self._in_store(self.store_deadline_s, get_reference, self.store, checked)
        except ArtifactNotFound:
            raise InvalidCommand(
                f"reference {checked} is not in the store; upload it first "
                "(`modelvc commit FILE --reference SAMPLE.csv` does, or POST /v1/references)",
                field="reference_sha256",
            ) from None
        return checked

    async def upload_reference(self, request: web.Request) -> web.Response:
        """Check a drift reference (bounded) and store its canonical form by its sha256."""
        declared = request.content_length
        if declared is not None and declared > MAX_REFERENCE_BYTES:
            raise ArtifactTooLarge(f"references are limited to {MAX_REFERENCE_BYTES} bytes")
        received = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            received += chunk
            if len(received) > MAX_REFERENCE_BYTES:
                raise ArtifactTooLarge(f"references are limited to {MAX_REFERENCE_BYTES} bytes")
        digest, stored = await self._in_store(
            self.store_deadline_s, put_reference, self.store, bytes(received)
        )
        return web.json_response({"sha256": digest, "stored": stored}, status=201)

    async def reference(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        if not parse.DIGEST.fullmatch(digest):
            raise ArtifactNotFound(f"{digest[:80]!r} is not a sha256 hex digest")
        data = await self._in_store(self.store_deadline_s, get_reference, self.store, digest)
        return web.Response(body=data, content_type=JSON, headers={"X-Sha256": digest})

    async def shadows(self, request: web.Request) -> web.Response:
        state = await self._state(request)
        return web.json_response({"model": state.name, "shadows": queries.shadows(state)})

    async def start_shadow(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        make = StartShadow(parse.text(body, "alias"), parse.text(body, "candidate"))
        return await self._submit(request, request.match_info["model"], body, make)

    async def stop_shadow(self, request: web.Request) -> web.Response:
        body = await parse.json_body(request)
        make = StopShadow(parse.text(body, "alias"))
        return await self._submit(request, request.match_info["model"], body, make)

    async def rollouts(self, request: web.Request) -> web.Response:
        state = await self._state(request)
        return web.json_response({"model": state.name, "rollouts": queries.rollouts(state)})

    async def rollout(self, request: web.Request) -> web.Response:
        """One rollout, with every decision on it (who, when, on which evidence)."""
        state = await self._state(request)
        found = queries.rollout(state, request.match_info["rollout_id"])
        events = (event for _, event in self.projection.history(state.name))
        decisions = queries.rollout_decisions(events, found["id"])
        return web.json_response({**found, "decisions": decisions})

    async def start_rollout(self, request: web.Request) -> web.Response:
        """Start moving an alias to a ref in steps; 201 with the receipt and the rollout."""
        body = await parse.json_body(request)
        model = request.match_info["model"]
        command = self._command(
            request,
            model,
            body,
            StartRollout(
                parse.text(body, "alias"),
                parse.text(body, "to"),
                rollout_policy(body),
                allow_signature_change=parse.flag(body, "allow_signature_change"),
                expect=parse.opt_text(body, "expect"),  # the commit the caller saw it serve
            ),
            body.get("actor"),
        )
        answer = await self.replies.submit(command)
        if not answer.ok:
            return answered(answer)
        # Applied (or repeated) here already: the submission waits for the fold.
        state = queries.model(self.projection.models, model)
        started = queries.rollout(state, rollout_id(model, command.command_id))
        return answered(answer, rollout=started)

    async def _rollout_command(
        self,
        request: web.Request,
        make: Callable[[str, str, Mapping[str, Any]], Body],
        reason_needed: bool = False,
    ) -> web.Response:
        body = await parse.json_body(request)
        given = request.match_info["rollout_id"]
        if not refs.ROLLOUT_ID.fullmatch(given):
            raise InvalidCommand(
                f"rollout id {given[:40]!r} is not one (r and 11 hex digits); list them with "
                "`modelvc rollout status`",
                field="rollout_id",
            )
        # An abort or a promotion overrides the policy: the log says why (--reason).
        default = None if reason_needed else ""
        reason = parse.text(body, "reason", default, parse.MAX_NOTE_BYTES)
        made = make(given, reason, body)
        return await self._submit(request, request.match_info["model"], body, made)

    async def pause_rollout(self, request: web.Request) -> web.Response:
        return await self._rollout_command(request, lambda rid, why, _: PauseRollout(rid, why))

    async def resume_rollout(self, request: web.Request) -> web.Response:
        return await self._rollout_command(request, lambda rid, _, __: ResumeRollout(rid))

    async def abort_rollout(self, request: web.Request) -> web.Response:
        # A person's abort: decide records who did it as its evidence; expect_step, the step
        # the caller saw, makes it refused (409) when the rollout moved on meanwhile.
        return await self._rollout_command(
            request,
            lambda rid, why, body: AbortRollout(rid, why, expect_step=parse.expect_step(body)),
            True,
        )

    async def promote_rollout(self, request: web.Request) -> web.Response:
        return await self._rollout_command(request, lambda rid, why, _: PromoteRollout(rid, why))


def parse_last(value: str | None) -> int:
    """``?last=N``: windows per version, 0 to MAX_LAST (default DEFAULT_LAST)."""
    if value is None:
        return DEFAULT_LAST
    if not value.isascii() or not value.isdigit() or len(value) > 4 or int(value) > MAX_LAST:
        raise InvalidCommand(f"last must be a whole number from 0 to {MAX_LAST}", field="last")
    return int(value)


def _served_for(state: ModelState, ref: str) -> Callable[[Version], bool]:
    """Versions served for ``ref`` by name, or by the commit it names now (if it does)."""
    try:
        commit: str | None = refs.resolve(state, ref)
    except VersionGraphError:
        commit = None  # a ref that names nothing now may still have windows by name
    return lambda version: (
        version.ref == ref or (commit is not None and version.commit_id == commit)
    )


def rollout_policy(body: Mapping[str, Any]) -> Policy:
    """The rollout policy a request asks for, with the defaults of ``modelvc rollout start``;
    InvalidCommand (field ``policy``) when the core's rule refuses it."""
    steps = body.get("steps", DEFAULT_STEPS)
    policy = Policy(
        steps=tuple(steps) if isinstance(steps, list) else steps,
        min_labels=body.get("min_labels", Policy.__dataclass_fields__["min_labels"].default),
        # null is none; any other non-object ([], "logloss=0.1") is refused by the rule.
        max_regression={} if body.get("max_regression") is None else body["max_regression"],
        max_p99_ms=body.get("max_p99_ms"),
        max_dead_letter_rate=body.get("max_dead_letter_rate"),
        step_timeout_ms=body.get("step_timeout_ms", 0),
    )
    problem = refs.policy_problem(policy)
    if problem is not None:
        raise InvalidCommand(problem, field="policy")
    return policy

"""The OpenAPI 3.1 document of the streams HTTP API, served at ``GET /v1/openapi.json``.

A test checks that every route the app registers is described here and that
nothing else is, and schemathesis checks the answers against it; so a route
added without its entry here fails the tests. The limits are the API's own, and
so is the role each route needs (``streams.auth.ROUTE_ROLES``): every route
outside ``streams.auth.OPEN_PATHS`` documents ``bearerAuth`` and its 401/403.

The web console's own routes (its pages, assets and cookie session under ``/ui``:
:data:`CONSOLE_ROUTES`) are served beside the API but are not part of it, so they
are left out on purpose; the login codes ``modelvc ui`` asks for are the API's.
"""

from __future__ import annotations

from typing import Any

from streams import auth
from streams.core import model_signature, monitoring, refs
from streams.core.decide import STRATEGIES
from streams.core.rollout import LOWER_IS_BETTER, MAX_STEP_TIMEOUT_MS, MAX_STEPS
from streams.core.security import MAX_TEXT, PROTECTING_ROLES, ROLES, TOKEN, TOKEN_FORMAT, TOKEN_ID
from streams.core.signatures import PUBLIC_KEY
from streams.modelfile import MAX_MODEL_BYTES
from streams.replay import COOL_DOWN_RUNS, COOL_DOWN_S, MAX_SHOWN_FINDINGS, REPLAY_TIMEOUT_S
from streams.settings import MIB

# The API's limits are imported lazily by ``document`` (api imports this module).
# Served by a streams instance, but the console's, not the API's: not documented here.
CONSOLE_ROUTES = auth.CONSOLE_OPEN_ROUTES | frozenset(auth.CONSOLE_ROUTE_ROLES)
_ERROR_STATUSES = {
    400: "The request cannot be read (a body that does not decode, a closed connection, "
    "a repeated Authorization or X-Modelvc-Actor header).",
    401: "No valid token (missing, malformed, unknown, revoked or expired): send "
    "`Authorization: Bearer <token>` (WWW-Authenticate says so).",
    403: "Refused: a foreign Origin (a web page of another site) or a foreign Host; "
    "`forbidden`: the token's role is below the one needed (`needed`, `role`, `actor` "
    "say which; protected refs need more); `actor_mismatch`: a claimed actor that is "
    "not the token's.",
    404: "Unknown route, model, ref or artifact.",
    405: "The route exists but not with this method (the Allow header lists the methods).",
    408: "The upload sent nothing for too long and was dropped; send it again.",
    409: "Conflict: the name exists, or expect/expect_head is stale (see `current`); "
    "`signature_change`: the alias's new commit needs input features (`features`) its "
    "current one does not, so send allow_signature_change: true once producers send them.",
    413: "The body is larger than the limit.",
    415: "Writes need Content-Type application/json (uploads: application/octet-stream) "
    "and no Content-Encoding.",
    422: "Invalid input; `field` names the field when there is one (a model in the path "
    "must be a model name: 1-128 letters, digits, '.', '_' or '-').",
    500: "A bug: the server log has the traceback.",
    503: "Retry later: not ready yet (still catching up with the log), cannot check a model "
    "now, too many uploads at once (`busy`, Retry-After), the artifact store does not answer "
    "in time (`store_unreachable`, Retry-After) or refuses this server's credentials "
    "(`store_refused`: the operator fixes them), or this instance's writer key is not "
    "trusted (`untrusted_writer`: the operator adds it).",
    504: "No answer in time; retry (a command with the same command_id is applied once).",
    507: "`store_full`: the artifact store's directory is full or read-only; the operator "
    "frees space or fixes its permissions, then the request can be sent again.",
}

_WRITE_ERRORS = (400, 403, 404, 409, 413, 415, 422, 500, 503, 504)
# A row of the lane layout of `log --graph` (streams.core.graph.GraphRow).
_GRAPH_ROW = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["commit", "join", "fork"]},
        "lanes": {"type": "array", "items": {"type": "boolean"}},
        "column": {"type": "integer", "minimum": -1, "description": "-1: no commit"},
        "commit": {"type": ["string", "null"]},
        "marks": {
            "type": "array",
            # [lane, mark]: a pair (plain items, not prefixItems: schemathesis' 3.1 reader
            # turns a tuple schema into one its own check then refuses).
            "items": {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "items": {"type": ["integer", "string"]},
            },
            "description": "(lane, '/'): the lane bends into lane-1; (lane, '\\'): a lane "
            "opens from lane-1.",
        },
    },
    "required": ["kind", "lanes", "column", "commit", "marks"],
}
# Commits and merges first look their artifact up in the store.
_STORE_WRITE_ERRORS = (*_WRITE_ERRORS, 507)
_READ_ERRORS = (400, 403, 404, 422, 500, 504)

# A ref expression (a name, a commit id or prefix, with ~N and ^ suffixes).
_REF_EXPR = {"type": "string", "minLength": 1, "maxLength": refs.MAX_REF_LENGTH}
_NULLABLE_REF_EXPR = {"type": ["string", "null"], "maxLength": refs.MAX_REF_LENGTH}
# A model, branch or alias name (refs.NAME, matched whole); other fields take ref expressions.
_IDENT = {"type": "string", "pattern": f"^{refs.NAME.pattern}$"}
_DIGEST = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_ID = {"type": "string", "maxLength": 128}
_ROLE = {"enum": list(ROLES)}
_TOKEN_ID = {"type": "string", "pattern": f"^{TOKEN_ID.pattern}$"}
_PUBLIC_KEY = {"type": "string", "pattern": f"^{PUBLIC_KEY.pattern}$"}
_NOTE = {"type": "string", "maxLength": MAX_TEXT}
_REFERENCE = {
    "type": ["string", "null"],
    "pattern": "^[0-9a-f]{64}$",
    "description": "A drift reference stored with POST /v1/references (the training data's "
    "bins): the monitor measures the PSI of the commit's live features against it.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref("Error"), _ERROR_STATUSES[s]) for s in statuses}


def _path_param(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or _REF_EXPR}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> Any:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


_AFTER = _query(
    "after",
    {"type": "string", "pattern": r"^[0-9]{1,9}:[0-9]{1,18}(,[0-9]{1,9}:[0-9]{1,18})*$"},
    "Wait until these event offsets (PARTITION:OFFSET,...) are applied: read your writes.",
)
_AS_OF = _query(
    "as_of",
    {"type": "string", "maxLength": 64},
    "The state as of an event offset (e.g. 42) or an ISO-8601 time (server clock).",
)
_COMMAND_ID = _query("command_id", _ID, "Idempotency key; a retry reuses it.")


def _command(
    summary: str,
    body: dict[str, Any] | None,
    params: list[dict[str, Any]],
    receipt: dict[str, Any] | None = None,
    errors: tuple[int, ...] = _WRITE_ERRORS,
) -> dict[str, Any]:
    # The actor is the token's: an `actor` field or X-Modelvc-Actor header is still
    # accepted when it repeats it (older clients), so neither is documented.
    receipt = receipt or _ref("Receipt")
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": params,
        "responses": {
            "201": _json(receipt, "Applied."),
            "200": _json(receipt, "A repeat of an applied command (same command_id)."),
            **_errors(*errors),
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def _command_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            **properties,
            "command_id": {**_ID, "description": "Idempotency key; a retry reuses it."},
        },
        "required": required,
        # The server stamps every event with its own clock (finding 8).
        "not": {"required": ["at"]},
    }


def _query_op(summary: str, schema: dict[str, Any], params: list[dict[str, Any]]) -> Any:
    return {
        "summary": summary,
        "parameters": params,
        "responses": {"200": _json(schema, "The answer."), **_errors(*_READ_ERRORS)},
    }


OPERATION_IDS = {
    ("/", "get"): "index",
    ("/healthz", "get"): "health",
    ("/v1/openapi.json", "get"): "openapi",
    ("/v1/models", "get"): "listModels",
    ("/v1/models", "post"): "createModel",
    ("/v1/models/{model}/commits", "post"): "commit",
    ("/v1/models/{model}/branches", "get"): "listBranches",
    ("/v1/models/{model}/branches", "post"): "createBranch",
    ("/v1/models/{model}/branches/{branch}", "delete"): "deleteBranch",
    ("/v1/models/{model}/merges", "post"): "merge",
    ("/v1/models/{model}/rollbacks", "post"): "rollback",
    ("/v1/models/{model}/aliases/{alias}", "put"): "moveAlias",
    ("/v1/models/{model}/log", "get"): "log",
    ("/v1/models/{model}/refs", "get"): "refs",
    ("/v1/models/{model}/commits/{ref}", "get"): "showCommit",
    ("/v1/models/{model}/resolve/{ref}", "get"): "resolve",
    ("/v1/models/{model}/diff", "get"): "diff",
    ("/v1/models/{model}/feature-schema", "get"): "featureSchema",
    ("/v1/state/digest", "get"): "stateDigest",
    ("/v1/artifacts", "post"): "uploadArtifact",
    ("/v1/artifacts/{digest}", "get"): "downloadArtifact",
    ("/v1/whoami", "get"): "whoami",
    ("/v1/tokens", "get"): "listTokens",
    ("/v1/tokens", "post"): "issueToken",
    ("/v1/tokens/{token_id}", "delete"): "revokeToken",
    ("/v1/protections", "get"): "listProtections",
    ("/v1/protections/{kind}/{name}", "put"): "protectRef",
    ("/v1/protections/{kind}/{name}", "delete"): "unprotectRef",
    ("/v1/writer-keys", "get"): "listWriterKeys",
    ("/v1/writer-keys", "post"): "addWriterKey",
    ("/v1/writer-keys/{key_id}", "delete"): "retireWriterKey",
    ("/v1/models/{model}/monitor", "get"): "monitor",
    ("/v1/models/{model}/shadow", "get"): "listShadows",
    ("/v1/models/{model}/shadow", "post"): "startShadow",
    ("/v1/models/{model}/shadow/stop", "post"): "stopShadow",
    ("/v1/models/{model}/rollouts", "get"): "listRollouts",
    ("/v1/models/{model}/rollouts", "post"): "startRollout",
    ("/v1/models/{model}/rollouts/{rollout_id}", "get"): "showRollout",
    ("/v1/models/{model}/rollouts/{rollout_id}/pause", "post"): "pauseRollout",
    ("/v1/models/{model}/rollouts/{rollout_id}/resume", "post"): "resumeRollout",
    ("/v1/models/{model}/rollouts/{rollout_id}/abort", "post"): "abortRollout",
    ("/v1/models/{model}/rollouts/{rollout_id}/promote", "post"): "promoteRollout",
    ("/v1/references", "post"): "uploadReference",
    ("/v1/references/{digest}", "get"): "downloadReference",
    ("/metrics", "get"): "metrics",
    ("/v1/ui/login-codes", "post"): "createLoginCode",
    ("/v1/audit/replay", "post"): "auditReplay",
}


def _with_errors(operation: dict[str, Any], *statuses: int) -> dict[str, Any]:
    operation["responses"].update(_errors(*statuses))
    return operation


def _link(
    operation_id: str,
    description: str,
    parameters: dict[str, str] | None = None,
    body: dict[str, str] | None = None,
) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation_id, "description": description}
    if parameters:
        link["parameters"] = parameters
    if body:
        link["requestBody"] = body
    return link


# What a 201 receipt names, as OpenAPI runtime expressions. A receipt carries the
# model, the ref it moved (the default branch for a new model) and its new head,
# and the event's offset, which `after` takes to read that write.
_MODEL = {"path.model": "$response.body#/model"}
_REF = "$response.body#/ref"
_HEAD = "$response.body#/head"
_PARENT = "{$response.body#/head}~1"
_READ_IT = {**_MODEL, "query.after": "{$response.body#/partition}:{$response.body#/offset}"}

# The links between operations (OpenAPI 3.1 `links` on each 201): what a client
# can do next with what an answer names. Stateful tests (schemathesis) follow them.
_LINKS: dict[str, dict[str, Any]] = {
    "createModel": {
        "CommitToDefaultBranch": _link(
            "commit", "Commit to the new model.", _MODEL, {"branch": _REF}
        ),
        "CreateBranch": _link("createBranch", "Branch the new model.", _MODEL),
        "ListBranches": _link("listBranches", "Its branches.", _READ_IT),
        "Refs": _link("refs", "Its refs.", _READ_IT),
        "Log": _link("log", "Its log.", _READ_IT),
        "MoveAlias": _link("moveAlias", "Name one of its refs.", _MODEL),
        "StateDigest": _link(
            "stateDigest",
            "The state digest once the model is there.",
            {"query.after": _READ_IT["query.after"]},
        ),
    },
    "commit": {
        "ShowCommit": _link("showCommit", "The new commit.", {**_READ_IT, "path.ref": _HEAD}),
        "Resolve": _link("resolve", "Resolve the new commit.", {**_READ_IT, "path.ref": _HEAD}),
        "Commit": _link(
            "commit", "Commit again on top.", _MODEL, {"branch": _REF, "expect_head": _HEAD}
        ),
        "Alias": _link("moveAlias", "Point an alias at the new commit.", _MODEL, {"ref": _HEAD}),
        "Branch": _link("createBranch", "Branch from the new commit.", _MODEL, {"from": _HEAD}),
        "Rollback": _link(
            "rollback",
            "Undo it: its branch back to its parent.",
            _MODEL,
            {"branch": _REF, "to": _PARENT, "reason": "undo {$response.body#/head}"},
        ),
        "Diff": _link(
            "diff", "What it changed.", {**_READ_IT, "query.a": _PARENT, "query.b": _HEAD}
        ),
        "Log": _link("log", "History up to the commit.", {**_READ_IT, "query.ref": _HEAD}),
        "Merge": _link("merge", "Merge its branch somewhere.", _MODEL, {"source": _REF}),
        "FeatureSchema": _link(
            "featureSchema",
            "The typed feature event its signature implies.",
            {**_READ_IT, "query.ref": _HEAD},
        ),
    },
    "createBranch": {
        "Commit": _link("commit", "Commit to the new branch.", _MODEL, {"branch": _REF}),
        "Delete": _link("deleteBranch", "Delete it.", {**_MODEL, "path.branch": _REF}),
        "Merge": _link("merge", "Merge it.", _MODEL, {"source": _REF}),
        "ListBranches": _link("listBranches", "The branches now.", _READ_IT),
    },
    "merge": {
        "ShowCommit": _link("showCommit", "The merge's head.", {**_READ_IT, "path.ref": _HEAD}),
        "Log": _link("log", "The merged branch's log.", {**_READ_IT, "query.ref": _REF}),
    },
    "rollback": {
        "Resolve": _link("resolve", "Where the branch is now.", {**_READ_IT, "path.ref": _REF}),
    },
    "moveAlias": {
        "Resolve": _link("resolve", "What the alias names.", {**_READ_IT, "path.ref": _REF}),
        "ShowCommit": _link("showCommit", "The aliased commit.", {**_READ_IT, "path.ref": _REF}),
    },
    "deleteBranch": {
        "Branches": _link("listBranches", "The branches without it.", _READ_IT),
    },
    "issueToken": {
        "Revoke": _link("revokeToken", "Revoke it.", {"path.token_id": "$response.body#/token_id"}),
        "List": _link("listTokens", "The tokens with it."),
    },
    "uploadArtifact": {
        # Nothing of the upload goes into the model; it is the next step of `modelvc
        # commit` on a new model (and so a stateful run gets to create models).
        "CreateModel": _link("createModel", "Create a model to commit it to."),
        "Download": _link(
            "downloadArtifact", "Read it back.", {"path.digest": "$response.body#/sha256"}
        ),
        "Commit": _link(
            "commit", "Commit it.", None, {"artifact_sha256": "$response.body#/sha256"}
        ),
    },
}


_IDENTITY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "actor": {"type": "string"},
        "role": _ROLE,
        "token_id": {"type": "string"},
        "expires_at": {"type": "integer", "description": "ms since the epoch; 0 = never"},
    },
    "required": ["actor", "role", "token_id", "expires_at"],
}
_RECEIPT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "command_id": {"type": "string"},
        "event": {"type": "string"},
        "seq": {"type": "integer"},
        "ref": {"type": ["string", "null"]},
        "head": {"type": ["string", "null"]},
        "partition": {"type": "integer"},
        "offset": {"type": "integer"},
        "repeated": {"type": "boolean"},
    },
    "required": ["model", "command_id", "event", "seq"],
}
_KEYS = {"type": "object", "additionalProperties": {"type": "string"}}
_KEY_RECEIPTS = {
    "type": "object",
    "properties": {
        "key_id": {"type": "string"},
        "repeated": {"type": "boolean"},
        "partitions": {
            "type": "object",
            "description": "Each events partition's receipt (one command per partition).",
            "additionalProperties": _ref("Receipt"),
        },
    },
    "required": ["key_id", "partitions"],
}


_NUMBER_OR_NULL = {"type": ["number", "null"]}
_FIGURES: dict[str, Any] = {
    "type": "object",
    "description": "streams.core.monitoring.figures: count, labeled, coverage, join_lag_ms, "
    "logloss, brier, auc, mae, rmse, p50_ms, p99_ms, throughput, dead_letter_rate (null "
    "when the window cannot say), and psi per feature.",
    "properties": {
        "count": {"type": "integer"},
        "labeled": {"type": "integer"},
        "psi": {"type": "object", "additionalProperties": _NUMBER_OR_NULL},
    },
}
_VERSION_FIELDS: dict[str, Any] = {
    "ref": {"type": "string"},
    "commit_id": {"type": "string"},
    "rollout_id": {"type": "string", "description": "empty outside a rollout"},
    "arm": {"enum": ["", "baseline", "candidate"]},
    "shadow": {"type": "boolean"},
}
_MONITOR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "window_ms": {"type": "integer"},
        "versions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    **_VERSION_FIELDS,
                    "windows_total": {"type": "integer"},
                    "cumulative": _FIGURES,
                    "windows": {
                        "type": "array",
                        "items": {
                            **_FIGURES,
                            "properties": {
                                **_FIGURES["properties"],
                                "window_id": {"type": "string"},
                                "start_ms": {"type": "integer"},
                                "end_ms": {"type": "integer"},
                            },
                            "required": ["window_id", "start_ms", "end_ms"],
                        },
                    },
                },
                "required": [*_VERSION_FIELDS, "cumulative", "windows"],
            },
        },
    },
    "required": ["model", "window_ms", "versions"],
}
_POLICY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "steps": {"type": "array", "items": {"type": "integer"}},
        "min_labels": {"type": "integer"},
        "max_regression": {"type": "object", "additionalProperties": {"type": "number"}},
        "max_p99_ms": _NUMBER_OR_NULL,
        "max_dead_letter_rate": _NUMBER_OR_NULL,
        "step_timeout_ms": {"type": "integer"},
    },
    "required": ["steps", "min_labels", "max_regression", "step_timeout_ms"],
}
_ROLLOUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "alias": {"type": "string"},
        "baseline": {"type": "string", "description": "The commit the alias served at start."},
        "candidate": {"type": "string"},
        "policy": _POLICY,
        "step": {"type": "integer", "description": "Index into policy.steps."},
        "percent": {"type": "integer", "description": "The candidate's share now."},
        "status": {"enum": ["running", "paused", "completed", "aborted"]},
        "started_at": {"type": "integer"},
        "step_started_at": {"type": "integer"},
        "allow_signature_change": {"type": "boolean"},
        "reason": {"type": "string"},
    },
    "required": ["id", "alias", "baseline", "candidate", "policy", "step", "percent", "status"],
}
_DECISION: dict[str, Any] = {
    "type": "object",
    "description": "A Rollout* event: who decided (rollout:<id> for the controller), when, "
    "and on which evidence (windows and figures compared; null for a person's decision).",
    "properties": {
        "seq": {"type": "integer"},
        "type": {"type": "string"},
        "actor": {"type": "string"},
        "at": {"type": "integer"},
        "command_id": {"type": "string"},
    },
    "required": ["seq", "type", "actor", "at"],
}
_ROLLOUT_ID = {"type": "string", "pattern": "^r[0-9a-f]{11}$"}


def _monitoring_paths(
    model: dict[str, Any], reason: dict[str, Any], max_reference_bytes: int
) -> dict[str, Any]:
    """Monitor windows, drift references, shadows and canary rollouts (issue 12)."""
    rollout_id = _path_param("rollout_id", _ROLLOUT_ID)
    metric_names = sorted(LOWER_IS_BETTER)
    started = {
        **_RECEIPT,
        "properties": {**_RECEIPT["properties"], "rollout": _ref("Rollout")},
        "required": [*_RECEIPT["required"], "rollout"],
    }

    def action(summary: str, reason_required: bool) -> dict[str, Any]:
        body = _command_body({"reason": reason}, ["reason"] if reason_required else [])
        return _command(summary, body, [model, rollout_id])

    return {
        "/v1/models/{model}/monitor": {
            "get": _query_op(
                "The monitor's figures per version (ref, commit, rollout arm, shadow): "
                "cumulative, and per window (newest `last`, oldest first).",
                _MONITOR,
                [
                    model,
                    _query("ref", _REF_EXPR, "Only versions served for this ref or its commit."),
                    _query(
                        "last",
                        {"type": "string", "pattern": "^[0-9]{1,4}$"},
                        "Windows per version (default 10; more than the server's limit, "
                        "streams.monitoring.report.MAX_LAST, is 422).",
                    ),
                    _AFTER,
                ],
            )
        },
        "/v1/models/{model}/shadow": {
            "get": _query_op(
                "The shadow of each alias that has one.",
                {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "shadows": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["model", "shadows"],
                },
                [model, _AFTER],
            ),
            "post": _command(
                "Score a candidate beside an alias on the same feature events; its predictions "
                "go to the shadow-predictions topic only.",
                _command_body({"alias": _IDENT, "candidate": _REF_EXPR}, ["alias", "candidate"]),
                [model],
            ),
        },
        "/v1/models/{model}/shadow/stop": {
            "post": _command(
                "Stop an alias's shadow.",
                _command_body({"alias": _IDENT}, ["alias"]),
                [model],
            )
        },
        "/v1/models/{model}/rollouts": {
            "get": _query_op(
                "Every rollout of the model, ended ones too.",
                {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "rollouts": {"type": "array", "items": _ref("Rollout")},
                    },
                    "required": ["model", "rollouts"],
                },
                [model, _AFTER],
            ),
            "post": _command(
                "Move an alias to a ref in steps of traffic (a hash of the entity key picks "
                "the arm); the controller advances each step whose criteria hold, moves the "
                "alias after the last, and aborts on a failed criterion. 409 rollout_active "
                "when the alias has one.",
                _command_body(
                    {
                        "alias": _IDENT,
                        "to": _REF_EXPR,
                        "steps": {
                            "type": "array",
                            "items": {"type": "integer", "minimum": 1, "maximum": 100},
                            "minItems": 1,
                            "maxItems": MAX_STEPS,
                            "description": "Percentages, increasing, ending at 100 "
                            "(default 10, 50, 100).",
                        },
                        "min_labels": {"type": "integer", "minimum": 0},
                        "max_regression": {
                            "type": "object",
                            "propertyNames": {"enum": metric_names},
                            "additionalProperties": {"type": "number", "minimum": 0},
                            "description": "Worsening allowed against the baseline per metric.",
                        },
                        "max_p99_ms": {"type": ["number", "null"], "exclusiveMinimum": 0},
                        "max_dead_letter_rate": {
                            "type": ["number", "null"],
                            "minimum": 0,
                            "maximum": 1,
                        },
                        "step_timeout_ms": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": MAX_STEP_TIMEOUT_MS,
                        },
                        "allow_signature_change": {"type": "boolean"},
                        "expect": {
                            **_NULLABLE_REF_EXPR,
                            "description": "The commit you saw the alias serve; 409 "
                            "stale_head (with `current`) when it serves another now.",
                        },
                    },
                    ["alias", "to"],
                ),
                [model],
                receipt=started,
            ),
        },
        "/v1/models/{model}/rollouts/{rollout_id}": {
            "get": _query_op(
                "One rollout with every decision on it.",
                {
                    **_ROLLOUT,
                    "properties": {
                        **_ROLLOUT["properties"],
                        "decisions": {"type": "array", "items": _DECISION},
                    },
                    "required": [*_ROLLOUT["required"], "decisions"],
                },
                [model, rollout_id, _AFTER],
            )
        },
        "/v1/models/{model}/rollouts/{rollout_id}/pause": {
            "post": action("Hold a running rollout at its step (409 rollout_moved if not).", False)
        },
        "/v1/models/{model}/rollouts/{rollout_id}/resume": {
            "post": action("Resume a paused rollout; its step starts anew.", False)
        },
        "/v1/models/{model}/rollouts/{rollout_id}/abort": {
            "post": _command(
                "Abort an active rollout: all traffic back to the baseline.",
                _command_body(
                    {
                        "reason": reason,
                        "expect_step": {
                            "type": ["integer", "null"],
                            "minimum": 0,
                            "description": "The step you saw; 409 rollout_moved (with "
                            "`current`) when the rollout is at another one.",
                        },
                    },
                    ["reason"],
                ),
                [model, rollout_id],
            )
        },
        "/v1/models/{model}/rollouts/{rollout_id}/promote": {
            "post": action("Promote an active rollout now: the alias moves to the candidate.", True)
        },
        "/v1/references": {
            "post": {
                "summary": "Store a drift reference (per-feature quantile bins of training data, "
                "format modelvc.reference/1), checked and canonical, by its sha256; a commit "
                "names it in reference_sha256.",
                "parameters": [],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "properties": {
                                "sha256": {"type": "string"},
                                "stored": {
                                    "type": "boolean",
                                    "description": "false: the store already held it",
                                },
                            },
                            "required": ["sha256", "stored"],
                        },
                        f"Checked and in the store (at most {max_reference_bytes} bytes).",
                    ),
                    **_errors(400, 403, 413, 415, 422, 500, 503, 507),
                },
            }
        },
        "/v1/references/{digest}": {
            "get": {
                "summary": "A stored drift reference (re-hashed and checked on every read).",
                "parameters": [_path_param("digest", {"type": "string"})],
                "responses": {
                    "200": _json({"type": "object"}, "The reference, canonical JSON."),
                    **_errors(404, 422, 500, 503, 507),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics: modelvc_rollout_decisions_total{action} and "
                "modelvc_rollout_time_to_decision_seconds.",
                "responses": {
                    "200": {
                        "description": "The Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(500),
                },
            }
        },
    }


def _security_paths(max_expires_at: int) -> dict[str, Any]:
    """Identity, tokens, protection rules and writer keys (issue 10)."""
    kind = _path_param("kind", {"enum": ["branch", "alias"]})
    token = {
        "type": "object",
        "properties": {
            **_IDENTITY["properties"],
            "issued_at": {"type": "integer"},
            "issued_by": {"type": "string"},
            "revoked_at": {"type": ["integer", "null"]},
            "revoked_by": {"type": ["string", "null"]},
            "reason": {"type": "string"},
            "state": {"enum": ["active", "revoked", "expired"]},
        },
        "required": ["token_id", "actor", "role", "expires_at", "state"],
    }
    issued = {
        "type": "object",
        "properties": {
            **_RECEIPT["properties"],
            "token": {
                "type": "string",
                "pattern": f"^{TOKEN.pattern}$",
                "description": "Shown once: only its sha256 is kept.",
            },
            "token_id": {"type": "string"},
            "actor": {"type": "string"},
            "role": _ROLE,
            "expires_at": {"type": "integer"},
        },
        "required": ["model", "command_id", "event", "seq"],
    }
    reason = _query("reason", _NOTE, "Why (kept in the event).")
    return {
        "/v1/whoami": {"get": _query_op("Who the token is.", _IDENTITY, [])},
        "/v1/tokens": {
            "get": _query_op(
                "Every token issued (never its hash).",
                {
                    "type": "object",
                    "properties": {"tokens": {"type": "array", "items": token}},
                    "required": ["tokens"],
                },
                [],
            ),
            "post": _command(
                "Issue a token; the answer shows it once (Cache-Control: no-store).",
                _command_body(
                    {
                        "actor": _IDENT,
                        "role": _ROLE,
                        "expires_at": {
                            "type": ["integer", "null"],
                            "minimum": 0,
                            "maximum": max_expires_at,
                            "description": "ms since the epoch, in the future; null or 0: never.",
                        },
                    },
                    ["actor", "role"],
                ),
                [],
                issued,
            ),
        },
        "/v1/tokens/{token_id}": {
            "delete": _command(
                "Revoke a token.", None, [_path_param("token_id", _TOKEN_ID), reason, _COMMAND_ID]
            )
        },
        "/v1/protections": {
            "get": _query_op(
                "The protection rules: the least role that may move each protected ref.",
                {
                    "type": "object",
                    "properties": {
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "kind": {"enum": ["branch", "alias"]},
                                    "model": {"type": "string"},
                                    "name": {"type": "string"},
                                    "role": _ROLE,
                                },
                                "required": ["kind", "model", "name", "role"],
                            },
                        }
                    },
                    "required": ["rules"],
                },
                [],
            )
        },
        "/v1/protections/{kind}/{name}": {
            "put": _command(
                "Protect a branch or alias (of one model, or of every model).",
                _command_body(
                    {
                        "model": {**_IDENT, "pattern": f"^({refs.NAME.pattern})?$"},
                        "role": {"enum": list(PROTECTING_ROLES)},
                    },
                    [],
                ),
                [kind, _path_param("name", _IDENT)],
            ),
            "delete": _command(
                "Drop a protection rule.",
                None,
                [
                    kind,
                    _path_param("name", _IDENT),
                    _query("model", {"type": "string"}, "The rule's model (none: every model)."),
                    _COMMAND_ID,
                ],
            ),
        },
        "/v1/writer-keys": {
            "get": _query_op(
                "The writer keys of each events partition, and this instance's own.",
                {
                    "type": "object",
                    "properties": {
                        "instance_key": {"type": "string"},
                        "partitions": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {"active": _KEYS, "retired": _KEYS},
                                "required": ["active", "retired"],
                            },
                        },
                    },
                    "required": ["instance_key", "partitions"],
                },
                [],
            ),
            "post": _command(
                "Trust another writer key on every events partition.",
                _command_body({"public_key": _PUBLIC_KEY, "note": _NOTE}, ["public_key"]),
                [],
                _KEY_RECEIPTS,
            ),
        },
        "/v1/writer-keys/{key_id}": {
            "delete": _command(
                "Retire a writer key on every events partition.",
                None,
                [_path_param("key_id", _PUBLIC_KEY), reason, _COMMAND_ID],
                _KEY_RECEIPTS,
            )
        },
    }


def _console_paths() -> dict[str, Any]:
    """What the API gives the web console (its own routes are not the API's)."""
    code = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": f"^{auth.SESSION_ID.pattern}$"},
            "expires_ms": {"type": "integer", "description": "ms since the epoch."},
        },
        "required": ["code", "expires_ms"],
    }
    return {
        "/v1/ui/login-codes": {
            "post": {
                "summary": "A login code for the web console: POST /ui/session "
                '{"code": ...} opens a session as the caller, once, within a minute '
                "(`modelvc ui` opens /ui/#code=<code>). Cache-Control: no-store.",
                "parameters": [],
                "responses": {
                    "201": _json(code, "The code."),
                    **_errors(400, 413, 415, 500),
                },
            }
        }
    }


def _audit_paths() -> dict[str, Any]:
    """The server's own replay check (``streams.replay``), as `modelvc audit replay` runs it."""
    finding = {
        "type": "object",
        "properties": {
            "kind": {"type": "string"},
            "model": {"type": "string"},
            "seq": {"type": "integer"},
            "topic": {"type": "string"},
            "partition": {"type": "integer"},
            "offset": {"type": "integer"},
            "detail": {"type": "string"},
        },
        "required": ["kind", "model", "seq", "topic", "partition", "offset", "detail"],
    }
    answer = {
        "type": "object",
        "properties": {
            "clean": {"type": "boolean", "description": "No violation at all."},
            "events": {"type": "integer"},
            "models": {"type": "integer"},
            "violations": {"type": "array", "items": finding, "maxItems": MAX_SHOWN_FINDINGS},
            "violation_count": {"type": "integer"},
            "digest": {"type": "string", "description": "The replayed state's digest."},
            "live_digest": {"type": "string", "description": "GET /v1/state/digest's now."},
            "matches": {"type": "boolean", "description": "digest == live_digest."},
            "took_ms": {"type": "integer"},
            "cached": {"type": "boolean", "description": "The answer of an earlier run."},
            "age_ms": {"type": "integer", "description": "How long ago that run ended."},
        },
        "required": [
            "clean",
            "events",
            "models",
            "violations",
            "violation_count",
            "digest",
            "live_digest",
            "matches",
            "took_ms",
        ],
    }
    return {
        "/v1/audit/replay": {
            "post": {
                "summary": "Replay the events topic from offset 0 to its high watermark with "
                "the audit's fold (signatures, chains, partitioning) and compare the state "
                "digest with this instance's. One at a time: a call while one runs gets its "
                "answer, and so does a call within the cool-down after a run ends (the "
                f"longer of {COOL_DOWN_S:g} s and {COOL_DOWN_RUNS} times the run's duration), "
                "with `cached` true and `age_ms`. "
                f"504 `timeout` after {REPLAY_TIMEOUT_S:g} s.",
                "parameters": [],
                "responses": {
                    "200": _json(answer, "The replay's findings."),
                    **_errors(400, 413, 415, 500, 503, 504),
                },
            }
        }
    }


def _secure(path: str, method: str, operation: dict[str, Any]) -> None:
    """The route's token requirement, from the one table (``streams.auth``)."""
    if path in auth.OPEN_PATHS:
        operation["security"] = []  # open to anyone who can reach the server
        return
    needed = auth.needed_role(auth.ROUTE_ROLES, path, method)
    operation["security"] = [{"bearerAuth": []}]
    operation["description"] = f"Needs a token of role {needed} or above."
    operation["responses"].setdefault("401", _errors(401)["401"])
    operation["responses"].setdefault("403", _errors(403)["403"])


def document() -> dict[str, Any]:
    from streams import parse  # the limits live with the code that enforces them

    model = _path_param("model", _IDENT)
    message = {"type": "string", "minLength": 1, "maxLength": parse.MAX_MESSAGE_BYTES}
    entries = {"maxProperties": parse.MAX_ENTRIES, "propertyNames": {"maxLength": 128}}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {"type": "string", "description": "A stable code, e.g. stale_head."},
                "message": {"type": "string", "description": "What happened and what to do."},
                "field": {"type": "string"},
                "needed": {
                    "type": ["string", "null"],
                    "description": "401/403: the role the request needs.",
                },
                "role": {"type": ["string", "null"], "description": "403: the token's role."},
                "actor": {"type": ["string", "null"], "description": "403: the token's actor."},
            },
            "required": ["error", "message"],
        },
        "Receipt": _RECEIPT,
        "Signature": {
            "type": "object",
            "description": "The model's inputs in training order and its outputs per row, "
            "read by the server from the model file.",
            "properties": {
                "format": {"enum": sorted(model_signature.FORMATS)},
                "inputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "type": {"enum": sorted(model_signature.INPUT_TYPES)},
                        },
                        "required": ["name", "type"],
                    },
                },
                "outputs": {"type": "integer", "minimum": 1},
                "graph": {
                    "type": "array",
                    "maxItems": model_signature.MAX_GRAPH_TENSORS,
                    "description": "An ONNX model's graph inputs and outputs, in graph order "
                    "(the first float output is served); absent for LightGBM.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"enum": list(model_signature.TENSOR_KINDS)},
                            "type": {
                                "type": "string",
                                "description": "Element type: float, double, int64, ...",
                            },
                            "shape": {
                                "type": "array",
                                "maxItems": model_signature.MAX_TENSOR_DIMS,
                                "items": {"type": "string"},
                                "description": "Each dim: its size, a symbolic name, or ?.",
                            },
                        },
                        "required": ["name", "kind", "type", "shape"],
                    },
                },
            },
            "required": ["format", "inputs", "outputs"],
        },
        "Commit": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "parents": {"type": "array", "items": {"type": "string"}},
                "artifact_sha256": {"type": "string"},
                "params": {"type": "object", "additionalProperties": {"type": "string"}},
                "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                "message": {"type": "string"},
                "author": {"type": "string"},
                "at": {"type": "integer", "description": "Server time, ms since the epoch."},
                "refs": {"type": "array", "items": {"type": "string"}},
                "signature": {
                    "oneOf": [_ref("Signature"), {"type": "null"}],
                    "description": "null for a commit made before commits recorded one.",
                },
                "reference_sha256": {
                    "type": ["string", "null"],
                    "description": "The drift reference of its training data, if any.",
                },
            },
            "required": ["id", "parents", "artifact_sha256", "message", "author", "at"],
        },
        "Refs": {
            "type": "object",
            "properties": {
                "model": {"type": "string"},
                "as_of": {"type": ["string", "null"]},
                "default_branch": {"type": "string"},
                "created_at": {"type": "integer"},
                "branches": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "null"]},
                },
                "aliases": {"type": "object", "additionalProperties": {"type": "string"}},
                "seq": {"type": "integer"},
                "last_hash": {"type": "string"},
            },
            "required": ["model", "branches", "aliases", "seq"],
        },
    }
    change = {
        "type": "object",
        "properties": {"key": {"type": "string"}, "old": {}, "new": {}},
        "required": ["key"],
    }
    feature = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
        "required": ["name", "type"],
    }
    signature_changes = {
        "type": ["object", "null"],
        "description": "What b's inputs and outputs change from a's; null when either commit "
        "has no signature.",
        "properties": {
            "added": {"type": "array", "items": feature},
            "removed": {"type": "array", "items": feature},
            "retyped": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "old": {"type": "string"},
                        "new": {"type": "string"},
                    },
                    "required": ["name", "old", "new"],
                },
            },
            "outputs": {
                "type": ["object", "null"],
                "properties": {"old": {"type": "integer"}, "new": {"type": "integer"}},
            },
            "format": {
                "type": ["object", "null"],
                "description": "The model format's change (lightgbm, onnx), if any.",
                "properties": {"old": {"type": "string"}, "new": {"type": "string"}},
            },
            "graph": {
                "type": "array",
                "description": "Graph tensors added (old empty), removed (new empty) or "
                "changed, each as type[shape].",
                "items": {
                    "type": "object",
                    "properties": {
                        "kind": {"enum": list(model_signature.TENSOR_KINDS)},
                        "name": {"type": "string"},
                        "old": {"type": "string"},
                        "new": {"type": "string"},
                    },
                    "required": ["kind", "name", "old", "new"],
                },
            },
        },
    }
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "Faust's index page.",
                "responses": {
                    "200": _json({"type": "object"}, "Always {status: OK}."),
                    **_errors(500),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Ready once the projection follows the events log.",
                "responses": {
                    "200": _json(_ref("Health"), "Ready."),
                    "503": _json(_ref("Health"), _ERROR_STATUSES[503]),
                    **_errors(500),
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1."), **_errors(500)},
            }
        },
        "/v1/models": {
            "get": _query_op(
                "Every model with its refs.",
                {
                    "type": "object",
                    "properties": {"models": {"type": "array", "items": {"type": "object"}}},
                    "required": ["models"],
                },
                [],
            ),
            "post": _command(
                "Create a model.",
                _command_body({"name": _IDENT, "default_branch": _IDENT}, ["name"]),
                [],
            ),
        },
        "/v1/models/{model}/commits": {
            "post": _command(
                "Commit an uploaded artifact to a branch.",
                _command_body(
                    {
                        "artifact_sha256": _DIGEST,
                        "message": message,
                        "branch": _IDENT,
                        "params": {
                            "type": "object",
                            **entries,
                            "additionalProperties": {
                                "type": ["string", "number"],
                                "maxLength": parse.MAX_VALUE_BYTES,
                            },
                        },
                        "metrics": {
                            "type": "object",
                            **entries,
                            "additionalProperties": {"type": "number"},
                        },
                        "expect_head": _NULLABLE_REF_EXPR,
                        "reference_sha256": _REFERENCE,
                    },
                    ["artifact_sha256", "message"],
                ),
                [model],
                errors=_STORE_WRITE_ERRORS,
            )
        },
        "/v1/models/{model}/branches": {
            "get": _query_op(
                "The model's branches and their heads.",
                {
                    "type": "object",
                    "properties": {"branches": {"type": "object"}},
                    "required": ["branches"],
                },
                [model, _AFTER],
            ),
            "post": _command(
                "Create a branch.",
                _command_body({"name": _IDENT, "from": _NULLABLE_REF_EXPR}, ["name"]),
                [model],
            ),
        },
        "/v1/models/{model}/branches/{branch}": {
            "delete": _command(
                "Delete a branch (its commits stay).",
                None,
                [
                    model,
                    _path_param("branch", _IDENT),
                    _COMMAND_ID,
                ],
            )
        },
        "/v1/models/{model}/merges": {
            "post": _command(
                "Merge a branch into another.",
                _command_body(
                    {
                        "source": _REF_EXPR,
                        "into": _IDENT,
                        "strategy": {"enum": [*STRATEGIES, None]},
                        "artifact_sha256": {
                            "type": ["string", "null"],
                            "pattern": "^[0-9a-f]{64}$",
                        },
                        "message": {
                            "type": ["string", "null"],
                            "maxLength": parse.MAX_MESSAGE_BYTES,
                        },
                        "reference_sha256": _REFERENCE,
                    },
                    ["source"],
                ),
                [model],
                errors=_STORE_WRITE_ERRORS,
            )
        },
        "/v1/models/{model}/rollbacks": {
            "post": _command(
                "Point a branch back at an earlier commit, with a reason.",
                _command_body(
                    {
                        "branch": _IDENT,
                        "to": _REF_EXPR,
                        "reason": {"type": "string", "minLength": 1, "maxLength": 4096},
                        "expect": {
                            **_NULLABLE_REF_EXPR,
                            "description": "The head you saw; 409 stale_head (with "
                            "`current`) when the branch has moved since.",
                        },
                    },
                    ["branch", "to", "reason"],
                ),
                [model],
            )
        },
        "/v1/models/{model}/aliases/{alias}": {
            "put": _command(
                "Point an alias (e.g. production) at a ref.",
                _command_body(
                    {
                        "ref": _REF_EXPR,
                        "expect": _NULLABLE_REF_EXPR,
                        "allow_signature_change": {
                            "type": "boolean",
                            "description": "Move it even when the ref's model needs input "
                            "features the current one does not (otherwise 409 "
                            "signature_change); the event records it.",
                        },
                    },
                    ["ref"],
                ),
                [model, _path_param("alias", _IDENT)],
            )
        },
        "/v1/models/{model}/log": {
            "get": _query_op(
                "Commits reachable from a ref (all when none), and the ref moves.",
                {
                    "type": "object",
                    "properties": {
                        "commits": {"type": "array", "items": _ref("Commit")},
                        "ref_moves": {"type": "array", "items": {"type": "object"}},
                        "graph": {"type": "array", "items": _GRAPH_ROW},
                    },
                    "required": ["commits", "ref_moves"],
                },
                [
                    model,
                    _query("ref", {"type": "string", "maxLength": refs.MAX_REF_LENGTH}, "A ref."),
                    _query(
                        "graph",
                        {"type": "string", "enum": ["0", "1", "true", "false"]},
                        "1: add `graph`, the lanes of `log --graph` (422 when too wide: ask "
                        "for one ref).",
                    ),
                    _AS_OF,
                    _AFTER,
                ],
            )
        },
        "/v1/models/{model}/refs": {
            "get": _query_op("Branches and aliases.", _ref("Refs"), [model, _AS_OF, _AFTER])
        },
        "/v1/models/{model}/commits/{ref}": {
            "get": _query_op("One commit.", _ref("Commit"), [model, _path_param("ref"), _AFTER])
        },
        "/v1/models/{model}/resolve/{ref}": {
            "get": _query_op(
                "The commit and artifact a ref names now.",
                {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "ref": {"type": "string"},
                        "commit": {"type": "string"},
                        "artifact_sha256": {"type": "string"},
                    },
                    "required": ["commit", "artifact_sha256"],
                },
                [model, _path_param("ref"), _AFTER],
            )
        },
        "/v1/models/{model}/diff": {
            "get": _query_op(
                "What changed between two refs.",
                {
                    "type": "object",
                    "properties": {
                        "a": _ref("Commit"),
                        "b": _ref("Commit"),
                        "artifact_changed": {"type": "boolean"},
                        "params": {"type": "array", "items": change},
                        "metrics": {"type": "array", "items": change},
                        "signature": signature_changes,
                    },
                    "required": ["a", "b", "artifact_changed", "params", "metrics"],
                },
                [
                    model,
                    _query("a", _REF_EXPR, "The first ref.", required=True),
                    _query("b", _REF_EXPR, "The second ref.", required=True),
                    _AFTER,
                ],
            )
        },
        "/v1/models/{model}/feature-schema": {
            "get": _with_errors(
                _query_op(
                    "The typed Avro schema of a feature event for a ref's model signature: one "
                    "field per input, in training order (double, or long for a categorical "
                    "one). Write events with it, Avro single-object encoded, on the features "
                    "topic; workers also accept the map-of-union FeatureEvent.",
                    {
                        "type": "object",
                        "properties": {
                            "model": {"type": "string"},
                            "ref": {"type": "string", "description": "The ref it was read for."},
                            "commit_id": {"type": "string"},
                            "signature": _ref("Signature"),
                            "schema": {"type": "object", "description": "Avro record schema."},
                            "fingerprint": {
                                "type": "string",
                                "description": "hex CRC-64-AVRO of its canonical form: the 8 "
                                "bytes after C3 01 in each event.",
                            },
                        },
                        "required": [
                            "model",
                            "ref",
                            "commit_id",
                            "signature",
                            "schema",
                            "fingerprint",
                        ],
                    },
                    [
                        model,
                        _query(
                            "ref",
                            _REF_EXPR,
                            "A ref (default: alias production if set, else the default branch).",
                        ),
                        _AFTER,
                    ],
                ),
                409,  # the ref is a branch with no commits yet (empty_branch)
                # A commit made before signatures: its file is read from the store.
                503,
                507,
            )
        },
        "/v1/state/digest": {
            "get": _query_op(
                "sha256 of the whole projected state, and the offsets it covers.",
                {
                    "type": "object",
                    "properties": {
                        "digest": {"type": "string"},
                        "models": {"type": "integer"},
                        "offsets": {"type": "object"},
                        "void_events": {"type": "integer"},
                    },
                    "required": ["digest", "models", "offsets"],
                },
                [_AFTER],
            )
        },
        "/v1/artifacts": {
            "post": {
                "summary": "Upload a model (LightGBM text or ONNX, told apart by content); "
                "it is validated before it is stored.",
                "parameters": [
                    _query("sha256", _DIGEST, "The digest you expect; a mismatch is refused.")
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "properties": {
                                "sha256": {"type": "string"},
                                "size": {"type": "integer"},
                                "stored": {
                                    "type": "boolean",
                                    "description": "false: the store already held these "
                                    "bytes (checked intact); nothing was written",
                                },
                                "signature": _ref("Signature"),
                                "format": {"enum": sorted(model_signature.FORMATS)},
                                "model_bytes": {
                                    "type": "integer",
                                    "description": "The loaded model's memory, estimated.",
                                },
                                "bytes_per_row": {
                                    "type": "integer",
                                    "description": "Scoring memory per row of a batch, estimated.",
                                },
                            },
                            "additionalProperties": True,
                            "description": "Besides these, what the format's validator "
                            "read: LightGBM num_trees, num_features, feature_names, "
                            "objective, num_class, num_tree_per_iteration, max_leaves, "
                            "total_leaves, path_splits; ONNX ir_version, opsets, nodes, "
                            "initializers, parameters, served_output, producer.",
                            "required": [
                                "sha256",
                                "size",
                                "stored",
                                "format",
                                "signature",
                                "model_bytes",
                                "bytes_per_row",
                            ],
                        },
                        "Checked and in the store (at most the server's MODELVC_MAX_MODEL_MB "
                        f"MiB: {MAX_MODEL_BYTES // MIB} unless its operator set it).",
                    ),
                    **_errors(400, 403, 408, 413, 415, 422, 500, 503, 507),
                },
            }
        },
        "/v1/artifacts/{digest}": {
            "get": {
                "summary": "The artifact's bytes (re-hashed on every read).",
                "parameters": [_path_param("digest", {"type": "string"})],
                "responses": {
                    "200": {
                        "description": "The model file.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(404, 500, 503, 507),
                },
            }
        },
    }
    paths.update(_security_paths(parse.MAX_EXPIRES_AT))
    paths.update(_console_paths())
    paths.update(_audit_paths())
    reason = {"type": "string", "maxLength": parse.MAX_NOTE_BYTES}
    paths.update(_monitoring_paths(model, reason, monitoring.MAX_REFERENCE_BYTES))
    schemas["Rollout"] = _ROLLOUT
    schemas["Health"] = {
        "type": "object",
        "properties": {
            "ready": {"type": "boolean"},
            "instance": {"type": "string"},
            "pid": {"type": "integer"},
            "offsets": {"type": "object"},
            "dead_letters": {"type": "integer"},
        },
        "required": ["ready"],
    }
    for path, operations in paths.items():
        for method, operation in operations.items():
            operation_id = OPERATION_IDS[(path, method)]
            operation["operationId"] = operation_id
            if operation_id in _LINKS:
                operation["responses"]["201"]["links"] = _LINKS[operation_id]
            # Any route may answer 405 (other methods) and, for a foreign page, 403.
            operation["responses"].setdefault("405", _errors(405)["405"])
            operation["responses"].setdefault("403", _errors(403)["403"])
            _secure(path, method, operation)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelvc streams API",
            "version": "1",
            "description": (
                "Version control for ML models, event-sourced on Kafka. Every error is "
                "JSON {error, message, ...}. Writes need Content-Type application/json "
                "(uploads: application/octet-stream); requests with a foreign Origin are "
                f"refused. JSON bodies are limited to {parse.MAX_JSON_BYTES} bytes. Every "
                "route but /healthz and this document needs `Authorization: Bearer <token>` "
                "of the role it names (reader < committer < releaser < admin; protected refs "
                "need the role of their rule); the actor of every event is the token's. "
                "An admin issues tokens: `modelvc token create ACTOR --role ROLE`."
            ),
        },
        "paths": paths,
        "security": [{"bearerAuth": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": TOKEN_FORMAT,
                    "description": "A token from `modelvc token create` (or "
                    "$MODELVC_HOME/admin.token on a local stack).",
                }
            },
        },
    }

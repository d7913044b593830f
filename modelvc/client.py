"""A small synchronous client of the streams HTTP API (standard library only).

    from modelvc.client import Client
    c = Client("http://127.0.0.1:6066", token="mvc_...")
    digest = c.upload("model.txt")["sha256"]
    c.commit("churn", digest, "first model", params={"lr": "0.1"})

Every request carries ``Authorization: Bearer <token>`` with the ``token=`` given
(None: no token, for open routes only). The client never reads the environment:
its caller finds the token, e.g. ``token_from_env()`` from ``streams.http_client``
($MODELVC_TOKEN, else the file $MODELVC_TOKEN_FILE, else $MODELVC_HOME/admin.token,
which `modelvc up` writes), or ``Stack.client()``. The actor of every write is the
token's; ``actor=`` only claims one, and the service refuses a write whose claim
differs (403 actor_mismatch).

Every write sends a fresh ``command_id`` unless given one; re-sending the same
id after a timeout is safe (a repeated command is never applied twice). Reads
pass ``after=`` the offsets of this client's last writes, so a client always
reads its own writes, whichever instance answers.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streams.http_client import HttpClient, HttpError

# Raised when the service refuses a request or cannot be reached: ``status`` is the HTTP
# status (0 when unreachable), ``body`` the JSON answer. One type for every HTTP caller.
ClientError = HttpError
# The manual decisions on a rollout (POST /v1/models/{m}/rollouts/{id}/<action>).
ROLLOUT_ACTIONS = ("pause", "resume", "abort", "promote")


class Client:
    def __init__(
        self,
        url: str,
        actor: str | None = None,
        timeout: float = 30.0,
        token: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.actor = actor
        self.timeout = timeout
        self.positions: dict[int, int] = {}
        self._http = HttpClient(
            self.url,
            timeout=timeout,
            unreachable="start the modelvc service with `modelvc up` or set MODELVC_URL",
            token=token,
        )

    @property
    def token(self) -> str | None:
        return self._http.token

    # -- transport --------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        raw: bytes | None = None,
        content_type: str = "application/octet-stream",
    ) -> Any:
        query = dict(query or {})
        if method == "GET" and self.positions:
            query["after"] = ",".join(f"{p}:{o}" for p, o in sorted(self.positions.items()))
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"X-Modelvc-Actor": self.actor} if self.actor else {}
        if method != "GET":
            # The service refuses a write without its declared content type (415), so a
            # foreign web page cannot pass a form or a blob off as a command.
            kind = content_type if raw is not None else "application/json"
            headers["Content-Type"] = kind
        response = self._http.request(method, path, query=query, data=data, headers=headers)
        if response.content_type != "application/json":
            return response.body
        answer = response.json()
        if isinstance(answer, dict) and "offset" in answer and "partition" in answer:
            p, o = int(answer["partition"]), int(answer["offset"])
            self.positions[p] = max(o, self.positions.get(p, -1))
        return answer

    def _claimed(self, command_id: str | None) -> dict[str, str]:
        """A write's command id (fresh unless given) and the claimed actor, if any."""
        claim = {"actor": self.actor} if self.actor else {}
        return {"command_id": command_id or str(uuid.uuid4()), **claim}

    def _write(self, method: str, path: str, body: dict[str, Any], command_id: str | None) -> Any:
        return self.request(method, path, {**body, **self._claimed(command_id)})

    def _delete(self, path: str, command_id: str | None, **query: str) -> Any:
        return self.request("DELETE", path, query={**query, **self._claimed(command_id)})

    @staticmethod
    def _q(value: str) -> str:
        return urllib.parse.quote(value, safe="")

    # -- artifacts --------------------------------------------------------------
    def upload(self, path: str | Path) -> dict[str, Any]:
        data = Path(path).read_bytes()
        return dict(self.request("POST", "/v1/artifacts", raw=data))

    def artifact(self, digest: str) -> bytes:
        return bytes(self.request("GET", f"/v1/artifacts/{self._q(digest)}"))

    # -- commands ---------------------------------------------------------------
    def create(
        self, model: str, default_branch: str = "main", command_id: str | None = None
    ) -> Any:
        return self._write(
            "POST", "/v1/models", {"name": model, "default_branch": default_branch}, command_id
        )

    def commit(
        self,
        model: str,
        artifact_sha256: str,
        message: str,
        branch: str = "main",
        params: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        expect_head: str | None = None,
        command_id: str | None = None,
        reference_sha256: str | None = None,
    ) -> Any:
        """``reference_sha256``: training-data bins stored with :meth:`upload_reference`,
        which the monitor measures drift (PSI) of this commit's live features against."""
        body: dict[str, Any] = {
            "artifact_sha256": artifact_sha256,
            "message": message,
            "branch": branch,
            "params": params or {},
            "metrics": metrics or {},
            "expect_head": expect_head,
        }
        if reference_sha256 is not None:
            body["reference_sha256"] = reference_sha256
        return self._write("POST", f"/v1/models/{self._q(model)}/commits", body, command_id)

    def create_branch(
        self, model: str, name: str, from_ref: str | None = None, command_id: str | None = None
    ) -> Any:
        return self._write(
            "POST",
            f"/v1/models/{self._q(model)}/branches",
            {"name": name, "from": from_ref},
            command_id,
        )

    def delete_branch(self, model: str, name: str, command_id: str | None = None) -> Any:
        return self._delete(f"/v1/models/{self._q(model)}/branches/{self._q(name)}", command_id)

    def merge(
        self,
        model: str,
        source: str,
        into: str = "main",
        strategy: str | None = None,
        artifact_sha256: str | None = None,
        message: str | None = None,
        command_id: str | None = None,
    ) -> Any:
        body = {
            "source": source,
            "into": into,
            "strategy": strategy,
            "artifact_sha256": artifact_sha256,
            "message": message,
        }
        return self._write("POST", f"/v1/models/{self._q(model)}/merges", body, command_id)

    def rollback(
        self,
        model: str,
        branch: str,
        to: str,
        reason: str,
        command_id: str | None = None,
        expect: str | None = None,
    ) -> Any:
        """``expect``: the head the caller saw; the service refuses (409) when it moved."""
        body: dict[str, Any] = {"branch": branch, "to": to, "reason": reason}
        if expect is not None:
            body["expect"] = expect
        return self._write("POST", f"/v1/models/{self._q(model)}/rollbacks", body, command_id)

    def set_alias(
        self,
        model: str,
        alias: str,
        ref: str,
        expect: str | None = None,
        command_id: str | None = None,
        allow_signature_change: bool = False,
    ) -> Any:
        body = {"ref": ref, "expect": expect, "allow_signature_change": allow_signature_change}
        return self._write(
            "PUT", f"/v1/models/{self._q(model)}/aliases/{self._q(alias)}", body, command_id
        )

    # -- monitoring, shadows and rollouts -----------------------------------------
    def upload_reference(self, data: bytes) -> dict[str, Any]:
        """Store a reference (``streams.core.monitoring.reference_to_json``); {"sha256"}."""
        answer = self.request("POST", "/v1/references", raw=data, content_type="application/json")
        return dict(answer)

    def reference(self, digest: str) -> Any:
        return self.request("GET", f"/v1/references/{self._q(digest)}")

    def monitor(self, model: str, ref: str | None = None, last: int | None = None) -> Any:
        """Figures per version (cumulative, and the ``last`` windows of each)."""
        query = {"ref": ref} if ref else {}
        if last is not None:
            query["last"] = str(last)
        return self.request("GET", f"/v1/models/{self._q(model)}/monitor", query=query)

    def shadows(self, model: str) -> Any:
        return self.request("GET", f"/v1/models/{self._q(model)}/shadow")

    def start_shadow(
        self, model: str, alias: str, candidate: str, command_id: str | None = None
    ) -> Any:
        body = {"alias": alias, "candidate": candidate}
        return self._write("POST", f"/v1/models/{self._q(model)}/shadow", body, command_id)

    def stop_shadow(self, model: str, alias: str, command_id: str | None = None) -> Any:
        path = f"/v1/models/{self._q(model)}/shadow/stop"
        return self._write("POST", path, {"alias": alias}, command_id)

    def start_rollout(
        self,
        model: str,
        alias: str,
        to: str,
        steps: Sequence[int],
        *,
        min_labels: int | None = None,
        max_regression: Mapping[str, float] | None = None,
        max_p99_ms: float | None = None,
        max_dead_letter_rate: float | None = None,
        step_timeout_ms: int | None = None,
        allow_signature_change: bool = False,
        command_id: str | None = None,
        expect: str | None = None,
    ) -> Any:
        """Start moving ``alias`` to ``to`` in ``steps`` (percent); None: the service's default.
        ``expect``: the commit the caller saw the alias serve (409 when it moved)."""
        body: dict[str, Any] = {
            "alias": alias,
            "to": to,
            "steps": list(steps),
            "max_regression": dict(max_regression or {}),
            "max_p99_ms": max_p99_ms,
            "max_dead_letter_rate": max_dead_letter_rate,
            "allow_signature_change": allow_signature_change,
        }
        if expect is not None:
            body["expect"] = expect
        if min_labels is not None:
            body["min_labels"] = min_labels
        if step_timeout_ms is not None:
            body["step_timeout_ms"] = step_timeout_ms
        return self._write("POST", f"/v1/models/{self._q(model)}/rollouts", body, command_id)

    def rollouts(self, model: str) -> Any:
        return self.request("GET", f"/v1/models/{self._q(model)}/rollouts")

    def rollout(self, model: str, rollout_id: str) -> Any:
        """One rollout with its decisions (every Rollout* event, with actor and evidence)."""
        return self.request("GET", f"/v1/models/{self._q(model)}/rollouts/{self._q(rollout_id)}")

    def control_rollout(
        self,
        model: str,
        rollout_id: str,
        action: str,
        reason: str = "",
        command_id: str | None = None,
    ) -> Any:
        """``action`` one of ROLLOUT_ACTIONS: a manual decision, an event in the log."""
        if action not in ROLLOUT_ACTIONS:
            raise ValueError(
                f"rollout action {action!r} is not one of {', '.join(ROLLOUT_ACTIONS)}"
            )
        path = f"/v1/models/{self._q(model)}/rollouts/{self._q(rollout_id)}/{action}"
        return self._write("POST", path, {"reason": reason}, command_id)

    # -- queries ----------------------------------------------------------------
    def models(self) -> Any:
        return self.request("GET", "/v1/models")

    def log(self, model: str, ref: str | None = None, as_of: str | None = None) -> Any:
        query = {k: v for k, v in (("ref", ref), ("as_of", as_of)) if v}
        return self.request("GET", f"/v1/models/{self._q(model)}/log", query=query)

    def refs(self, model: str, as_of: str | None = None) -> Any:
        query = {"as_of": as_of} if as_of else None
        return self.request("GET", f"/v1/models/{self._q(model)}/refs", query=query)

    def show(self, model: str, ref: str) -> Any:
        return self.request("GET", f"/v1/models/{self._q(model)}/commits/{self._q(ref)}")

    def resolve(self, model: str, ref: str) -> Any:
        return self.request("GET", f"/v1/models/{self._q(model)}/resolve/{self._q(ref)}")

    def diff(self, model: str, a: str, b: str) -> Any:
        return self.request("GET", f"/v1/models/{self._q(model)}/diff", query={"a": a, "b": b})

    def feature_schema(self, model: str, ref: str | None = None) -> Any:
        """The typed feature event schema of ``ref`` (default: the ref a worker scores an
        event without one by), with the commit, its signature and the fingerprint."""
        query = {"ref": ref} if ref else None
        return self.request("GET", f"/v1/models/{self._q(model)}/feature-schema", query=query)

    def digest(self) -> Any:
        return self.request("GET", "/v1/state/digest")

    # -- identity and security (admin, except whoami and the listings) ---------------
    def whoami(self) -> Any:
        return self.request("GET", "/v1/whoami")

    def login_code(self) -> Any:
        """A code that signs a browser in to the web console as this client's token, once,
        within a minute: ``{"code", "expires_ms"}`` (the console takes it at /ui/#code=)."""
        return self.request("POST", "/v1/ui/login-codes", {})

    def console_url(self, code: str | None = None) -> str:
        """The web console's address; with a login ``code``, one that opens it signed in.
        The code goes in the fragment, which a browser never sends to a server (nor puts
        in a Referer), and the page drops it from the address bar once it has signed in."""
        fragment = f"#code={self._q(code)}" if code else ""
        return f"{self.url}/ui/{fragment}"

    def create_token(
        self,
        actor: str,
        role: str,
        expires_at: int | None = None,
        command_id: str | None = None,
    ) -> Any:
        """A new token for ``actor`` (``expires_at`` in ms; None: never); shown only here."""
        body = {"actor": actor, "role": role, "expires_at": expires_at}
        # The body's "actor" names the token's owner, so no claimed actor is sent with it.
        return self.request(
            "POST", "/v1/tokens", {**body, "command_id": command_id or str(uuid.uuid4())}
        )

    def tokens(self) -> Any:
        return self.request("GET", "/v1/tokens")

    def revoke_token(self, token_id: str, reason: str = "", command_id: str | None = None) -> Any:
        return self._delete(f"/v1/tokens/{self._q(token_id)}", command_id, reason=reason)

    def protections(self) -> Any:
        return self.request("GET", "/v1/protections")

    def protect(
        self,
        kind: str,
        name: str,
        model: str = "",
        role: str = "releaser",
        command_id: str | None = None,
    ) -> Any:
        return self._write(
            "PUT",
            f"/v1/protections/{self._q(kind)}/{self._q(name)}",
            {"model": model, "role": role},
            command_id,
        )

    def unprotect(
        self, kind: str, name: str, model: str = "", command_id: str | None = None
    ) -> Any:
        return self._delete(
            f"/v1/protections/{self._q(kind)}/{self._q(name)}", command_id, model=model
        )

    def writer_keys(self) -> Any:
        return self.request("GET", "/v1/writer-keys")

    def add_writer_key(self, public_key: str, note: str = "", command_id: str | None = None) -> Any:
        return self._write(
            "POST", "/v1/writer-keys", {"public_key": public_key, "note": note}, command_id
        )

    def retire_writer_key(self, key_id: str, reason: str, command_id: str | None = None) -> Any:
        return self._delete(f"/v1/writer-keys/{self._q(key_id)}", command_id, reason=reason)

"""Who may do what on a SASL-secured Apache Kafka: principals, their passwords, their ACLs.

With ``MODELVC_KAFKA_SECURITY=sasl`` every modelvc process logs in (SCRAM-SHA-512) as
one principal, from a credentials file the launcher wrote::

    <cluster home>/credentials/<principal>.json   {"username", "password"}, mode 0600

(the local stack's cluster home is ``<MODELVC_HOME>/kafka``). The broker denies what no
ACL allows (``allow.everyone.if.no.acl.found=false``), and :func:`acl_plan` allows each
principal only what its role needs, per namespace:

- ``streams`` (the streams app): the only writer of ``<ns>.events``; consumes commands
  in its group, writes replies and dead letters, creates and checks its own topics;
- ``streams`` also reads ``<ns>.metrics`` (the rollout controller and ``monitor``);
- ``worker``: reads events and features, writes predictions, shadow predictions and dead
  letters, in group ``<ns>-workers``, transactionally with ids that start with that
  group's name. The monitor logs in as ``worker`` too: it reads predictions, shadow
  predictions, labels, features and dead letters and writes metrics and dead letters
  (bad labels), with positions kept in its own state, so no group of its own;
- ``producer`` (feature producers, ``modelvc publish``, ``publish-labels``): writes
  ``<ns>.features`` and ``<ns>.labels`` only;
- ``auditor`` (``audit replay``, ``tail``, the archiver): reads events, features,
  labels, predictions, shadow predictions, metrics and dead letters, and writes nothing.

``admin`` is a super user (the launcher, who grants these ACLs); ``broker`` and
``controller`` are the brokers' own logins to each other.

ACLs name each topic literally: a namespace may contain '.', so a ``<ns>.`` prefix would
also cover another tenant's ``<ns>.x.events``. The group and transactional-id prefix
``<ns>-workers`` is the one prefix, as the exactly-once worker derives its ids from it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modelvc.processes import StackError
from streams.files import write_private
from streams.kafka_access import Credentials, KafkaAccess
from streams.settings import Settings

Role = Literal["admin", "streams", "worker", "producer", "auditor"]
# The principals modelvc's processes log in as (SCRAM-SHA-512, created at format time).
ROLES: tuple[Role, ...] = ("admin", "streams", "worker", "producer", "auditor")
# The brokers' own logins: inter-broker over SCRAM, the KRaft controller listener over
# PLAIN (a controller cannot check SCRAM: the credentials live in the log it serves).
BROKER_LOGIN = "broker"
CONTROLLER_LOGIN = "controller"
SUPER_USERS = ("admin", BROKER_LOGIN, CONTROLLER_LOGIN)
SCRAM_USERS: tuple[str, ...] = (*ROLES, BROKER_LOGIN)
SCRAM_ITERATIONS = 4096  # Kafka's minimum and the default of its own tools
_PRINCIPAL = re.compile(r"[a-z][a-z0-9-]{0,31}")

ResourceType = Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID", "CLUSTER"]
PatternType = Literal["LITERAL", "PREFIXED"]
Operation = Literal["READ", "WRITE", "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS"]


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW ACL: ``principal`` may ``operation`` on the resource, from any host."""

    principal: str
    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType
    operation: Operation


# ---------------------------------------------------------------------------
# Pure part: the plan, the SCRAM format argument
# ---------------------------------------------------------------------------


def worker_group(namespace: str) -> str:
    """The workers' consumer group and transactional-id prefix (workers.settings's default)."""
    return f"{namespace}-workers"


def acl_plan(namespace: str) -> tuple[Grant, ...]:
    """Every ACL the namespace needs, sorted; nothing for ``admin`` (a super user)."""
    s = Settings(namespace=namespace)  # refuses a namespace outside Kafka's alphabet
    events, commands, replies = s.events_topic, s.commands_topic, s.replies_topic
    letters, features, predictions = s.dead_letter_topic, s.features_topic, s.predictions_topic
    labels, shadows, metrics = s.labels_topic, s.shadow_predictions_topic, s.metrics_topic
    # Faust subscribes its app's leader-election topic (never created: topics are declared
    # by ensure_topics); describing it keeps the consumer's metadata free of refusals.
    faust_leader = f"{s.app_id}-__assignor-__leader"
    grants: set[Grant] = set()

    def allow(role: Role, kind: ResourceType, names: Iterable[str], *ops: Operation) -> None:
        grants.update(Grant(role, kind, n, "LITERAL", op) for n in names for op in ops)

    own = (events, commands, replies, letters, features, predictions, labels, shadows, metrics)
    # ensure_topics (run by the streams app at start) creates and then checks them.
    allow("streams", "TOPIC", own, "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS")
    allow("streams", "TOPIC", (events, commands, replies), "READ", "WRITE")
    allow("streams", "TOPIC", (letters,), "WRITE")
    allow("streams", "TOPIC", (metrics,), "READ")
    allow("streams", "TOPIC", (faust_leader,), "DESCRIBE")
    allow("streams", "GROUP", (s.app_id,), "READ")

    group = worker_group(namespace)
    allow("worker", "TOPIC", (events, features), "READ")
    allow("worker", "TOPIC", (predictions, shadows, letters), "WRITE")
    # The monitor (as worker): joins predictions with labels, writes metric windows.
    allow("worker", "TOPIC", (predictions, shadows, labels, letters), "READ")
    allow("worker", "TOPIC", (metrics,), "WRITE")
    allow("worker", "GROUP", (group,), "READ")
    # Exactly-once: transactional ids "<ns>-workers..." (one per worker, fenced on restart).
    grants.update(
        Grant("worker", "TRANSACTIONAL_ID", group, "PREFIXED", op) for op in ("WRITE", "DESCRIBE")
    )

    allow("producer", "TOPIC", (features, labels), "WRITE")
    readable = (events, features, labels, predictions, shadows, metrics, letters)
    allow("auditor", "TOPIC", readable, "READ")
    return tuple(sorted(grants))


def scram_argument(name: str, password: str, salt: bytes, iterations: int) -> str:
    """``kafka-storage format --add-scram`` value with the salted password, not the password
    (argv is visible to every local user while the tool runs). SCRAM's SaltedPassword is
    PBKDF2-HMAC over the password (RFC 5802 ``Hi``), as Kafka's ScramFormatter computes it."""
    if not _PRINCIPAL.fullmatch(name):
        raise ValueError(f"not a principal name: {name[:40]!r}")
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (
        f"SCRAM-SHA-512=[name={name},iterations={iterations},"
        f'salt="{base64.b64encode(salt).decode()}",'
        f'saltedpassword="{base64.b64encode(salted).decode()}"]'
    )


# ---------------------------------------------------------------------------
# Imperative part: credentials files, granting
# ---------------------------------------------------------------------------


def credentials_path(directory: Path, principal: str) -> Path:
    if not _PRINCIPAL.fullmatch(principal):
        raise ValueError(f"not a principal name: {principal[:40]!r}")
    return directory / f"{principal}.json"


def ensure_credentials(directory: Path, principals: Sequence[str], create: bool) -> None:
    """A credentials file per principal; new random passwords only when ``create`` (before
    the cluster is formatted: afterwards the broker knows the old ones and nothing else)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    missing = [p for p in principals if not credentials_path(directory, p).exists()]
    if missing and not create:
        raise StackError(
            f"Kafka credentials {', '.join(missing)} are missing from {directory}, and the "
            "cluster was formatted with them; restore those files, or move the cluster home "
            "aside to start a new cluster"
        )
    for principal in missing:
        doc = {"username": principal, "password": secrets.token_urlsafe(32)}
        write_private(credentials_path(directory, principal), json.dumps(doc).encode())


def read_credentials(directory: Path, principal: str) -> Credentials:
    return Credentials.read(credentials_path(directory, principal))


def grant_modelvc_acls(admin: KafkaAccess, namespace: str) -> int:
    """Create every ACL of :func:`acl_plan` (creating an existing one changes nothing, so
    this is idempotent); returns how many the plan holds. ``admin`` logs in as a super user."""
    from kafka import KafkaAdminClient
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    plan = acl_plan(namespace)
    acls = [
        ACL(
            principal=f"User:{g.principal}",
            host="*",
            operation=ACLOperation[g.operation],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                ResourceType[g.resource_type],
                g.resource_name,
                ACLResourcePatternType[g.pattern_type],
            ),
        )
        for g in plan
    ]
    client = KafkaAdminClient(**admin.admin(client_id="modelvc-acl"))
    try:
        result = client.create_acls(acls)
    finally:
        client.close()
    if result["failed"]:
        raise StackError(
            f"the broker refused {len(result['failed'])} of {len(acls)} ACLs "
            f"({result['failed'][0]!r}); grant them with the admin credentials "
            "(MODELVC_KAFKA_CREDENTIALS=<cluster home>/credentials/admin.json)"
        )
    return len(plan)


def settings_as(settings: Settings, credentials_dir: Path, role: Role) -> Settings:
    """``settings`` logging in as ``role`` (what a process of that role is started with)."""
    return dataclasses.replace(
        settings,
        kafka_security="sasl",
        kafka_credentials=credentials_path(credentials_dir, role),
    )

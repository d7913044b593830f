"""`modelvc`: git for models, against the running streams service.

Exit codes: 0 ok, 1 refused by the service (conflict, unknown ref, invalid
input), 2 usage error, 3 service unreachable or stack failure, 4 `up` started
the stack but the broker refused archived messages at restore (skipped,
dead-lettered, named in a one-line message), 5 not allowed: no usable token
(missing, unknown, expired, revoked, or a token file others can read), a role
below the one needed, or an --actor that is not the token's.

Every request carries a token: $MODELVC_TOKEN, else the file $MODELVC_TOKEN_FILE,
else $MODELVC_HOME/admin.token, which `modelvc up` writes (owner-only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import itertools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import webbrowser
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from modelvc import hints, render
from modelvc.client import Client, ClientError
from modelvc.processes import StackError
from streams.core.security import MAX_TEXT, PROTECTING_ROLES, ROLES
from streams.errors import StreamsError
from streams.http_client import TokenError, token_from_env
from streams.kafka_access import SECURITY, KafkaAccess, KafkaAccessError, Security
from workers.settings import SIGN_PREDICTIONS_ENV

if TYPE_CHECKING:  # imported when used: it takes a second, and most commands never do
    from modelvc.stack import BrokerKind, Stack
    from streams.artifacts import ArtifactStore, S3Location, StoredObject

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
EXIT_RESTORE_SKIPPED = 4
EXIT_DENIED = 5  # 401/403: who you are (the token) or what your role allows
# `artifacts init`: multipart uploads a killed process left are aborted by the bucket after
# this many days (the services abort their own failed ones at once).
INIT_ABORT_DAYS = 1


class UsageError(Exception):
    """A command line the parser took but that cannot run as written: exit 2, like argparse's."""


class Refused(Exception):
    """Refused here, before the service, for what the input says (exit 1, like a refusal)."""


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home or os.environ.get("MODELVC_HOME", ".modelvc"))


def _stack_record(args: argparse.Namespace) -> dict[str, Any]:
    """What `modelvc up` recorded in this home, or {} when no stack runs from it."""
    stack_file = _home(args) / "stack.json"
    return dict(json.loads(stack_file.read_text())) if stack_file.exists() else {}


def _setting(flag: str | None, env: str, recorded: object, default: str) -> str:
    """A flag beats the environment, which beats the local stack, which beats the default."""
    return str(flag or os.environ.get(env) or recorded or default)


def _url(args: argparse.Namespace) -> str:
    return _setting(
        args.url, "MODELVC_URL", _stack_record(args).get("url"), "http://127.0.0.1:6066"
    )


def _selected_model(args: argparse.Namespace) -> str | None:
    """-M, else $MODELVC_MODEL, else the current model of this home; None when none is."""
    model = args.model or os.environ.get("MODELVC_MODEL")
    current = _home(args) / "current-model"
    if not model and current.exists():
        model = current.read_text().strip()
    return str(model) if model else None


def _model(args: argparse.Namespace) -> str:
    model = _selected_model(args)
    if model is None:
        raise UsageError(
            f"no model selected; name one before the command (modelvc -M NAME {args.command} "
            "...), set MODELVC_MODEL, or make one current with `modelvc use NAME` "
            "or `modelvc create NAME`"
        )
    return model


def _pairs(items: Sequence[str], kind: str, cast: Callable[[str], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--{kind} expects key=value, got {item!r}")
        try:
            out[key] = cast(value)
        except ValueError:
            raise UsageError(f"--{kind} {key}: {value!r} is not a number") from None
    return out


def _emit(args: argparse.Namespace, answer: Any, human: Callable[[Any], str]) -> None:
    """Print ``answer``: exact JSON with --json, else ``human`` of it, terminal-safe.

    JSON is already safe (json.dumps escapes every control and non-ASCII
    character); the human form gets escaped data and a last pass over what
    the caller added from its own arguments.
    """
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(render.terminal(human(render.escaped(answer))))


def _applied(answer: dict[str, Any]) -> str:
    again = " (repeat: already applied)" if answer.get("repeated") else ""
    target = f" -> {render.short(answer['head'])}" if answer.get("head") else ""
    where = f"{answer['model']}#{answer['seq']} {answer.get('ref') or ''}"
    return f"{answer['event']} {where}{target}{again}"


# -- commands -------------------------------------------------------------------
def _access_lines(stack: Stack) -> list[str]:
    creds = stack.settings.kafka_credentials
    if stack.settings.kafka_security != "sasl" or creds is None:
        return ["access: plaintext on loopback, no logins (MODELVC_KAFKA_SECURITY=sasl adds them)"]
    return [
        f"access: SASL/SCRAM-SHA-512; one login per role in {creds.parent} (streams, worker, "
        "producer, auditor, admin) and ACLs that allow each role only its job"
    ]


def _broker_lines(stack: Stack) -> list[str]:
    """Which broker runs, where its data lives, and the delivery every client uses."""
    from modelvc.stack import kafka_cluster_id, kafka_home

    if stack.broker_kind == "kafka":
        return [
            f"broker: Apache Kafka, 1 node (cluster {kafka_cluster_id(stack.home)}); data is "
            f"durable under {kafka_home(stack.home)}: `modelvc down`/`up` or a crash keeps "
            "every commit, alias, feature event and prediction",
            "delivery: exactly-once (Kafka transactions; subscribers read committed records)",
            *_access_lines(stack),
        ]
    if stack.broker_kind == "tansu":
        return [
            "broker: embedded Tansu; it keeps data in memory. Model history is archived in "
            f"{stack.archive_dir} and restored by the next `modelvc up` (features and "
            "predictions are not); for durable data run `modelvc up --broker kafka`",
            "delivery: at-least-once (Tansu has no transactions; a repeated prediction "
            "keeps its id)",
        ]
    return [
        f"broker: the Kafka at {stack.settings.bootstrap} (not started or stopped by modelvc)",
        "delivery: each process asks the broker (exactly-once where it has transactions)",
    ]


def _security() -> Security:
    security = os.environ.get("MODELVC_KAFKA_SECURITY", "plaintext")
    if security not in SECURITY:
        raise UsageError(
            f"MODELVC_KAFKA_SECURITY={security[:40]!r}: use one of {', '.join(SECURITY)}"
        )
    return security


def cmd_up(args: argparse.Namespace) -> None:
    from modelvc.stack import Stack, clear_exited, default_broker_port, kafka_cluster_id

    home = _home(args)
    if args.bootstrap and args.broker:
        raise UsageError(
            "--bootstrap uses a Kafka you run and --broker starts one: pass one of them"
        )
    # An explicit --broker beats KAFKA_BOOTSTRAP from the environment, as flags do.
    bootstrap = args.bootstrap or (None if args.broker else os.environ.get("KAFKA_BOOTSTRAP"))
    broker: BrokerKind = args.broker or "tansu"  # argparse checked it is one
    exited = clear_exited(home, None if bootstrap else broker)
    if exited:
        print(
            f"the stack recorded in {home}/stack.json had lost {', '.join(exited)}; "
            "stopped the rest and starting it again"
        )
    stack = Stack.up(
        home,
        bootstrap=bootstrap,
        web_port=args.port,
        partitions=args.partitions,
        workers=args.workers,
        worker_port=args.worker_port,
        broker_port=args.broker_port or default_broker_port(home, broker),
        broker=broker,
        security=_security(),
        sign_predictions=args.sign_predictions,
        artifacts=os.environ.get("MODELVC_ARTIFACTS") or None,
        s3_endpoint=os.environ.get("MODELVC_S3_ENDPOINT") or None,
        monitor=True,
    )
    print(f"modelvc is up: API {stack.url}, broker {stack.settings.bootstrap}")
    print(
        render.terminal(
            f"admin token: {stack.token_file} (only you can read it; this CLI sends it, as "
            f"{stack.admin_actor}); give others their own with `modelvc token create NAME "
            "--role committer`"
        )
    )
    for name, spawned in stack.processes.items():
        if name.startswith("worker-"):
            print(f"{name}: http://127.0.0.1:{spawned.port} (predict, /metrics, /healthz)")
    for line in _broker_lines(stack):
        print(line)
    if stack.restored:
        print(f"restored {stack.restored:,} events of history from {stack.archive_dir}")
    if stack.broker_kind == "tansu" and kafka_cluster_id(stack.home):
        print(
            f"note: {stack.home / 'kafka'} holds an Apache Kafka cluster with this home's "
            "data; `modelvc down` then `modelvc up --broker kafka` runs on it"
        )
    print(f"logs in {stack.home / 'logs'}; stop with `modelvc down`")
    if stack.refused:
        shown = ", ".join(map(str, stack.refused[:3])) + (", ..." if len(stack.refused) > 3 else "")
        print(
            f"modelvc: the stack is up, but the broker refused {len(stack.refused)} archived "
            f"message(s) of {stack.settings.events_topic} at restore ({shown}); placeholders "
            f"keep their offsets and {stack.settings.dead_letter_topic} has each one",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_RESTORE_SKIPPED)


def cmd_down(args: argparse.Namespace) -> None:
    from modelvc.stack import Stack

    stack = Stack.load(_home(args))
    stack.down()
    print("modelvc is down")


def _kafka(args: argparse.Namespace, role: str = "auditor") -> KafkaAccess:
    """Where Kafka is and how to log in: each variable from a flag, the environment, the
    local stack's record or the default, in that order (as :func:`_setting`).

    On a local SASL stack the command logs in as ``role`` ("producer" to publish,
    "auditor" to read), from the login files `modelvc up` wrote side by side, so the
    broker allows it no more than that job.
    """
    recorded: dict[str, str] = dict(_stack_record(args).get("env", {}))
    admin = recorded.get("MODELVC_KAFKA_CREDENTIALS")
    if admin and recorded.get("MODELVC_KAFKA_SECURITY") == "sasl":
        recorded["MODELVC_KAFKA_CREDENTIALS"] = str(Path(admin).with_name(f"{role}.json"))
    defaults = KafkaAccess().to_env()
    env = {
        name: _setting(None, name, recorded.get(name), defaults.get(name, ""))
        for name in (
            "KAFKA_BOOTSTRAP",
            "MODELVC_KAFKA_SECURITY",
            "MODELVC_KAFKA_CREDENTIALS",
            "MODELVC_DELIVERY",
        )
    }
    if args.bootstrap:
        env["KAFKA_BOOTSTRAP"] = args.bootstrap
    return KafkaAccess.from_env({k: v for k, v in env.items() if v})


def _topic(args: argparse.Namespace, kind: str) -> str:
    recorded = _stack_record(args).get("env", {}).get("MODELVC_NAMESPACE")
    return f"{_setting(None, 'MODELVC_NAMESPACE', recorded, 'modelvc')}.{kind}"


def cmd_worker(args: argparse.Namespace) -> None:
    from workers.__main__ import main as worker_main

    if args.bootstrap:
        os.environ["KAFKA_BOOTSTRAP"] = args.bootstrap
    if args.port:
        os.environ["MODELVC_WORKER_PORT"] = str(args.port)
    worker_main(["--sign-predictions"] if args.sign_predictions else [])


def cmd_publish(args: argparse.Namespace) -> None:
    from modelvc.streaming import publish_features, read_feature_file

    def schema_of(model: str, ref: str | None) -> Any:
        # Typed by each row's model and ref, as the service reads their signature now.
        return client.feature_schema(model, ref)["schema"]

    if not args.untyped:  # --untyped needs no token: only Kafka is reached
        client = Client(_url(args), actor=args.actor, token=token_from_env(home=_home(args)))

    try:
        events = list(read_feature_file(Path(args.file), _selected_model(args), args.ref))
        count = publish_features(
            _kafka(args, role="producer"),
            events,
            _topic(args, "features"),
            None if args.untyped else schema_of,
        )
    except ValueError as exc:  # an unreadable file, or a row its typed schema cannot carry
        raise Refused(str(exc)) from None
    _emit(
        args,
        {"published": count, "topic": _topic(args, "features")},
        lambda a: f"published {a['published']} feature events to {a['topic']}",
    )


def cmd_tail(args: argparse.Namespace) -> None:
    from modelvc.streaming import subscribe_predictions

    for shown, p in enumerate(
        subscribe_predictions(
            _kafka(args),
            model=args.model,
            topic=_topic(args, args.stream),
            from_beginning=args.from_beginning,
            idle_timeout_s=args.idle_timeout,
        ),
        start=1,
    ):
        if args.json:
            # A signed prediction's signature is bytes: hex, as `audit` shows signatures.
            plain = {k: v.hex() if isinstance(v, bytes) else v for k, v in p.items()}
            print(json.dumps(plain), flush=True)
        else:
            # A prediction's ref and event id come from whoever published the feature.
            p = render.escaped(p)
            scores = ",".join(f"{s:.6f}" for s in p["scores"])
            print(
                f"{render.when(p['scored_at'])}  {p['model']}@{p['requested_ref']}  "
                f"{render.short(p['commit_id'])}  {scores}  event {p['feature_event_id']}",
                flush=True,
            )
        if args.limit and shown >= args.limit:
            return


def cmd_audit(args: argparse.Namespace) -> None:
    from modelvc import audit, trust

    kafka, events_topic = _kafka(args), _topic(args, "events")
    try:
        trusted = trust.trusted_keys([Path(f) for f in args.trust_key], args.trust_digest)
        keys = trust.worker_keys([Path(f) for f in args.trust_worker_key], _home(args))
    except ValueError as exc:  # a digest that is no key id, a file that holds no key
        raise UsageError(str(exc)) from None
    if args.action == "replay":
        archive = Path(args.from_archive) if args.from_archive else None
        result = audit.replay(
            None if archive else kafka,
            events_topic,
            archive,
            jobs=args.jobs or (os.cpu_count() or 1),
            decoder=args.decoder,
            trusted=trusted,
        )
        for partition, key_id in sorted(result.first_keys.items()):
            # Trust on first use is only as good as the first key: say which, to pin it.
            print(
                f"modelvc: trusted on first use: key {key_id} on partition {partition}; "
                f"pin it with --trust-digest {key_id}",
                file=sys.stderr,
            )
        summary = result.to_dict()
        live_ok = True
        if not args.no_live and archive is None:
            try:
                client = Client(_url(args), token=token_from_env(home=_home(args)))
                client.positions = dict(result.ends)
                live = client.digest()
                summary["live_digest"] = live["digest"]
                live_ok = live["digest"] == result.digest
            except ClientError as exc:
                summary["live_digest"] = None
                summary["live_error"] = str(exc)
        _emit(args, summary, render.replay)
        if not result.clean or not live_ok:
            raise SystemExit(1)
    elif args.action == "served":
        try:
            answer = audit.served(
                kafka,
                events_topic,
                _topic(args, "predictions"),
                args.prediction_id,
                keys=keys,
                trusted=trusted,
            )
        except LookupError as exc:
            raise Refused(str(exc)) from None
        _emit(args, answer, render.served)
        forged = any(f["kind"] in trust.PREDICTION_VIOLATIONS for f in answer["signatures"])
        if forged or (answer["findings"] and "ref_move" not in answer):
            raise SystemExit(1)
    else:
        from workers.artifacts import ArtifactLoader

        store = None
        if args.artifacts:
            store = _open_store(args.artifacts, _s3_endpoint(args), "--artifacts", "--artifacts")
        loader = ArtifactLoader(store=store, url=_url(args), token=token_from_env(home=_home(args)))
        sample = None if args.all else (args.sample or 100)
        verified = audit.verify_predictions(
            kafka,
            events_topic,
            _topic(args, "predictions"),
            loader,
            model=args.model,
            sample=sample,
            keys=keys,
            trusted=trusted,
        )
        _emit(
            args,
            {
                "checked": verified.checked,
                "mismatches": [
                    m.__dict__ | {"difference": m.difference} for m in verified.mismatches
                ],
                "largest_difference": verified.largest_difference,
                "seconds": round(verified.seconds, 3),
                "signed": verified.signed,
                "signatures": [f.to_dict() for f in verified.signatures],
                "other_runtime": [r.__dict__ for r in verified.other_runtime],
            },
            render.verification,
        )
        if not args.json:
            print(f"signed: {verified.signed}, signature findings: {len(verified.signatures)}")
            for finding in verified.signatures[:50]:
                print(render.terminal(render.escape(f"  {finding}")))
        if not verified.clean:
            raise SystemExit(1)


# -- the artifact store ------------------------------------------------------------
def _s3_endpoint(args: argparse.Namespace) -> str | None:
    recorded = _stack_record(args).get("env", {}).get("MODELVC_S3_ENDPOINT")
    return os.environ.get("MODELVC_S3_ENDPOINT") or recorded or None


def _located(location: str, endpoint: str | None, source: str) -> Path | S3Location:
    """``location`` (from ``source``) parsed; settings that cannot work are a usage error
    saying what to fix, before any store is reached."""
    from streams.artifacts import parse_location
    from streams.settings import artifacts_problem

    try:
        where = parse_location(location)
    except ValueError as exc:
        raise UsageError(f"{source} {location[:80]!r}: {exc}") from None
    problem = artifacts_problem(location, endpoint)
    if problem is not None:
        raise UsageError(problem)
    return where


def _open_store(location: str, endpoint: str | None, source: str, flag: str) -> ArtifactStore:
    """The store at ``location`` (from ``source``; ``flag`` names another), reached once:
    settings that cannot work fail here with what to fix, before any work."""
    from streams.artifacts import open_store

    where = _located(location, endpoint, source)
    if isinstance(where, Path) and not where.is_dir():
        # Reading commands never make a store: a mistyped path is said, not created.
        raise Refused(
            f"no artifact store at {where}; pass {flag} DIR or {flag} s3://BUCKET/PREFIX"
            + (", or set MODELVC_ARTIFACTS" if flag == "--store" else "")
            + " (a stack's store is $MODELVC_HOME/artifacts)"
        )
    store = open_store(location, endpoint)
    store.check()
    return store


def _store_location(args: argparse.Namespace) -> tuple[str, str]:
    """--store, else $MODELVC_ARTIFACTS, else the local stack's store, else the home's; and
    where it came from."""
    recorded = _stack_record(args).get("env", {}).get("MODELVC_ARTIFACTS")
    location = _setting(args.store, "MODELVC_ARTIFACTS", recorded, str(_home(args) / "artifacts"))
    return location, "--store" if args.store else "MODELVC_ARTIFACTS"


def _artifact_store(args: argparse.Namespace) -> ArtifactStore:
    location, source = _store_location(args)
    return _open_store(location, _s3_endpoint(args), source, "--store")


def _init_store(args: argparse.Namespace) -> None:
    """Make the store ready for the services: a directory created; a bucket created when
    missing, with the lifecycle rule that aborts multipart uploads a killed process left;
    then checked as a streams app checks it (reachable and writable)."""
    from streams.artifacts import open_store

    location, source = _store_location(args)
    endpoint = _s3_endpoint(args)
    where = _located(location, endpoint, source)
    store = open_store(location, endpoint)
    done: dict[str, Any] = {"store": store.location}
    if isinstance(where, Path):
        done["created"] = not where.is_dir()
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Refused(
                f"cannot create the store directory {where}: {exc.strerror}; pass "
                "--store DIR with a directory you may write, or --store s3://BUCKET/PREFIX"
            ) from None
    else:
        from streams.artifacts.s3 import S3Store  # boto3: only for an S3 store

        assert isinstance(store, S3Store)  # open_store's answer for an s3:// location
        done["created"] = store.ensure_bucket(abort_incomplete_days=INIT_ABORT_DAYS)
        done["abort_incomplete_days"] = INIT_ABORT_DAYS
    store.check(writable=True)
    _emit(args, done, render.artifacts_ready)


def _stored(o: StoredObject, now: float) -> dict[str, Any]:
    return {"digest": o.digest, "size": o.size, "modified": o.modified, "age_s": now - o.modified}


@dataclass(frozen=True)
class _Topic:
    """A topic as `artifacts gc` reads it (:class:`modelvc.artifacts_gc.EventLog`)."""

    kafka: KafkaAccess
    topic: str

    def ends(self) -> dict[int, int]:
        from streams.logreader import partition_ends

        return partition_ends(self.kafka, self.topic)

    def values(self, partitions: Iterable[int] | None = None) -> Iterator[bytes | None]:
        from streams.logreader import read_topic

        return (r.value for r in read_topic(self.kafka, self.topic, partitions=partitions))


def cmd_artifacts(args: argparse.Namespace) -> None:
    now = time.time()
    # A mistyped age is said before the store or Kafka is reached.
    cutoff = older_than(args.older_than, int(now * 1000)) / 1000 if args.action == "gc" else now
    if args.action == "init":
        _init_store(args)
        return
    store = _artifact_store(args)
    if args.action == "ls":
        objects = [_stored(o, now) for o in store.list()]
        listed = {
            "store": store.location,
            "objects": objects,
            "count": len(objects),
            "total_bytes": sum(o["size"] for o in objects),
        }
        _emit(args, listed, render.artifacts)
    elif args.action == "verify":
        _verify_store(args, store)
    else:
        from modelvc import artifacts_gc

        kafka = _kafka(args)
        events, commands = (_Topic(kafka, _topic(args, kind)) for kind in ("events", "commands"))
        try:
            result = artifacts_gc.collect(store, events, commands, cutoff, args.dry_run)
        except artifacts_gc.LogEmpty as exc:
            raise Refused(
                f"{events.topic} on {kafka.bootstrap} holds no event, yet {store.location} "
                f"holds {exc.objects:,} objects: every one would look unreferenced. Nothing "
                "was deleted. Check that KAFKA_BOOTSTRAP (or --bootstrap) and "
                "MODELVC_NAMESPACE are those of the deployment that uses this store"
            ) from None
        collected = {
            "store": store.location,
            "dry_run": args.dry_run,
            "older_than": args.older_than,
            "objects": result.objects,
            "chosen": [_stored(o, now) for o in result.chosen],
            "spared": [_stored(o, now) for o in result.spared],
            "total_bytes": result.total_bytes,
        }
        _emit(args, collected, render.artifacts_gc)


def _verify_store(args: argparse.Namespace, store: ArtifactStore) -> None:
    """Re-hash every object as it streams (never whole in memory); exit 1 naming each bad one."""
    from streams.errors import ArtifactCorrupted, ArtifactNotFound

    failures: list[dict[str, str]] = []
    checked = total = gone = 0
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        for o in store.list():
            try:
                total += store.get(o.digest, sink)
            except ArtifactCorrupted as exc:
                failures.append({"digest": o.digest, "problem": str(exc)})
            except ArtifactNotFound:
                gone += 1  # deleted since the listing (by `artifacts gc`): nothing to check
                continue
            checked += 1
    verified = {
        "store": store.location,
        "checked": checked,
        "bytes": total,
        "gone": gone,
        "failures": failures,
        "seconds": round(time.perf_counter() - started, 3),
    }
    _emit(args, verified, render.artifacts_verified)
    if failures:
        raise SystemExit(EXIT_REFUSED)


def cmd_create(args: argparse.Namespace, c: Client) -> None:
    answer = c.create(args.name, args.default_branch)
    home = _home(args)
    home.mkdir(parents=True, exist_ok=True)
    (home / "current-model").write_text(args.name)
    _emit(
        args,
        answer,
        lambda a: (
            f"created model {a['model']} (default branch {args.default_branch}); "
            "it is now the current model"
        ),
    )


def cmd_use(args: argparse.Namespace, c: Client) -> None:
    c.refs(args.name)  # fails with a clear message when it does not exist
    home = _home(args)
    home.mkdir(parents=True, exist_ok=True)
    (home / "current-model").write_text(args.name)
    print(render.terminal(f"current model: {args.name}"))


def cmd_models(args: argparse.Namespace, c: Client) -> None:
    _emit(
        args,
        c.models(),
        lambda a: (
            "\n".join(
                f"{m['name']:<20} {m['commits']:>4} commits  branches: {', '.join(m['branches'])}"
                for m in a["models"]
            )
            or "no models yet"
        ),
    )


def cmd_commit(args: argparse.Namespace, c: Client) -> None:
    # Usage is checked before the upload: a refused command line sends nothing.
    model = _model(args)
    params = _pairs(args.param, "param", str)
    metrics = _pairs(args.metric, "metric", float)
    sample = read_reference_sample(Path(args.reference)) if args.reference else None
    uploaded = c.upload(args.file)
    reference = None
    if sample is not None:
        data = reference_json(sample, _model_inputs(uploaded), args.reference)
        reference = c.upload_reference(data)["sha256"]
    answer = c.commit(
        model,
        uploaded["sha256"],
        args.message,
        branch=args.branch,
        params=params,
        metrics=metrics,
        expect_head=args.expect_head,
        reference_sha256=reference,
    )
    _emit(
        args,
        answer,
        lambda a: (
            f"[{a['ref']} {render.short(a['head'])}] {args.message}"
            f"{' (repeat)' if a['repeated'] else ''}"
        ),
    )


def cmd_branch(args: argparse.Namespace, c: Client) -> None:
    model = _model(args)
    if args.action == "create":
        _emit(args, c.create_branch(model, args.name, args.from_ref), _applied)
    elif args.action == "delete":
        _emit(args, c.delete_branch(model, args.name), _applied)
    else:
        refs = c.refs(model)
        _emit(
            args,
            refs["branches"],
            lambda b: "\n".join(
                f"{'*' if n == refs['default_branch'] else ' '} {n:<20} {render.short(h)}"
                for n, h in b.items()
            ),
        )


def cmd_merge(args: argparse.Namespace, c: Client) -> None:
    model = _model(args)
    artifact = c.upload(args.artifact)["sha256"] if args.artifact else None
    answer = c.merge(
        model,
        args.source,
        into=args.into,
        strategy=args.strategy,
        artifact_sha256=artifact,
        message=args.message,
    )
    _emit(args, answer, _applied)


def cmd_rollback(args: argparse.Namespace, c: Client) -> None:
    answer = c.rollback(_model(args), args.branch, args.to, args.reason, expect=args.expect)
    _emit(args, answer, _applied)


def cmd_alias(args: argparse.Namespace, c: Client) -> None:
    model = _model(args)
    if args.action == "set":
        answer = c.set_alias(
            model,
            args.name,
            args.ref,
            args.expect,
            allow_signature_change=args.allow_signature_change,
        )
        _emit(args, answer, _applied)
    else:
        _emit(
            args,
            c.refs(model)["aliases"],
            lambda a: (
                "\n".join(f"@{n:<20} {render.short(t)}" for n, t in a.items()) or "no aliases"
            ),
        )


def cmd_log(args: argparse.Namespace, c: Client) -> None:
    _emit(args, c.log(_model(args), args.ref, args.as_of), lambda a: render.log(a, args.graph))


def cmd_show(args: argparse.Namespace, c: Client) -> None:
    _emit(args, c.show(_model(args), args.ref), render.commit)


def cmd_schema(args: argparse.Namespace, c: Client) -> None:
    answer = c.feature_schema(_model(args), args.ref)
    if args.avsc:
        print(json.dumps(answer["schema"], indent=2))
        return
    _emit(
        args,
        answer,
        lambda a: (
            f"# {a['model']}@{a['ref']} = commit {a['commit_id'][:12]}, "
            f"{len(a['signature']['inputs'])} features, fingerprint {a['fingerprint']}\n"
            + json.dumps(a["schema"], indent=2)
        ),
    )


def cmd_diff(args: argparse.Namespace, c: Client) -> None:
    _emit(args, c.diff(_model(args), args.a, args.b), render.diff)


def cmd_refs(args: argparse.Namespace, c: Client) -> None:
    _emit(args, c.refs(_model(args), args.as_of), render.refs)


def cmd_digest(args: argparse.Namespace, c: Client) -> None:
    _emit(
        args,
        c.digest(),
        lambda a: f"{a['digest']}  (models: {a['models']}, event offsets: {a['offsets']})",
    )


# -- drift references, labels, shadows, rollouts, the monitor --------------------------
# A training sample is read whole (quantiles need every value): bounded in cells.
MAX_SAMPLE_CELLS = 5_000_000


@dataclass(frozen=True)
class Sample:
    """The numeric columns of a training sample CSV, as read (empty or non-numeric: NaN,
    which the reference leaves out)."""

    names: tuple[str, ...]
    rows: tuple[tuple[float, ...], ...]


def _cell(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # a category label or a blank: not a number to bin


def read_reference_sample(path: Path) -> Sample:
    """The training sample for ``commit --reference``: a CSV with a header row whose
    columns are features; a Refused naming the file and what to fix otherwise."""
    import csv

    from modelvc.streaming import RESERVED

    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise Refused(f"{path} is empty; --reference takes a CSV with a header row")
            names = tuple(h.strip() for h in header)
            rows: list[tuple[float, ...]] = []
            for row in reader:
                if len(row) != len(names):
                    raise Refused(
                        f"{path}:{reader.line_num}: {len(row)} fields under a header of "
                        f"{len(names)}; every row of --reference needs one value per column"
                    )
                if (len(rows) + 1) * len(names) > MAX_SAMPLE_CELLS:
                    raise Refused(
                        f"{path} holds more than {MAX_SAMPLE_CELLS:,} values; a sample of "
                        "some thousand rows bins as well: pass --reference with fewer rows"
                    )
                rows.append(tuple(_cell(v) for v in row))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise Refused(f"{path} is not a CSV file ({exc}); --reference takes one") from None
    kept = [i for i, n in enumerate(names) if n not in RESERVED]
    return Sample(tuple(names[i] for i in kept), tuple(tuple(r[i] for i in kept) for r in rows))


def _model_inputs(uploaded: dict[str, Any]) -> list[str] | None:
    """The feature names the uploaded model reads (its signature's inputs), if it says."""
    signature = uploaded.get("signature")
    if isinstance(signature, dict) and isinstance(signature.get("inputs"), list):
        return [str(i["name"]) for i in signature["inputs"] if isinstance(i, dict)]
    return None


def reference_json(sample: Sample, inputs: list[str] | None, source: str) -> bytes:
    """The reference bins of ``sample``'s columns that the model reads (all of them when the
    model's inputs are unknown), canonical JSON ready to upload."""
    from streams.core.monitoring import reference_from_rows, reference_to_json

    wanted = set(inputs) if inputs is not None else set(sample.names)
    columns = [i for i, n in enumerate(sample.names) if n in wanted]
    if not columns:
        shown = ", ".join(sorted(wanted))[:200]
        raise Refused(
            f"{source} has no column the model reads ({shown}); --reference takes a "
            "sample of the training data with the model's feature names as its header"
        )
    try:
        reference = reference_from_rows(
            [sample.names[i] for i in columns], ([row[i] for i in columns] for row in sample.rows)
        )
        return reference_to_json(reference)  # refused here when the server would refuse it
    except ValueError as exc:
        raise Refused(f"{source}: {exc}") from None


def cmd_publish_labels(args: argparse.Namespace) -> None:
    from modelvc.streaming import LabelError, publish_labels, read_label_file

    topic = _topic(args, "labels")
    try:
        # Read and checked whole before the first is sent: a bad line publishes nothing.
        labels = list(read_label_file(Path(args.file), _selected_model(args)))
    except (LabelError, UnicodeDecodeError) as exc:
        raise Refused(f"{exc}; nothing was published") from None
    count = publish_labels(_kafka(args, role="producer"), labels, topic)
    _emit(
        args,
        {"published": count, "topic": topic},
        lambda a: f"published {a['published']} labels to {a['topic']}",
    )


def cmd_shadow(args: argparse.Namespace, c: Client) -> None:
    model = _model(args)
    if args.action == "start":
        answer = c.start_shadow(model, args.alias, args.candidate)
        _emit(
            args,
            answer,
            lambda a: (
                f"{_applied(a)}: @{args.alias} is shadowed by {args.candidate}; compare "
                f"them with `modelvc -M {model} monitor`"
            ),
        )
    elif args.action == "stop":
        _emit(args, c.stop_shadow(model, args.alias), _applied)
    else:
        answer = c.shadows(model)
        listed = answer.get("shadows", []) if isinstance(answer, dict) else answer
        _emit(args, answer, lambda a: render.shadows(render.escaped(listed)))


STEPS_SYNTAX = "percentages of traffic, strictly increasing, ending at 100, e.g. 10,50,100"
_PERCENT = re.compile(r"[1-9][0-9]{0,2}", re.ASCII)
_DURATION = re.compile(r"(0)|([1-9][0-9]{0,6})(s|m|h|d)", re.ASCII)
_DURATION_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION_SYNTAX = "a number and a unit: 30s, 10m, 2h or 1d (0: no timeout)"


def parse_steps(text: str) -> tuple[int, ...]:
    """``--steps 10,50,100`` as percentages; a UsageError saying the syntax otherwise."""
    from streams.core.rollout import MAX_STEPS

    parts = text.split(",", MAX_STEPS)
    if len(parts) > MAX_STEPS:
        raise UsageError(f"--steps {text[:60]!r}: at most {MAX_STEPS} steps; {STEPS_SYNTAX}")
    if not all(_PERCENT.fullmatch(p.strip()) for p in parts):
        raise UsageError(f"--steps {text[:60]!r}: use {STEPS_SYNTAX}")
    steps = tuple(int(p) for p in parts)
    rising = all(a < b for a, b in itertools.pairwise(steps))
    if not rising or steps[-1] != 100:
        raise UsageError(f"--steps {text[:60]!r}: use {STEPS_SYNTAX}")
    return steps


def parse_duration(text: str, flag: str = "--step-timeout") -> int:
    """``30s``, ``10m``, ``2h``, ``1d`` or ``0`` as milliseconds (at most the longest step
    timeout a rollout takes)."""
    from streams.core.rollout import MAX_STEP_TIMEOUT_MS

    found = _DURATION.fullmatch(text.strip())
    if not found:
        raise UsageError(f"{flag} {text[:40]!r}: use {DURATION_SYNTAX}")
    ms = 0 if found.group(1) else int(found.group(2)) * _DURATION_MS[found.group(3)]
    if ms > MAX_STEP_TIMEOUT_MS:
        raise UsageError(f"{flag} {text}: at most {MAX_STEP_TIMEOUT_MS // 86_400_000}d")
    return ms


def parse_regressions(items: Sequence[str]) -> dict[str, float]:
    """``--max-regression METRIC=LIMIT`` (repeated) as {metric: limit}."""
    from streams.core.rollout import LOWER_IS_BETTER

    metrics = ", ".join(LOWER_IS_BETTER)
    limits: dict[str, float] = {}
    for item in items[: len(LOWER_IS_BETTER) + 1]:
        name, _, value = item.partition("=")
        if name not in LOWER_IS_BETTER:
            raise UsageError(
                f"--max-regression {item[:60]!r}: name one of {metrics}, as in "
                "--max-regression logloss=0.01"
            )
        if name in limits:
            raise UsageError(f"--max-regression names {name} twice; give each metric once")
        try:
            limit = float(value)
        except ValueError:
            limit = math.nan
        if not math.isfinite(limit) or limit < 0:
            raise UsageError(
                f"--max-regression {item[:60]!r}: the limit is how much worse {name} may be "
                f"than the baseline's, a number >= 0 (e.g. {name}=0.01)"
            )
        limits[name] = limit
    return limits


def _rollout_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The start flags checked here, so a mistyped policy is a usage error before any request."""
    if args.min_labels is not None and not 0 <= args.min_labels <= 10**9:
        raise UsageError(f"--min-labels {args.min_labels}: use 0 to 1000000000")
    p99 = args.max_p99_ms
    if p99 is not None and not (math.isfinite(p99) and p99 > 0):
        raise UsageError(f"--max-p99-ms {p99}: use a number of milliseconds above 0")
    rate = args.max_dead_letter_rate
    if rate is not None and not 0 <= rate <= 1:
        raise UsageError(f"--max-dead-letter-rate {rate}: use a fraction from 0 to 1, e.g. 0.001")
    return {
        "min_labels": args.min_labels,
        "max_regression": parse_regressions(args.max_regression),
        "max_p99_ms": p99,
        "max_dead_letter_rate": rate,
        "step_timeout_ms": (
            parse_duration(args.step_timeout) if args.step_timeout is not None else None
        ),
        "allow_signature_change": args.allow_signature_change,
    }


def _check_policy(steps: tuple[int, ...], limits: dict[str, Any]) -> None:
    """The core's rule for a new rollout's policy (the service applies it again), with the
    service's defaults for the flags not given: a bare `rollout start` is told what it lacks."""
    from streams.core.refs import policy_problem
    from streams.core.rollout import Policy

    given = {k: v for k, v in limits.items() if k in Policy.__dataclass_fields__ and v is not None}
    problem = policy_problem(Policy(steps=steps, **given))
    if problem is not None:
        raise UsageError(problem)


_DONE = {"pause": "paused", "resume": "resumed", "abort": "aborted", "promote": "promoted"}


def _one_rollout(answer: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A rollout answer as (the rollout, its decisions): {"rollout", "decisions"}, or the
    rollout's fields with "decisions" beside them."""
    body = dict(answer)
    decisions = list(body.pop("decisions", None) or [])
    return dict(body.get("rollout") or body), decisions


def cmd_rollout(args: argparse.Namespace, c: Client) -> None:
    model = _model(args)
    if args.action == "start":
        # Parsed by _check_arguments, before a token is read or the service reached.
        answer = c.start_rollout(
            model, args.alias, args.to, args.step_list, expect=args.expect, **args.limits
        )
        rollout, _ = _one_rollout(answer)
        _emit(
            args,
            answer,
            lambda a: (
                f"started rollout {rollout.get('id', '?')} of @{args.alias} to {args.to}; "
                f"follow it with `modelvc -M {model} rollout status {rollout.get('id', '')}`"
            ),
        )
    elif args.action == "status":
        if args.id is None:
            answer = c.rollouts(model)
            listed = answer.get("rollouts", []) if isinstance(answer, dict) else answer
            _emit(args, answer, lambda a: _rollout_list(model, render.escaped(listed)))
        else:
            answer = c.rollout(model, args.id)
            rollout, decisions = _one_rollout(answer)
            _emit(args, answer, lambda a: render.rollout_status(rollout, decisions))
    else:
        answer = c.control_rollout(model, args.id, args.action, args.reason or "")
        _emit(args, answer, lambda a: f"{_DONE[args.action]} rollout {args.id}")


def _rollout_list(model: str, rollouts: list[dict[str, Any]]) -> str:
    if not rollouts:
        return (
            f"no rollouts of {model} (start one with `modelvc -M {model} rollout start "
            "production --to REF`)"
        )
    return "\n".join(
        f"{r['id']}  @{r['alias']:<12} {r['status']:<9} {render.steps_line(r)}  "
        f"{render.short(r['baseline'])} -> {render.short(r['candidate'])}"
        for r in rollouts
    )


WATCH_SECONDS = 2.0


def cmd_monitor(args: argparse.Namespace, c: Client) -> None:
    from modelvc import monitor_view

    model = _model(args)
    clear = "\x1b[H\x1b[2J" if args.watch and sys.stdout.isatty() else ""
    try:
        while True:
            answer = c.monitor(model, args.ref, args.last)
            if args.json and args.watch:
                print(json.dumps(answer), flush=True)  # one answer a line, for a pipe
            else:
                print(clear, end="")
                _emit(args, answer, monitor_view.table)
            if not args.watch:
                return
            sys.stdout.flush()
            time.sleep(WATCH_SECONDS)
    except KeyboardInterrupt:
        return  # Ctrl-C is how --watch ends


# -- identity and protection ----------------------------------------------------
_RELATIVE = re.compile(r"(0|[1-9][0-9]{0,4})([dhm])", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000}
EXPIRES_SYNTAX = "30d, 12h, 90m or a date such as 2027-01-31 (00:00 UTC)"
OLDER_THAN_SYNTAX = "30d, 12h, 90m (0d: any age) or a date such as 2026-01-31 (00:00 UTC)"


def _moment(text: str, now_ms: int, sign: int, flag: str, syntax: str) -> int:
    """``text`` as ms since the epoch: N days, hours or minutes after (``sign`` 1) or before
    (-1) ``now_ms``, or the start (00:00 UTC) of a date; a UsageError naming ``flag``."""
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return now_ms + sign * int(relative.group(1)) * _UNIT_MS[relative.group(2)]
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text[:40]!r}: use {syntax}") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def expires_at(text: str, now_ms: int) -> int:
    """``--expires`` as ms since the epoch (:func:`_moment`); a time not in the future is a
    UsageError."""
    at = _moment(text, now_ms, 1, "--expires", EXPIRES_SYNTAX)
    if at <= now_ms:
        raise UsageError(f"--expires {text}: that is not in the future; use {EXPIRES_SYNTAX}")
    return at


def older_than(text: str, now_ms: int) -> int:
    """``--older-than`` as the cutoff in ms since the epoch: that long before ``now_ms``, or
    the start of a date (:func:`_moment`)."""
    return _moment(text, now_ms, -1, "--older-than", OLDER_THAN_SYNTAX)


def cmd_whoami(args: argparse.Namespace, c: Client) -> None:
    _emit(args, c.whoami(), render.whoami)


def open_privately(url: str) -> bool:
    """Open ``url`` in a browser through a redirect page only this user can read (as Jupyter
    does): a browser started with the URL itself shows it, login code included, to every
    local user in its command line (/proc/*/cmdline)."""
    folder = Path(tempfile.mkdtemp(prefix="modelvc-ui-"))  # 0700
    page = folder / "open.html"
    link = html.escape(url, quote=True)
    fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="0;url={link}"><title>modelvc console</title>'
            f'</head><body><p><a href="{link}">Open the modelvc console</a></p></body></html>\n'
        )
    opened = webbrowser.open(page.as_uri())
    if not opened:
        shutil.rmtree(folder, ignore_errors=True)
    # Otherwise the page stays: the browser may read it after this CLI has exited, and
    # nothing here lives long enough to delete it later. It is private to this user, and
    # its code is spent at the sign-in or dead after a minute.
    return opened


def cmd_ui(args: argparse.Namespace, c: Client) -> None:
    """Open the web console signed in as this CLI's token (a one-minute, one-use code in the
    address's fragment), or print that address."""
    answer = c.login_code()
    url = c.console_url(str(answer["code"]))
    opened = not args.no_browser and open_privately(url)
    if args.json:
        print(json.dumps({"url": url, "expires_ms": answer["expires_ms"], "opened": opened}))
    elif opened:
        print("opened the console in your browser (its sign-in link works once, for a minute)")
    else:
        if not args.no_browser:
            print("modelvc: no browser found; open this link within a minute:", file=sys.stderr)
        print(render.terminal(url))


def cmd_token(args: argparse.Namespace, c: Client) -> None:
    if args.action == "init":
        # For a deployment `up` does not start (docker-compose, a cluster): the file its
        # streams app is given as MODELVC_BOOTSTRAP_TOKEN_FILE, and this CLI then sends.
        from modelvc.stack import ensure_home  # the stack module is heavy: only here

        home = _home(args)
        home.mkdir(parents=True, exist_ok=True)
        path = ensure_home(home)
        _emit(args, {"token_file": str(path)}, lambda a: f"admin token: {a['token_file']}")
    elif args.action == "create":
        expires = expires_at(args.expires, int(time.time() * 1000)) if args.expires else None
        _emit(args, c.create_token(args.target, args.role, expires), render.token_created)
    elif args.action == "revoke":
        answer = c.revoke_token(args.target, args.reason or "")
        _emit(args, answer, lambda a: f"revoked token {args.target}; it is refused from now on")
    else:
        _emit(args, c.tokens(), render.tokens)


def _scope(args: argparse.Namespace) -> str:
    """The model a protection rule is for: -M only ("" = every model); never the current
    model, so a rule's reach is what the command line says."""
    return str(args.model or "")


def cmd_protect(args: argparse.Namespace, c: Client) -> None:
    model = _scope(args)
    answer = c.protect(args.kind, args.name, model=model, role=args.role)
    _emit(
        args,
        answer,
        lambda a: (
            f"protected {args.kind} {args.name} of {model or 'every model'}: "
            f"{render.protected_action(args.kind)} needs role {args.role}"
        ),
    )


def cmd_unprotect(args: argparse.Namespace, c: Client) -> None:
    model = _scope(args)
    answer = c.unprotect(args.kind, args.name, model=model)
    _emit(
        args,
        answer,
        lambda a: f"unprotected {args.kind} {args.name} of {model or 'every model'}",
    )


def cmd_protections(args: argparse.Namespace, c: Client) -> None:
    _emit(args, c.protections(), render.protections)


def cmd_key(args: argparse.Namespace, c: Client) -> None:
    if args.action == "add":
        from streams.signing import read_public_key

        try:
            public_key = read_public_key(Path(args.target))
        except ValueError as exc:
            raise Refused(f"{args.target}: {exc}") from None
        answer = c.add_writer_key(public_key, args.note or "")
        _emit(args, answer, lambda a: f"added writer key of {args.target} on every partition")
    elif args.action == "retire":
        answer = c.retire_writer_key(args.target, args.reason)
        _emit(args, answer, lambda a: f"retired writer key {args.target}")
    else:
        _emit(args, c.writer_keys(), render.writer_keys)


def _sign_predictions_flag(sp: argparse.ArgumentParser, what: str) -> None:
    sp.add_argument(
        "--sign-predictions",
        action="store_true",
        help=f"{what} ($MODELVC_HOME/keys/worker-<id>.key; also {SIGN_PREDICTIONS_ENV}=1); "
        "`modelvc audit served` verifies the signature",
    )


GC_RULES = (
    "Kept: every object whose digest (64 hex) appears anywhere in any record of the events "
    "topic or of the commands topic (a commit accepted but not yet decided is only there), "
    "read to their ends, and anything younger than --older-than. Uploading a model that is "
    "already stored makes its object young again. Refused (exit 1, nothing deleted) when the "
    "events topic holds no record while the store holds old objects: a wrong KAFKA_BOOTSTRAP "
    "or MODELVC_NAMESPACE. gc knows only its own namespace's log: give each namespace its "
    "own store (bucket or prefix), or objects of another are deleted. On a versioned bucket "
    "a deleted object stays as a noncurrent version until a lifecycle rule "
    "(NoncurrentVersionExpiration) frees it. The logs are read again right before deleting "
    "and an object named meanwhile is kept; what remains is a commit of an object older than "
    "--older-than that no record named, landing in the milliseconds between that last read "
    "and the delete. Uploading the same model file again restores it."
)


def _artifacts_parser(
    add: Callable[[str, Callable[..., None], str], argparse.ArgumentParser],
) -> None:
    art = add(
        "artifacts",
        cmd_artifacts,
        "make ready, list, verify or garbage-collect the artifact store itself (a directory or "
        "s3://BUCKET/PREFIX), without the service",
    )
    art.epilog = (
        "The store is --store, else $MODELVC_ARTIFACTS, else the local stack's "
        "($MODELVC_HOME/artifacts); an S3 store's endpoint is $MODELVC_S3_ENDPOINT (none: "
        "AWS), its credentials and region those boto3 finds (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_REGION, ~/.aws)."
    )
    actions = art.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str, more: str = "") -> argparse.ArgumentParser:
        sp = actions.add_parser(
            name, help=help, description=f"{help}. {more}" if more else help, epilog=art.epilog
        )
        sp.set_defaults(command_parser=sp)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        sp.add_argument("--store", metavar="LOC", help="a directory or s3://BUCKET/PREFIX")
        return sp

    action(
        "init",
        "make the store ready: create the directory, or the bucket when missing with a "
        f"lifecycle rule aborting multipart uploads left unfinished for {INIT_ABORT_DAYS} day "
        "under the prefix; then check it is reachable and writable",
        "Safe to run again (docker-compose's s3-bucket service runs it on every start).",
    )
    action("ls", "every object in the store: digest, size, last modified; and the totals")
    action(
        "verify",
        "re-hash every object in the store and name each one whose bytes no longer match "
        "its digest (exit 1 if any)",
    )
    sp = action(
        "gc",
        "delete objects that no record of the logs mentions and that are older than "
        "--older-than (an upload not yet committed is young); --dry-run lists them",
        GC_RULES,
    )
    sp.add_argument(
        "--older-than",
        default="30d",
        metavar="AGE",
        help=f"only objects last modified before this: {OLDER_THAN_SYNTAX} (default 30d)",
    )
    sp.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")
    sp.add_argument("--bootstrap", help="Kafka (default: $KAFKA_BOOTSTRAP or the local stack)")


Add = Callable[[str, Callable[..., None], str], argparse.ArgumentParser]


def _actions(
    parent: argparse.ArgumentParser, fn: Callable[..., None], required: bool = True
) -> Add:
    """``add`` for the actions of ``parent`` (``modelvc rollout start``...): each with its
    own --help and usage, -M and --json after the action too."""
    actions = parent.add_subparsers(dest="action", required=required, metavar="ACTION")

    def action(name: str, _: Callable[..., None], help: str) -> argparse.ArgumentParser:
        sp = actions.add_parser(name, help=help, description=help, epilog=parent.epilog)
        sp.set_defaults(fn=fn, command_parser=sp)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        sp.add_argument(
            "-M", "--model", default=argparse.SUPPRESS, help="the model (default: the current one)"
        )
        return sp

    return action


def _monitoring_parsers(add: Add) -> None:
    sp = add(
        "publish-labels",
        cmd_publish_labels,
        "publish labels (the true values) for the monitor to join with predictions, from a "
        "CSV or JSON-lines file; every line is checked before any is sent",
    )
    sp.epilog = (
        "Columns (CSV header) or keys (JSON): feature_event_id, or entity_key with event_time "
        "(ms, the feature event's); value, or value_0, value_1, ... (JSON: values, a list); "
        "optional label_time (ms; default now), label_id, model (default -M or the current "
        "model). Binary models take 0 or 1."
    )
    sp.add_argument("file")
    sp.add_argument("--bootstrap", help="Kafka (default: $KAFKA_BOOTSTRAP or the local stack)")

    shadow = add(
        "shadow",
        cmd_shadow,
        "score a candidate beside what an alias serves, on the same feature events; its "
        "predictions go to the shadow-predictions topic, never to subscribers",
    )
    action = _actions(shadow, cmd_shadow, required=False)  # `modelvc shadow` lists
    sp = action("start", cmd_shadow, "shadow ALIAS with the commit REF resolves to (now)")
    sp.add_argument("alias")
    sp.add_argument("--candidate", required=True, metavar="REF")
    sp = action("stop", cmd_shadow, "stop the shadow of ALIAS")
    sp.add_argument("alias")
    action("list", cmd_shadow, "the shadow of each alias that has one (the default)")

    rollout = add(
        "rollout",
        cmd_rollout,
        "move an alias to a candidate in steps of traffic, decided automatically from the "
        "monitor's figures, or by hand; every decision is an event in the log",
    )
    rollout.epilog = (
        "Entities are routed by a hash of their key, so an entity stays on one arm. At each "
        "step the controller waits for --min-labels labelled candidate predictions, then "
        "compares candidate and baseline: any criterion failed aborts (all traffic back to "
        "the baseline), all held advances; after the last step the alias moves. Give at "
        "least one criterion (--max-regression, --max-p99-ms or --max-dead-letter-rate); "
        "latency and dead letters are judged as soon as the candidate has traffic."
    )
    action = _actions(rollout, cmd_rollout)
    sp = action("start", cmd_rollout, "start a canary rollout of ALIAS to --to REF")
    sp.add_argument("alias")
    sp.add_argument("--to", required=True, metavar="REF", help="the candidate")
    sp.add_argument(
        "--expect", metavar="REF", help="refuse unless the alias serves this commit now"
    )
    sp.add_argument("--steps", default="10,50,100", help=f"{STEPS_SYNTAX} (default 10,50,100)")
    sp.add_argument(
        "--min-labels",
        type=int,
        metavar="N",
        help="labelled candidate predictions a step needs before a decision (default 100)",
    )
    sp.add_argument(
        "--max-regression",
        action="append",
        default=[],
        metavar="METRIC=LIMIT",
        help="abort when the candidate's METRIC (logloss, brier, mae, rmse, auc) is worse "
        "than the baseline's by more than LIMIT; repeatable",
    )
    sp.add_argument("--max-p99-ms", type=float, metavar="MS", help="abort above this p99 latency")
    sp.add_argument(
        "--max-dead-letter-rate",
        type=float,
        metavar="RATE",
        help="abort above this fraction of dead-lettered events (e.g. 0.001)",
    )
    sp.add_argument(
        "--step-timeout",
        metavar="DURATION",
        help=f"abort a step still short of --min-labels after this long: {DURATION_SYNTAX}",
    )
    sp.add_argument(
        "--allow-signature-change",
        action="store_true",
        help="let the final move change the model's input signature",
    )
    sp = action("status", cmd_rollout, "every rollout of the model, or one with its decisions")
    sp.add_argument("id", nargs="?", metavar="ID")
    for name, what in (
        ("pause", "hold the current step: no automatic decision until resumed"),
        ("resume", "let a paused rollout decide again (its step starts over)"),
        ("abort", "return all traffic to the baseline (needs --reason)"),
        ("promote", "move the alias to the candidate now (needs --reason)"),
    ):
        sp = action(name, cmd_rollout, what)
        sp.add_argument("id", metavar="ID")
        sp.add_argument("--reason", help="why, kept in the log")

    sp = add(
        "monitor",
        cmd_monitor,
        "accuracy, coverage, latency, dead letters and drift of each version of a model, "
        "from the monitor's windows",
    )
    sp.add_argument(
        "-M", "--model", default=argparse.SUPPRESS, help="the model (default: the current one)"
    )
    sp.add_argument("--ref", help="only the versions served for this ref")
    sp.add_argument(
        "--last",
        type=int,
        default=0,
        metavar="N",
        help="also the newest N windows of each version (the service allows 0-100; default 0)",
    )
    sp.add_argument("--watch", action="store_true", help="redraw every 2 s until Ctrl-C")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelvc",
        description="Version control for ML models, on Kafka.",
        epilog="Every request carries a token: $MODELVC_TOKEN, else the file "
        "$MODELVC_TOKEN_FILE, else $MODELVC_HOME/admin.token (`modelvc up` writes it). "
        "Exit status: 0 ok, 1 refused, 2 usage error, 3 service unreachable or stack "
        "failure, 4 restore skipped messages, 5 not allowed (no usable token, a role too "
        "low, or an --actor that is not the token's).",
    )
    p.add_argument("--url", help="service URL (default: $MODELVC_URL or the local stack)")
    p.add_argument("--home", help="state directory (default: $MODELVC_HOME or .modelvc)")
    p.add_argument(
        "-M", "--model", help="model name (default: $MODELVC_MODEL or the current model)"
    )
    p.add_argument(
        "--actor",
        default=os.environ.get("MODELVC_ACTOR") or None,
        help="check: refuse unless the token is this actor's (default: $MODELVC_ACTOR; "
        "none: the token's actor, unchecked). The actor of every event is the token's",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., None], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        # Usage errors found after parsing are reported by this subcommand's parser.
        sp.set_defaults(fn=fn, command_parser=sp)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        return sp

    sp = add(
        "up",
        cmd_up,
        "start a broker, the archiver, the streams app and a worker in the background; "
        "after a crash, start again what the last `up` recorded",
    )
    sp.add_argument(
        "--broker",
        choices=["tansu", "kafka"],  # modelvc.stack.BROKER_KINDS
        help="tansu (default): embedded, in memory, no JVM; kafka: Apache Kafka, durable "
        "under $MODELVC_HOME/kafka (needs Java 17+ and `make kafka`)",
    )
    sp.add_argument("--bootstrap", help="use this Kafka instead of starting a broker")
    sp.add_argument("--port", type=int, default=6066, help="HTTP port of the API (default 6066)")
    sp.add_argument("--partitions", type=int, default=4)
    sp.add_argument(
        "--broker-port",
        type=int,
        help="broker port (default 9092; Apache Kafka's controller takes the next one); a "
        "Kafka cluster kept in $MODELVC_HOME keeps the ports it was made with",
    )
    sp.add_argument("--workers", type=int, default=1, help="inference workers to start (default 1)")
    sp.add_argument("--worker-port", type=int, default=6070, help="HTTP port of the first worker")
    _sign_predictions_flag(sp, "each worker it starts signs its predictions with its own key")
    sp = add("worker", cmd_worker, "run one inference worker in the foreground")
    sp.add_argument("--bootstrap", help="Kafka (default: $KAFKA_BOOTSTRAP)")
    sp.add_argument("--port", type=int, help="HTTP port (default: $MODELVC_WORKER_PORT or 6070)")
    _sign_predictions_flag(sp, "sign each prediction with this worker's own key")
    sp = add("publish", cmd_publish, "publish feature events from a CSV or JSON-lines file")
    sp.add_argument("file")
    sp.add_argument("--ref", help="ref to score with when a row names none")
    sp.add_argument("--bootstrap", help="Kafka (default: $KAFKA_BOOTSTRAP or the local stack)")
    sp.add_argument(
        "--untyped",
        action="store_true",
        help="send the map-of-union form instead of the typed schema of each row's model "
        "and ref (which is fetched from the service)",
    )
    sp = add(
        "schema",
        cmd_schema,
        "print the typed Avro schema of feature events for a model's ref (what "
        "`modelvc publish` and producers write)",
    )
    sp.add_argument(
        "-M", "--model", default=argparse.SUPPRESS, help="the model (default: the current one)"
    )
    sp.add_argument(
        "--ref", help="default: alias production if set, else the default branch (as workers)"
    )
    sp.add_argument("--avsc", action="store_true", help="only the schema, to save as a .avsc file")
    sp = add("tail", cmd_tail, "print predictions (or a shadow's) as they arrive")
    sp.add_argument("stream", choices=["predictions", "shadow-predictions"])
    sp.add_argument("--from-beginning", action="store_true")
    sp.add_argument("-n", "--limit", type=int, default=0, help="stop after N predictions")
    sp.add_argument("--idle-timeout", type=float, help="stop after this many seconds without one")
    sp.add_argument("--bootstrap", help="Kafka (default: $KAFKA_BOOTSTRAP or the local stack)")
    add("down", cmd_down, "stop exactly what `modelvc up` started")
    sp = add("create", cmd_create, "create a model and make it the current one")
    sp.add_argument("name")
    sp.add_argument("--default-branch", default="main")
    add("use", cmd_use, "make an existing model the current one").add_argument("name")
    add("models", cmd_models, "list models")
    sp = add("commit", cmd_commit, "upload a LightGBM text model and commit it to a branch")
    sp.add_argument("file")
    sp.add_argument("-m", "--message", required=True)
    sp.add_argument("-b", "--branch", default="main")
    sp.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--metric", action="append", default=[], metavar="KEY=NUMBER")
    sp.add_argument(
        "--expect-head", help="refuse unless the branch head is this commit (compare-and-set)"
    )
    sp.add_argument(
        "--reference",
        metavar="SAMPLE.csv",
        help="a sample of the training data (CSV, the model's feature names as header): "
        "its per-feature quantile bins are stored and linked from the commit, and the "
        "monitor shows the drift (PSI) of live features against them",
    )
    sp = add("branch", cmd_branch, "list, create or delete branches")
    sp.add_argument("action", nargs="?", choices=["list", "create", "delete"], default="list")
    sp.add_argument("name", nargs="?")
    sp.add_argument("--from", dest="from_ref", help="start point (default: the default branch)")
    sp = add("merge", cmd_merge, "merge a branch (or any ref) into another")
    sp.add_argument("source")
    sp.add_argument("--into", default="main")
    sp.add_argument("--strategy", choices=["theirs", "ours"])
    sp.add_argument("--artifact", help="model file for the merge commit")
    sp.add_argument("-m", "--message")
    sp = add("rollback", cmd_rollback, "move a branch back to a commit on its first-parent history")
    sp.add_argument("branch")
    sp.add_argument("--to", required=True)
    sp.add_argument("--reason", required=True)
    sp.add_argument(
        "--expect", metavar="REF", help="refuse unless the branch's head is this commit"
    )
    sp = add("alias", cmd_alias, "list aliases or point one at a ref")
    sp.add_argument("action", nargs="?", choices=["list", "set"], default="list")
    sp.add_argument("name", nargs="?")
    sp.add_argument("ref", nargs="?")
    sp.add_argument(
        "--expect", help="refuse unless the alias points at this commit ('none' for new)"
    )
    sp.add_argument(
        "--allow-signature-change",
        action="store_true",
        help="move it even though REF's model needs features the current one does not "
        "(their producers' events would be dead-lettered until they send them)",
    )
    sp = add("log", cmd_log, "commits, newest first (all of them when no REF), and the ref history")
    sp.add_argument("ref", nargs="?")
    sp.add_argument("--graph", action="store_true")
    sp.add_argument("--as-of", help="as it was then: an ISO-8601 time or an event offset")
    add("show", cmd_show, "one commit").add_argument("ref")
    sp = add("diff", cmd_diff, "params, metrics, artifact and signature of two versions")
    sp.add_argument("a")
    sp.add_argument("b")
    sp = add("refs", cmd_refs, "branches and aliases")
    sp.add_argument("--as-of", help="as they were then: an ISO-8601 time or an event offset")
    sp = add("audit", cmd_audit, "check the log without trusting the service")
    sp.add_argument("action", choices=["replay", "served", "verify-predictions"])
    sp.add_argument("prediction_id", nargs="?", help="for `served`")
    sp.add_argument("--from-archive", metavar="DIR", help="replay: read the archive, no broker")
    sp.add_argument(
        "--no-live", action="store_true", help="replay: do not compare with the service"
    )
    sp.add_argument(
        "--jobs", type=int, help="replay: processes, one partition group each (default: CPUs)"
    )
    sp.add_argument(
        "--decoder",
        choices=["fastavro", "reference"],
        default="fastavro",
        help="replay: 'reference' also decodes every message with Apache Avro and reports "
        "any difference from fastavro (slower)",
    )
    sp.add_argument("--sample", type=int, help="verify-predictions: check N at random")
    sp.add_argument("--all", action="store_true", help="verify-predictions: check every one")
    sp.add_argument(
        "--artifacts",
        metavar="LOC",
        help="verify-predictions: read artifacts from this store, a directory or "
        "s3://BUCKET/PREFIX (endpoint: $MODELVC_S3_ENDPOINT; credentials: AWS_* or "
        "~/.aws), instead of the API",
    )
    sp.add_argument(
        "--trust-key",
        action="append",
        default=[],
        metavar="FILE",
        help="a writer public key (.pub or PEM) whose events to trust; repeatable "
        "(without it or --trust-digest, each partition's first key is trusted on first use)",
    )
    sp.add_argument(
        "--trust-digest",
        action="append",
        default=[],
        metavar="KEY_ID",
        help="a writer key id (sha256 of the public key, 64 hex) to trust; repeatable",
    )
    sp.add_argument(
        "--trust-worker-key",
        action="append",
        default=[],
        metavar="FILE",
        help="served/verify-predictions: a worker public key to check prediction signatures "
        "with; repeatable (then a prediction signed by no such key is reported unpinned)",
    )
    sp.add_argument("--bootstrap", help="Kafka (default: $KAFKA_BOOTSTRAP or the local stack)")
    _artifacts_parser(add)
    _monitoring_parsers(add)
    add("digest", cmd_digest, "sha256 of the whole version graph, as the service has it")
    add("whoami", cmd_whoami, "the actor and role of the token this CLI sends")
    sp = add(
        "ui",
        cmd_ui,
        "open the web console in a browser, signed in with this CLI's token (the link "
        "works once, for a minute)",
    )
    sp.add_argument(
        "--no-browser", action="store_true", help="print the sign-in link instead of opening it"
    )
    sp = add(
        "token",
        cmd_token,
        "create a token (shown once), list them, or revoke one (admin); `init` writes "
        "$MODELVC_HOME/admin.token (0600) for a deployment that `up` does not start",
    )
    sp.add_argument("action", choices=["create", "list", "revoke", "init"])
    sp.add_argument("target", nargs="?", metavar="ACTOR|TOKEN_ID")
    sp.add_argument("--role", choices=ROLES, help="create: the token's role")
    sp.add_argument("--expires", metavar="WHEN", help=f"create: {EXPIRES_SYNTAX} (default: never)")
    sp.add_argument("--reason", help="revoke: why, kept in the log")
    for name, verb in (("protect", "protect"), ("unprotect", "lift the protection of")):
        sp = add(
            name,
            cmd_protect if name == "protect" else cmd_unprotect,
            f"{verb} a branch or an alias of one model (-M) or of every model (admin); "
            "list the rules with `modelvc protections`",
        )
        sp.add_argument("kind", choices=["alias", "branch"])
        sp.add_argument("name")
        # After the name too (as in `protect alias production -M churn`); without it: every model.
        sp.add_argument(
            "-M", "--model", default=argparse.SUPPRESS, help="the model (default: every one)"
        )
        if name == "protect":
            sp.add_argument(
                "--role",
                choices=PROTECTING_ROLES,
                default="releaser",
                help="least role that may move it (default releaser)",
            )
    add("protections", cmd_protections, "the protection rules: which ref needs which role")
    sp = add("key", cmd_key, "list the writer keys, add one, or retire one (admin)")
    sp.add_argument("action", choices=["list", "add", "retire"])
    sp.add_argument("target", nargs="?", metavar="PUBFILE|KEY_ID")
    sp.add_argument("--note", help="add: a note kept with the key")
    sp.add_argument("--reason", help="retire: why, kept in the log")
    return p


def _check_monitoring_arguments(args: argparse.Namespace) -> None:
    """The rollout and monitor flags, parsed before a token is read or a request sent."""
    if args.command == "rollout" and args.action == "start":
        args.step_list = parse_steps(args.steps)
        args.limits = _rollout_limits(args)
        _check_policy(args.step_list, args.limits)
    if args.command == "rollout" and args.action in ("abort", "promote") and not args.reason:
        raise UsageError(
            f"rollout {args.action} needs --reason, kept in the log "
            f"(modelvc rollout {args.action} {args.id} --reason TEXT)"
        )
    if args.command == "rollout" and len(getattr(args, "reason", None) or "") > MAX_TEXT:
        raise UsageError(f"--reason is over {MAX_TEXT} characters; say it shorter")


def _check_arguments(args: argparse.Namespace) -> None:
    """What argparse cannot say: arguments that one action of a command needs."""
    _check_monitoring_arguments(args)
    needs_name = {("branch", "create"), ("branch", "delete"), ("alias", "set")}
    if (args.command, getattr(args, "action", None)) in needs_name and not args.name:
        raise UsageError(f"{args.command} {args.action} needs a NAME")
    if args.command == "alias" and args.action == "set" and not args.ref:
        raise UsageError("alias set NAME REF needs a REF")
    if args.command == "audit" and args.action == "served" and not args.prediction_id:
        raise UsageError("audit served needs a PREDICTION_ID")
    needs_target = {
        ("token", "create"): "ACTOR",
        ("token", "revoke"): "TOKEN_ID",
        ("key", "add"): "PUBFILE",
        ("key", "retire"): "KEY_ID",
    }
    what = needs_target.get((args.command, str(getattr(args, "action", ""))))
    if what and not args.target:
        raise UsageError(f"{args.command} {args.action} needs a {what}")
    if args.command == "token" and args.action == "create" and not args.role:
        raise UsageError(
            f"token create needs --role, one of {', '.join(ROLES)} "
            f"(e.g. modelvc token create {args.target} --role committer)"
        )
    if args.command == "key" and args.action == "retire" and not args.reason:
        raise UsageError(
            f"key retire needs --reason (modelvc key retire {args.target} --reason TEXT)"
        )


def _refusal(exc: ClientError) -> str:
    """The service's refusal for a terminal: its message, then each hint as a command line."""
    # The service's message may quote what a stranger named (a ref, a model).
    lines = [f"modelvc: {render.escape(str(exc))}"]
    hint = hints.parse(exc.body.get("hint"))
    if hint is not None:
        lines += [f"hint: {render.escape(line)}" for line in hints.command_lines(hint)]
    return "\n".join(lines)


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    """The one way out for a usage error: the command's usage and ``message``, exit 2."""
    command_parser: argparse.ArgumentParser = args.command_parser
    command_parser.error(render.escape(message))  # argparse's own path: stderr, exit 2


# Commands that reach Kafka or the stack only, never the service's API.
_WITHOUT_SERVICE = (
    "up",
    "down",
    "worker",
    "publish",
    "publish-labels",
    "tail",
    "audit",
    "artifacts",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line; the exit code (module docstring) is returned, or raised by argparse.

    Every usage error, argparse's own and those found later, takes one path:
    the subcommand's usage and the message on stderr, and exit 2.
    """
    args = parser().parse_args(argv)
    try:
        _check_arguments(args)
        if args.command in _WITHOUT_SERVICE:
            args.fn(args)
        else:
            token = token_from_env(home=_home(args))  # the environment, read once here
            args.fn(args, Client(_url(args), actor=args.actor, token=token))
    except UsageError as exc:
        _usage(args, str(exc))
    except Refused as exc:
        print(f"modelvc: {render.escape(str(exc))}", file=sys.stderr)
        return EXIT_REFUSED
    except ClientError as exc:
        if args.json:
            print(json.dumps(exc.body), file=sys.stderr)
        else:
            print(_refusal(exc), file=sys.stderr)
        if exc.status == 0:
            return EXIT_UNREACHABLE
        return EXIT_DENIED if exc.status in (401, 403) else EXIT_REFUSED
    except TokenError as exc:
        print(f"modelvc: {render.escape(str(exc))}", file=sys.stderr)
        return EXIT_DENIED
    except (StackError, StreamsError, KafkaAccessError) as exc:
        # Kafka unreachable, a topic missing or not readable, a login file unusable.
        print(f"modelvc: {render.escape(str(exc))}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (FileNotFoundError, IsADirectoryError) as exc:
        _usage(args, f"{exc.strerror}: {exc.filename}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The labels, reference, shadow, rollout and monitor commands as a user types them.

No broker: refusals happen before any request, and what the CLI asks of the service is
checked against a recording HTTP server that answers as the API's routes do (spec §8).
"""

from __future__ import annotations

import argparse
import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from modelvc.cli import (
    Refused,
    Sample,
    UsageError,
    main,
    parse_duration,
    parse_regressions,
    parse_steps,
    parser,
    read_reference_sample,
    reference_json,
)
from streams.codec import LABELS
from streams.core.monitoring import reference_from_json
from streams.logreader import read_topic
from streams.settings import Settings
from streams.topics import ensure_topics

SHA = "d" * 64
TOKEN = "mvc_" + "0" * 16 + "_" + "A" * 43  # the shape of a token; the fake service takes any


# -- parsing ---------------------------------------------------------------------------
def test_steps_are_rising_percentages_that_end_at_100() -> None:
    assert parse_steps("10,50,100") == (10, 50, 100)
    assert parse_steps("100") == (100,)
    assert parse_steps(" 5, 25 ,100") == (5, 25, 100)
    for bad in ("10,5,100", "10,50", "0,100", "10,,100", "10.5,100", "1e2", "", "10,50,101"):
        with pytest.raises(UsageError, match=r"e\.g\. 10,50,100"):
            parse_steps(bad)
    with pytest.raises(UsageError, match="at most 20 steps"):
        parse_steps(",".join(str(i) for i in range(1, 100)) + ",100")


def test_step_timeouts_take_a_unit() -> None:
    assert parse_duration("30s") == 30_000
    assert parse_duration("10m") == 600_000
    assert parse_duration("2h") == 7_200_000
    assert parse_duration("1d") == 86_400_000
    assert parse_duration("0") == 0
    for bad in ("10", "5x", "-1m", "1.5h", "m", "0s10m"):
        with pytest.raises(UsageError, match="30s, 10m, 2h or 1d"):
            parse_duration(bad)
    with pytest.raises(UsageError, match="at most 30d"):
        parse_duration("31d")


def test_regression_limits_name_a_known_metric_once() -> None:
    assert parse_regressions(["logloss=0.01", "auc=0.02"]) == {"logloss": 0.01, "auc": 0.02}
    assert parse_regressions([]) == {}
    for bad, says in (
        (["accuracy=0.1"], "name one of logloss, brier, mae, rmse, auc"),
        (["logloss"], r"e\.g\. logloss=0\.01"),
        (["logloss=-1"], "a number >= 0"),
        (["logloss=nan"], "a number >= 0"),
        (["logloss=x"], "a number >= 0"),
        (["mae=1", "mae=2"], "names mae twice"),
    ):
        with pytest.raises(UsageError, match=says):
            parse_regressions(bad)


# -- refusals before any request (no token, no service, no broker) ---------------------------
@pytest.fixture
def no_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home with no token and a service URL nothing listens on."""
    for name in ("MODELVC_TOKEN", "MODELVC_TOKEN_FILE", "MODELVC_ACTOR", "MODELVC_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELVC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELVC_MODEL", "churn")
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "127.0.0.1:1")
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["rollout", "start", "production", "--to", "v2", "--steps", "50,10"], "--steps"),
        (["rollout", "start", "production", "--to", "v2", "--step-timeout", "5"], "30s, 10m"),
        (["rollout", "start", "production", "--to", "v2", "--max-regression", "f1=1"], "f1=1"),
        (["rollout", "start", "production", "--to", "v2", "--min-labels", "-1"], "--min-labels"),
        (["rollout", "start", "production", "--to", "v2", "--max-p99-ms", "0"], "above 0"),
        (["rollout", "start", "p", "--to", "v2", "--max-dead-letter-rate", "2"], "from 0 to 1"),
        (["rollout", "abort", "r1"], "modelvc rollout abort r1 --reason TEXT"),
        (["rollout", "promote", "r1"], "modelvc rollout promote r1 --reason TEXT"),
        (["rollout", "pause", "r1", "--reason", "x" * 1025], "--reason is over 1024"),
        (["rollout", "start", "production"], "--to"),
        # No criterion: every step would advance, however bad the candidate.
        (["rollout", "start", "production", "--to", "v2"], "--max-regression logloss=0.01"),
        (["rollout", "start", "production", "--to", "v2"], "--max-dead-letter-rate"),
        (["rollout", "start", "p", "--to", "v2", "--steps", "100", "--max-p99-ms", "9"], "10,100"),
        (["shadow", "start", "production"], "--candidate"),
    ],
)
def test_a_bad_command_line_is_a_usage_error_before_any_request(
    no_service: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err and f"usage: modelvc {argv[0]}" in err


def test_a_bad_labels_file_publishes_nothing_and_names_the_line(
    no_service: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = no_service / "labels.csv"
    labels.write_text("feature_event_id,value\ne-1,1\ne-2,\n")
    assert main(["publish-labels", str(labels)]) == 1  # refused, not "Kafka unreachable" (3)
    err = capsys.readouterr().err
    assert f"{labels}:3: it has no value" in err and "nothing was published" in err


def test_a_bad_reference_sample_is_refused_before_the_model_is_uploaded(
    no_service: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELVC_TOKEN", TOKEN)
    monkeypatch.setenv("MODELVC_URL", "http://127.0.0.1:1")
    sample = no_service / "train.csv"
    sample.write_text("x,y\n1,2\n3\n")
    model = no_service / "model.txt"
    model.write_text("tree\n")
    # Exit 1 (refused here), not 3: the unreachable service was never asked.
    assert main(["commit", str(model), "-m", "m", "--reference", str(sample)]) == 1
    assert f"{sample}:3: 1 fields under a header of 2" in capsys.readouterr().err


def test_a_reference_bins_the_columns_the_model_reads() -> None:
    sample = Sample(("x", "label", "y"), tuple((float(i), 1.0, float(i % 7)) for i in range(100)))
    reference = reference_from_json(reference_json(sample, ["x", "y", "z"], "s.csv"))
    assert set(reference.features) == {"x", "y"} and reference.rows == 100
    everything = reference_from_json(reference_json(sample, None, "s.csv"))
    assert set(everything.features) == {"x", "label", "y"}
    with pytest.raises(Refused, match=r"s\.csv has no column the model reads"):
        reference_json(sample, ["a"], "s.csv")


def test_a_reference_the_service_would_refuse_is_refused_before_upload() -> None:
    rng = random.Random(5)
    names = tuple(f"feature_{i}" for i in range(5000))  # 9 edges each: over 1 MiB
    sample = Sample(names, tuple(tuple(rng.random() for _ in names) for _ in range(50)))
    with pytest.raises(Refused, match=r"s\.csv: .* pass fewer columns"):
        reference_json(sample, None, "s.csv")


def test_a_reference_sample_is_read_as_numbers_without_the_reserved_columns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.csv"
    path.write_text("entity_key,x,colour\nc1,1.5,red\nc2,,blue\n")
    sample = read_reference_sample(path)
    assert sample.names == ("x", "colour")
    assert sample.rows[0][0] == 1.5 and all(v != v for v in (*sample.rows[0][1:], *sample.rows[1]))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(Refused, match=r"empty\.csv is empty"):
        read_reference_sample(tmp_path / "empty.csv")


def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (found,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found.choices)


def test_every_new_command_and_action_has_help() -> None:
    commands = subcommands(parser())
    for name in ("publish-labels", "shadow", "rollout", "monitor"):
        assert commands[name].description, name
    for name, actions in (
        ("shadow", ("start", "stop", "list")),
        ("rollout", ("start", "status", "pause", "resume", "abort", "promote")),
    ):
        choices = subcommands(commands[name])
        assert set(choices) == set(actions)
        assert all(choices[a].description for a in actions)


# -- what the CLI asks of the service ---------------------------------------------------
class Recorder(BaseHTTPRequestHandler):
    """Answers as the API's routes do, and remembers each request."""

    seen: ClassVar[list[tuple[str, str, Any]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        is_json = self.headers.get("Content-Type") == "application/json"
        body = json.loads(raw) if raw and is_json else raw
        Recorder.seen.append((self.command, self.path, body))
        path = self.path.split("?")[0]
        answer: Any = {"model": "churn", "event": "Done", "seq": 1, "ref": "", "repeated": False}
        if path == "/v1/artifacts":
            answer = {
                "sha256": "a" * 64,
                "signature": {"inputs": [{"name": "x", "type": "double"}]},
            }
        elif path == "/v1/references":
            answer = {"sha256": SHA}
        elif path.endswith("/commits"):
            answer = {"ref": "main", "head": "c" * 64, "repeated": False}
        elif path.endswith("/rollouts") and self.command == "POST":
            answer = {"rollout": {"id": "r0123456789a"}}
        elif path.endswith("/monitor"):
            answer = {"model": "churn", "window_ms": 60_000, "versions": []}
        data = json.dumps(answer).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def service(no_service: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("MODELVC_TOKEN", TOKEN)
        monkeypatch.setenv("MODELVC_URL", f"http://127.0.0.1:{server.server_address[1]}")
        Recorder.seen = []
        yield Recorder.seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_rollout_start_sends_the_policy_the_flags_say(
    service: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["rollout", "start", "production", "--to", "v2", "--steps", "5,50,100"]
    argv += ["--min-labels", "500", "--max-regression", "logloss=0.01"]
    argv += ["--max-regression", "auc=0.02", "--max-p99-ms", "50", "--max-dead-letter-rate"]
    argv += ["0.001", "--step-timeout", "10m", "--allow-signature-change"]
    assert main(argv) == 0
    ((method, path, body),) = service
    assert (method, path) == ("POST", "/v1/models/churn/rollouts")
    assert {k: v for k, v in body.items() if k != "command_id"} == {
        "alias": "production",
        "to": "v2",
        "steps": [5, 50, 100],
        "min_labels": 500,
        "max_regression": {"logloss": 0.01, "auc": 0.02},
        "max_p99_ms": 50.0,
        "max_dead_letter_rate": 0.001,
        "step_timeout_ms": 600_000,
        "allow_signature_change": True,
    }
    assert "modelvc -M churn rollout status r0123456789a" in capsys.readouterr().out


def test_manual_decisions_and_shadows_use_their_routes(service: list[Any]) -> None:
    assert main(["rollout", "abort", "r1", "--reason", "p99 too high", "-M", "fraud"]) == 0
    assert main(["rollout", "pause", "r1"]) == 0
    assert main(["shadow", "start", "production", "--candidate", "exp"]) == 0
    assert main(["shadow", "stop", "production"]) == 0
    writes = [(m, p, b) for m, p, b in service]
    service.clear()
    assert main(["shadow"]) == main(["rollout", "status"]) == 0  # listings
    assert [(m, p) for m, p, _ in service] == [
        ("GET", "/v1/models/churn/shadow"),
        ("GET", "/v1/models/churn/rollouts"),
    ]
    assert [(m, p, {k: v for k, v in b.items() if k != "command_id"}) for m, p, b in writes] == [
        ("POST", "/v1/models/fraud/rollouts/r1/abort", {"reason": "p99 too high"}),
        ("POST", "/v1/models/churn/rollouts/r1/pause", {"reason": ""}),
        ("POST", "/v1/models/churn/shadow", {"alias": "production", "candidate": "exp"}),
        ("POST", "/v1/models/churn/shadow/stop", {"alias": "production"}),
    ]


def test_commit_with_a_reference_uploads_the_bins_and_links_them(
    service: list[Any], tmp_path: Path
) -> None:
    sample = tmp_path / "train.csv"
    sample.write_text("x,label\n" + "".join(f"{i},{i % 2}\n" for i in range(50)))
    model = tmp_path / "model.txt"
    model.write_text("tree\n")
    assert main(["commit", str(model), "-m", "with bins", "--reference", str(sample)]) == 0
    assert [(m, p) for m, p, _ in service] == [
        ("POST", "/v1/artifacts"),
        ("POST", "/v1/references"),
        ("POST", "/v1/models/churn/commits"),
    ]
    uploaded = service[1][2]
    assert uploaded["format"] == "modelvc.reference/1"
    assert "x" in json.dumps(uploaded) and "label" not in json.dumps(uploaded)
    assert service[2][2]["reference_sha256"] == SHA


def test_monitor_asks_for_the_ref_and_windows(
    service: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["monitor", "--ref", "production", "--last", "3"]) == 0
    ((method, path, _),) = service
    assert method == "GET" and path.startswith("/v1/models/churn/monitor?")
    assert "ref=production" in path and "last=3" in path
    assert "no predictions of churn measured yet" in capsys.readouterr().out


# -- on a broker ----------------------------------------------------------------------------
@pytest.mark.broker
def test_published_labels_reach_the_labels_topic_keyed_for_the_join(
    bootstrap: str, namespace: str, no_service: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(namespace=namespace, bootstrap=bootstrap)
    ensure_topics(settings)
    monkeypatch.setenv("KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("MODELVC_NAMESPACE", namespace)
    labels = no_service / "labels.jsonl"
    labels.write_text(
        '{"feature_event_id": "e-1", "value": 1, "label_time": 5}\n'
        '{"entity_key": "customer-17", "event_time": 7, "values": [0.5, 2]}\n'
    )
    assert main(["publish-labels", str(labels)]) == 0
    records = list(read_topic(settings.access, settings.labels_topic, idle_timeout=20))
    got = sorted(
        ((r.key, LABELS.decode(r.value)) for r in records if r.value),
        key=lambda kv: kv[0] or b"",
    )
    assert [k for k, _ in got] == [b"customer-17", b"e-1"]
    by_entity, by_event = (label for _, label in got)
    assert (by_event["model"], by_event["values"], by_event["label_time"]) == ("churn", [1.0], 5)
    assert (by_entity["event_time"], by_entity["values"]) == (7, [0.5, 2.0])

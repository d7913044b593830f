"""The CLI as a user runs it: a separate process against a running stack."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from modelvc.client import ClientError
from modelvc.stack import Stack
from tests.conftest import train_model

pytestmark = pytest.mark.broker


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelvc.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


# Who the CLI is comes from the home's admin.token unless a test says otherwise.
IDENTITY_ENV = ("MODELVC_ACTOR", "MODELVC_TOKEN", "MODELVC_TOKEN_FILE")


def modelvc(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI as the user of the stack's home; ``env`` adds variables (e.g. MODELVC_TOKEN)."""
    base = {k: v for k, v in os.environ.items() if k not in IDENTITY_ENV}
    return run_cli(base | {"MODELVC_URL": stack.url, "MODELVC_HOME": str(stack.home)} | env, *args)


def ok(stack: Stack, *args: str, **env: str) -> str:
    done = modelvc(stack, *args, **env)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def stack(module_serving: Stack) -> Stack:
    """This module's tests share one stack (with a worker, for the one that tails predictions).

    Each keeps to a model of its own (:func:`model`), made current by its first `create`:
    the home, and so its current model, is shared, and runs one test at a time.
    """
    return module_serving


def test_git_like_story(stack: Stack, model: str, tmp_path: Path) -> None:
    v1 = train_model(tmp_path / "v1.txt", seed=1)
    v2 = train_model(tmp_path / "v2.txt", seed=2, rounds=9)
    ok(stack, "create", model)
    first = json.loads(
        ok(
            stack,
            "--json",
            "commit",
            str(v1),
            "-m",
            "v1",
            "--param",
            "rounds=5",
            "--metric",
            "auc=0.8",
        )
    )["head"]
    ok(stack, "branch", "create", "exp")
    ok(
        stack,
        "commit",
        str(v2),
        "--branch",
        "exp",
        "-m",
        "v2",
        "--param",
        "rounds=9",
        "--metric",
        "auc=0.9",
    )
    assert "Merged" in ok(stack, "merge", "exp")
    ok(stack, "alias", "set", "production", "main")
    ok(stack, "rollback", "main", "--to", first[:8], "--reason", "canary failed")

    log = ok(stack, "log", "--graph")
    assert "(main) v1" in log and "@production" in log and "canary failed" in log
    diff = ok(stack, "diff", "main", "exp")
    assert "rounds: 5 -> 9" in diff and "auc: 0.8 -> 0.9" in diff
    refs = json.loads(ok(stack, "--json", "refs"))
    assert refs["branches"]["main"] == first and refs["aliases"]["production"] != first
    shown = json.loads(ok(stack, "--json", "show", "production~1"))
    assert shown["id"] == first

    stale = modelvc(stack, "commit", str(v1), "-m", "late", "--expect-head", "exp")
    assert stale.returncode == 1 and "--expect-head" in stale.stderr and stale.stdout == ""
    missing = modelvc(stack, "show", "nope")
    assert missing.returncode == 1 and f"modelvc -M {model} refs" in missing.stderr
    pickle_file = tmp_path / "model.pkl"
    pickle_file.write_bytes(b"\x80\x05junk")
    refused = modelvc(stack, "commit", str(pickle_file), "-m", "pickled")
    assert refused.returncode == 1 and "save_model" in refused.stderr


def hint_lines(stderr: str) -> list[list[str]]:
    """The command lines after `modelvc` that a refusal's `hint:` lines suggest."""
    lines = [
        line.removeprefix("hint: ") for line in stderr.splitlines() if line.startswith("hint: ")
    ]
    return [shlex.split(line)[1:] for line in lines]


def test_refusals_give_hints_the_cli_runs(stack: Stack, model: str, tmp_path: Path) -> None:
    v1 = train_model(tmp_path / "v1.txt", seed=1)
    v2 = train_model(tmp_path / "v2.txt", seed=2, rounds=9)
    ok(stack, "create", model)
    base = json.loads(ok(stack, "--json", "commit", str(v1), "-m", "v1"))["head"]

    # The current model is not named on the line, yet the hint names it with -M.
    missing = modelvc(stack, "commit", str(v2), "--branch", "exp", "-m", "v2")
    assert missing.returncode == 1 and "create it first" in missing.stderr
    assert hint_lines(missing.stderr) == [["-M", model, "branch", "create", "exp"]]
    ok(stack, *hint_lines(missing.stderr)[0])  # the hint, run as printed
    ok(stack, "commit", str(v2), "--branch", "exp", "-m", "v2")
    ok(stack, "commit", str(v2), "-m", "v3")

    conflict = modelvc(stack, "merge", "exp")
    assert conflict.returncode == 1 and f"merge base {base}," in conflict.stderr
    suggested = hint_lines(conflict.stderr)
    assert suggested == [
        ["-M", model, "merge", "exp", "--into", "main", "--strategy", "ours"],
        ["-M", model, "merge", "exp", "--into", "main", "--strategy", "theirs"],
        ["-M", model, "merge", "exp", "--into", "main", "--artifact", "FILE"],
    ]
    as_data = modelvc(stack, "--json", "merge", "exp")
    body = json.loads(as_data.stderr)
    assert as_data.returncode == 1 and body["merge_bases"] == [base] == [body["merge_base"]]
    assert body["hint"] == {
        "code": "merge",
        "args": {"model": model, "source": "exp", "into": "main"},
    }
    assert "Merged" in ok(stack, *suggested[1])


def bad_usage(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no model selected and no service: a usage error must not reach either."""
    env = {k: v for k, v in os.environ.items() if k != "MODELVC_MODEL"}
    env |= {"MODELVC_URL": "http://127.0.0.1:9", "MODELVC_HOME": str(tmp_path)}
    return run_cli(env, *args)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("commit", "m.txt", "-m", "x"), "no model selected"),
        (("-M", "churn", "commit", "m.txt", "-m", "x", "--metric", "auc=high"), "not a number"),
        (("-M", "churn", "commit", "m.txt", "-m", "x", "--param", "rounds"), "key=value"),
        (("-M", "churn", "merge", "exp"), None),  # reaches the service: exit 3, not usage
        (("-M", "churn", "branch", "create"), "branch create needs a NAME"),
        (("-M", "churn", "alias", "set", "production"), "needs a REF"),
        (("audit", "served"), "needs a PREDICTION_ID"),
        (("-M", "churn", "commit", "missing.txt", "-m", "x"), "No such file or directory"),
        (("merge",), "the following arguments are required: source"),  # argparse's own
    ],
)
def test_usage_errors_exit_2_with_the_usage_and_the_message(
    tmp_path: Path, args: tuple[str, ...], says: str | None
) -> None:
    (tmp_path / "m.txt").write_text("not even read: usage comes first")
    done = bad_usage(tmp_path, *(str(tmp_path / a) if a.endswith(".txt") else a for a in args))
    if says is None:
        assert done.returncode == 3, done.stderr  # a control: a sound line goes on
        return
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "usage: modelvc" in done.stderr and done.stdout == ""
    assert "Traceback" not in done.stderr


def test_unreachable_service_says_how_to_start_it(tmp_path: Path) -> None:
    env = {**os.environ, "MODELVC_URL": "http://127.0.0.1:9", "MODELVC_HOME": str(tmp_path)}
    done = run_cli(env, "-M", "x", "refs")
    assert done.returncode == 3 and "modelvc up" in done.stderr


def test_publish_a_file_and_tail_the_predictions(stack: Stack, model: str, tmp_path: Path) -> None:
    import lightgbm as lgb
    import numpy as np

    x = np.random.default_rng(1).normal(size=(200, 2))
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 4},
        lgb.Dataset(x, (x[:, 1] > 0).astype(int), feature_name=["a", "b"]),
        num_boost_round=4,
    )
    booster.save_model(str(tmp_path / "m.txt"))
    ok(stack, "create", model)
    head = json.loads(ok(stack, "--json", "commit", str(tmp_path / "m.txt"), "-m", "v1"))["head"]
    csv_file = tmp_path / "features.csv"
    csv_file.write_text("event_id,entity_key,a,b\ncsv-1,u1,0.5,-1.0\ncsv-2,u2,-0.5,2.0\n")
    jsonl_file = tmp_path / "features.jsonl"
    jsonl_file.write_text(
        '{"event_id": "js-1", "features": {"a": 1.0, "b": 0.1}}\n'
        '{"event_id": "js-2", "entity_key": "u9", "a": 0.0, "b": -3.0}\n'
    )
    assert "published 2" in ok(stack, "publish", str(csv_file))
    assert "published 2" in ok(stack, "publish", str(jsonl_file))
    # The stack is shared: only this model's predictions are this test's.
    out = ok(
        stack,
        "-M",
        model,
        "--json",
        "tail",
        "predictions",
        "--from-beginning",
        "-n",
        "4",
        "--idle-timeout",
        "30",
    )
    got = {p["feature_event_id"]: p for p in map(json.loads, out.splitlines())}
    assert set(got) == {"csv-1", "csv-2", "js-1", "js-2"}
    assert {p["commit_id"] for p in got.values()} == {head}
    assert got["csv-1"]["scores"] == [booster.predict(np.array([[0.5, -1.0]]))[0]]
    human = ok(
        stack,
        "-M",
        model,
        "tail",
        "predictions",
        "--from-beginning",
        "-n",
        "1",
        "--idle-timeout",
        "30",
    )
    assert f"{model}@main" in human and head[:10] in human


def test_finding_6_names_like_commit_ids_are_refused_and_output_is_escaped(
    stack: Stack, model: str, tmp_path: Path
) -> None:
    v1 = train_model(tmp_path / "v1.txt", seed=1)
    v2 = train_model(tmp_path / "v2.txt", seed=2, rounds=9)
    hostile = "v2 \x1b[31mred\x1b[0m \u202egnp.exe\nfake line"
    ok(stack, "create", model)
    first = json.loads(ok(stack, "--json", "commit", str(v1), "-m", "v1"))["head"]
    second = json.loads(ok(stack, "--json", "commit", str(v2), "-m", hostile))["head"]

    # An alias spelled as the first commit's id, pointing at the second: refused, with a way out.
    shadow = modelvc(stack, "alias", "set", first, "main")
    assert shadow.returncode == 1 and "read as a commit id" in shadow.stderr
    assert f"alias-{first}" in shadow.stderr
    prefix = modelvc(stack, "branch", "create", first[:8], "--from", "main")
    assert prefix.returncode == 1 and "read as a commit id" in prefix.stderr
    newline = modelvc(stack, "alias", "set", "production\n", "main")
    assert newline.returncode == 1 and "control, format and bidi" in newline.stderr
    assert "\n" not in newline.stderr.rstrip("\n")  # the refusal quotes it escaped

    client = stack.client()
    assert client.resolve(model, first)["commit"] == first
    assert client.resolve(model, second)["commit"] == second
    assert json.loads(ok(stack, "--json", "show", first))["id"] == first

    # Human output escapes the message's controls; --json gives it back exactly.
    for args in (("log",), ("log", "--graph"), ("show", "main"), ("diff", first, "main")):
        out = ok(stack, *args)
        assert "\x1b" not in out and "\u202e" not in out, args
        assert "\\x1b[31mred" in out and "\\u202egnp.exe\\nfake line" in out, args
    logged = json.loads(ok(stack, "--json", "log"))["commits"]
    assert logged[0]["message"] == hostile


def test_finding_5_caret_flood_over_http_is_refused_quickly(
    stack: Stack, model: str, tmp_path: Path
) -> None:
    ok(stack, "create", model)
    ok(stack, "commit", str(train_model(tmp_path / "v1.txt", seed=1)), "-m", "v1")
    client = stack.client(timeout=30)
    floods = [
        lambda: client.rollback(model, "main", "main" + "^" * 40_000, "flood"),
        # 2,000 carets: past the ref limit, within an HTTP request line once quoted (%5E).
        lambda: client.resolve(model, "main" + "^" * 2_000),
        lambda: client.resolve(model, "main~" + "9" * 5_000),
        lambda: client.show(model, "main" + "^" * 200),
    ]
    for flood in floods:
        started = time.monotonic()
        with pytest.raises(ClientError) as caught:
            flood()
        assert time.monotonic() - started < 5  # 40 s before, and a 500 for the digits
        assert 400 <= caught.value.status < 500, caught.value.body
        assert caught.value.body["error"] in ("invalid", "unknown_ref"), caught.value.body
    with urllib.request.urlopen(stack.url + "/healthz", timeout=5) as health:
        assert health.status == 200
    assert "v1" in ok(stack, "log")  # the service still answers, with its history intact

"""The sandbox: LightGBM loads and scores a model in a child under limits, never in us.

Issue 7, finding 1: a native abort in LightGBM took the API process down. Here
the child aborts, overruns its memory, spins past its CPU time or sleeps past
the wall clock, and each time the test process only sees ArtifactRejected.

The misbehaving children run the entries below (``module:function``) through
the real bootstrap, with the real limits: nothing in the sandbox is replaced.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pytest

from streams import modelfile
from streams.errors import ArtifactRejected
from streams.formats import Checked
from streams.formats.lightgbm import LIGHTGBM
from streams.sandbox import Sandbox, SandboxLimits


# -- entries run in the child -------------------------------------------------------------
def abort_entry(data: bytes, request: dict[str, Any]) -> dict[str, Any]:
    os.abort()


def allocate_entry(data: bytes, request: dict[str, Any]) -> dict[str, Any]:
    block = bytearray(2 * int(request["memory_bytes"]))  # twice the limit
    return {"ok": True, "size": len(block)}


def spin_entry(data: bytes, request: dict[str, Any]) -> dict[str, Any]:
    while True:
        pass


def sleep_entry(data: bytes, request: dict[str, Any]) -> dict[str, Any]:
    time.sleep(120)
    return {"ok": True}


HERE = "tests.unit.test_sandbox"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Checked]:
    from tests.conftest import train_model

    data = train_model(tmp_path_factory.mktemp("m") / "model.txt").read_bytes()
    return data, LIGHTGBM.validate(data, modelfile.MAX_MODEL_BYTES)


def test_a_valid_model_loads_and_scores_in_the_child(
    model: tuple[bytes, Checked],
) -> None:
    data, summary = model
    result = Sandbox().check(data, summary)
    counts = tuple(result.answer[key] for key in ("num_trees", "num_class", "num_features"))
    assert counts == (5, 1, 4) and result.answer["outputs"] == 1
    assert result.format == "lightgbm" and result.seconds < 10


def test_finding_1_a_child_that_aborts_becomes_artifact_rejected(
    model: tuple[bytes, Checked],
) -> None:
    data, summary = model
    with pytest.raises(ArtifactRejected, match=r"crashed \(SIGABRT\)"):
        Sandbox(entry=f"{HERE}:abort_entry").check(data, summary)
    Sandbox().check(data, summary)  # and we are fine


def test_finding_1_a_child_over_its_memory_limit_becomes_artifact_rejected(
    model: tuple[bytes, Checked],
) -> None:
    data, summary = model
    limits = SandboxLimits(memory_bytes=768 << 20)
    with pytest.raises(ArtifactRejected, match="768 MiB memory limit"):
        Sandbox(limits, entry=f"{HERE}:allocate_entry").check(data, summary)


def test_finding_1_a_child_over_its_cpu_time_becomes_artifact_rejected(
    model: tuple[bytes, Checked],
) -> None:
    data, summary = model
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=30)
    started = time.monotonic()
    with pytest.raises(ArtifactRejected, match="1 s of CPU time"):
        Sandbox(limits, entry=f"{HERE}:spin_entry").check(data, summary)
    assert time.monotonic() - started < 20


def test_finding_1_a_child_past_the_wall_clock_is_killed_and_rejected(
    model: tuple[bytes, Checked],
) -> None:
    data, summary = model
    limits = SandboxLimits(wall_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(ArtifactRejected, match=r"within 1\.5 s"):
        Sandbox(limits, entry=f"{HERE}:sleep_entry").check(data, summary)
    assert time.monotonic() - started < 10


def test_a_model_lightgbm_reads_differently_from_its_summary_is_refused(
    model: tuple[bytes, Checked],
) -> None:
    data, summary = model
    with pytest.raises(ArtifactRejected, match="differently"):
        Sandbox().check(
            data, dataclasses.replace(summary, details={**summary.details, "num_trees": 6})
        )


def test_a_model_whose_scores_are_not_finite_is_refused(tmp_path: Path) -> None:
    from tests.unit.test_modelfile import edit_tree, train

    text = train(tmp_path, {"objective": "regression"}, rounds=3, y=list(range(400))).decode()
    for tree in range(3):
        leaves = int(text.split(f"Tree={tree}\nnum_leaves=")[1].split("\n")[0])
        text = edit_tree(text, tree, "leaf_value", " ".join(["1e308"] * leaves))
    data = text.encode()
    summary = LIGHTGBM.validate(data, len(data))  # every number is finite; their sum is not
    with pytest.raises(ArtifactRejected, match="NaN or infinity"):
        Sandbox().check(data, summary)

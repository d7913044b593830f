"""A commit's signature as `show`, `diff` and the API's diff answer present it (no broker).

The integration test (tests/integration/test_signatures.py) drives the same code through
the CLI against a stack; here are the cases a stack would make slow: long lists folded,
hostile feature names escaped, legacy commits without a signature.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from modelvc import render
from streams import queries
from streams.core.events import Commit
from streams.core.model_signature import CATEGORICAL, DOUBLE, Feature, ModelSignature
from tests.unit.test_render import _commit as commit_answer


def _signature(*inputs: tuple[str, str], outputs: int = 1) -> ModelSignature:
    return ModelSignature("lightgbm", tuple(Feature(n, t) for n, t in inputs), outputs)


def _commit(cid: str, signature: ModelSignature | None) -> Commit:
    return Commit(cid, (), "c" * 64, {}, {}, "m", "alice", 1_700_000_000_000, signature)


def _terminal_safe(text: str) -> bool:
    return all(ch.isprintable() or unicodedata.category(ch) == "Zs" for ch in text if ch != "\n")


def test_diff_names_added_removed_retyped_features_and_the_outputs_change() -> None:
    old = _signature(("age", DOUBLE), ("plan", DOUBLE), ("region", CATEGORICAL))
    new = _signature(("age", DOUBLE), ("plan", CATEGORICAL), ("tenure", DOUBLE), outputs=3)
    changes = queries.signature_changes(_commit("a" * 64, old), _commit("b" * 64, new))
    assert changes == {
        "added": [{"name": "tenure", "type": DOUBLE}],
        "removed": [{"name": "region", "type": CATEGORICAL}],
        "retyped": [{"name": "plan", "old": DOUBLE, "new": CATEGORICAL}],
        "outputs": {"old": 1, "new": 3},
        "format": None,
        "graph": [],
    }
    out = render.diff(_diff_answer(changes))
    assert "+ feature tenure (double)" in out
    assert "- feature region (categorical)" in out
    assert "~ feature plan: double -> categorical" in out
    assert "~ outputs: 1 -> 3" in out
    assert "(no differences)" not in out


def test_a_legacy_commit_has_no_signature_to_compare() -> None:
    sig = _signature(("age", DOUBLE))
    assert queries.signature_changes(_commit("a" * 64, None), _commit("b" * 64, sig)) is None
    assert render.diff(_diff_answer(None)).endswith("(no differences)")
    shown = render.commit(_commit_answer(None))
    assert "signature: none recorded" in shown


def test_show_prints_format_outputs_and_each_input_folding_long_lists() -> None:
    few = _signature(("age", DOUBLE), ("region", CATEGORICAL), outputs=2)
    shown = render.commit(_commit_answer(few.plain())).split("\n")
    assert "signature: lightgbm, 2 input(s), 2 output(s)" in shown
    assert "input    age double" in shown and "input    region categorical" in shown
    many = _signature(*((f"f{i}", DOUBLE) for i in range(5000)))
    shown = render.commit(_commit_answer(many.plain())).split("\n")
    assert "signature: lightgbm, 5,000 input(s), 1 output(s)" in shown
    assert sum(line.startswith("input ") for line in shown) == render.SHOWN_FEATURES
    assert shown[-1].strip() == "... and 4,960 more inputs (--json lists all)"
    # diff folds each list too
    changes = queries.signature_changes(_commit("a" * 64, few), _commit("b" * 64, many))
    out = render.diff(_diff_answer(changes)).split("\n")
    assert sum(line.startswith("+ feature") for line in out) == render.SHOWN_FEATURES
    assert "... and 4,960 more added (--json lists all)" in [line.strip() for line in out]


def test_hostile_feature_names_reach_no_terminal_raw() -> None:
    # Names are printable in the file (the parser refuses others), but a signature in the
    # log is anyone's: show escapes what the service sends.
    evil = "x\x1b[2J\u202e"
    sig = {"format": "lightgbm", "inputs": [{"name": evil, "type": DOUBLE}], "outputs": 1}
    shown = render.commit(_commit_answer(sig))
    assert _terminal_safe(shown) and "input    x\\x1b[2J\\u202e double" in shown
    changes = {"added": [{"name": evil, "type": DOUBLE}], "removed": [], "retyped": []}
    out = render.diff(_diff_answer({**changes, "outputs": None}))
    assert _terminal_safe(out) and "+ feature x\\x1b[2J\\u202e (double)" in out


def _commit_answer(signature: dict[str, Any] | None) -> dict[str, Any]:
    return commit_answer("a" * 64, [], signature=signature)


def _diff_answer(changes: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "a": _commit_answer(None),
        "b": {**_commit_answer(None), "id": "b" * 64},
        "artifact_changed": False,
        "params": [],
        "metrics": [],
        "signature": changes,
    }


def test_show_and_diff_print_an_onnx_models_format_and_graph() -> None:
    from streams.core.model_signature import Tensor

    graph = (
        Tensor("input", "input", "float", ("N", "2")),
        Tensor("label", "output", "int64", ("N",)),
        Tensor("probabilities", "output", "float", ("N", "2")),
    )
    onnx = ModelSignature("onnx", (Feature("a", DOUBLE), Feature("b", DOUBLE)), 2, graph)
    shown = render.commit(_commit_answer(onnx.plain())).split("\n")
    assert "signature: onnx, 2 input(s), 2 output(s)" in shown
    assert "graph    input  input float[N,2]" in shown
    assert "graph    output label int64[N]" in shown
    assert "graph    output probabilities float[N,2]" in shown
    old = _signature(("a", DOUBLE), ("b", DOUBLE), outputs=2)
    changes = queries.signature_changes(_commit("a" * 64, old), _commit("b" * 64, onnx))
    assert changes is not None and changes["format"] == {"old": "lightgbm", "new": "onnx"}
    out = render.diff(_diff_answer(changes)).split("\n")
    assert "~ format: lightgbm -> onnx" in out
    assert "+ graph input input: float[N,2]" in out
    assert "+ graph output probabilities: float[N,2]" in out
    back = queries.signature_changes(_commit("b" * 64, onnx), _commit("a" * 64, old))
    assert "- graph output label: int64[N]" in render.diff(_diff_answer(back)).split("\n")

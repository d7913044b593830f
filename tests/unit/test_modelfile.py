"""Our LightGBM text-model parser: hostile files are refused before LightGBM sees them.

Issue 7, findings 1 and 2: each file that crashed, hung or starved a process is
refused here with a reason, in time linear in its size. Real models of every
kind LightGBM writes are accepted. A Hypothesis fuzz run mutates real models
and feeds them through the parser and the sandbox: nothing but ArtifactRejected
ever comes out, and nothing hangs.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import modelfile
from streams.core.model_signature import CATEGORICAL, DOUBLE, Feature, ModelSignature
from streams.errors import ArtifactRejected, ArtifactTooLarge
from streams.formats.lightgbm import checked_of
from streams.sandbox import Sandbox, SandboxLimits
from tests.conftest import train_model


# -- helpers (also used by test_sandbox and test_hostile_models) -----------------------
def with_tree_sizes(text: str) -> str:
    """Recompute tree_sizes after an edit, so a test reaches the check it means to hit."""
    head, sep, rest = text.partition("\nTree=0\n")
    trees, end, tail = ("Tree=0\n" + rest).partition("end of trees\n")
    if not sep or not end:
        return text
    blocks = [b for b in re.split(r"(?m)^(?=Tree=\d+$)", trees) if b]
    sizes = " ".join(str(len(b.encode())) for b in blocks)
    head = re.sub(r"(?m)^tree_sizes=.*$", f"tree_sizes={sizes}", head)
    return head + "\n" + trees + end + tail


def edit_tree(text: str, tree: int, key: str, value: str) -> str:
    """Set ``key=value`` in tree ``tree`` (and fix tree_sizes)."""
    start = text.index(f"\nTree={tree}\n")
    line = re.compile(rf"(?m)^{key}=.*$")
    match = line.search(text, start)
    assert match is not None
    return with_tree_sizes(text[: match.start()] + f"{key}={value}" + text[match.end() :])


def edit_header(text: str, key: str, value: str) -> str:
    return re.sub(rf"(?m)^{key}=.*$", f"{key}={value}", text, count=1)


@pytest.fixture(scope="module")
def model_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The issue's model: a 5-tree binary booster, 4 features."""
    return train_model(tmp_path_factory.mktemp("m") / "model.txt").read_text()


def refused(text: str | bytes, match: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(ArtifactRejected, match=match):
        modelfile.validate(data)


# -- real models are accepted ------------------------------------------------------------
def train(tmp_path: Path, params: dict[str, object], rounds: int = 6, **data: object) -> bytes:
    import lightgbm as lgb

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5))
    x[:, 4] = rng.integers(0, 30, size=400)
    y = data.pop("y", (x[:, 0] > 0).astype(int))
    booster = lgb.train(
        {"verbosity": -1, "num_threads": 1, **params},
        lgb.Dataset(x, y, **data),  # type: ignore[arg-type]
        num_boost_round=rounds,
    )
    path = tmp_path / "m.txt"
    booster.save_model(str(path))
    return path.read_bytes()


@pytest.mark.parametrize(
    ("params", "extra"),
    [
        ({"objective": "binary"}, {}),
        ({"objective": "multiclass", "num_class": 3}, {"y": np.arange(400) % 3}),
        ({"objective": "multiclassova", "num_class": 3}, {"y": np.arange(400) % 3}),
        ({"objective": "regression", "linear_tree": True}, {"y": np.arange(400) * 0.1}),
        ({"objective": "binary", "max_cat_to_onehot": 2}, {"categorical_feature": [4]}),
        ({"objective": "binary", "min_data_in_leaf": 1000}, {}),  # one-leaf trees
        ({"objective": "binary", "interaction_constraints": [[0, 1], [2, 3]]}, {}),
        ({"objective": "binary", "boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.5}, {}),
    ],
)
def test_real_models_of_every_kind_are_accepted_and_load_in_the_sandbox(
    tmp_path: Path, params: dict[str, object], extra: dict[str, Any]
) -> None:
    data = train(tmp_path, params, **extra)
    summary = modelfile.validate(data)
    num_class = int(params.get("num_class", 1))  # type: ignore[call-overload]
    assert (summary.num_features, summary.num_class) == (5, num_class)
    assert summary.num_trees == 6 * num_class or summary.max_leaves == 1  # stops: no split
    assert summary.bytes_per_row == 40 * (5 + num_class)
    assert summary.model_bytes >= 96 * summary.total_leaves
    Sandbox().check(data, checked_of(summary))


def test_the_summary_describes_the_model(model_text: str) -> None:
    s = modelfile.validate(model_text.encode())
    assert (s.num_trees, s.num_features, s.num_class, s.num_tree_per_iteration) == (5, 4, 1, 1)
    assert s.feature_names == ("Column_0", "Column_1", "Column_2", "Column_3")
    assert s.objective == "binary sigmoid:1" and s.max_leaves == 4
    assert s.scoring_bytes(1000) == s.model_bytes + 1000 * 40 * (4 + 1)


# -- finding 1: one upload killed the API -------------------------------------------------
def test_finding_1_a_truncated_model_is_refused_before_lightgbm_sees_it(model_text: str) -> None:
    data = model_text.encode()
    with pytest.raises(ArtifactRejected):
        modelfile.validate(data[:3622])  # head -c 3622 model.txt
    refused(data[: data.index(b"Tree=3") + 100], "truncated|tree_sizes")  # cut mid-tree
    # Every cut before the end of the trees, or inside the parameters, is refused.
    trees_end = data.index(b"end of trees") + len("end of trees") - 1
    parameters = range(data.index(b"parameters:") + 1, data.index(b"end of parameters") + 16)
    for cut in [*range(1, trees_end, 5), trees_end, *parameters[::5]]:
        with pytest.raises(ArtifactRejected):
            modelfile.validate(data[:cut])


def test_finding_1_num_tree_per_iteration_zero_is_refused(model_text: str) -> None:
    refused(edit_header(model_text, "num_tree_per_iteration", "0"), "num_tree_per_iteration")


def test_finding_1_a_million_entry_tree_sizes_is_refused_in_linear_time(model_text: str) -> None:
    text = edit_header(model_text, "tree_sizes", " ".join(["573"] * 1_000_000))
    started = time.perf_counter()
    refused(text, "tree_sizes")
    assert time.perf_counter() - started < 10  # quadratic took minutes; linear is ~0.1 s


def test_finding_1_tree_sizes_that_do_not_match_the_trees_are_refused(model_text: str) -> None:
    refused(edit_header(model_text, "tree_sizes", "573 463 573 469 570"), "tree_sizes says")
    refused(edit_header(model_text, "tree_sizes", "573 463 573 469"), "end of trees")
    refused(edit_header(model_text, "tree_sizes", "573 463 573 469 569 100"), "Tree=5")


# -- finding 2: accepted models poisoned workers -----------------------------------------
def test_finding_2_a_cyclic_tree_is_refused(model_text: str) -> None:
    # Tree=0: left_child=1 -1 -2, right_child=2 -3 -4; the root's left child becomes the root.
    refused(edit_tree(model_text, 0, "left_child", "0 -1 -2"), "reached twice")
    # A cycle below the root: node 2's right child points back to node 1.
    refused(edit_tree(model_text, 0, "right_child", "2 -3 1"), "reached twice")
    # Out of range child links.
    refused(edit_tree(model_text, 0, "left_child", "3 -1 -2"), "left_child")
    refused(edit_tree(model_text, 0, "right_child", "2 -3 -5"), "right_child")


def test_finding_2_num_class_two_billion_is_refused(model_text: str) -> None:
    refused(edit_header(model_text, "num_class", "2000000000"), "num_class")
    text = edit_header(model_text, "num_tree_per_iteration", "2000000000")
    refused(edit_header(text, "num_class", "2000000000"), "num_class")


def test_finding_2_a_header_only_model_with_zero_trees_is_refused(model_text: str) -> None:
    header = model_text[: model_text.index("Tree=0")]
    tail = model_text[model_text.index("end of trees") :]
    refused(edit_header(header + tail, "tree_sizes", ""), "no trees")
    refused(edit_header(header, "tree_sizes", ""), "no trees")


def test_finding_2_a_split_feature_beyond_max_feature_idx_is_refused(model_text: str) -> None:
    refused(edit_tree(model_text, 0, "split_feature", "0 0 4"), "split_feature")
    refused(edit_tree(model_text, 0, "split_feature", "0 0 -1"), "split_feature")


def test_finding_2_outputs_must_match_num_class(model_text: str) -> None:
    refused(edit_header(model_text, "objective", "multiclass num_class:9"), "num_class")
    refused(edit_header(model_text, "objective", "binary sigmoid:0"), "sigmoid")
    refused(edit_header(model_text, "objective", "nonsense"), "unknown objective")


# -- every count, length and number ------------------------------------------------------
@pytest.mark.parametrize(
    ("tree", "key", "value", "why"),
    [
        (0, "num_leaves", "5", "entries, expected"),
        (0, "num_leaves", "0", "num_leaves"),
        (0, "leaf_value", "1 2 3", "leaf_value"),
        (0, "leaf_value", "1 2 3 1e999", "finite"),
        (0, "threshold", "1 2 nan", "not a number"),
        (0, "decision_type", "2 2 99", "decision_type"),
        (0, "num_cat", "1", "cat_boundaries"),
        (0, "decision_type", "3 2 2", "categorical"),
        (1, "split_gain", "1 2 3", "split_gain"),
        (1, "is_linear", "1", "is_linear=1"),
    ],
)
def test_array_lengths_ranges_and_numbers_are_checked(
    model_text: str, tree: int, key: str, value: str, why: str
) -> None:
    refused(edit_tree(model_text, tree, key, value), why)


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("num_class", "0", "num_class"),
        ("max_feature_idx", "4", "feature_names has 4 entries"),
        ("max_feature_idx", "99999999", "max_feature_idx"),
        ("feature_names", "a b c a", "twice"),
        ("feature_names", "a  b c", "entries|empty"),
        ("label_index", "-1", "label_index"),
        ("version", "v4 x", "version"),
    ],
)
def test_header_counts_and_names_are_checked(
    model_text: str, key: str, value: str, why: str
) -> None:
    refused(edit_header(model_text, key, value), why)


def test_hostile_lines_after_the_trees_are_refused(model_text: str) -> None:
    # LightGBM re-reads parameter lines as "[key: value]" and indexes past a missing ':'.
    refused(model_text.replace("[boosting: gbdt]", "[boosting"), "parameter line")
    refused(model_text.replace("[boosting: gbdt]", '[boosting: "}]'), "parameter line")
    # The Python package json-decodes the last line.
    deep = model_text.replace("pandas_categorical:null", "pandas_categorical:" + "[" * 100_000)
    refused(deep, "pandas_categorical")
    refused(model_text.replace("pandas_categorical:null", 'pandas_categorical:{"a":1}'), "pandas")
    refused(model_text.replace("end of parameters", "end of paramet"), "parameter")
    refused(model_text + "trailing junk\n", "unexpected line")


def test_control_characters_and_other_encodings_are_refused(model_text: str) -> None:
    refused(model_text.replace("\n", "\r\n"), "control character")
    refused(model_text.replace("Column_1", "Col\x00"), "control character")
    refused(model_text.encode("utf-16"), "binary")
    refused(b"\x80\x04\x95\x00", "pickle")
    refused(b"\x1f\x8b\x08\x00", "compressed")


def test_size_is_bounded_before_anything_is_read(model_text: str) -> None:
    with pytest.raises(ArtifactTooLarge):
        modelfile.validate(model_text.encode(), max_bytes=1000)


def test_parse_time_is_linear_in_the_size(tmp_path: Path, model_text: str) -> None:
    big = train(tmp_path, {"objective": "binary", "num_leaves": 31}, rounds=400)
    started = time.perf_counter()
    modelfile.validate(big)
    per_byte = (time.perf_counter() - started) / len(big)
    # A 10 MB line of digits (refused) and a 200k-line header (fine) go as fast, per byte.
    long_number = edit_tree(model_text, 0, "leaf_value", "1" * 10_000_000 + " 2 3 4").encode()
    blank_header = model_text.replace("version=v4\n", "version=v4\n" + "\n" * 200_000).encode()
    for hostile in (long_number, blank_header):
        started = time.perf_counter()
        with contextlib.suppress(ArtifactRejected):
            modelfile.validate(hostile)
        assert (time.perf_counter() - started) / len(hostile) < 20 * per_byte + 1e-7


# -- fuzz: mutations of real models through the parser and the sandbox ------------------
_NUMBERS = st.sampled_from(
    ["0", "-1", "1", "2", "3", "4", "5", "-5", "2147483648", "1e999", "-0", "0.5", "nan", "", "x"]
)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> bytes:
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "number", "swap", "insert", "token"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            lines.insert(i, draw(st.text(max_size=30)))
        elif op == "number":
            numbers = list(re.finditer(r"-?[0-9][0-9.e+-]*", lines[i]))
            if numbers:
                m = numbers[draw(st.integers(0, len(numbers) - 1))]
                lines[i] = lines[i][: m.start()] + draw(_NUMBERS) + lines[i][m.end() :]
        else:
            key, _, value = lines[i].partition("=")
            tokens = value.split(" ")
            k = draw(st.integers(0, len(tokens)))
            tokens.insert(k, draw(_NUMBERS))
            lines[i] = f"{key}={' '.join(tokens)}"
    out = "\n".join(lines)
    if draw(st.booleans()):
        out = with_tree_sizes(out)  # reach the checks behind the size check
    data = out.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


_FUZZ_SANDBOX = Sandbox(SandboxLimits(memory_bytes=1 << 30, cpu_seconds=5, wall_seconds=15))


@pytest.fixture(scope="module")
def fuzz_bases(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("fuzz")
    categorical = train(
        tmp, {"objective": "binary", "max_cat_to_onehot": 2}, rounds=3, categorical_feature=[4]
    ).decode()
    return [train_model(tmp / "b.txt", rounds=3).read_text(), categorical]


@settings(
    max_examples=200,
    deadline=None,  # the sandbox starts a process; the per-example bound is its wall limit
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(data=st.data())
def test_fuzzed_models_never_escape_as_anything_but_artifact_rejected(
    fuzz_bases: list[str], data: st.DataObject
) -> None:
    base = data.draw(st.sampled_from(fuzz_bases))
    model = data.draw(mutated(base))
    started = time.monotonic()
    try:
        summary = modelfile.validate(model)
        _FUZZ_SANDBOX.check(model, checked_of(summary))
    except ArtifactRejected:
        pass
    assert time.monotonic() - started < 20  # never a hang


def chain_trees(text: str, trees: int, leaves: int) -> str:
    """The first ``trees`` trees made chains: each split sends one side to a leaf."""
    inner = leaves - 1

    def ints(values: object) -> str:
        return " ".join(map(str, values))  # type: ignore[call-overload]

    fields = {
        "num_leaves": str(leaves),
        "split_feature": ints([0] * inner),
        "split_gain": ints([1] * inner),
        "threshold": ints([0.5] * inner),
        "decision_type": ints([2] * inner),
        "left_child": ints(~i for i in range(inner)),
        "right_child": ints([*range(1, inner), ~inner]),
        "leaf_value": ints([0.01] * leaves),
        "leaf_weight": ints([1] * leaves),
        "leaf_count": ints([1] * leaves),
        "internal_value": ints([0] * inner),
        "internal_weight": ints([1] * inner),
        "internal_count": ints([1] * inner),
    }
    head, sep, rest = text.partition("\nTree=0\n")
    blocks = [b for b in re.split(r"(?m)^(?=Tree=\d+$)", "Tree=0\n" + rest) if b]
    for index in range(trees):
        lines = blocks[index].split("\n")
        blocks[index] = "\n".join(
            f"{key}={fields[key]}" if key in fields else line
            for line in lines
            for key in [line.partition("=")[0]]
        )
    return with_tree_sizes(head + sep[:1] + "".join(blocks))


def test_attack_chain_shaped_trees_that_cost_milliseconds_a_row_are_refused(
    model_text: str,
) -> None:
    """Ten 131,072-leaf chains passed every count check and cost a worker 7.5 ms a row."""
    text = model_text
    shallow = chain_trees(text, 1, 1_000)
    assert modelfile.validate(shallow.encode()).path_splits >= 999  # a deep tree alone is fine
    deep = chain_trees(text, 4, modelfile.MAX_LEAVES)  # 4 x 131,071 splits: over the bound
    with pytest.raises(ArtifactRejected, match="splits"):
        modelfile.validate(deep.encode())


# -- the signature: what a commit records, read from the file ---------------------------
def test_a_numerical_model_has_double_inputs_in_training_order_and_one_output(
    model_text: str,
) -> None:
    signature = modelfile.validate(model_text.encode()).signature
    assert signature == ModelSignature(
        "lightgbm", tuple(Feature(f"Column_{i}", DOUBLE) for i in range(4)), 1
    )
    # The upload answer carries it in its plain form, which reads back the same.
    plain = modelfile.validate(model_text.encode()).plain()
    assert ModelSignature.from_plain(json.loads(json.dumps(plain))["signature"]) == signature


def test_a_categorical_feature_is_typed_categorical(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)  # the rows train() draws: column 4 is a category code
    rng.normal(size=(400, 5))
    category = rng.integers(0, 30, size=400)
    data = train(
        tmp_path,
        {"objective": "binary", "max_cat_to_onehot": 2},
        categorical_feature=[4],
        y=(category % 3 == 0).astype(int),
    )
    signature = modelfile.validate(data).signature
    assert signature.types() == {
        "Column_0": DOUBLE,
        "Column_1": DOUBLE,
        "Column_2": DOUBLE,
        "Column_3": DOUBLE,
        "Column_4": CATEGORICAL,
    }
    text = data.decode()
    infos = re.search(r"(?m)^feature_infos=(.*)$", text)
    assert infos is not None and re.fullmatch(r"[-0-9:]+", infos.group(1).split(" ")[4])
    # A tree's categorical split alone says so too (feature_infos rewritten to a range).
    kinds = re.findall(r"(?m)^decision_type=(.*)$", text)
    assert any(int(k) & 1 for line in kinds for k in line.split(" "))
    ranged = " ".join([*infos.group(1).split(" ")[:4], "[0:29]"])
    edited = modelfile.validate(edit_header(text, "feature_infos", ranged).encode())
    assert edited.signature.types()["Column_4"] == CATEGORICAL


@pytest.mark.parametrize(("objective", "classes"), [("multiclass", 3), ("multiclassova", 4)])
def test_a_multiclass_model_has_one_output_per_class(
    tmp_path: Path, objective: str, classes: int
) -> None:
    data = train(
        tmp_path, {"objective": objective, "num_class": classes}, y=np.arange(400) % classes
    )
    signature = modelfile.validate(data).signature
    assert signature.outputs == classes and len(signature.inputs) == 5
    assert set(signature.types().values()) == {DOUBLE}


@pytest.mark.parametrize(
    ("info", "kind"),
    [
        ("none", DOUBLE),  # a feature no tree uses
        ("[-1.5:2.25]", DOUBLE),
        ("3", CATEGORICAL),  # one category code
        ("-1:0:7", CATEGORICAL),
        ("1:2:x", DOUBLE),  # junk LightGBM tolerates: not category codes, so not categorical
        ("12345678901:1", DOUBLE),  # an 11-digit code is no int32 category
        ("1::2", DOUBLE),
        (":1", DOUBLE),
        ("1:" * 511 + "1", CATEGORICAL),  # the longest entry the parser takes
        ("1:" * 511 + "x", DOUBLE),
    ],
)
def test_hostile_feature_infos_never_make_a_feature_categorical_by_accident(
    model_text: str, info: str, kind: str
) -> None:
    infos = " ".join(["[0:1]", info, "none", "none"])
    signature = modelfile.validate(edit_header(model_text, "feature_infos", infos).encode())
    assert signature.signature.types()["Column_1"] == kind


def test_long_hostile_feature_infos_are_typed_in_linear_time(model_text: str) -> None:
    # 4 features, each an almost-codes entry at the length bound: no backtracking.
    infos = " ".join(["1:" * 511 + "x"] * 4)
    text = edit_header(model_text, "feature_infos", infos).encode()
    started = time.perf_counter()
    for _ in range(200):
        modelfile.validate(text)
    assert time.perf_counter() - started < 5

"""Our own parser for LightGBM text models: LightGBM never sees a file this refuses.

LightGBM's loader trusts its input: it follows ``tree_sizes`` as byte offsets,
scans for ``=`` past the end of a cut-off tree, follows child links without a
cycle check, indexes the feature row with ``split_feature`` unchecked, and
sizes every prediction by ``num_class``. Each of those crashed, hung or
exhausted a process (issue 7, findings 1 and 2). So the whole file is checked
here first, in one linear pass over its lines, using the standard library only:

- the header: ``tree``, ``version``, ``num_class`` (bounded),
  ``num_tree_per_iteration`` (equal to ``num_class``, as LightGBM always
  writes it: prediction writes ``num_tree_per_iteration`` outputs into a row of
  ``num_class``), ``label_index``, ``max_feature_idx`` (bounded), ``objective``
  (a known one; multiclass ones must name the same ``num_class``),
  ``feature_names`` / ``feature_infos`` / ``monotone_constraints`` (one per
  feature), ``tree_sizes`` (one per tree, each equal to its block's byte length);
- every ``Tree=i`` block: counts, array lengths, integer ranges, finite
  numbers, categorical bitsets, linear-leaf coefficients, and the shape of the
  tree itself (every internal node and leaf reached exactly once from the root);
- what follows ``end of trees``: feature importances, parameters whose form
  cannot break LightGBM's own re-parsing, and the ``pandas_categorical`` line
  that the Python package decodes as JSON.

Anything else is refused with :class:`~streams.errors.ArtifactRejected` naming
the line and what to do. :func:`validate` returns a :class:`ModelSummary`,
including a memory estimate for scoring (see :func:`_bytes_per_row`) and the
model's input signature (:func:`_signature`: what a commit records and a typed
feature event carries).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from streams.core.model_signature import CATEGORICAL, DOUBLE, Feature, ModelSignature
from streams.errors import ArtifactRejected, ArtifactTooLarge

# The parser reads ~4 MB/s (2 busy cores): 64 MiB bounds a check to ~20 s, and the
# sandbox loads a model that size within its 1 GiB default.
MAX_MODEL_BYTES = 64 * 1024 * 1024
MAX_CLASSES = 10_000
MAX_FEATURES = 100_000
MAX_TREES = 1_000_000
MIN_TREE_BYTES = 40  # 'Tree=0', num_leaves=1, num_cat=0, leaf_value=0, blank line
MAX_LEAVES = 131_072  # LightGBM's own ceiling for num_leaves
MAX_TOTAL_LEAVES = 20_000_000  # classes x iterations x leaves, summed over the trees
# Splits one row may walk, summed over the trees: 10,000 trees of depth 50 fit; ten
# 131,072-leaf chains (7.5 ms a row on this hardware) do not.
MAX_PATH_SPLITS = 500_000
MAX_CAT_WORDS = 10_000_000  # 32-bit words of categorical bitsets, summed
MAX_NAME_CHARS = 1024
MAX_PARAMETER_LINES = 2_000
MAX_LINE_CHARS_TAIL = 1 << 20  # one parameter / importance line

SAVE_HINT = (
    "save the LightGBM model with booster.save_model('model.txt') and commit that file "
    "(modelvc commit model.txt -m ...), or export the model to ONNX"
)

# Numbers are matched a whole line at a time (one C-level scan, linear: the
# possessive quantifiers leave nothing to backtrack into on a failed match).
_INT = r"-?[0-9]{1,10}"
_INTS = re.compile(rf"(?:{_INT}(?: {_INT})*+)?")
_FLOAT = r"-?(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?[0-9]{1,4})?"
_FLOATS = re.compile(rf"(?:{_FLOAT}(?: {_FLOAT})*+)?")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # everything but "\n"
_VERSION = re.compile(r"v[0-9]{1,3}")
# "[key: value]": LightGBM splits it at ':' and pastes the value into JSON unescaped,
# so no quotes or backslashes, and brackets only as flat lists of integers.
_PARAMETER = re.compile(
    r"\[([a-z][a-z0-9_]{0,63}): ([^\]\[\"\\]*+(?:\[[0-9, ]*+\][^\]\[\"\\]*+)*+)\]"
)
_OBJECTIVE_ARG = re.compile(r"[a-z_]{1,40}(?::" + _FLOAT + ")?")
_FEATURE_INFO = re.compile(r"[^\s]{1,1024}")
# How LightGBM writes the feature_infos entry of a categorical feature: its category
# codes joined by ':' (a numerical one is '[min:max]', an unused one 'none').
_CATEGORY_CODES = re.compile(r"-?[0-9]{1,10}(?::-?[0-9]{1,10})*+")
_IMPORTANCE = re.compile(r"(.{1,1024})=[0-9]{1,20}")

_OBJECTIVES = frozenset(
    {
        "regression", "regression_l1", "quantile", "huber", "fair", "poisson", "binary",
        "lambdarank", "rank_xendcg", "multiclass", "multiclassova", "cross_entropy",
        "cross_entropy_lambda", "mape", "gamma", "tweedie", "custom",
    }
)  # fmt: skip
_MULTICLASS = frozenset({"multiclass", "multiclassova"})
_SIGMOID = frozenset({"binary", "multiclassova"})

_HEADER_KEYS = frozenset(
    {
        "version", "num_class", "num_tree_per_iteration", "label_index", "max_feature_idx",
        "objective", "feature_names", "monotone_constraints", "feature_infos", "tree_sizes",
    }
)  # fmt: skip
# The 22 lines LightGBM's Tree parser knows (it reads at most 22).
_TREE_KEYS = frozenset(
    {
        "num_leaves", "num_cat", "split_feature", "split_gain", "threshold", "decision_type",
        "left_child", "right_child", "leaf_value", "leaf_weight", "leaf_count",
        "internal_value", "internal_weight", "internal_count", "cat_boundaries",
        "cat_threshold", "is_linear", "leaf_const", "num_features", "leaf_features",
        "leaf_coeff", "shrinkage",
    }
)  # fmt: skip
_LINEAR_KEYS = ("leaf_const", "num_features", "leaf_features", "leaf_coeff")
_SPLIT_KEYS = frozenset(
    {
        "split_feature", "split_gain", "threshold", "decision_type", "left_child", "right_child",
        "leaf_weight", "internal_value", "internal_weight", "internal_count", "cat_boundaries",
        "cat_threshold",
    }
)  # fmt: skip
_INT32 = (-(2**31), 2**31 - 1)
_MAX_DECISION_TYPE = 11  # categorical bit 1, default-left bit 2, missing type 0..2 in bits 2-3


@dataclass(frozen=True)
class ModelSummary:
    """What the validator learned about a model; the upload answer carries these fields."""

    num_trees: int
    num_features: int
    feature_names: tuple[str, ...]
    objective: str
    num_class: int
    num_tree_per_iteration: int
    max_leaves: int
    total_leaves: int
    bytes_per_row: int  # scoring memory per row of a batch, see _bytes_per_row
    model_bytes: int  # LightGBM's in-memory trees, see _model_bytes
    signature: ModelSignature  # inputs in training order with their types, outputs per row
    path_splits: int = 0  # most splits one row walks, all trees summed (scoring time per row)

    def scoring_bytes(self, rows: int) -> int:
        """Estimated memory to hold this model and score a batch of ``rows``."""
        return self.model_bytes + self.bytes_per_row * rows

    def plain(self) -> dict[str, Any]:
        """The JSON form (the upload answer): every field, the signature in its plain form."""
        return {**self.__dict__, "signature": self.signature.plain()}


def _bytes_per_row(num_features: int, num_class: int) -> int:
    """Memory one row of a scoring batch needs, from the model's shape.

    A worker builds each row as a Python list of floats (8-byte slot plus a
    24-byte float object per feature), copies it into a float64 matrix
    (8 bytes per feature), gets ``num_class`` float64 outputs from LightGBM
    (8 bytes each) and turns them into a Python list again (32 bytes each):

        bytes_per_row = 40 * num_features + 40 * num_class
    """
    return 40 * num_features + 40 * num_class


def _model_bytes(total_leaves: int, cat_words: int, linear_terms: int) -> int:
    """LightGBM's trees in memory: about 64 bytes per leaf plus its internal node.

    An internal node keeps split feature (x2), bin threshold, threshold,
    decision type, gain, two child links, value, weight and count (~57 bytes);
    a leaf keeps value, weight, count, parent and depth (~28 bytes); a tree of
    L leaves has L-1 internal nodes. Bitsets take 4 bytes per word (kept twice),
    linear leaves 12 bytes per coefficient (feature index and value).
    """
    return 96 * total_leaves + 8 * cat_words + 12 * linear_terms


def _signature(
    names: tuple[str, ...], infos: list[str], split_categorically: set[int], num_class: int
) -> ModelSignature:
    """The inputs in training order: categorical when LightGBM recorded the feature's
    category codes or a tree splits on it by category, else double. One output per class
    (binary, regression and ranking models give one)."""
    inputs = tuple(
        Feature(
            name,
            CATEGORICAL
            if i in split_categorically or _CATEGORY_CODES.fullmatch(infos[i])
            else DOUBLE,
        )
        for i, name in enumerate(names)
    )
    return ModelSignature("lightgbm", inputs, num_class)


def refuse(line: int | None, why: str) -> ArtifactRejected:
    where = f"line {line}: " if line is not None else ""
    return ArtifactRejected(f"not a valid LightGBM text model: {where}{why}; {SAVE_HINT}")


def sniff(data: bytes) -> None:
    """Refuse pickles, compressed files and archives by their first bytes, before decoding
    anything (for callers of :func:`validate` that did not go through format detection)."""
    # Lazily: streams.formats imports this module. It is the one home of these signatures.
    from streams.formats import HEAD_BYTES, refusal

    why = refusal(data[:HEAD_BYTES])
    if why is not None:
        raise ArtifactRejected(f"{why}; {SAVE_HINT}")


def validate(data: bytes, max_bytes: int = MAX_MODEL_BYTES) -> ModelSummary:
    """Check ``data`` is a LightGBM text model LightGBM can load safely, or say why not.

    Linear in ``len(data)``; refuses anything above ``max_bytes`` before reading it.
    """
    if len(data) > max_bytes:
        raise ArtifactTooLarge(
            f"the model is {len(data)} bytes; models are limited to {max_bytes} bytes"
        )
    sniff(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactRejected(f"binary file, not a LightGBM text model; {SAVE_HINT}") from exc
    if not text.startswith("tree"):
        raise ArtifactRejected(
            f"not a LightGBM text model (it must start with 'tree'); {SAVE_HINT}"
        )
    bad = _CONTROL.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise refuse(line, f"control character {bad.group()!r} (only '\\n' ends a line)")
    return _Parser(text.split("\n"), len(data)).parse()


@dataclass
class _Header:
    num_class: int
    ntpi: int
    num_features: int
    feature_names: tuple[str, ...]
    objective: str
    tree_sizes: list[int]
    feature_infos: list[str]


class _Parser:
    """One pass over the lines; ``self.i`` is the index of the next line to read."""

    def __init__(self, lines: list[str], size: int) -> None:
        self.lines = lines
        self.size = size
        self.i = 0
        self.total_leaves = 0
        self.cat_words = 0
        self.linear_terms = 0
        self.max_leaves = 0
        self.path_splits = 0  # the deepest path of every tree, summed: one row's worst case
        self.split_categorically: set[int] = set()  # features some tree splits by category

    def parse(self) -> ModelSummary:
        header = self._header()
        for index, size in enumerate(header.tree_sizes):
            self._tree(index, size, header.num_features)
        end = self.i
        if end >= len(self.lines) or self.lines[end] != "end of trees":
            if end >= len(self.lines) or self._blank_tail(end):
                raise refuse(None, "the file ends before 'end of trees' (is it truncated?)")
            raise refuse(
                end + 1,
                f"expected 'end of trees' after {len(header.tree_sizes)} trees "
                "(tree_sizes must list every tree)",
            )
        self.i += 1
        self._tail(set(header.feature_names))
        return ModelSummary(
            num_trees=len(header.tree_sizes),
            num_features=header.num_features,
            feature_names=header.feature_names,
            objective=header.objective,
            num_class=header.num_class,
            num_tree_per_iteration=header.ntpi,
            max_leaves=self.max_leaves,
            total_leaves=self.total_leaves,
            bytes_per_row=_bytes_per_row(header.num_features, header.num_class),
            model_bytes=_model_bytes(self.total_leaves, self.cat_words, self.linear_terms),
            signature=_signature(
                header.feature_names,
                header.feature_infos,
                self.split_categorically,
                header.num_class,
            ),
            path_splits=self.path_splits,
        )

    def _blank_tail(self, start: int) -> bool:
        return all(not line for line in self.lines[start:])

    # -- header ---------------------------------------------------------------------
    def _header(self) -> _Header:
        lines = self.lines
        if lines[0] != "tree":
            raise refuse(1, "the first line must be 'tree' alone")
        values: dict[str, tuple[int, str]] = {}
        self.i = 1
        while self.i < len(lines) and not lines[self.i].startswith("Tree="):
            line, number = lines[self.i], self.i + 1
            self.i += 1
            if not line or line == "average_output":
                continue
            if line == "end of trees":
                raise refuse(number, "the model has no trees; train at least one boosting round")
            key, eq, value = line.partition("=")
            if not eq or key not in _HEADER_KEYS:
                raise refuse(number, f"unknown header line {line[:60]!r}")
            if key in values:
                raise refuse(number, f"{key} appears twice")
            values[key] = (number, value)
        if self.i >= len(lines):
            if "tree_sizes" in values and _count(values["tree_sizes"][1]) == 0:
                raise refuse(None, "the model has no trees; train at least one boosting round")
            raise refuse(None, "the file ends before the first tree (is it truncated?)")

        def need(key: str) -> tuple[int, str]:
            if key not in values:
                raise refuse(None, f"the header has no {key}= line")
            return values[key]

        if "version" in values and not _VERSION.fullmatch(values["version"][1]):
            raise refuse(values["version"][0], "version must look like v4")
        num_class = _int(*need("num_class"), "num_class", 1, MAX_CLASSES)
        ntpi_line, ntpi_text = values.get("num_tree_per_iteration", (0, str(num_class)))
        ntpi = _int(ntpi_line, ntpi_text, "num_tree_per_iteration", 1, MAX_CLASSES)
        if ntpi != num_class:
            raise refuse(
                ntpi_line, f"num_tree_per_iteration={ntpi} must equal num_class={num_class}"
            )
        _int(*need("label_index"), "label_index", 0, _INT32[1])
        max_idx = _int(*need("max_feature_idx"), "max_feature_idx", 0, MAX_FEATURES - 1)
        num_features = max_idx + 1
        names = _feature_names(*need("feature_names"), num_features)
        infos_line, infos = need("feature_infos")
        feature_infos = _tokens(infos_line, infos, "feature_infos", num_features)
        for token in feature_infos:
            if not _FEATURE_INFO.fullmatch(token):
                raise refuse(infos_line, "feature_infos has an unreadable entry")
        if "monotone_constraints" in values:
            _ints(*values["monotone_constraints"], "monotone_constraints", num_features, -1, 1)
        objective = ""
        if "objective" in values:
            objective = _objective(*values["objective"], num_class)
        sizes_line, sizes_text = need("tree_sizes")
        count = _count(sizes_text)
        if count > MAX_TREES:
            raise refuse(sizes_line, f"tree_sizes lists more than {MAX_TREES} trees")
        if count * MIN_TREE_BYTES > self.size:
            # Checked before a single entry is parsed: a long list costs nothing.
            raise refuse(sizes_line, f"tree_sizes lists {count} trees, more than the file holds")
        tree_sizes = _ints(sizes_line, sizes_text, "tree_sizes", None, 1, MAX_MODEL_BYTES)
        if not tree_sizes:
            raise refuse(sizes_line, "the model has no trees; train at least one boosting round")
        if len(tree_sizes) % ntpi:
            raise refuse(
                sizes_line,
                f"{len(tree_sizes)} trees is not a whole number of iterations of {ntpi} trees",
            )
        return _Header(num_class, ntpi, num_features, names, objective, tree_sizes, feature_infos)

    # -- trees ----------------------------------------------------------------------
    def _tree(self, index: int, size: int, num_features: int) -> None:
        lines, start = self.lines, self.i
        if start >= len(lines) or (start == len(lines) - 1 and not lines[start]):
            raise refuse(None, f"the file ends before tree {index} (is it truncated?)")
        if lines[start] != f"Tree={index}":
            raise refuse(start + 1, f"expected 'Tree={index}', found {lines[start][:40]!r}")
        fields: dict[str, tuple[int, str]] = {}
        j = start + 1
        while j < len(lines) and lines[j]:
            line = lines[j]
            key, eq, value = line.partition("=")
            if not eq or key not in _TREE_KEYS:
                raise refuse(j + 1, f"tree {index} has an unknown line {line[:60]!r}")
            if key in fields:
                raise refuse(j + 1, f"tree {index} has {key} twice")
            fields[key] = (j + 1, value)
            j += 1
        if j >= len(lines) - 1:
            # LightGBM's tree reader scans for '=' and '\n' without an end check.
            raise refuse(None, f"the file ends inside tree {index} (is it truncated?)")
        while j < len(lines) - 1 and not lines[j]:
            j += 1
        block = lines[start:j]
        nbytes = sum(map(len, block)) + len(block)
        if not all(line.isascii() for line in block):
            raise refuse(start + 1, f"tree {index} has non-ASCII characters")
        if nbytes != size:
            raise refuse(
                start + 1,
                f"tree {index} is {nbytes} bytes but tree_sizes says {size} "
                "(the file was edited or cut)",
            )
        self.i = j
        self._check_tree(index, fields, num_features)

    def _check_tree(self, index: int, f: dict[str, tuple[int, str]], num_features: int) -> None:
        def need(key: str) -> tuple[int, str]:
            if key not in f:
                raise refuse(None, f"tree {index} has no {key}= line")
            return f[key]

        what = f"tree {index}"
        n = _int(*need("num_leaves"), f"{what} num_leaves", 1, MAX_LEAVES)
        num_cat = _int(*need("num_cat"), f"{what} num_cat", 0, n - 1)
        self.total_leaves += n
        self.max_leaves = max(self.max_leaves, n)
        if self.total_leaves > MAX_TOTAL_LEAVES:
            raise refuse(
                None,
                f"the trees have more than {MAX_TOTAL_LEAVES} leaves in all "
                "(classes x trees x leaves is bounded)",
            )
        _floats(*need("leaf_value"), f"{what} leaf_value", n)
        inner = n - 1
        if "leaf_count" in f:
            _ints(*f["leaf_count"], f"{what} leaf_count", n, *_INT32)
        if "shrinkage" in f:
            _floats(*f["shrinkage"], f"{what} shrinkage", 1)
        linear = _int(*f["is_linear"], f"{what} is_linear", 0, 1) if "is_linear" in f else 0
        if linear:
            self._check_linear(what, f, n, num_features)
        else:
            for key in _LINEAR_KEYS:
                if key in f:
                    raise refuse(f[key][0], f"{what} has {key} but is_linear=0")
        if n == 1:
            # LightGBM reads nothing else of a one-leaf tree; LightGBM itself writes
            # the other arrays empty (leaf_weight too), so only empty ones pass.
            for key in set(f) & _SPLIT_KEYS:
                if f[key][1]:
                    raise refuse(f[key][0], f"{what} has one leaf, so {key} must be empty")
            return
        for key, count, lo, hi in (
            ("decision_type", inner, 0, _MAX_DECISION_TYPE),
            ("internal_count", inner, *_INT32),
        ):
            if key in f:
                _ints(*f[key], f"{what} {key}", count, lo, hi)
        for key, count in (
            ("split_gain", inner),
            ("leaf_weight", n),
            ("internal_value", inner),
            ("internal_weight", inner),
        ):
            if key in f:
                _floats(*f[key], f"{what} {key}", count)
        # split_feature indexes the feature row unchecked: its range is what matters.
        split_feature = _ints(
            *need("split_feature"), f"{what} split_feature", inner, 0, num_features - 1
        )
        thresholds = _floats(*need("threshold"), f"{what} threshold", inner)
        left = _ints(*need("left_child"), f"{what} left_child", inner, -n, inner - 1)
        right = _ints(*need("right_child"), f"{what} right_child", inner, -n, inner - 1)
        self.path_splits += _check_shape(what, need("left_child")[0], n, left, right)
        if self.path_splits > MAX_PATH_SPLITS:
            # Scoring one row walks one path per tree: chain-shaped trees (one leaf per
            # level) cost a worker milliseconds per row although every count is in range.
            raise refuse(
                None,
                f"one prediction would walk more than {MAX_PATH_SPLITS:,} splits "
                "(the trees' depths, summed); train with a max_depth or fewer trees",
            )
        decision = (
            _ints(*f["decision_type"], f"{what} decision_type", inner, 0, _MAX_DECISION_TYPE)
            if "decision_type" in f
            else [0] * inner
        )
        self._check_categorical(what, f, num_cat, decision, thresholds)
        self.split_categorically.update(
            feature for feature, kind in zip(split_feature, decision, strict=True) if kind & 1
        )

    def _check_categorical(
        self,
        what: str,
        f: dict[str, tuple[int, str]],
        num_cat: int,
        decision: list[int],
        thresholds: list[float],
    ) -> None:
        if num_cat == 0:
            for key in ("cat_boundaries", "cat_threshold"):
                if key in f:
                    raise refuse(f[key][0], f"{what} has {key} but num_cat=0")
        else:
            for key in ("cat_boundaries", "cat_threshold"):
                if key not in f:
                    raise refuse(None, f"{what} has num_cat={num_cat} but no {key}= line")
            bounds_line = f["cat_boundaries"][0]
            bounds = _ints(*f["cat_boundaries"], f"{what} cat_boundaries", num_cat + 1, 0, None)
            words = _count(f["cat_threshold"][1])
            if bounds[0] != 0 or any(b > a for a, b in zip(bounds[1:], bounds, strict=False)):
                raise refuse(bounds_line, f"{what} cat_boundaries must rise from 0")
            if bounds[-1] != words:
                raise refuse(
                    bounds_line,
                    f"{what} cat_boundaries ends at {bounds[-1]} but cat_threshold has {words}",
                )
            self.cat_words += words
            if self.cat_words > MAX_CAT_WORDS:
                raise refuse(bounds_line, f"categorical splits exceed {MAX_CAT_WORDS} words")
            _ints(*f["cat_threshold"], f"{what} cat_threshold", words, 0, 2**32 - 1)
        line = f["threshold"][0]
        for node, kind in enumerate(decision):
            if kind & 1:
                t = thresholds[node]
                if not (t == int(t) and 0 <= t < num_cat):
                    raise refuse(
                        line,
                        f"{what} node {node} is categorical but its threshold {t!r} "
                        f"is not a bitset index below num_cat={num_cat}",
                    )

    def _check_linear(
        self, what: str, f: dict[str, tuple[int, str]], n: int, num_features: int
    ) -> None:
        for key in _LINEAR_KEYS:
            if key not in f:
                raise refuse(None, f"{what} has is_linear=1 but no {key}= line")
        _floats(*f["leaf_const"], f"{what} leaf_const", n)
        counts = _ints(*f["num_features"], f"{what} num_features", n, 0, num_features)
        total = sum(counts)
        self.linear_terms += total
        if self.linear_terms > MAX_TOTAL_LEAVES:
            raise refuse(None, f"linear leaves have more than {MAX_TOTAL_LEAVES} terms in all")
        # Written as one group per leaf, each followed by spaces: only single spaces matter.
        line, text = f["leaf_features"]
        _ints(line, " ".join(text.split()), f"{what} leaf_features", total, 0, num_features - 1)
        line, text = f["leaf_coeff"]
        _floats(line, " ".join(text.split()), f"{what} leaf_coeff", total)

    # -- after the trees ------------------------------------------------------------
    def _tail(self, names: set[str]) -> None:
        lines, section, parameters = self.lines, "", 0
        seen: set[str] = set()
        last = len(lines) - 1
        while last >= self.i and not lines[last]:
            last -= 1
        for j in range(self.i, last + 1):
            line, number = lines[j], j + 1
            if len(line) > MAX_LINE_CHARS_TAIL:
                raise refuse(number, "line too long")
            if section == "parameters":
                if line == "end of parameters":
                    section = ""
                elif line:
                    parameters += 1
                    if parameters > MAX_PARAMETER_LINES or not _PARAMETER.fullmatch(line):
                        # LightGBM re-reads these lines as 'key: value' into JSON.
                        raise refuse(number, f"unreadable parameter line {line[:60]!r}")
                continue
            if not line:
                continue
            if line in ("feature_importances:", "parameters:") and line not in seen:
                seen.add(line)
                section = line[:-1]
            elif line.startswith("pandas_categorical:") and j == last:
                _pandas_categorical(number, line[len("pandas_categorical:") :])
            elif section == "feature_importances" and (m := _IMPORTANCE.fullmatch(line)):
                if m.group(1) not in names:
                    raise refuse(number, "a feature importance names no feature of the model")
            else:
                raise refuse(number, f"unexpected line {line[:60]!r} after the trees")
        if section == "parameters":
            raise refuse(None, "the file ends inside 'parameters:' (is it truncated?)")


def _check_shape(what: str, line: int, n: int, left: list[int], right: list[int]) -> int:
    """Every internal node and leaf is reached exactly once from node 0: a tree, no cycle.

    Child links are internal node indices (>= 0) or ``~leaf`` (< 0). Returns the
    tree's depth: the most splits one prediction can walk through in it.
    """
    seen_node = bytearray(n - 1)
    seen_leaf = bytearray(n)
    seen_node[0] = 1
    stack = [(0, 1)]
    deepest = 1
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        for child in (left[node], right[node]):
            if child >= 0:
                if seen_node[child]:
                    raise refuse(
                        line,
                        f"{what}: node {child} is reached twice (a cycle or shared subtree), "
                        "so prediction would never end",
                    )
                seen_node[child] = 1
                stack.append((child, depth + 1))
            else:
                leaf = ~child
                if seen_leaf[leaf]:
                    raise refuse(line, f"{what}: leaf {leaf} is reached twice")
                seen_leaf[leaf] = 1
    if not all(seen_node) or not all(seen_leaf):
        raise refuse(line, f"{what}: some nodes or leaves are not reachable from the root")
    return deepest


def _count(text: str) -> int:
    return text.count(" ") + 1 if text else 0


def _tokens(line: int, text: str, what: str, count: int) -> list[str]:
    if _count(text) != count:
        raise refuse(line, f"{what} has {_count(text)} entries, expected {count}")
    tokens = text.split(" ")
    if count and not all(tokens):
        raise refuse(line, f"{what} has an empty entry (two spaces in a row?)")
    return tokens


def _int(line: int, text: str, what: str, lo: int, hi: int) -> int:
    if not re.fullmatch(_INT, text):
        raise refuse(line or None, f"{what}={text[:40]!r} is not an integer")
    value = int(text)
    if not lo <= value <= hi:
        raise refuse(line or None, f"{what}={value} is out of range ({lo}..{hi})")
    return value


def _ints(line: int, text: str, what: str, count: int | None, lo: int, hi: int | None) -> list[int]:
    if count is not None and _count(text) != count:
        raise refuse(line, f"{what} has {_count(text)} entries, expected {count}")
    if not _INTS.fullmatch(text):
        raise refuse(line, f"{what} has an entry that is not an integer")
    values = list(map(int, text.split(" "))) if text else []
    if values and (min(values) < lo or (hi is not None and max(values) > hi)):
        bad = next(v for v in values if v < lo or (hi is not None and v > hi))
        raise refuse(line, f"{what} has {bad}, out of range ({lo}..{hi})")
    return values


def _floats(line: int, text: str, what: str, count: int) -> list[float]:
    if _count(text) != count:
        raise refuse(line, f"{what} has {_count(text)} entries, expected {count}")
    if not _FLOATS.fullmatch(text):
        raise refuse(line, f"{what} has an entry that is not a number")
    values = list(map(float, text.split(" "))) if text else []
    if not all(map(math.isfinite, values)):
        raise refuse(line, f"{what} has a number too large to be finite")
    return values


def _feature_names(line: int, text: str, count: int) -> tuple[str, ...]:
    names = _tokens(line, text, "feature_names", count)
    for name in names:
        if len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise refuse(line, f"feature name {name[:40]!r} is too long or not printable")
    if len(set(names)) != len(names):
        raise refuse(line, "a feature name appears twice")
    return tuple(names)


def _objective(line: int, text: str, num_class: int) -> str:
    name, *args = text.split(" ")
    if name not in _OBJECTIVES:
        raise refuse(line, f"unknown objective {name[:40]!r}")
    if len(args) > 16 or not all(_OBJECTIVE_ARG.fullmatch(a) for a in args):
        raise refuse(line, "the objective has unreadable arguments")
    given = dict(a.partition(":")[::2] for a in args)
    if name in _MULTICLASS:
        if num_class < 2 or given.get("num_class") != str(num_class):
            raise refuse(line, f"objective {name} must say num_class:{num_class} (2 or more)")
    elif num_class != 1:
        raise refuse(line, f"objective {name} predicts one value, but num_class={num_class}")
    if name in _SIGMOID and not (
        (sigmoid := given.get("sigmoid")) and math.isfinite(float(sigmoid)) and float(sigmoid) > 0
    ):
        raise refuse(line, f"objective {name} needs a positive sigmoid:")
    return text


def _pandas_categorical(line: int, text: str) -> None:
    """The Python package json-decodes this line: a list of category lists, or null."""
    try:
        value: Any = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise refuse(line, "pandas_categorical is not valid JSON") from exc
    if value is not None and not (
        isinstance(value, list)
        and all(isinstance(c, list) and all(map(_is_scalar, c)) for c in value)
    ):
        raise refuse(line, "pandas_categorical must be null or a list of category lists")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)

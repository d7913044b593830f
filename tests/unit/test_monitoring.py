"""The monitoring maths: streaming figures against direct computations, merges, records, drift."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (  # type: ignore[import-untyped]
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from streams.core import monitoring as m
from streams.core.hashing import canonical

SHA_A = "a" * 64
SHA_B = "b" * 64

scores = st.floats(0.0, 1.0, allow_nan=False)
labels01 = st.sampled_from([0.0, 1.0])
latencies = st.floats(0.1, 600_000.0, allow_nan=False)


def counted(
    predictions: list[tuple[float, int]] = (),  # type: ignore[assignment]
    pairs: list[tuple[float, float, int]] = (),  # type: ignore[assignment]
    dead: int = 0,
) -> m.Stats:
    acc = m.Accumulator()
    for latency, at in predictions:
        acc.add_prediction(latency, at)
    for score, label, lag in pairs:
        acc.add_pair(score, label, lag)
    acc.add_dead_letter(dead)
    return acc.freeze()


records = st.builds(
    counted,
    st.lists(st.tuples(latencies, st.integers(0, 10**13)), max_size=20),
    st.lists(
        st.tuples(
            st.floats(-10, 10, allow_nan=False),
            st.one_of(labels01, st.floats(-10, 10, allow_nan=False)),
            st.integers(-5, 10**6),
        ),
        max_size=20,
    ),
    st.integers(0, 5),
)


# --- AUC ---------------------------------------------------------------------------------


def _same_bin_share(pairs: list[tuple[float, float]]) -> float:
    """The share of positive-negative pairs in one AUC bin: the binned AUC's error bound."""
    pos = [0] * m.AUC_BINS
    neg = [0] * m.AUC_BINS
    for score, label in pairs:
        (pos if label else neg)[m.auc_bin(score)] += 1
    return sum(p * n for p, n in zip(pos, neg, strict=True)) / (sum(pos) * sum(neg))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(scores, labels01), min_size=2, max_size=200))
def test_streaming_auc_matches_sklearn_within_the_bin_error(
    pairs: list[tuple[float, float]],
) -> None:
    labels = [label for _, label in pairs]
    if len(set(labels)) < 2:
        assert m.figures(counted(pairs=[(s, y, 0) for s, y in pairs]), 1000)["auc"] is None
        return
    stats = counted(pairs=[(s, y, 0) for s, y in pairs])
    auc = m.figures(stats, 1000)["auc"]
    assert isinstance(auc, float)
    exact = roc_auc_score(labels, [s for s, _ in pairs])
    assert abs(auc - exact) <= _same_bin_share(pairs) / 2 + 1e-12


def test_streaming_auc_on_a_large_sample_is_within_a_thousandth() -> None:
    rng = random.Random(7)
    pairs = []
    for _ in range(20_000):
        label = float(rng.random() < 0.3)
        score = 1 / (1 + math.exp(-(rng.gauss(0, 1) + 1.5 * label)))
        pairs.append((score, label))
    auc = m.figures(counted(pairs=[(s, y, 0) for s, y in pairs]), 1000)["auc"]
    exact = roc_auc_score([y for _, y in pairs], [s for s, _ in pairs])
    assert isinstance(auc, float)
    assert abs(auc - exact) < 1e-3


def test_auc_from_hists_counts_a_shared_bin_half() -> None:
    assert m.auc_from_hists([0, 1], [1, 0]) == 1.0
    assert m.auc_from_hists([1, 0], [0, 1]) == 0.0
    assert m.auc_from_hists([1], [1]) == 0.5
    assert m.auc_from_hists([0, 0], [1, 0]) is None


# --- the other figures ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(scores, labels01, st.integers(0, 10**6)), min_size=1, max_size=100))
def test_binary_figures_match_a_direct_computation(pairs: list[tuple[float, float, int]]) -> None:
    stats = counted(pairs=pairs)
    got = m.figures(stats, 60_000)
    y = [label for _, label, _ in pairs]
    p = [score for score, _, _ in pairs]
    # The probability given to the true class, clipped at 1e-15.
    given_true = [max(pi if yi else 1 - pi, 1e-15) for yi, pi in zip(y, p, strict=True)]
    logloss = -sum(math.log(g) for g in given_true) / len(y)
    assert got["logloss"] == pytest.approx(logloss, rel=1e-9, abs=1e-9)
    if len(set(y)) == 2 and all(1e-9 < pi < 1 - 1e-9 for pi in p):  # sklearn clips otherwise
        assert got["logloss"] == pytest.approx(log_loss(y, p), rel=1e-6, abs=1e-9)
        assert got["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-9, abs=1e-12)
    errors = [abs(pi - yi) for pi, yi in zip(p, y, strict=True)]
    assert got["mae"] == pytest.approx(sum(errors) / len(errors), rel=1e-9, abs=1e-12)
    assert got["rmse"] == pytest.approx(
        math.sqrt(sum(e * e for e in errors) / len(errors)), rel=1e-9, abs=1e-12
    )
    assert got["join_lag_ms"] == pytest.approx(sum(lag for *_, lag in pairs) / len(pairs))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e6, 1e6, allow_nan=False), st.floats(-1e6, 1e6, allow_nan=False)),
        min_size=1,
        max_size=100,
    )
)
def test_regression_figures_match_a_direct_computation(pairs: list[tuple[float, float]]) -> None:
    got = m.figures(counted(pairs=[(s, y, 0) for s, y in pairs]), 60_000)
    errors = [abs(s - y) for s, y in pairs]
    assert got["mae"] == pytest.approx(sum(errors) / len(errors), rel=1e-9, abs=1e-9)
    assert got["rmse"] == pytest.approx(
        math.sqrt(sum(e * e for e in errors) / len(errors)), rel=1e-9, abs=1e-9
    )


def test_binary_figures_need_every_labelled_pair_to_be_binary() -> None:
    got = m.figures(counted(pairs=[(0.2, 0.0, 0), (0.9, 1.0, 0), (0.5, 3.0, 0)]), 1000)
    assert got["logloss"] is None and got["brier"] is None and got["auc"] is None
    assert got["mae"] == pytest.approx((0.2 + 0.1 + 2.5) / 3)
    assert m.figures(counted(pairs=[(1.5, 1.0, 0)]), 1000)["logloss"] is None


def test_a_pair_keeps_every_sum_finite() -> None:
    stats = counted(pairs=[(0.0, 1.0, 0), (1.0, 0.0, 0), (math.inf, 0.0, 0), (-1e308, 1e308, 0)])
    assert stats.labeled == 4 and stats.binary == 2
    assert stats.logloss_sum == pytest.approx(2 * -math.log(1e-15))
    assert all(math.isfinite(v) for v in (stats.abs_err_sum, stats.sq_err_sum))
    assert counted(pairs=[(math.nan, 1.0, 0), (0.5, math.nan, 0)]) == m.EMPTY
    canonical(m.figures(stats, 1000))  # refuses a NaN or an infinity


def test_counts_rates_and_throughput() -> None:
    stats = counted(predictions=[(1.0, 5), (2.0, 9), (3.0, 7)], pairs=[(0.5, 1.0, 10)], dead=1)
    got = m.figures(m.add_labels(stats, early=2, late=3, unmatched=4), 30_000)
    assert (stats.first_ms, stats.last_ms) == (5, 9)
    assert got["count"] == 3 and got["labeled"] == 1
    assert got["coverage"] == pytest.approx(1 / 3)
    assert got["throughput"] == pytest.approx(0.1)
    assert got["dead_letter_rate"] == pytest.approx(0.25)
    assert (got["early_labels"], got["late_labels"], got["unmatched_labels"]) == (2, 3, 4)
    empty = m.figures(m.EMPTY, 0)
    assert all(empty[k] is None for k in ("coverage", "logloss", "p99_ms", "throughput"))
    assert empty["dead_letter_rate"] is None and empty["psi"] == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(latencies, min_size=1, max_size=300))
def test_latency_percentiles_are_within_the_bin_ratio(values: list[float]) -> None:
    got = m.figures(counted(predictions=[(v, 0) for v in values]), 1000)
    ordered = sorted(values)
    bound = math.sqrt(m.LATENCY_RATIO) * (1 + 1e-12)
    for key, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        exact = ordered[math.ceil(q * len(ordered)) - 1]
        estimate = got[key]
        assert isinstance(estimate, float)
        assert 1 / bound <= estimate / exact <= bound, (key, estimate, exact)


def test_latency_bins_are_log_spaced_within_ten_percent() -> None:
    bounds = m.LATENCY_BOUNDS_MS
    assert bounds[0] == 0.1 and bounds[-1] == 600_000.0
    assert 150 <= len(bounds) <= 250
    assert all(1 < b / a <= 1.1 for a, b in itertools.pairwise(bounds))
    assert m.latency_bin(math.nan) == 0 and m.latency_bin(-3) == 0
    assert m.latency_bin(1e9) == len(bounds) - 1


# --- merge and the record form -------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(records, records, records)
def test_merge_is_associative_and_commutative(a: m.Stats, b: m.Stats, c: m.Stats) -> None:
    assert m.merge(a, b) == m.merge(b, a)
    left, right = m.merge(m.merge(a, b), c), m.merge(a, m.merge(b, c))
    assert _close(left, right)
    assert m.merge(a, m.EMPTY) == a == m.merge(m.EMPTY, a)
    assert _close(m.merge_all([a, b, c]), left)


def _close(x: m.Stats, y: m.Stats) -> bool:
    """Equal, the float sums up to the rounding of their order."""
    for name in ("logloss_sum", "brier_sum", "abs_err_sum", "sq_err_sum"):
        if getattr(x, name) != pytest.approx(getattr(y, name), rel=1e-12, abs=1e-300):
            return False
    return m.to_plain(x) | dict.fromkeys(
        ("logloss_sum", "brier_sum", "abs_err_sum", "sq_err_sum"), 0
    ) == m.to_plain(y) | dict.fromkeys(("logloss_sum", "brier_sum", "abs_err_sum", "sq_err_sum"), 0)


def test_merge_of_two_references_keeps_the_smaller_digest_in_any_order() -> None:
    ref = m.Reference(features={"x": (0.0,)}, fractions={"x": (0.5, 0.5)}, rows=2)
    a = m.add_features(m.EMPTY, ref, SHA_A, {"x": -1.0})
    b = m.add_features(m.EMPTY, ref, SHA_B, {"x": 1.0})
    a2 = m.add_features(m.EMPTY, ref, SHA_A, {"x": 3.0})
    orders = [m.merge(m.merge(a, b), a2), m.merge(a, m.merge(b, a2)), m.merge_all([b, a2, a])]
    assert all(o.reference_sha256 == SHA_A for o in orders)
    assert all(o.feature_hists == {"x": (1, 1)} for o in orders)
    acc = m.Accumulator(a)
    with pytest.raises(ValueError, match="another reference"):
        acc.add_features(ref, SHA_B, {"x": 1.0})


@settings(max_examples=150, deadline=None)
@given(records)
def test_to_plain_from_plain_round_trips_through_json(stats: m.Stats) -> None:
    assert m.from_plain(m.to_plain(stats)) == stats
    assert m.from_plain(json.loads(canonical(m.to_plain(stats)))) == stats


def _valid_plain() -> dict[str, object]:
    ref = m.Reference(features={"x": (0.0,)}, fractions={"x": (0.5, 0.5)}, rows=2)
    stats = counted(predictions=[(2.0, 10)], pairs=[(0.3, 1.0, 5)], dead=1)
    return m.to_plain(m.add_features(stats, ref, SHA_A, {"x": 1.0}))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"predictions": -1}, "predictions"),
        ({"predictions": True}, "predictions"),
        ({"labeled": 2**63}, "labeled"),
        ({"logloss_sum": math.nan}, "logloss_sum"),
        ({"brier_sum": math.inf}, "brier_sum"),
        ({"abs_err_sum": -1.0}, "abs_err_sum"),
        ({"sq_err_sum": "1"}, "sq_err_sum"),
        ({"pos_hist": [1, 2]}, "pos_hist"),
        ({"pos_hist": [], "neg_hist": []}, "binary pairs"),
        ({"neg_hist": [-1] + [0] * 999}, "neg_hist"),
        ({"latency_hist": [0] * 200}, "every prediction"),
        ({"binary": 2, "labeled": 1}, "binary"),
        ({"first_ms": 11}, "first_ms"),
        ({"feature_hists": {"x\n": [0, 1]}}, "feature name"),
        ({"feature_hists": {"x": []}}, "feature_hists"),
        ({"feature_hists": {"x": [0] * 102}}, "feature_hists"),
        ({"feature_hists": {"x": [1.5, 0]}}, "feature_hists"),
        ({"feature_hists": {f"f{i}": [1] for i in range(10_001)}}, "features"),
        ({"feature_hists": [1, 2]}, "feature_hists"),
        ({"reference_sha256": ""}, "reference_sha256"),
        ({"reference_sha256": "A" * 64}, "reference_sha256"),
        ({"surprise": 1}, "unknown"),
    ],
)
def test_from_plain_refuses_junk_with_a_reason(change: dict[str, object], reason: str) -> None:
    plain = _valid_plain()
    m.from_plain(plain)
    with pytest.raises(ValueError, match=reason):
        m.from_plain(plain | change)
    with pytest.raises(ValueError, match="record"):
        m.from_plain([1, 2])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("p"), latencies, st.integers(0, 10**12)),
            st.tuples(st.just("y"), st.floats(-2, 2, allow_nan=False), labels01),
            st.tuples(st.just("d"), st.just(0), st.just(0)),
        ),
        max_size=15,
    )
)
def test_the_pure_functions_count_as_the_accumulator(
    ops: list[tuple[str, float, float]],
) -> None:
    acc = m.Accumulator()
    pure = m.EMPTY
    for op, x, y in ops:
        if op == "p":
            acc.add_prediction(x, int(y))
            pure = m.add_prediction(pure, x, int(y))
        elif op == "y":
            acc.add_pair(x, y, 3)
            pure = m.add_pair(pure, x, y, 3)
        else:
            acc.add_dead_letter()
            pure = m.add_dead_letter(pure)
    assert acc.freeze() == pure


# --- drift ---------------------------------------------------------------------------------


def _direct_psi(edges: tuple[float, ...], fractions: tuple[float, ...], live: list[float]) -> float:
    counts = [0] * (len(edges) + 1)
    for v in live:
        i = 0
        while i < len(edges) and v >= edges[i]:
            i += 1
        counts[i] += 1
    total = len(live)
    out = 0.0
    for e, c in zip(fractions, counts, strict=True):
        e, a = max(e, 1e-4), max(c / total, 1e-4)
        out += (a - e) * math.log(a / e)
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=200),
    st.lists(st.floats(-150, 150, allow_nan=False), min_size=1, max_size=200),
    st.integers(2, 20),
)
def test_psi_matches_a_direct_computation(train: list[float], live: list[float], bins: int) -> None:
    ref = m.reference_from_rows(["x"], [[v] for v in train], bins=bins)
    edges, fractions = ref.features["x"], ref.fractions["x"]
    assert all(a < b for a, b in itertools.pairwise(edges))
    assert len(edges) <= bins - 1 and math.fsum(fractions) == pytest.approx(1.0)
    acc = m.Accumulator()
    for v in live:
        acc.add_features(ref, SHA_A, {"x": v, "unbinned": 1.0})
    stats = acc.freeze()
    assert stats.reference_sha256 == SHA_A and set(stats.feature_hists) == {"x"}
    got = m.figures(stats, 1000, ref)["psi"]
    assert isinstance(got, dict)
    assert got["x"] == pytest.approx(_direct_psi(edges, fractions, live), rel=1e-9, abs=1e-12)


def test_psi_of_the_training_distribution_is_small_and_of_a_shift_large() -> None:
    rng = random.Random(3)
    train = [[rng.gauss(0, 1)] for _ in range(5000)]
    ref = m.reference_from_rows(["x"], train)
    same = [0] * 10
    shifted = [0] * 10
    for _ in range(5000):
        same[m.bin_index(ref.features["x"], rng.gauss(0, 1))] += 1
        shifted[m.bin_index(ref.features["x"], rng.gauss(1, 1))] += 1
    assert m.psi(ref.fractions["x"], same) < 0.02
    assert m.psi(ref.fractions["x"], shifted) > 0.25
    assert m.psi(ref.fractions["x"], [0] * 10) == 0.0
    with pytest.raises(ValueError, match="bins"):
        m.psi(ref.fractions["x"], [1, 2])


def test_reference_from_rows_skips_non_finite_values_and_empty_columns() -> None:
    rows = [[1.0, math.nan, 5.0], [2.0, math.nan, 5.0], [math.inf, math.nan, 5.0]]
    ref = m.reference_from_rows(["a", "b", "c"], rows, bins=4)
    assert set(ref.features) == {"a", "c"} and ref.rows == 3
    assert ref.features["c"] == (5.0,) and ref.fractions["c"] == (0.0, 1.0)
    for names, bad_rows, reason in [
        (["a", "a"], [], "once"),
        (["a\x00"], [], "feature name"),
        (["a"], [[1.0, 2.0]], "row 1"),
    ]:
        with pytest.raises(ValueError, match=reason):
            m.reference_from_rows(names, bad_rows)
    with pytest.raises(ValueError, match="bins"):
        m.reference_from_rows(["a"], [], bins=1)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20).filter(lambda n: m.feature_name_problem(n) is None),
        st.lists(st.floats(-1e300, 1e300, allow_nan=False), min_size=1, max_size=50),
        max_size=5,
    ),
    st.integers(2, 30),
)
def test_reference_json_round_trips(columns: dict[str, list[float]], bins: int) -> None:
    names = list(columns)
    n = max((len(v) for v in columns.values()), default=0)
    rows = [[columns[name][i % len(columns[name])] for name in names] for i in range(n)]
    ref = m.reference_from_rows(names, rows, bins=bins)
    data = m.reference_to_json(ref)
    assert m.reference_from_json(data) == ref
    assert m.reference_to_json(m.reference_from_json(data)) == data


def _reference_json(**change: object) -> bytes:
    plain: dict[str, object] = {
        "format": "modelvc.reference/1",
        "rows": 4,
        "features": {"x": {"edges": [0.0, 1.0], "fractions": [0.25, 0.5, 0.25]}},
    }
    plain.update(change)
    return json.dumps(plain).encode()


def _feature(edges: object, fractions: object) -> dict[str, object]:
    return {"x": {"edges": edges, "fractions": fractions}}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"x" * (m.MAX_REFERENCE_BYTES + 1), "at most"),
        (b"\xff\xfe", "UTF-8|JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b"{", "JSON"),
        (_reference_json(format="modelvc.reference/2"), "format"),
        (_reference_json(extra=1), "exactly"),
        (_reference_json(rows=True), "rows"),
        (_reference_json(rows=-1), "rows"),
        (_reference_json(features=[]), "features"),
        (_reference_json(features={"a\u202e": {"edges": [], "fractions": [1.0]}}), "name"),
        (_reference_json(features={"": {"edges": [], "fractions": [1.0]}}), "name"),
        (_reference_json(features=_feature([1.0, 1.0], [0.5, 0.0, 0.5])), "increasing"),
        (_reference_json(features=_feature([1.0], [1.0])), "bins"),
        (_reference_json(features=_feature([1.0], [0.6, 0.6])), "sum to 1"),
        (_reference_json(features=_feature([1.0], [-0.5, 1.5])), "sum to 1"),
        (_reference_json(features=_feature([1.0, "2"], [0.5, 0.25, 0.25])), "finite"),
        (_reference_json(features=_feature(list(range(101)), [0.0] * 102)), "at most"),
        (_reference_json(features={"x": {"edges": []}}), "edges"),
        (
            b'{"format":"modelvc.reference/1","rows":1,"features":{"x":{"edges":[NaN],'
            b'"fractions":[0.5,0.5]}}}',
            "NaN",
        ),
        (
            b'{"format":"modelvc.reference/1","rows":1,"features":{"x":{"edges":[1e999],'
            b'"fractions":[0.5,0.5]}}}',
            "finite",
        ),
    ],
)
def test_reference_from_json_refuses_junk_with_a_reason(data: bytes, reason: str) -> None:
    m.reference_from_json(_reference_json())
    with pytest.raises(ValueError, match=reason):
        m.reference_from_json(data)


def test_reference_from_json_bounds_the_number_of_features() -> None:
    features = {f"f{i}": {"edges": [], "fractions": [1.0]} for i in range(m.MAX_FEATURES + 1)}
    with pytest.raises(ValueError, match="at most 10000 features"):
        m.reference_from_json(_reference_json(features=features))


# --- hostile numbers and bounded sums -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count", "most"),
    [
        ("abs_err_sum", "labeled", m.MAX_ERROR),
        ("sq_err_sum", "labeled", m.MAX_ERROR**2),
        ("brier_sum", "binary", 1.0),
        ("logloss_sum", "binary", -math.log(m.LOGLOSS_CLIP)),
    ],
)
def test_every_sum_is_bounded_by_what_its_pairs_can_add(name: str, count: str, most: float) -> None:
    one = m.to_plain(m.add_pair(m.EMPTY, 0.5, 1.0, 10))  # one binary pair
    assert one[count] == 1
    assert m.from_plain({**one, name: most}).labeled == 1
    with pytest.raises(ValueError, match=name):
        m.from_plain({**one, name: most * 1.01})


def test_the_lag_sum_is_bounded_by_the_labelled_pairs() -> None:
    one = m.to_plain(m.add_pair(m.EMPTY, 0.5, 1.0, 10))
    assert m.from_plain({**one, "join_lag_ms_sum": m.MAX_LAG_MS}).join_lag_ms_sum == m.MAX_LAG_MS
    with pytest.raises(ValueError, match="join_lag_ms_sum"):
        m.from_plain({**one, "join_lag_ms_sum": m.MAX_LAG_MS + 1})


def test_the_worst_pairs_stay_within_the_bounds_and_merge_finite() -> None:
    worst = m.EMPTY
    for score, label in ((math.inf, 0.0), (0.0, 1.0), (1.0, 0.0), (-1e300, 1e300)):
        worst = m.add_pair(worst, score, label, 10**15)
    assert m.from_plain(m.to_plain(worst)) == worst
    many = m.merge_all([worst] * 1000)
    assert m.from_plain(m.to_plain(many)) == many
    assert all(math.isfinite(v) for v in (many.abs_err_sum, many.sq_err_sum, many.logloss_sum))


@pytest.mark.parametrize("value", [10**400, -(10**400), math.inf, math.nan, True, "1", None])
def test_numbers_no_double_holds_are_refused_not_raised(value: object) -> None:
    assert m.finite_number(value) is None
    with pytest.raises(ValueError):
        m.from_plain({**m.to_plain(m.EMPTY), "logloss_sum": value})
    doc = {
        "format": m.REFERENCE_FORMAT,
        "rows": 1,
        "features": {"x": {"edges": [value], "fractions": [0.5, 0.5]}},
    }
    text = json.dumps(doc, allow_nan=True).encode() if value is not None else b"{}"
    with pytest.raises(ValueError):
        m.reference_from_json(text)


def test_the_api_refuses_a_reference_with_a_number_no_double_holds(tmp_path: Path) -> None:
    from streams.artifacts.local import LocalStore
    from streams.monitoring.references import ReferenceRejected, put_reference

    doc = json.dumps(
        {
            "format": m.REFERENCE_FORMAT,
            "rows": 1,
            "features": {"x": {"edges": [10**400], "fractions": [0.5, 0.5]}},
        }
    ).encode()
    with pytest.raises(ReferenceRejected, match="not a finite number"):
        put_reference(LocalStore(tmp_path), doc)


def test_a_reference_over_the_servers_limit_is_refused_saying_what_to_do() -> None:
    rng = random.Random(3)
    names = [f"feature_{i}" for i in range(5000)]
    reference = m.reference_from_rows(names, ([rng.random() for _ in names] for _ in range(50)))
    with pytest.raises(ValueError, match="pass fewer columns"):
        m.reference_to_json(reference)


def test_a_window_id_is_the_monitors() -> None:
    text = "churn|production|" + "c" * 64 + "|r0123456789a|candidate|1|60000"
    expected = hashlib.sha256(text.encode()).hexdigest()[:32]
    assert (
        m.window_id("churn", "production", "c" * 64, "r0123456789a", "candidate", True, 60_000)
        == expected
    )
    assert m.window_id("churn", "production", "c" * 64, "", "", False, 60_000) != expected

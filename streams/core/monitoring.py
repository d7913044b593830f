"""Online figures of a model version, as mergeable counts, and drift against training data.

A :class:`Stats` is what the monitor keeps per (model, ref, commit, rollout, arm, shadow)
and window: sums and fixed-bin histograms only, so that two windows merge by addition
(:func:`merge` is associative and commutative, :data:`EMPTY` its identity), a window is a
small Avro record (:func:`to_plain` / :func:`from_plain`), and AUC and latency percentiles
stream without keeping a single score. :func:`figures` turns counts into the figures a
person reads and a canary compares.

Drift: a :class:`Reference` holds per-feature quantile bins of the training data
(:func:`reference_from_rows`, stored as canonical JSON by :func:`reference_to_json`); live
feature values are counted into the same bins and compared by :func:`psi`.

Per-record updates on the monitor's hot path go through a mutable :class:`Accumulator`
(lists, no tuple rebuilt per record), frozen once per batch or window; the pure
``add_*`` functions are the same rules for one record at a time.

Pure: standard library only, no clock.
"""

from __future__ import annotations

import json
import math
import operator
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from itertools import pairwise
from typing import Final

from streams.core.hashing import SHA256_HEX, canonical, sha256_hex

# A score in [0, 1] falls in one of AUC_BINS equal bins; pairs within a bin count as ties,
# which bounds the AUC's error by the share of positive-negative pairs that share a bin.
AUC_BINS: Final = 1000
# Latency bins: upper bounds from 0.1 ms to 600 s, log-spaced. A percentile is reported
# as the geometric middle of its bin, so it is within sqrt(ratio) (~4%) of the exact one.
_LATENCY_MIN_MS: Final = 0.1
_LATENCY_MAX_MS: Final = 600_000.0
_LATENCY_BINS: Final = 200
LATENCY_RATIO: Final = (_LATENCY_MAX_MS / _LATENCY_MIN_MS) ** (1 / (_LATENCY_BINS - 1))
LATENCY_BOUNDS_MS: Final[tuple[float, ...]] = (
    *(_LATENCY_MIN_MS * LATENCY_RATIO**i for i in range(_LATENCY_BINS - 1)),
    _LATENCY_MAX_MS,
)

LOGLOSS_CLIP: Final = 1e-15
PSI_EPSILON: Final = 1e-4
# An error beyond this counts as this: the sums of squares stay finite (Avro doubles and
# canonical JSON refuse infinities) however wild a model's output.
MAX_ERROR: Final = 1e100
# A join lag beyond 30 days counts as 30 days: the lag sum stays an Avro long.
MAX_LAG_MS: Final = 30 * 24 * 3600 * 1000
MAX_COUNT: Final = 2**63 - 1  # an Avro long
# What one pair adds at most to each sum (add_pair clips to these): from_plain bounds every
# sum by its count times this, so windows whose counts add up to an Avro long also add up
# to finite sums (MAX_COUNT * MAX_ERROR**2 ~ 1e219), and a merged total stays a record.
PAIR_BOUNDS: Final = {
    "abs_err_sum": ("labeled", MAX_ERROR),
    "sq_err_sum": ("labeled", MAX_ERROR * MAX_ERROR),
    "brier_sum": ("binary", 1.0),
    "logloss_sum": ("binary", -math.log(LOGLOSS_CLIP)),
}
# Rounding of float sums: a sum of n terms of at most b each may exceed n * b by a few ulps.
_SUM_TOLERANCE: Final = 1e-9

REFERENCE_FORMAT: Final = "modelvc.reference/1"
MAX_REFERENCE_BYTES: Final = 1 << 20
MAX_FEATURES: Final = 10_000
MAX_EDGES: Final = 100
MAX_REFERENCE_BINS: Final = MAX_EDGES  # bins asked of reference_from_rows (edges = bins - 1)
# A feature name: 1-256 characters, none of them a control character (format and bidi
# characters are refused separately, by isprintable). Used with fullmatch.
FEATURE_NAME: Final = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,256}")
# The sum of a reference's fractions is 1 up to the rounding of its doubles.
_FRACTION_SUM_TOLERANCE: Final = 1e-6


@dataclass(frozen=True)
class Stats:
    """Counts of one version over one window (or merged windows).

    Invariants (checked by :func:`from_plain`): ``sum(latency_hist) == predictions``;
    ``sum(pos_hist) + sum(neg_hist) == binary <= labeled``; ``first_ms <= last_ms``, both 0
    without predictions; histograms are empty or full length.
    """

    predictions: int = 0
    labeled: int = 0  # predictions joined with a label
    binary: int = 0  # of them, with label 0 or 1 and score in [0, 1]
    logloss_sum: float = 0.0  # over the binary pairs
    brier_sum: float = 0.0  # over the binary pairs
    pos_hist: tuple[int, ...] = ()  # AUC_BINS score bins of the label-1 pairs
    neg_hist: tuple[int, ...] = ()  # AUC_BINS score bins of the label-0 pairs
    abs_err_sum: float = 0.0  # over every labelled pair
    sq_err_sum: float = 0.0
    latency_hist: tuple[int, ...] = ()  # one count per LATENCY_BOUNDS_MS bin
    dead_letters: int = 0
    early_labels: int = 0  # labels that arrived before their prediction, then joined
    late_labels: int = 0  # labels after the horizon, or whose prediction had expired
    unmatched_labels: int = 0  # labels never joined within the horizon
    join_lag_ms_sum: int = 0  # over the labelled pairs
    first_ms: int = 0  # earliest and latest prediction time (0 without predictions)
    last_ms: int = 0
    feature_hists: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    reference_sha256: str = ""  # the reference the feature_hists are binned by ("" none)


EMPTY: Final = Stats()

_COUNTS: Final = (
    "predictions",
    "labeled",
    "binary",
    "dead_letters",
    "early_labels",
    "late_labels",
    "unmatched_labels",
    "join_lag_ms_sum",
)
_SUMS: Final = ("logloss_sum", "brier_sum", "abs_err_sum", "sq_err_sum")
_HISTS: Final = {"pos_hist": AUC_BINS, "neg_hist": AUC_BINS, "latency_hist": _LATENCY_BINS}
_FIELDS: Final = tuple(f.name for f in fields(Stats))


def merge(a: Stats, b: Stats) -> Stats:
    """The counts of both (associative and commutative; EMPTY is the identity)."""
    acc = Accumulator(a)
    acc.merge(b)
    return acc.freeze()


def merge_all(stats: Iterable[Stats]) -> Stats:
    """``merge`` over many, adding into lists (one tuple per histogram, not one per window)."""
    acc = Accumulator()
    for one in stats:
        acc.merge(one)
    return acc.freeze()


# --- the record form -------------------------------------------------------------------


def window_id(
    model: str, ref: str, commit_id: str, rollout_id: str, arm: str, shadow: bool, start_ms: int
) -> str:
    """A metric window's id: ``sha256(model|ref|commit|rollout|arm|shadow|start_ms)[:32]``.

    The monitor names the windows it writes by it (a window computed again after a restart
    has the same id) and the streams app checks it, so one record cannot pose as another's
    window and push the real one out as a repeat."""
    text = "|".join((model, ref, commit_id, rollout_id, arm, "1" if shadow else "0", str(start_ms)))
    return sha256_hex(text.encode("utf-8", "backslashreplace"))[:32]


def to_plain(stats: Stats) -> dict[str, object]:
    """The Avro record ``modelvc.monitoring.Stats`` (and JSON) form: histograms as lists."""
    return {
        "predictions": stats.predictions,
        "labeled": stats.labeled,
        "binary": stats.binary,
        "logloss_sum": stats.logloss_sum,
        "brier_sum": stats.brier_sum,
        "pos_hist": list(stats.pos_hist),
        "neg_hist": list(stats.neg_hist),
        "abs_err_sum": stats.abs_err_sum,
        "sq_err_sum": stats.sq_err_sum,
        "latency_hist": list(stats.latency_hist),
        "dead_letters": stats.dead_letters,
        "early_labels": stats.early_labels,
        "late_labels": stats.late_labels,
        "unmatched_labels": stats.unmatched_labels,
        "join_lag_ms_sum": stats.join_lag_ms_sum,
        "first_ms": stats.first_ms,
        "last_ms": stats.last_ms,
        "feature_hists": {name: list(c) for name, c in sorted(stats.feature_hists.items())},
        "reference_sha256": stats.reference_sha256,
    }


def _count(plain: Mapping[str, object], name: str) -> int:
    value = plain.get(name)
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"stats.{name} must be an integer in 0..{MAX_COUNT}, not {value!r:.40}")
    return value


def finite_number(value: object) -> float | None:
    """``value`` as a finite float when it is an int or float that is one (JSON numbers: an
    integer of 400 digits is no double); None otherwise (bools, NaN, infinities, junk)."""
    if type(value) not in (int, float):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]  # int or float, checked above
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _sum(plain: Mapping[str, object], name: str, count: int, most: float) -> float:
    number = finite_number(plain.get(name))
    if number is None or number < 0:
        raise ValueError(f"stats.{name} must be a finite number >= 0, not {plain.get(name)!r:.40}")
    if number > count * most * (1 + _SUM_TOLERANCE):
        raise ValueError(f"stats.{name} {number:.6g} is more than {count} pairs can add up to")
    return number


def _hist(value: object, name: str, lengths: tuple[int, ...]) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or len(value) not in lengths:
        shown = len(value) if isinstance(value, list | tuple) else type(value).__name__
        raise ValueError(
            f"stats.{name} must be a list of {' or '.join(map(str, lengths))} counts, not {shown}"
        )
    for count in value:
        if type(count) is not int or not 0 <= count <= MAX_COUNT:
            raise ValueError(f"stats.{name} holds {count!r:.40}: counts are integers >= 0")
    return tuple(value)


def feature_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a feature of a reference or a window; None when it can."""
    if not isinstance(name, str) or not FEATURE_NAME.fullmatch(name) or not name.isprintable():
        return (
            f"invalid feature name {name!r:.80}: use 1-256 printable characters "
            "(no control, format or bidi characters)"
        )
    return None


def from_plain(plain: object) -> Stats:
    """A Stats from its record form, refusing junk (it comes off a topic): ValueError."""
    if not isinstance(plain, Mapping):
        raise ValueError(f"stats must be a record, not {type(plain).__name__}")
    unknown = set(plain) - set(_FIELDS)
    if unknown:
        raise ValueError(f"stats has unknown fields {sorted(map(str, unknown))[:5]}")
    counts = {name: _count(plain, name) for name in (*_COUNTS, "first_ms", "last_ms")}
    sums = {
        name: _sum(plain, name, counts[PAIR_BOUNDS[name][0]], PAIR_BOUNDS[name][1])
        for name in _SUMS
    }
    if counts["join_lag_ms_sum"] > counts["labeled"] * MAX_LAG_MS:
        raise ValueError("stats.join_lag_ms_sum is more than the labelled pairs can add up to")
    hists = {name: _hist(plain.get(name), name, (0, length)) for name, length in _HISTS.items()}
    raw_features = plain.get("feature_hists")
    if not isinstance(raw_features, Mapping):
        raise ValueError("stats.feature_hists must be a map of feature name to counts")
    if len(raw_features) > MAX_FEATURES:
        raise ValueError(
            f"stats.feature_hists has {len(raw_features)} features (at most {MAX_FEATURES})"
        )
    feature_hists: dict[str, tuple[int, ...]] = {}
    for name, counts_ in raw_features.items():
        problem = feature_name_problem(name)
        if problem:
            raise ValueError(f"stats.feature_hists: {problem}")
        feature_hists[name] = _hist(
            counts_, f"feature_hists[{name!r}]", tuple(range(1, MAX_EDGES + 2))
        )
    reference = plain.get("reference_sha256")
    if not isinstance(reference, str) or (reference and not SHA256_HEX.fullmatch(reference)):
        raise ValueError(
            f"stats.reference_sha256 must be '' or 64 hex digits, not {reference!r:.80}"
        )
    if feature_hists and not reference:
        raise ValueError("stats.feature_hists needs the reference_sha256 its bins come from")
    if len(hists["pos_hist"]) != len(hists["neg_hist"]):
        raise ValueError("stats.pos_hist and stats.neg_hist are both empty or both full")
    if sum(hists["pos_hist"]) + sum(hists["neg_hist"]) != counts["binary"]:
        raise ValueError("stats.pos_hist and stats.neg_hist must count the binary pairs")
    if not counts["binary"] <= counts["labeled"]:
        raise ValueError("stats.binary counts labelled pairs: it cannot exceed stats.labeled")
    if sum(hists["latency_hist"]) != counts["predictions"]:
        raise ValueError("stats.latency_hist must count every prediction")
    if counts["first_ms"] > counts["last_ms"] or (
        not counts["predictions"] and (counts["first_ms"] or counts["last_ms"])
    ):
        raise ValueError("stats.first_ms <= stats.last_ms, both 0 without predictions")
    return Stats(
        predictions=counts["predictions"],
        labeled=counts["labeled"],
        binary=counts["binary"],
        logloss_sum=sums["logloss_sum"],
        brier_sum=sums["brier_sum"],
        pos_hist=hists["pos_hist"],
        neg_hist=hists["neg_hist"],
        abs_err_sum=sums["abs_err_sum"],
        sq_err_sum=sums["sq_err_sum"],
        latency_hist=hists["latency_hist"],
        dead_letters=counts["dead_letters"],
        early_labels=counts["early_labels"],
        late_labels=counts["late_labels"],
        unmatched_labels=counts["unmatched_labels"],
        join_lag_ms_sum=counts["join_lag_ms_sum"],
        first_ms=counts["first_ms"],
        last_ms=counts["last_ms"],
        feature_hists=dict(sorted(feature_hists.items())),
        reference_sha256=reference,
    )


# --- one record at a time ----------------------------------------------------------------


def latency_bin(latency_ms: float) -> int:
    """The LATENCY_BOUNDS_MS bin of a latency (NaN and negatives: the first; beyond: the last)."""
    return min(bisect_left(LATENCY_BOUNDS_MS, latency_ms), _LATENCY_BINS - 1)


def auc_bin(score: float) -> int:
    """The AUC bin of a score in [0, 1]."""
    return min(int(score * AUC_BINS), AUC_BINS - 1)


class Accumulator:
    """A Stats being counted, mutable: the monitor's per-record path.

    ``add_prediction`` / ``add_pair`` / ``add_dead_letter`` / ``add_features`` follow the rules
    of the pure functions of the same names; ``freeze`` returns the Stats so far. The counters
    (``early_labels`` ...) are plain attributes to increment.
    """

    __slots__ = (
        "_features",
        "_latency",
        "_neg",
        "_pos",
        "abs_err_sum",
        "binary",
        "brier_sum",
        "dead_letters",
        "early_labels",
        "first_ms",
        "join_lag_ms_sum",
        "labeled",
        "last_ms",
        "late_labels",
        "logloss_sum",
        "predictions",
        "reference_sha256",
        "sq_err_sum",
        "unmatched_labels",
    )

    def __init__(self, stats: Stats = EMPTY) -> None:
        self.predictions = stats.predictions
        self.labeled = stats.labeled
        self.binary = stats.binary
        self.logloss_sum = stats.logloss_sum
        self.brier_sum = stats.brier_sum
        self.abs_err_sum = stats.abs_err_sum
        self.sq_err_sum = stats.sq_err_sum
        self.dead_letters = stats.dead_letters
        self.early_labels = stats.early_labels
        self.late_labels = stats.late_labels
        self.unmatched_labels = stats.unmatched_labels
        self.join_lag_ms_sum = stats.join_lag_ms_sum
        self.first_ms = stats.first_ms
        self.last_ms = stats.last_ms
        self.reference_sha256 = stats.reference_sha256
        self._pos: list[int] | None = list(stats.pos_hist) or None
        self._neg: list[int] | None = list(stats.neg_hist) or None
        self._latency: list[int] | None = list(stats.latency_hist) or None
        self._features: dict[str, list[int]] = {
            name: list(counts) for name, counts in stats.feature_hists.items()
        }

    def add_prediction(self, latency_ms: float, at_ms: int) -> None:
        """One prediction, scored in ``latency_ms`` at ``at_ms`` (its scored_at)."""
        latency = self._latency
        if latency is None:
            latency = self._latency = [0] * _LATENCY_BINS
        i = bisect_left(LATENCY_BOUNDS_MS, latency_ms)
        latency[i if i < _LATENCY_BINS else _LATENCY_BINS - 1] += 1
        at_ms = int(at_ms)  # first_ms and last_ms are Avro longs
        if self.predictions:
            if at_ms < self.first_ms:
                self.first_ms = at_ms
            elif at_ms > self.last_ms:
                self.last_ms = at_ms
        else:
            self.first_ms = self.last_ms = at_ms
        self.predictions += 1

    def add_pair(self, score: float, label: float, lag_ms: int) -> None:
        """A prediction's ``score`` joined with its true ``label``, ``lag_ms`` after it.

        Absolute and squared errors count for every pair; logloss, Brier and the AUC bins
        only when the label is 0 or 1 and the score in [0, 1]. A NaN on either side joins
        nothing (there is no error to count).
        """
        if score != score or label != label:  # NaN
            return
        err = score - label
        if err < 0:
            err = -err
        if err > MAX_ERROR:  # also the infinities
            err = MAX_ERROR
        self.labeled += 1
        self.abs_err_sum += err
        sq = err * err
        self.sq_err_sum += sq
        if lag_ms > 0:  # int(): the sum is an Avro long, whatever number the caller has
            self.join_lag_ms_sum += int(lag_ms) if lag_ms < MAX_LAG_MS else MAX_LAG_MS
        if 0.0 <= score <= 1.0 and (label == 1.0 or label == 0.0):
            pos = self._pos
            neg = self._neg
            if pos is None or neg is None:
                pos = self._pos = [0] * AUC_BINS
                neg = self._neg = [0] * AUC_BINS
            self.binary += 1
            self.brier_sum += sq
            b = int(score * AUC_BINS)
            if b == AUC_BINS:
                b -= 1
            if label == 1.0:
                self.logloss_sum -= math.log(score if score > LOGLOSS_CLIP else LOGLOSS_CLIP)
                pos[b] += 1
            else:
                q = 1.0 - score
                self.logloss_sum -= math.log(q if q > LOGLOSS_CLIP else LOGLOSS_CLIP)
                neg[b] += 1

    def add_dead_letter(self, count: int = 1) -> None:
        self.dead_letters += count

    def add_features(
        self, reference: Reference, reference_sha256: str, values: Mapping[str, float]
    ) -> None:
        """Count one feature event's values into ``reference``'s bins (its digest kept).

        Features the reference does not bin, and NaN values, are skipped.
        """
        if self.reference_sha256 != reference_sha256:
            if self.reference_sha256 and self._features:
                raise ValueError(
                    "these stats are binned by another reference: count into a new window"
                )
            self.reference_sha256 = reference_sha256
        counts = self._features
        for name, edges in reference.features.items():
            value = values.get(name)
            if value is None or value != value:
                continue
            hist = counts.get(name)
            if hist is None:
                hist = counts[name] = [0] * (len(edges) + 1)
            hist[bisect_right(edges, value)] += 1

    def merge(self, stats: Stats) -> None:
        """Add ``stats`` in place: the same result as :func:`merge`."""
        if stats.predictions:
            if self.predictions:
                self.first_ms = min(self.first_ms, stats.first_ms)
                self.last_ms = max(self.last_ms, stats.last_ms)
            else:
                self.first_ms, self.last_ms = stats.first_ms, stats.last_ms
        self.predictions += stats.predictions
        self.labeled += stats.labeled
        self.binary += stats.binary
        self.logloss_sum += stats.logloss_sum
        self.brier_sum += stats.brier_sum
        self.abs_err_sum += stats.abs_err_sum
        self.sq_err_sum += stats.sq_err_sum
        self.dead_letters += stats.dead_letters
        self.early_labels += stats.early_labels
        self.late_labels += stats.late_labels
        self.unmatched_labels += stats.unmatched_labels
        self.join_lag_ms_sum += stats.join_lag_ms_sum
        self._pos = _add_into(self._pos, stats.pos_hist)
        self._neg = _add_into(self._neg, stats.neg_hist)
        self._latency = _add_into(self._latency, stats.latency_hist)
        mine, theirs = self.reference_sha256, stats.reference_sha256
        if mine != theirs and mine and theirs:
            # Windows of one commit share its reference. Should two references meet anyway
            # (data off a topic), the smaller digest wins and only its counts are kept: the
            # result is then the same whatever the order of the merges.
            if theirs > mine:
                return
            self._features = {}
            mine = ""
        self.reference_sha256 = mine or theirs
        for name, counts in stats.feature_hists.items():
            self._features[name] = _add_into(self._features.get(name), counts) or []

    def freeze(self) -> Stats:
        return Stats(
            predictions=self.predictions,
            labeled=self.labeled,
            binary=self.binary,
            logloss_sum=self.logloss_sum,
            brier_sum=self.brier_sum,
            pos_hist=tuple(self._pos or ()),
            neg_hist=tuple(self._neg or ()),
            abs_err_sum=self.abs_err_sum,
            sq_err_sum=self.sq_err_sum,
            latency_hist=tuple(self._latency or ()),
            dead_letters=self.dead_letters,
            early_labels=self.early_labels,
            late_labels=self.late_labels,
            unmatched_labels=self.unmatched_labels,
            join_lag_ms_sum=self.join_lag_ms_sum,
            first_ms=self.first_ms,
            last_ms=self.last_ms,
            feature_hists={name: tuple(c) for name, c in sorted(self._features.items())},
            reference_sha256=self.reference_sha256,
        )


def _add_into(mine: list[int] | None, theirs: tuple[int, ...]) -> list[int] | None:
    if not theirs:
        return mine
    if not mine:
        return list(theirs)
    if len(mine) < len(theirs):
        mine.extend([0] * (len(theirs) - len(mine)))
    # map stops at the shorter: a longer ``mine`` keeps its tail as it is.
    mine[: len(theirs)] = map(operator.add, mine, theirs)
    return mine


def add_prediction(stats: Stats, latency_ms: float, at_ms: int) -> Stats:
    """``stats`` with one more prediction (see :meth:`Accumulator.add_prediction`)."""
    acc = Accumulator(stats)
    acc.add_prediction(latency_ms, at_ms)
    return acc.freeze()


def add_pair(stats: Stats, score: float, label: float, lag_ms: int) -> Stats:
    """``stats`` with one more joined pair (see :meth:`Accumulator.add_pair`)."""
    acc = Accumulator(stats)
    acc.add_pair(score, label, lag_ms)
    return acc.freeze()


def add_dead_letter(stats: Stats, count: int = 1) -> Stats:
    return replace(stats, dead_letters=stats.dead_letters + count)


def add_labels(stats: Stats, *, early: int = 0, late: int = 0, unmatched: int = 0) -> Stats:
    """``stats`` with the join's label outcomes counted."""
    return replace(
        stats,
        early_labels=stats.early_labels + early,
        late_labels=stats.late_labels + late,
        unmatched_labels=stats.unmatched_labels + unmatched,
    )


def add_features(
    stats: Stats, reference: Reference, reference_sha256: str, values: Mapping[str, float]
) -> Stats:
    """``stats`` with one feature event counted (see :meth:`Accumulator.add_features`)."""
    acc = Accumulator(stats)
    acc.add_features(reference, reference_sha256, values)
    return acc.freeze()


# --- figures ------------------------------------------------------------------------------

Figures = dict[str, float | int | dict[str, float] | None]


def auc_from_hists(pos: Sequence[int], neg: Sequence[int]) -> float | None:
    """The ROC AUC of binned scores (trapezoid: a positive and a negative in one bin count
    half); None without both classes."""
    positives, negatives = sum(pos), sum(neg)
    if not positives or not negatives:
        return None
    below = 0  # negatives in lower bins
    twice_area = 0
    for p, n in zip(pos, neg, strict=True):
        twice_area += p * (2 * below + n)
        below += n
    return twice_area / (2 * positives * negatives)


def percentile_ms(latency_hist: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of the latencies: the geometric middle of the bin holding
    the sample of rank ceil(q * n); None without samples."""
    total = sum(latency_hist)
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, count in enumerate(latency_hist):
        seen += count
        if seen >= rank:
            return _bin_middle(i)
    return _bin_middle(len(latency_hist) - 1)


def _bin_middle(i: int) -> float:
    if i == 0:
        return LATENCY_BOUNDS_MS[0]
    return math.sqrt(LATENCY_BOUNDS_MS[i - 1] * LATENCY_BOUNDS_MS[i])


def figures(stats: Stats, window_ms: int, reference: Reference | None = None) -> Figures:
    """What a person reads and a canary compares; None where the counts say nothing.

    Binary figures (logloss, brier, auc) need every labelled pair to be binary, so that a
    regression model whose outputs happen to fall in [0, 1] is not read as a classifier.
    PSI needs the ``reference`` the stats were binned by (``stats.reference_sha256``).
    """
    labeled, binary, predictions = stats.labeled, stats.binary, stats.predictions
    is_binary = binary == labeled > 0
    psis: dict[str, float] = {}
    if reference is not None:
        for name, counts in stats.feature_hists.items():
            expected = reference.fractions.get(name)
            if expected is not None and len(expected) == len(counts) and any(counts):
                psis[name] = psi(expected, counts)
    return {
        "count": predictions,
        "labeled": labeled,
        "coverage": labeled / predictions if predictions else None,
        "join_lag_ms": stats.join_lag_ms_sum / labeled if labeled else None,
        "logloss": stats.logloss_sum / binary if is_binary else None,
        "brier": stats.brier_sum / binary if is_binary else None,
        "auc": auc_from_hists(stats.pos_hist, stats.neg_hist) if is_binary else None,
        "mae": stats.abs_err_sum / labeled if labeled else None,
        "rmse": math.sqrt(stats.sq_err_sum / labeled) if labeled else None,
        "p50_ms": percentile_ms(stats.latency_hist, 0.5),
        "p99_ms": percentile_ms(stats.latency_hist, 0.99),
        "throughput": predictions * 1000 / window_ms if window_ms > 0 else None,
        "dead_letter_rate": (
            stats.dead_letters / (stats.dead_letters + predictions)
            if stats.dead_letters + predictions
            else None
        ),
        "dead_letters": stats.dead_letters,
        "early_labels": stats.early_labels,
        "late_labels": stats.late_labels,
        "unmatched_labels": stats.unmatched_labels,
        "psi": psis,
    }


# --- drift ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """Per-feature bins of the training data: ``features`` maps a name to its strictly
    increasing edges (``len(edges) + 1`` bins: below the first edge, ..., from the last),
    ``fractions`` to the share of the training rows in each bin."""

    features: Mapping[str, tuple[float, ...]]
    fractions: Mapping[str, tuple[float, ...]]
    rows: int


def bin_index(edges: Sequence[float], value: float) -> int:
    """The bin of ``value``: the number of edges at or below it."""
    return bisect_right(edges, value)


def reference_from_rows(
    names: Sequence[str], rows: Iterable[Sequence[float]], bins: int = 10
) -> Reference:
    """Quantile bins of each named column of ``rows`` (the training sample).

    Edges are the values at the 1/bins, ..., (bins-1)/bins quantiles, deduplicated (a
    column with few distinct values gets fewer bins). NaNs and infinities are left out; a
    column without a finite value is left out of the reference.
    """
    if not 2 <= bins <= MAX_REFERENCE_BINS:
        raise ValueError(f"bins must be in 2..{MAX_REFERENCE_BINS}, not {bins}")
    if len(names) > MAX_FEATURES:
        raise ValueError(f"{len(names)} features: a reference holds at most {MAX_FEATURES}")
    for name in names:
        problem = feature_name_problem(name)
        if problem:
            raise ValueError(problem)
    if len(set(names)) != len(names):
        raise ValueError("each feature of a reference is named once")
    columns: list[list[float]] = [[] for _ in names]
    count = 0
    for row in rows:
        if len(row) != len(names):
            raise ValueError(f"row {count + 1} has {len(row)} values for {len(names)} features")
        for column, value in zip(columns, row, strict=True):
            value = float(value)
            if math.isfinite(value):
                column.append(value)
        count += 1
    edges_of: dict[str, tuple[float, ...]] = {}
    fractions_of: dict[str, tuple[float, ...]] = {}
    for name, column in zip(names, columns, strict=True):
        if not column:
            continue
        column.sort()
        n = len(column)
        edges = tuple(sorted({column[min(n - 1, (i * n) // bins)] for i in range(1, bins)}))
        # The lowest value as an edge leaves its bin empty forever: drop it.
        if edges and edges[0] == column[0] and len(edges) > 1:
            edges = edges[1:]
        counts = [0] * (len(edges) + 1)
        for value in column:
            counts[bisect_right(edges, value)] += 1
        edges_of[name] = edges
        fractions_of[name] = tuple(c / n for c in counts)
    return Reference(features=edges_of, fractions=fractions_of, rows=count)


def reference_to_json(reference: Reference) -> bytes:
    """The canonical JSON of a reference (its sha256 is its address in the store);
    ValueError when it is more than the streams app reads back (MAX_REFERENCE_BYTES)."""
    data = canonical(
        {
            "format": REFERENCE_FORMAT,
            "rows": reference.rows,
            "features": {
                name: {"edges": list(edges), "fractions": list(reference.fractions[name])}
                for name, edges in reference.features.items()
            },
        }
    )
    if len(data) > MAX_REFERENCE_BYTES:
        raise ValueError(
            f"the reference of {len(reference.features):,} features is {len(data):,} bytes; "
            f"the streams app takes at most {MAX_REFERENCE_BYTES:,}: pass fewer columns"
        )
    return data


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a reference may hold")


def reference_from_json(data: bytes) -> Reference:
    """A reference from its JSON (uploaded by a client: every part is checked): ValueError."""
    if len(data) > MAX_REFERENCE_BYTES:
        raise ValueError(f"a reference is at most {MAX_REFERENCE_BYTES} bytes, not {len(data)}")
    try:
        plain = json.loads(data, parse_constant=_refuse_constant)
    except (RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"a reference is UTF-8 JSON: {type(exc).__name__}") from None
    except ValueError as exc:
        raise ValueError(f"a reference is JSON: {exc}") from None
    if not isinstance(plain, dict) or plain.get("format") != REFERENCE_FORMAT:
        raise ValueError(f'a reference is a JSON object with "format": "{REFERENCE_FORMAT}"')
    if set(plain) != {"format", "rows", "features"}:
        raise ValueError('a reference has exactly the keys "format", "rows" and "features"')
    rows = plain["rows"]
    if type(rows) is not int or not 0 <= rows <= MAX_COUNT:
        raise ValueError(f'reference "rows" must be an integer in 0..{MAX_COUNT}')
    features = plain["features"]
    if not isinstance(features, dict) or len(features) > MAX_FEATURES:
        raise ValueError(
            f'reference "features" must be an object of at most {MAX_FEATURES} features'
        )
    edges_of: dict[str, tuple[float, ...]] = {}
    fractions_of: dict[str, tuple[float, ...]] = {}
    for name, bins in features.items():
        problem = feature_name_problem(name)
        if problem:
            raise ValueError(f"reference: {problem}")
        if not isinstance(bins, dict) or set(bins) != {"edges", "fractions"}:
            raise ValueError(f'reference feature {name!r}: an object of "edges" and "fractions"')
        edges = _numbers(bins["edges"], f"reference feature {name!r} edges", MAX_EDGES)
        fractions = _numbers(
            bins["fractions"], f"reference feature {name!r} fractions", MAX_EDGES + 1
        )
        if any(a >= b for a, b in pairwise(edges)):
            raise ValueError(f"reference feature {name!r}: edges must be strictly increasing")
        if len(fractions) != len(edges) + 1:
            raise ValueError(
                f"reference feature {name!r}: {len(edges)} edges make {len(edges) + 1} bins, "
                f"not {len(fractions)} fractions"
            )
        if (
            any(not 0.0 <= f <= 1.0 for f in fractions)
            or abs(math.fsum(fractions) - 1.0) > _FRACTION_SUM_TOLERANCE
        ):
            raise ValueError(f"reference feature {name!r}: fractions in [0, 1] that sum to 1")
        edges_of[name] = edges
        fractions_of[name] = fractions
    return Reference(features=edges_of, fractions=fractions_of, rows=rows)


def _numbers(value: object, what: str, most: int) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) > most:
        raise ValueError(f"{what}: a list of at most {most} numbers")
    numbers: list[float] = []
    for given in value:
        number = finite_number(given)
        if number is None:
            raise ValueError(f"{what}: {given!r:.40} is not a finite number")
        numbers.append(number)
    return tuple(numbers)


def psi(fractions: Sequence[float], counts: Sequence[int]) -> float:
    """Population stability index of live ``counts`` against the reference ``fractions``
    (same bins); an empty bin counts as PSI_EPSILON on either side. 0.0 without counts."""
    if len(fractions) != len(counts):
        raise ValueError(f"{len(counts)} counts for {len(fractions)} reference bins")
    total = sum(counts)
    if not total:
        return 0.0
    index = 0.0
    for expected, count in zip(fractions, counts, strict=True):
        e = expected if expected > PSI_EPSILON else PSI_EPSILON
        a = count / total
        if a < PSI_EPSILON:
            a = PSI_EPSILON
        index += (a - e) * math.log(a / e)
    return index

"""When a label (``schemas/label.avsc``) is one the monitor can join: the one home of the rule.

The client checks a label before it sends it, the CLI before it publishes a file, and
the monitor again when it reads one (anyone who may write the topic can write junk):
all three call :func:`validate_label`, so they cannot disagree on what is valid. The
monitor holds the predictions it joins labels with to the same bounds
(:func:`validate_prediction`, :func:`version_problem`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from streams.core.hashing import SHA256_HEX
from streams.core.monitoring import finite_number
from streams.core.refs import MAX_REF_LENGTH, NAME, ROLLOUT_ID
from streams.core.rollout import BASELINE, CANDIDATE

MAX_VALUES: Final = 64
# Ids and entity keys are held in the monitor's join state until the horizon passes:
# bounded so that one label cannot take more than a few hundred bytes of it.
MAX_ID_LENGTH: Final = 256
ARMS: Final = ("", BASELINE, CANDIDATE)  # a version's arm: none, or a rollout's
# The control characters (Unicode category Cc).
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Times are Avro longs (ms since the epoch); negative ones are no moment a model served.
_MAX_MS: Final = (1 << 63) - 1


def _text_problem(field: str, value: object, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        return f"{field} must be a non-empty string, not {str(value)[:40]!r}"
    if len(value) > MAX_ID_LENGTH:
        return f"{field} is {len(value):,} characters; at most {MAX_ID_LENGTH} are allowed"
    if _CONTROL.search(value):
        # Ids end up in logs, dead letters and terminals: a control character there is
        # an escape sequence, or a key that looks like another.
        return f"{field} {value[:40]!r} holds a control character; use printable text"
    return None


def _time_problem(field: str, value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_MS:
        return f"{field} must be milliseconds since the epoch (an integer >= 0), not {value!r:.40}"
    return None


def validate_label(record: Mapping[str, object]) -> str | None:
    """Why ``record`` is not a valid label, saying what to fix; None when it is valid.

    Valid: ``model`` a model name; exactly one of ``feature_event_id`` or
    (``entity_key`` and ``event_time``); 1 to :data:`MAX_VALUES` finite ``values``;
    ``label_id`` and ``label_time`` present.
    """
    model = record.get("model")
    if not isinstance(model, str) or not NAME.fullmatch(model):
        return (
            f"model {str(model)[:80]!r} is not a model name (1-128 letters, digits, '.', "
            "'_' or '-', starting with a letter or digit)"
        )
    for field, required in (("label_id", True), ("feature_event_id", False)):
        problem = _text_problem(field, record.get(field), required)
        if problem:
            return problem
    problem = _text_problem("entity_key", record.get("entity_key"), False)
    if problem:
        return problem
    event_id, entity, event_time = (
        record.get("feature_event_id"),
        record.get("entity_key"),
        record.get("event_time"),
    )
    if event_id is not None:
        if entity is not None or event_time is not None:
            return (
                "a label names either feature_event_id, or entity_key with event_time, "
                "not both; drop one"
            )
    elif entity is None or event_time is None:
        return (
            "a label needs feature_event_id, or entity_key with event_time (the event_time "
            "of the feature event it answers)"
        )
    else:
        problem = _time_problem("event_time", event_time)
        if problem:
            return problem
    problem = _time_problem("label_time", record.get("label_time"))
    if problem:
        return problem
    return _values_problem(record.get("values"))


def _values_problem(values: object) -> str | None:
    if not isinstance(values, list | tuple) or not 1 <= len(values) <= MAX_VALUES:
        count = len(values) if isinstance(values, list | tuple) else "no"
        return f"values holds {count} numbers; a label holds 1 to {MAX_VALUES}"
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"values[{index}] is {value!r:.40}, not a number"
        if finite_number(value) is None:  # also an integer beyond any double
            return f"values[{index}] is {value!r:.40}; a label value must be a finite double"
    return None


def version_problem(
    model: object, ref: object, commit_id: object, rollout_id: object, arm: object
) -> str | None:
    """Why these do not name a version a window can be kept for (the monitor keeps one
    per version: junk here would be a window, and a Prometheus series, per junk value);
    None when they do. ``ref`` may be empty, as may ``rollout_id`` and ``arm``."""
    if not isinstance(model, str) or not NAME.fullmatch(model):
        return f"model {str(model)[:80]!r} is not a model name"
    if not isinstance(commit_id, str) or not SHA256_HEX.fullmatch(commit_id):
        return f"commit_id {str(commit_id)[:80]!r} is not a commit id (64 lowercase hex digits)"
    if ref != "":
        problem = _text_problem("ref", ref, True)
        if problem or len(str(ref)) > MAX_REF_LENGTH:
            return problem or f"ref is longer than {MAX_REF_LENGTH} characters"
    if rollout_id != "" and not (isinstance(rollout_id, str) and ROLLOUT_ID.fullmatch(rollout_id)):
        return f"rollout_id {str(rollout_id)[:40]!r} is not a rollout id (r + 11 hex digits)"
    if arm not in ARMS:
        return f"arm {str(arm)[:40]!r} is not one of {', '.join(map(repr, ARMS))}"
    return None


def validate_prediction(record: Mapping[str, object]) -> str | None:
    """Why a decoded ``modelvc.serving.Prediction`` is not one the monitor can count; None
    when it is. Anyone who may write the predictions topic can write junk: a negative or
    huge time, an unbounded id or a made-up version must not reach the join state."""
    problem = version_problem(
        record.get("model"),
        record.get("requested_ref"),
        record.get("commit_id"),
        record.get("rollout_id", ""),
        record.get("arm", ""),
    )
    if problem:
        return problem
    for field in ("prediction_id", "feature_event_id"):
        problem = _text_problem(field, record.get(field), True)
        if problem:
            return problem
    entity = record.get("entity_key", "")
    if entity != "":
        problem = _text_problem("entity_key", entity, True)
        if problem:
            return problem
    for field in ("event_time", "scored_at"):
        problem = _time_problem(field, record.get(field))
        if problem:
            return problem
    scores = record.get("scores")
    if not isinstance(scores, list | tuple):
        return "scores must be a list of numbers"
    if scores and (isinstance(scores[0], bool) or not isinstance(scores[0], int | float)):
        return f"scores[0] is {scores[0]!r:.40}, not a number"
    return None

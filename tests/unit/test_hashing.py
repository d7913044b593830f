"""Canonical JSON: the bytes every hash is built on, checked against shipped vectors
and against an encoder written from schemas/CANONICAL.md alone."""

from __future__ import annotations

import json
import math
import re
from decimal import ROUND_FLOOR, Decimal, localcontext
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import SCHEMA_DIR
from streams.core.hashing import canonical, commit_id, sha256_hex

VECTORS = json.loads((SCHEMA_DIR / "vectors" / "canonical.json").read_text())
CANONICAL_MD = SCHEMA_DIR / "CANONICAL.md"

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        point = ord(char)
        if char in _SHORT:
            out.append(_SHORT[char])
        elif 0x20 <= point <= 0x7E:
            out.append(char)
        elif point > 0xFFFF:
            high, low = divmod(point - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
        else:
            out.append(f"\\u{point:04x}")
    out.append('"')
    return "".join(out)


def _shortest(x: float) -> tuple[str, int]:
    """The shortest digits that read back as x > 0, and the exponent of the first.

    For p = 1, 2, ... significant digits, the two p-digit decimals either side of
    x's exact value (rounded down and up); the first p where one reads back as x,
    the nearer of those that do (an exact tie: the even last digit).
    """
    exact = Decimal(x)
    top = exact.adjusted()  # exponent of the first significant digit
    with localcontext(prec=800):  # exact arithmetic: a double has at most 767 digits
        return _first_that_reads_back(x, exact, top)


def _first_that_reads_back(x: float, exact: Decimal, top: int) -> tuple[str, int]:
    for p in range(1, 18):
        step = Decimal(1).scaleb(top - p + 1)
        low = (exact / step).to_integral_value(ROUND_FLOOR) * step
        candidates = [c for c in (low, low + step) if float(c) == x]
        if candidates:
            best = min(candidates, key=lambda c: (abs(c - exact), int(c / step) % 2))
            _, digit_tuple, exp = best.normalize().as_tuple()
            digits = "".join(map(str, digit_tuple))
            return digits, int(exp) + len(digits) - 1
    raise AssertionError("17 digits always read back")


def _double(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        raise ValueError("not a finite double")
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    x = abs(x)
    if x == 0:
        digits, exponent = "0", 0
    else:
        digits, exponent = _shortest(x)
    if -4 <= exponent < 16:
        if exponent < 0:
            whole, fraction = "0", "0" * (-exponent - 1) + digits
        else:
            padded = digits.ljust(exponent + 1, "0")
            whole, fraction = padded[: exponent + 1], padded[exponent + 1 :]
        return f"{sign}{whole}.{fraction or '0'}"
    head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{head}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def spec_canonical(value: Any) -> bytes:
    """schemas/CANONICAL.md, implemented without json.dumps or repr."""

    def encode(v: Any) -> str:
        if v is None:
            return "null"
        if v is True or v is False:
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return _double(v)
        if isinstance(v, str):
            return _string(v)
        if isinstance(v, list):
            return "[" + ",".join(encode(x) for x in v) + "]"
        # Python compares str by code point, the order the page asks for.
        members = sorted(v.items())
        return "{" + ",".join(f"{_string(k)}:{encode(x)}" for k, x in members) + "}"

    return encode(value).encode("ascii")


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_canonical_writes_each_vector_byte_for_byte(vector: dict[str, str]) -> None:
    value = json.loads(vector["input"])
    assert canonical(value) == vector["canonical"].encode("ascii")
    assert sha256_hex(vector["canonical"].encode("ascii")) == vector["sha256"]
    assert spec_canonical(value) == canonical(value)


@pytest.mark.parametrize(
    "vector",
    [v for v in VECTORS["vectors"] if v["name"].startswith("commit id input")],
    ids=lambda v: v["name"],
)
def test_the_commit_id_vectors_are_what_commit_id_computes(vector: dict[str, str]) -> None:
    """With a signature and without: the page's rule, and an old commit's id unchanged."""
    content = json.loads(vector["input"])
    assert commit_id(**content) == vector["sha256"]
    if "signature" in content:
        assert commit_id(**{**content, "signature": None}) != vector["sha256"]


@pytest.mark.parametrize("vector", VECTORS["refused"], ids=lambda v: v["name"])
def test_non_finite_numbers_are_refused(vector: dict[str, str]) -> None:
    value = json.loads(vector["input"])
    with pytest.raises(ValueError):
        canonical(value)
    with pytest.raises(ValueError):
        spec_canonical(value)


def test_the_vectors_cover_every_shape_the_page_names() -> None:
    outputs = [v["canonical"] for v in VECTORS["vectors"]]
    shapes = {
        "positional double": r"^-?\d+\.\d+$",
        "whole double": r"^\d+\.0$",
        "negative zero": r"^-0\.0$",
        "negative exponent": r"^[\d.]+e-\d\d+$",
        "positive exponent": r"^[\d.]+e\+\d\d+$",
        "three-digit exponent": r"e[+-]\d{3}$",
        "integer beyond 2^53": r"^\d{16,}$",
        "non-ASCII escape": r"\\u00e9",
        "astral pair": r"\\ud83d\\ude00",
        "DEL": r"\\u007f",
        "empty object": r"^\{\}$",
        "empty array": r"^\[\]$",
        "nested object": r"\{[^{}]*\{[^{}]*\{",
    }
    for shape, pattern in shapes.items():
        assert any(re.search(pattern, o) for o in outputs), f"no vector for {shape}"
    assert "9.999e-05" in outputs and "0.0001" in outputs  # both sides of e = -4
    assert "9999999999999998.0" in outputs and "1e+16" in outputs  # both sides of e = 16


def test_the_docstring_points_at_the_rule_and_does_not_promise_any_json_library() -> None:
    import streams.core.hashing as hashing

    assert "schemas/CANONICAL.md" in (hashing.__doc__ or "")
    assert "nothing but a JSON library" not in (hashing.__doc__ or "")
    assert CANONICAL_MD.is_file()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_an_encoder_written_from_the_page_alone_agrees_with_canonical(value: Any) -> None:
    assert spec_canonical(value) == canonical(value)


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_double_is_written_as_the_page_says(x: float) -> None:
    assert spec_canonical(x) == canonical(x)

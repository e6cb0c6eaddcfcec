"""`parse_object` reads a body the same way with or without exact numbers.

The receiver reads the bodies of senders whose ids and types are strings or headers with
orjson (`exact_numbers=False`), and everything orjson refuses again with `json`. Swept by
Hypothesis over JSON as senders write it (any spacing, escaped or raw text, NaN, infinities,
lone surrogates, integers far past 64 bits, deep nesting) and over broken text: the verdict and
the error are `json`'s every time, and the payload is `json`'s, except that an integer past 64
bits may be the nearest float.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automation_pipelines.webhooks.payloads import MAX_DEPTH, PayloadError, parse_object

SIXTY_FOUR_BITS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
NUMBERS = st.one_of(
    SIXTY_FOUR_BITS,
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
)
TEXTS = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXTS, inner, max_size=4)),
    max_leaves=25,
)


def outcome(text: str, exact_numbers: bool) -> tuple[str, Any]:
    try:
        return "payload", parse_object(text, "body", exact_numbers=exact_numbers)
    except PayloadError as error:
        return "error", str(error)


def same(exact: Any, fast: Any) -> bool:
    """Equal, where an integer past 64 bits may be read as the nearest float."""
    if isinstance(exact, dict):
        return (
            isinstance(fast, dict)
            and list(exact) == list(fast)
            and all(same(exact[key], fast[key]) for key in exact)
        )
    if isinstance(exact, list):
        return (
            isinstance(fast, list)
            and len(exact) == len(fast)
            and all(same(a, b) for a, b in zip(exact, fast, strict=True))
        )
    if isinstance(exact, float) and math.isnan(exact):
        return isinstance(fast, float) and math.isnan(fast)
    if type(exact) is int and not -(2**63) <= exact < 2**64:
        return fast == exact or (isinstance(fast, float) and fast == float(exact))
    return type(exact) is type(fast) and exact == fast and str(exact) == str(fast)


def assert_read_alike(text: str) -> None:
    exact, fast = outcome(text, True), outcome(text, False)
    assert exact[0] == fast[0], (text, exact, fast)
    if exact[0] == "error":
        assert exact[1] == fast[1]
    else:
        assert same(exact[1], fast[1]), (text, exact[1], fast[1])


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(TEXTS, VALUES, max_size=6),
    st.booleans(),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
)
def test_a_payload_reads_alike_with_or_without_exact_numbers(payload, ascii_only, separators):
    assert_read_alike(json.dumps(payload, ensure_ascii=ascii_only, separators=separators))


@settings(max_examples=400, deadline=None)
@given(VALUES, st.data())
def test_broken_or_unusual_text_reads_alike(value, data):
    """Any JSON value (not only objects), cut, grown or with a character replaced."""
    text = json.dumps({"v": value} if data.draw(st.booleans()) else value)
    cut = data.draw(st.integers(0, len(text)))
    insert = data.draw(st.text(max_size=3))
    how = data.draw(st.sampled_from(["as is", "cut", "insert", "replace", "wrap"]))
    text = {
        "as is": text,
        "cut": text[:cut],
        "insert": text[:cut] + insert + text[cut:],
        "replace": text[:cut] + insert + text[cut + 1 :],
        "wrap": f"\ufeff{text}" if cut % 2 else f" \n{text}\t ",
    }[how]
    assert_read_alike(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"n": 18446744073709551616}',
        '{"n": -9223372036854775809}',
        '{"n": 1' + "0" * 400 + "}",
        '{"n": NaN, "m": -Infinity}',
        '{"n": 1e400}',
        '{"s": "\\ud800"}',
        '{"s": "\\udc00\\ud800"}',
        '{"a": 1, "a": 2, "b": 3}',
        '{"f": 5e-324, "g": -0.0, "h": 1.7976931348623157e308}',
        "{" + '"a": {' * (MAX_DEPTH - 1) + "}" * MAX_DEPTH,
        "{" + '"a": {' * MAX_DEPTH + "}" * (MAX_DEPTH + 1),
        "[" * 2_000 + "]" * 2_000,
        '{"a": ' + "[" * 1_100 + "]" * 1_100 + "}",
        '{"tab": "\t"}',
        "{}garbage",
    ],
)
def test_the_edges_of_json_read_alike(text):
    assert_read_alike(text)


def test_numbers_are_exact_unless_told_otherwise():
    assert parse_object('{"n": 18446744073709551617}')["n"] == 18446744073709551617

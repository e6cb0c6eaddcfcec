"""`object_fields` reads what `parse_object` (Python's `json`) reads, and refuses what it refuses.

The receiver checks most bodies with simdjson and reads only the top-level fields its source's
`identify` needs, falling back to `json` for whatever simdjson refuses, does not read as an
object, or where a key repeats. Swept by Hypothesis over JSON as senders write it (any spacing,
escaped or raw text, NaN, infinities, lone surrogates, integers far past 64 bits, deep nesting,
repeated keys) and over broken text: the verdict, the error and every value read are `json`'s.
"""

from __future__ import annotations

import json
import math
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from automation_pipelines.webhooks import payloads
from automation_pipelines.webhooks.payloads import (
    MAX_DEPTH,
    PayloadError,
    object_fields,
    parse_object,
)

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


def exact_outcome(text: str, keys: tuple[str, ...]) -> tuple[str, Any]:
    try:
        payload = parse_object(text, "body")
    except PayloadError as error:
        return "error", str(error)
    return "fields", {key: value for key, value in payload.items() if key in keys}


def fast_outcome(text: str, keys: tuple[str, ...]) -> tuple[str, Any]:
    try:
        return "fields", object_fields(text, keys, "body")
    except PayloadError as error:
        return "error", str(error)


def same(exact: Any, fast: Any) -> bool:
    """Equal, and of the same types all the way down (NaN equal to NaN)."""
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
    return type(exact) is type(fast) and exact == fast and str(exact) == str(fast)


def top_keys(text: str) -> list[str]:
    """The top-level keys of `text` if `json` reads it as an object (for drawing keys)."""
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return []
    return list(payload) if isinstance(payload, dict) else []


def assert_read_alike(text: str, keys: tuple[str, ...]) -> None:
    exact, fast = exact_outcome(text, keys), fast_outcome(text, keys)
    assert exact[0] == fast[0], (text, keys, exact, fast)
    if exact[0] == "error":
        assert exact[1] == fast[1]
    else:
        assert same(exact[1], fast[1]), (text, keys, exact[1], fast[1])


def draw_keys(data, text: str) -> tuple[str, ...]:
    """No key, some of the text's own keys, and maybe one it lacks."""
    own = top_keys(text)
    keys = data.draw(st.lists(st.sampled_from(own), unique=True)) if own else []
    if data.draw(st.booleans()):
        keys.append(data.draw(TEXTS))
    return tuple(keys)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(TEXTS, VALUES, max_size=6),
    st.booleans(),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
    st.data(),
)
def test_a_payload_reads_alike(payload, ascii_only, separators, data):
    text = json.dumps(payload, ensure_ascii=ascii_only, separators=separators)
    assert_read_alike(text, draw_keys(data, text))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(VALUES, min_size=1, max_size=4),
    st.integers(min_value=MAX_DEPTH // 2, max_value=MAX_DEPTH * 2),
    st.integers(min_value=1, max_value=3),
    st.data(),
)
def test_a_payload_with_more_brackets_than_the_bound_reads_alike(values, width, depth, data):
    """Wide (a long push's commits) or deep: more brackets than `MAX_DEPTH`, so the nesting is
    walked rather than ruled out by counting."""
    item: Any = values
    for _ in range(depth):
        item = {"k": item}
    payload = {"id": "d", "items": [item] * width, "deep": values}
    for _ in range(data.draw(st.sampled_from([0, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH]))):
        payload = {"id": "d", "inner": payload}
    text = json.dumps(payload)
    assert text.count("{") + text.count("[") > MAX_DEPTH
    assert_read_alike(text, draw_keys(data, text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["id", "type", "x"]), VALUES), max_size=6), st.data())
def test_repeated_keys_read_alike(members, data):
    """A key given twice: json keeps its last value."""
    text = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in members) + "}"
    assert_read_alike(text, draw_keys(data, text))


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
    assert_read_alike(text, draw_keys(data, text))


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
        '\ufeff{"id": "a"}',
        '{"id": "a", "id": "b"}',
        '{"id": "a", "type": {"n": [1, 2.5, "x", null, true]}, "id": 7}',
        '{"id": "\x01"}',
        '{"id": 18446744073709551615, "type": -9223372036854775808}',
    ],
)
def test_the_edges_of_json_read_alike(text):
    for keys in [(), ("id",), ("id", "type"), ("n", "s", "a", "missing")]:
        assert_read_alike(text, keys)


def push(number: int, rng: random.Random) -> dict:
    """A body shaped like GitHub's push delivery: a few commits, the repository, the pusher."""
    person = {"name": f"dev{number}", "email": f"dev{number}@example.com", "username": "dev"}
    commits = [
        {
            "id": f"{rng.getrandbits(160):040x}",
            "message": "Fix the thing\n\nand its test" * rng.randint(1, 3),
            "timestamp": "2026-12-07T19:00:00Z",
            "author": person,
            "committer": person,
            "added": [f"src/new_{i}.py" for i in range(rng.randint(0, 3))],
            "removed": [],
            "modified": ["README.md", "src/app.py"],
            "distinct": True,
        }
        for _ in range(rng.randint(1, 4))
    ]
    return {
        "ref": "refs/heads/main",
        "before": f"{rng.getrandbits(160):040x}",
        "after": commits[-1]["id"],
        "repository": {
            "id": number,
            "full_name": "team/service",
            "owner": {"login": "team", "id": 1, "site_admin": False},
            "topics": ["ops", "webhooks"],
            "stargazers_count": rng.randint(0, 10_000),
        },
        "pusher": person,
        "sender": {"login": "dev", "id": 2, "type": "User"},
        "created": False,
        "deleted": False,
        "forced": False,
        "commits": commits,
        "head_commit": commits[-1],
    }


def test_a_push_is_checked_without_json():
    """The speed this is for: a typical push never reaches `json` (nor a parser's leftovers)."""
    rng = random.Random(7)
    for number in range(50):
        text = json.dumps(push(number, rng), separators=(",", ":"))
        assert payloads._shallow(text, MAX_DEPTH)
        assert payloads._fast_fields(text, ()) == {}
        assert payloads._fast_fields(text, ("ref", "after"))["ref"] == json.loads(text)["ref"]
    wide = json.dumps({"ref": "r", "commits": [{"added": [], "author": {}}] * 60})
    assert not payloads._shallow(wide, MAX_DEPTH)  # walked on orjson's tree, never json's
    assert not payloads._orjson_deeper_than(wide, MAX_DEPTH)


def test_a_body_past_the_parsers_capacity_is_read_by_json():
    """A large delivery is read alike, and leaves no parser holding buffers its size."""
    text = json.dumps({"id": "big", "type": "t", "pad": "x" * payloads.FAST_MAX_BYTES})
    assert payloads._fast_fields(text, ("id",)) is None
    assert object_fields(text, ("id", "type"), "body") == {"id": "big", "type": "t"}
    with pytest.raises(PayloadError, match=r"^body is not JSON"):
        object_fields(text[:-1], ("id",), "body")
    assert object_fields('{"id": "small"}', ("id",)) == {"id": "small"}  # the parser goes on


def test_threads_each_read_their_own_bodies():
    texts = [
        json.dumps({"id": f"d{n}", "type": "t", "pad": list(range(n % 50))}) for n in range(400)
    ]

    def read(text: str) -> str:
        return object_fields(text, ("id",))["id"]

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(read, texts * 5)) == [f"d{n}" for n in range(400)] * 5


def test_numbers_are_exact():
    assert parse_object('{"n": 18446744073709551617}')["n"] == 18446744073709551617
    assert object_fields('{"n": 18446744073709551617}', ("n",))["n"] == 18446744073709551617

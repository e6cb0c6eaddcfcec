"""Reading a webhook body as a JSON object, with the nesting bounded.

Python's json parser recurses once per level and raises RecursionError near 1,000 levels, and
every later step that walks the payload (signature digests, validation) recurses too. A webhook
nests a few levels, so anything deeper than `MAX_DEPTH` is refused up front as malformed: the
receiver answers 400, and the loader dead-letters such a row instead of failing on it.

The receiver checks every body it takes, but most senders' ids and types are headers or a
top-level string or two: `object_fields` checks the body with simdjson, which builds no Python
objects for it, and reads only those fields. Building and freeing a push's few hundred objects
for nothing was about a fifth of a receiving process's time. simdjson refuses what `json`
accepts beyond the standard (NaN, infinities, integers past 64 bits, lone surrogates) and
accepts a leading byte-order mark, which `json` refuses, so `json` reads whatever simdjson
refuses, finds not to be an object, or where a key is repeated: the verdict, the error and
every value are always `json`'s. A body with more brackets than `MAX_DEPTH` (a long push) has
its nesting walked on orjson's reading of it, twice as fast as json's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import simdjson

#: Most levels of objects and arrays a payload may nest (the top-level object is level 1).
MAX_DEPTH = 100


class PayloadError(ValueError):
    """The body cannot be used as a webhook payload; str() says why, safe to send back."""


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "number"


def deeper_than(value: Any, limit: int) -> bool:
    """True if `value` nests more than `limit` levels; iterative, so any depth is safe."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_object(text: str, what: str = "payload", max_depth: int = MAX_DEPTH) -> dict:
    """The payload as a dict, or `PayloadError` (whose message starts with `what`) for text that
    is not JSON, nests deeper than `max_depth` or is not an object."""
    too_deep = f"{what} is nested deeper than {max_depth} levels"
    try:
        payload = json.loads(text)
    except RecursionError:
        raise PayloadError(too_deep) from None
    except ValueError as error:
        raise PayloadError(f"{what} is not JSON: {error}") from None
    if (
        not _shallow(text, max_depth)
        and isinstance(payload, dict | list)
        and deeper_than(payload, max_depth)
    ):
        raise PayloadError(too_deep)
    if not isinstance(payload, dict):
        raise PayloadError(f"{what} must be a JSON object, got {type(payload).__name__}")
    return payload


def _shallow(text: str, max_depth: int) -> bool:
    """True when `text` cannot nest past `max_depth`: each level needs an opening bracket."""
    return text.count("{") + text.count("[") <= max_depth


#: One simdjson parser per thread: a parser is not for two threads at once, and keeps its
#: buffers from one body to the next.
_parsers = threading.local()
#: The largest body a parser takes; `json` reads larger ones. A parser keeps buffers of about 5
#: times the largest body it read for the life of its thread, so one large delivery must not
#: leave every receiving process hundreds of MB larger.
FAST_MAX_BYTES = 1 << 20


def _fast_fields(text: str, keys: Sequence[str]) -> dict | None:
    """`keys`' values in `text` if simdjson reads it as an object, else None (json decides).
    Nothing of simdjson's escapes: the parser's next body needs its last document unreferenced."""
    if text.startswith("\ufeff"):  # simdjson skips a byte-order mark; json refuses it
        return None
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser(max_capacity=FAST_MAX_BYTES)
    try:
        document = parser.parse(text)
    except ValueError:  # refused, or over FAST_MAX_BYTES
        return None
    except RuntimeError:  # a number it cannot hold, or a document of its still referenced
        _parsers.parser = simdjson.Parser(max_capacity=FAST_MAX_BYTES)
        return None
    try:
        if not isinstance(document, simdjson.Object):
            return None
        fields: dict = {}
        if keys:
            present = [key for key in document.keys() if key in keys]  # noqa: SIM118 - in order, repeats too
            if len(present) != len(set(present)):
                return None  # a repeated key: json keeps its last value, simdjson its first
            for key in present:
                try:
                    value = document[key]
                except KeyError:  # a key simdjson lists but cannot look up (one with a NUL)
                    return None
                if isinstance(value, simdjson.Object):
                    value = value.as_dict()
                elif isinstance(value, simdjson.Array):
                    value = value.as_list()
                fields[key] = value
        return fields
    finally:
        del document


def _orjson_deeper_than(text: str, limit: int) -> bool:
    """Whether a body simdjson accepted nests past `limit`, walked on orjson's reading of it
    (about twice as fast as json's, and of the same shape); True if orjson refuses it, so json
    decides."""
    try:
        tree = orjson.loads(text)
    except orjson.JSONDecodeError:
        return True
    return deeper_than(tree, limit)


def object_fields(
    text: str, keys: Sequence[str] = (), what: str = "payload", max_depth: int = MAX_DEPTH
) -> dict:
    """Of the payload `parse_object` reads from `text`, only the top-level `keys` it has (a
    dict, with the values `json` reads); its refusals are `parse_object`'s, word for word."""
    fields = _fast_fields(text, keys)
    if fields is not None and (
        _shallow(text, max_depth) or not _orjson_deeper_than(text, max_depth)
    ):
        return fields
    payload = parse_object(text, what, max_depth)
    return {key: value for key, value in payload.items() if key in keys}

"""Reading a webhook body as a JSON object, with the nesting bounded.

Python's json parser recurses once per level and raises RecursionError near 1,000 levels, and
every later step that walks the payload (signature digests, validation) recurses too. A webhook
nests a few levels, so anything deeper than `MAX_DEPTH` is refused up front as malformed: the
receiver answers 400, and the loader dead-letters such a row instead of failing on it.

The receiver reads every body it takes, so where numbers do not matter it reads with orjson,
about 2.5 times as fast as `json` on a typical push. orjson turns an integer past 64 bits into
the nearest float and refuses NaN, infinities and lone surrogates, which `json` accepts, so
`json` reads again whatever orjson refuses or finds not to be an object: the verdict and the
error are always `json`'s. Where numbers matter (`exact_numbers`, the default), `json` alone.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

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


def _loads(text: str, exact_numbers: bool) -> Any:
    if not exact_numbers:
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # json decides, and says why
        else:
            if isinstance(payload, dict):
                return payload
    return json.loads(text)  # what it finds, whatever it is, is what a refusal names


def parse_object(
    text: str, what: str = "payload", max_depth: int = MAX_DEPTH, *, exact_numbers: bool = True
) -> dict:
    """The payload as a dict, or `PayloadError` (whose message starts with `what`) for text that
    is not JSON, nests deeper than `max_depth` or is not an object. With `exact_numbers` False,
    an integer past 64 bits may come back as the nearest float; everything else is the same."""
    too_deep = f"{what} is nested deeper than {max_depth} levels"
    try:
        payload = _loads(text, exact_numbers)
    except RecursionError:
        raise PayloadError(too_deep) from None
    except ValueError as error:
        raise PayloadError(f"{what} is not JSON: {error}") from None
    # Each level needs an opening bracket: with fewer brackets than the limit, skip the walk.
    shallow = text.count("{") + text.count("[") <= max_depth
    if not shallow and isinstance(payload, dict | list) and deeper_than(payload, max_depth):
        raise PayloadError(too_deep)
    if not isinstance(payload, dict):
        raise PayloadError(f"{what} must be a JSON object, got {type(payload).__name__}")
    return payload

"""One event of each kind that once poisoned a load (or could), with the reason it must get.

Each entry is (name, source, event type, payload, reason fragments). A payload that is a str is
stored as it is, so broken JSON and numbers `json.dumps` cannot write reach the inbox too.
"""

from __future__ import annotations

from automation_pipelines_tests.automations.webhook_events.events import (
    REMOVE,
    payment,
    pull_request,
    push,
    with_path,
)

PAYMENT = "payment_intent.succeeded"


def _pay(path: str, value: object) -> dict:
    return with_path(payment(event_id="evt_poison"), path, value)


def _push(path: str, value: object) -> dict:
    return with_path(push(), path, value)


def _deep(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


#: (name, source, event type, payload, fragments the dead letter's reason must contain)
POISONS: list[tuple[str, str, str, object, tuple[str, ...]]] = [
    (
        "amount-10e30",
        "stripe",
        PAYMENT,
        _pay("data.object.amount", 10**30),
        ("data.object.amount", "outside the range", "wh_stripe_payments.amount"),
    ),
    (
        "amount-int64-plus-1",
        "stripe",
        PAYMENT,
        _pay("data.object.amount", 2**63),
        ("data.object.amount", "outside the range"),
    ),
    ("amount-negative", "stripe", PAYMENT, _pay("data.object.amount", -5), ("negative",)),
    ("amount-nan", "stripe", PAYMENT, _pay("data.object.amount", float("nan")), ("got NaN",)),
    (
        "amount-infinity",
        "stripe",
        PAYMENT,
        _pay("data.object.amount", float("inf")),
        ("data.object.amount must be a finite number, got Infinity",),
    ),
    ("amount-fraction", "stripe", PAYMENT, _pay("data.object.amount", 19.99), ("whole number",)),
    ("amount-string", "stripe", PAYMENT, _pay("data.object.amount", "1999"), ("must be a number",)),
    ("amount-bool", "stripe", PAYMENT, _pay("data.object.amount", True), ("must be a number",)),
    (
        "amount-missing",
        "stripe",
        PAYMENT,
        _pay("data.object.amount", REMOVE),
        ("required field data.object.amount is missing",),
    ),
    (
        "amount-null",
        "stripe",
        PAYMENT,
        _pay("data.object.amount", None),
        ("required field data.object.amount is null",),
    ),
    (
        "currency-unknown",
        "stripe",
        PAYMENT,
        _pay("data.object.currency", "xyz"),
        ("'xyz'", "ISO 4217"),
    ),
    (
        "currency-long",
        "stripe",
        PAYMENT,
        _pay("data.object.currency", "dollars"),
        ("three-letter ISO 4217",),
    ),
    (
        "object-id-300",
        "stripe",
        PAYMENT,
        _pay("data.object.id", "p" * 300),
        ("data.object.id is 300 characters long", "at most 255"),
    ),
    (
        "created-overflow",
        "stripe",
        PAYMENT,
        '{"id": "evt_poison", "created": 1e400, "data": {"object": '
        '{"id": "pi", "amount": 1, "currency": "usd"}}}',
        ("created must be a finite number, got Infinity",),
    ),
    (
        "created-huge-int",
        "stripe",
        PAYMENT,
        _pay("created", 10**400),
        ("created", "too large"),
    ),
    (
        "repository-300-unicode",
        "github",
        "push",
        _push("repository.full_name", "é" * 300),
        ("repository.full_name is 300 characters long", "at most 255"),
    ),
    ("ref-nul", "github", "push", _push("ref", "refs/heads/\x00main"), ("ref", "NUL")),
    (
        "pusher-surrogate",
        "github",
        "push",
        '{"ref": "r", "repository": {"full_name": "a/b"}, "commits": [], '
        '"pusher": {"name": "bad \\ud800 name"}}',
        ("pusher.name", "not valid Unicode"),
    ),
    ("commits-not-list", "github", "push", _push("commits", "3"), ("commits must be a list",)),
    (
        "repository-not-object",
        "github",
        "push",
        _push("repository", "acme/app"),
        ("repository must be an object, got string",),
    ),
    (
        "pr-number-int32-plus-1",
        "github",
        "pull_request",
        with_path(pull_request(), "number", 2**31),
        ("number", "outside the range", "wh_github_pull_requests.number"),
    ),
    (
        "pr-merged-string",
        "github",
        "pull_request",
        with_path(pull_request(), "pull_request.merged", "yes"),
        ("pull_request.merged must be true or false",),
    ),
    ("not-json", "github", "push", "{oops", ("payload is not JSON",)),
    ("json-array", "partner", "order.created", "[1, 2]", ("must be a JSON object, got list",)),
    ("deep-json-150", "partner", "order.created", _deep(150), ("nested deeper than 100 levels",)),
    ("deep-json-2000", "partner", "order.created", _deep(2000), ("nested deeper than 100 levels",)),
    ("huge-literal", "partner", "order.created", '{"n": ' + "9" * 5000 + "}", ("not JSON",)),
]

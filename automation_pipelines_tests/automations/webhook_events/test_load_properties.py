"""A property of the loader, on SQLite and PostgreSQL: whatever a batch holds, every valid event
is loaded exactly once with its values intact, every invalid event is dead-lettered alone with a
reason naming its problem, and nothing else is dead-lettered.

Hypothesis builds batches of GitHub pushes and pull requests, Stripe payments, Standard Webhooks
events and raw bodies, where each event is valid or has one field drawn at or beyond a limit:
integers at and past the column's range and the field's minimum, NaN and infinities, whole and
fractional floats, strings at and past their column's length or holding NUL or a lone surrogate,
any Unicode, missing and null fields, wrong JSON types, known and unknown currencies in any case,
broken, non-object and deeply nested JSON. The expected outcome of each event is decided here,
from how it was drawn, not by the code under test.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automation_pipelines.automations.webhook_events import warehouse
from automation_pipelines.automations.webhook_events.currencies import MINOR_UNITS
from automation_pipelines.automations.webhook_events.ops import load_batch
from automation_pipelines.reliability import store
from automation_pipelines.reliability.deadletters import dead_letters_table
from automation_pipelines.webhooks import inbox
from automation_pipelines_tests.automations.webhook_events.events import seed

INT32 = 2**31 - 1
INT64 = 2**63 - 1
_examples = itertools.count()

_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")


@dataclass(frozen=True)
class Drawn:
    """One field's value (or `ABSENT`) and, if it makes the event invalid, the reason's part."""

    value: object
    problem: str | None = None
    stored: object = None  # what the warehouse must hold when the event is valid


ABSENT = object()

#: A field's strategies: values that load, and values that must be dead-lettered.
Pair = tuple[st.SearchStrategy[Drawn], st.SearchStrategy[Drawn]]


def _text(size: int) -> st.SearchStrategy[str]:
    return st.text(_CHARS, min_size=size, max_size=size)


def _absent(path: str, required: bool, default: object = None) -> st.SearchStrategy[Drawn]:
    if required:
        return st.sampled_from(
            [
                Drawn(ABSENT, f"required field {path} is missing"),
                Drawn(None, f"required field {path} is null"),
            ]
        )
    return st.sampled_from([Drawn(ABSENT, stored=default), Drawn(None, stored=default)])


def _with_absent(valid, invalid, path: str, required: bool, default: object = None) -> Pair:
    absent = _absent(path, required, default)
    return (valid, st.one_of(invalid, absent)) if required else (st.one_of(valid, absent), invalid)


def string_field(path: str, limit: int, required: bool = True) -> Pair:
    valid = st.one_of(
        st.integers(1, min(limit, 40)).flatmap(_text),
        st.integers(limit - 1, limit).flatmap(_text),
    ).map(lambda s: Drawn(s, stored=s))
    too_long = st.integers(limit + 1, limit + 60).flatmap(
        lambda n: _text(n).map(lambda s: Drawn(s, f"{path} is {n} characters long"))
    )
    nul = st.text(_CHARS, max_size=10).map(lambda s: Drawn(s + "\x00", f"{path} contains a NUL"))
    surrogate = st.text(_CHARS, max_size=10).map(
        lambda s: Drawn(s + "\ud800", f"{path} is not valid Unicode")
    )
    wrong = st.sampled_from([0, 1.5, True, [], {}, ""]).map(
        lambda v: Drawn(v, f"{path} must be a non-empty string")
    )
    return _with_absent(valid, st.one_of(too_long, nul, surrogate, wrong), path, required)


def int_field(path: str, high: int, minimum: int, required: bool = True) -> Pair:
    low_text = "cannot be negative" if minimum == 0 else f"the least is {minimum}"
    valid = st.one_of(
        st.integers(minimum, high).map(lambda n: Drawn(n, stored=n)),
        st.sampled_from([minimum, high]).map(lambda n: Drawn(n, stored=n)),
        st.integers(minimum, min(high, 2**53)).map(lambda n: Drawn(float(n), stored=n)),
    )
    invalid = st.one_of(
        st.integers(high + 1, 10**40).map(lambda n: Drawn(n, "outside the range")),
        st.integers(-(10**40), minimum - 1).map(lambda n: Drawn(n, low_text)),
        st.sampled_from(
            [
                Drawn(float("nan"), f"{path} must be a finite number, got NaN"),
                Drawn(float("inf"), f"{path} must be a finite number, got Infinity"),
                Drawn(float("-inf"), f"{path} must be a finite number, got -Infinity"),
                Drawn(minimum + 0.5, f"{path} must be a whole number"),
                Drawn("12", f"{path} must be a number"),
                Drawn(True, f"{path} must be a number"),
                Drawn([1], f"{path} must be a number"),
            ]
        ),
    )
    return _with_absent(valid, invalid, path, required)


def float_field(path: str) -> Pair:
    valid = st.one_of(
        st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Drawn(f, stored=f)),
        st.integers(-(10**300), 10**300).map(lambda n: Drawn(n, stored=float(n))),
    )
    invalid = st.one_of(
        st.sampled_from(
            [
                Drawn(float("nan"), f"{path} must be a finite number, got NaN"),
                Drawn(float("inf"), f"{path} must be a finite number, got Infinity"),
                Drawn("1790000000", f"{path} must be a number"),
                Drawn(False, f"{path} must be a number"),
            ]
        ),
        st.integers(10**309, 10**400).map(lambda n: Drawn(n, f"{path} is ")),
    )
    return _with_absent(valid, invalid, path, True)


def currency_field(path: str) -> Pair:
    codes = sorted(MINOR_UNITS)
    valid = st.tuples(st.sampled_from(codes), st.booleans()).map(
        lambda c: Drawn(c[0].lower() if c[1] else c[0], stored=c[0].lower())
    )
    unknown = (
        st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=3, max_size=3)
        .filter(lambda c: c not in MINOR_UNITS)
        .map(lambda c: Drawn(c, "is not an ISO 4217 currency"))
    )
    malformed = st.sampled_from(["us", "dollar", "u$d", "", 840, ["usd"]]).map(
        lambda c: Drawn(c, "three-letter ISO 4217")
    )
    return _with_absent(valid, st.one_of(unknown, malformed), path, True)


def bool_field(path: str) -> Pair:
    valid = st.booleans().map(lambda b: Drawn(b, stored=b))
    wrong = st.sampled_from(["yes", 1, 0, []]).map(lambda v: Drawn(v, "must be true or false"))
    return _with_absent(valid, wrong, path, False, default=False)


def count_field(path: str) -> Pair:
    valid = st.lists(st.integers(), max_size=5).map(lambda v: Drawn(v, stored=len(v)))
    wrong = st.sampled_from([3, "3", {}]).map(lambda v: Drawn(v, f"{path} must be a list"))
    return _with_absent(valid, wrong, path, True)


#: (source, event type) → (typed column, payload path, (valid, invalid)) for each schema field.
KINDS = {
    ("github", "push"): [
        ("repository", "repository.full_name", string_field("repository.full_name", 255)),
        ("ref", "ref", string_field("ref", 255)),
        ("commits", "commits", count_field("commits")),
        ("pusher", "pusher.name", string_field("pusher.name", 255, required=False)),
    ],
    ("github", "pull_request"): [
        ("repository", "repository.full_name", string_field("repository.full_name", 255)),
        ("action", "action", string_field("action", 64)),
        ("number", "number", int_field("number", INT32, 1)),
        ("merged", "pull_request.merged", bool_field("pull_request.merged")),
        (
            "additions",
            "pull_request.additions",
            int_field("pull_request.additions", INT32, 0, required=False),
        ),
    ],
    ("stripe", "payment_intent.succeeded"): [
        ("object_id", "data.object.id", string_field("data.object.id", 255)),
        ("amount", "data.object.amount", int_field("data.object.amount", INT64, 0)),
        ("currency", "data.object.currency", currency_field("data.object.currency")),
        ("status", "data.object.status", string_field("data.object.status", 64, required=False)),
        ("created", "created", float_field("created")),
    ],
}


def _put(payload: dict, path: str, value: object) -> None:
    *parents, last = path.split(".")
    node = payload
    for key in parents:
        node = node.setdefault(key, {})
    if value is not ABSENT:
        node[last] = value


@dataclass
class Case:
    """One event to seed, and what must become of it."""

    source: str
    event_type: str
    body: str
    problem: str | None
    typed: dict = field(default_factory=dict)


@st.composite
def typed_event(draw, kind: tuple[str, str]) -> Case:
    fields = KINDS[kind]
    bad = draw(st.one_of(st.none(), st.integers(0, len(fields) - 1)))
    payload: dict = {"id": "evt", "type": kind[1]}
    typed, problem = {}, None
    for index, (column, path, (valid, invalid)) in enumerate(fields):
        drawn = draw(invalid if index == bad else valid)
        _put(payload, path, drawn.value)
        typed[column] = drawn.stored
        problem = problem or drawn.problem
    return Case(kind[0], kind[1], json.dumps(payload), problem, typed)


_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(_CHARS, max_size=20),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(_CHARS, max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)

partner_event = st.dictionaries(st.text(_CHARS, max_size=6), _any_json, max_size=4).map(
    lambda payload: Case("partner", "order.created", json.dumps(payload), None)
)

raw_body = st.one_of(
    st.integers(101, 1500).map(
        lambda n: Case("partner", "x", '{"a": ' * n + "0" + "}" * n, "nested deeper than 100")
    ),
    st.integers(1, 100).map(lambda n: Case("partner", "x", '{"a": ' * n + "0" + "}" * n, None)),
    _any_json.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: Case("partner", "x", json.dumps(v), "payload must be a JSON object")
    ),
    st.sampled_from(["{", "", "{'a': 1}", '{"a": 1} x']).map(
        lambda body: Case("github", "push", body, "payload is not JSON")
    ),
)

event = st.one_of(
    *(typed_event(kind) for kind in KINDS),
    partner_event,
    raw_body,
)


def _outcome(engine: sa.Engine, prefix: str):
    table = inbox.inbox_table
    with engine.connect() as conn:
        status = dict(
            conn.execute(
                sa.select(table.c.delivery_id, table.c.status).where(
                    table.c.delivery_id.startswith(prefix)
                )
            ).all()
        )
        loads = dict(
            conn.execute(
                sa.select(
                    warehouse.events_table.c.delivery_id, warehouse.events_table.c.load_count
                ).where(warehouse.events_table.c.delivery_id.startswith(prefix))
            ).all()
        )
        letters = conn.execute(
            sa.select(dead_letters_table.c.item, dead_letters_table.c.reason).where(
                dead_letters_table.c.resolved_at.is_(None),
                dead_letters_table.c.item.contains(f"/{prefix}"),
            )
        ).all()
        typed = {}
        for schema in {s.table.name: s for s in warehouse.SCHEMAS.values()}.values():
            query = sa.select(schema.table).where(schema.table.c.delivery_id.startswith(prefix))
            for row in conn.execute(query).mappings():
                typed[row["delivery_id"]] = dict(row)
    return status, loads, letters, typed


@settings(
    max_examples=100,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cases=st.lists(event, min_size=1, max_size=12), chunk_size=st.integers(1, 8))
def test_every_valid_event_loads_once_and_only_invalid_ones_are_dead_lettered(
    events_db_url, cases: list[Case], chunk_size: int
) -> None:
    engine = store.engine(events_db_url)
    prefix = f"x{next(_examples)}-"
    deliveries = [f"{prefix}{i}" for i in range(len(cases))]
    ids = seed(
        engine,
        [(c.source, d, c.event_type, c.body) for c, d in zip(cases, deliveries, strict=True)],
    )
    inbox.assign_batch(engine, ids, prefix, now=1.0)

    result = load_batch(engine, prefix, "run", chunk_size)

    status, loads, letters, typed = _outcome(engine, prefix)
    valid = {d for c, d in zip(cases, deliveries, strict=True) if c.problem is None}
    invalid = {d: c.problem for c, d in zip(cases, deliveries, strict=True) if c.problem}
    assert (result["loaded"], result["dead_lettered"]) == (len(valid), len(invalid))
    assert loads == {d: 1 for d in valid}, "each valid event exactly once"
    assert status == {d: "done" if d in valid else "dead" for d in deliveries}
    reasons = {item.split(" ")[0].split("/", 1)[1]: reason for item, reason in letters}
    assert set(reasons) == set(invalid), "only invalid events are dead-lettered, once each"
    for delivery, problem in invalid.items():
        assert problem in reasons[delivery], (problem, reasons[delivery])
    for case, delivery in zip(cases, deliveries, strict=True):
        if case.problem is None and case.typed:
            stored = typed[delivery]
            assert {k: stored[k] for k in case.typed} == case.typed

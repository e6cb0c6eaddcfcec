"""Warehouse tables, the schema each event type must satisfy, and the checks that keep one bad
event from failing the write of its whole chunk.

Every valid event lands in `wh_webhook_events`; types with a schema also get a typed row in their
own table. Rows are upserted on (source, delivery id), so loading an event twice changes nothing
but `load_count`, which is how the tests see that each event was loaded exactly once.

Each event is checked on its own, before any write, against its schema and against the real
limits of the columns it goes to: integer ranges of the declared column type (the same on SQLite
and PostgreSQL, so a developer's SQLite never accepts what production's PostgreSQL refuses),
finite numbers, string lengths of bounded columns, no NUL or lone surrogates, and a currency
whose ISO 4217 minor unit is known. An event that fails is dead-lettered with a reason naming the
field and the limit; a write the database still refuses is raised as `WriteRefused` so the
loader can bisect the chunk down to the event at fault.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

import sqlalchemy as sa

from automation_pipelines.automations.webhook_events.currencies import exponent
from automation_pipelines.reliability import store
from automation_pipelines.webhooks.inbox import data_refusal

if TYPE_CHECKING:  # pandas is imported where a report is made, not by every run worker
    import pandas as pd
from automation_pipelines.webhooks.payloads import PayloadError, json_type, parse_object


def _key_columns() -> list[sa.Column]:
    return [
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("delivery_id", sa.String(255), primary_key=True),
    ]


events_table = sa.Table(
    "wh_webhook_events",
    store.metadata,
    *_key_columns(),
    sa.Column("event_type", sa.String(255), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("inbox_id", sa.Integer, nullable=False),
    sa.Column("loaded_at", sa.Float, nullable=False),
    sa.Column("load_count", sa.Integer, nullable=False, default=1),
    sa.Index("ix_wh_webhook_events_received", "received_at"),
)

github_pushes_table = sa.Table(
    "wh_github_pushes",
    store.metadata,
    *_key_columns(),
    sa.Column("repository", sa.String(255), nullable=False),
    sa.Column("ref", sa.String(255), nullable=False),
    sa.Column("commits", sa.Integer, nullable=False),
    sa.Column("pusher", sa.String(255)),
)

github_pull_requests_table = sa.Table(
    "wh_github_pull_requests",
    store.metadata,
    *_key_columns(),
    sa.Column("repository", sa.String(255), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("merged", sa.Boolean, nullable=False),
    sa.Column("additions", sa.Integer),
    sa.Column("deletions", sa.Integer),
)

stripe_payments_table = sa.Table(
    "wh_stripe_payments",
    store.metadata,
    *_key_columns(),
    sa.Column("event_type", sa.String(255), nullable=False),
    sa.Column("object_id", sa.String(255), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(8), nullable=False),
    sa.Column("status", sa.String(64)),
    sa.Column("created", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class Field:
    """One column of a typed table, read from a dotted path of the payload."""

    name: str
    path: str
    kind: str  # "str" | "int" | "bool" | "float" | "count" (length of a list) | "currency"
    required: bool = True
    default: object = None
    #: The smallest value that makes sense (amounts and counts are never negative).
    minimum: int | None = None


@dataclass(frozen=True)
class EventSchema:
    """What one event type must contain, where it goes, and the figures the report shows."""

    table: sa.Table
    fields: tuple[Field, ...]
    figures: Callable[[pd.DataFrame], dict[str, float]] = field(default=lambda frame: {})
    keep_event_type: bool = False


def _push_figures(frame: pd.DataFrame) -> dict[str, float]:
    return {"commits": float(frame["commits"].sum()), "repositories": frame["repository"].nunique()}


def _pull_request_figures(frame: pd.DataFrame) -> dict[str, float]:
    closed = frame[frame["action"] == "closed"]
    return {
        "opened": float((frame["action"] == "opened").sum()),
        "merged": float(closed["merged"].astype(bool).sum()),
        "lines_added": float(frame["additions"].fillna(0).sum()),
    }


def major_units(total_minor: int, currency: str) -> float:
    """A sum of minor units (what Stripe sends) in major units, by the currency's ISO 4217
    exponent: 1999 USD cents are 19.99, 500 JPY are 500, 1234 BHD fils are 1.234."""
    digits = exponent(currency)
    return float(Decimal(int(total_minor)).scaleb(-(2 if digits is None else digits)))


def _payment_figures(frame: pd.DataFrame) -> dict[str, float]:
    """Amounts in major units per currency, summed as exact integers (int64 sums wrap)."""
    totals: dict[str, int] = {}
    for currency, amount in zip(frame["currency"], frame["amount"], strict=True):
        totals[currency] = totals.get(currency, 0) + int(amount)
    return {f"amount_{c}": major_units(total, c) for c, total in sorted(totals.items())}


_PAYMENT = EventSchema(
    stripe_payments_table,
    (
        Field("object_id", "data.object.id", "str"),
        Field("amount", "data.object.amount", "int", minimum=0),
        Field("currency", "data.object.currency", "currency"),
        Field("status", "data.object.status", "str", required=False),
        Field("created", "created", "float"),
    ),
    _payment_figures,
    keep_event_type=True,
)

#: (source, event type) → schema. Other event types are kept in wh_webhook_events only.
SCHEMAS: dict[tuple[str, str], EventSchema] = {
    ("github", "push"): EventSchema(
        github_pushes_table,
        (
            Field("repository", "repository.full_name", "str"),
            Field("ref", "ref", "str"),
            Field("commits", "commits", "count"),
            Field("pusher", "pusher.name", "str", required=False),
        ),
        _push_figures,
    ),
    ("github", "pull_request"): EventSchema(
        github_pull_requests_table,
        (
            Field("repository", "repository.full_name", "str"),
            Field("action", "action", "str"),
            Field("number", "number", "int", minimum=1),
            Field("merged", "pull_request.merged", "bool", required=False, default=False),
            Field("additions", "pull_request.additions", "int", required=False, minimum=0),
            Field("deletions", "pull_request.deletions", "int", required=False, minimum=0),
        ),
        _pull_request_figures,
    ),
    ("stripe", "payment_intent.succeeded"): _PAYMENT,
    ("stripe", "payment_intent.payment_failed"): _PAYMENT,
    ("stripe", "charge.succeeded"): _PAYMENT,
}


class InvalidEvent(ValueError):
    """An event that can never load; it is dead-lettered with this reason."""


def _show(value: object) -> str:
    """A value for a reason: JSON spelling, long numbers and strings shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, int):
        try:
            digits = str(abs(value))
        except ValueError:  # past Python's int-to-str limit
            return f"an integer of {value.bit_length()} bits"
        sign = "-" if value < 0 else ""
        return f"{sign}{digits[:6]}…({len(digits)} digits)" if len(digits) > 24 else str(value)
    if isinstance(value, str):
        return repr(value[:40]) + ("…" if len(value) > 40 else "")
    return f"an {json_type(value)}" if json_type(value) in ("object", "array") else str(value)


_INTEGER_TYPES = (  # most specific first: BigInteger and SmallInteger are Integers too
    (sa.BigInteger, "BIGINT", 64),
    (sa.SmallInteger, "SMALLINT", 16),
    (sa.Integer, "INTEGER", 32),
)


def _integer_range(column: sa.Column) -> tuple[str, int, int]:
    for kind, name, bits in _INTEGER_TYPES:
        if isinstance(column.type, kind):
            return name, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    raise TypeError(f"{column} is not an integer column")


def check_column(column: sa.Column, value: object, label: str) -> None:
    """Raise `InvalidEvent` unless `value` fits `column` on SQLite and PostgreSQL alike."""
    where = f"{column.table.name}.{column.name}"
    if value is None:
        if not column.nullable:
            raise InvalidEvent(f"{label} is null, but {where} requires a value")
        return
    kind = column.type
    if isinstance(kind, sa.Boolean):
        if not isinstance(value, bool):
            raise InvalidEvent(f"{label} must be true or false, got {_show(value)}")
    elif isinstance(kind, sa.Integer):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidEvent(f"{label} must be a whole number, got {_show(value)}")
        name, low, high = _integer_range(column)
        if not low <= value <= high:
            raise InvalidEvent(
                f"{label} is {_show(value)}, outside the range of its column {where} "
                f"({name}: {low} to {high})"
            )
    elif isinstance(kind, sa.Float):
        if isinstance(value, bool) or not isinstance(value, float):
            raise InvalidEvent(f"{label} must be a number, got {_show(value)}")
        if not math.isfinite(value):
            raise InvalidEvent(f"{label} must be a finite number, got {_show(value)}")
    elif isinstance(kind, sa.String):  # Text too, with no length
        if not isinstance(value, str):
            raise InvalidEvent(f"{label} must be a string, got {_show(value)}")
        if kind.length is not None and len(value) > kind.length:
            raise InvalidEvent(
                f"{label} is {len(value)} characters long; its column {where} holds at most "
                f"{kind.length}"
            )
        if "\x00" in value:
            raise InvalidEvent(
                f"{label} contains a NUL character (U+0000), which PostgreSQL cannot store"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidEvent(
                f"{label} is not valid Unicode: a lone surrogate at position {error.start}"
            ) from None


_CURRENCY = re.compile(r"[A-Za-z]{3}")


def _convert(spec: Field, column: sa.Column, value: object) -> object:
    """The value to store for one field, or `InvalidEvent` naming the field and the problem."""
    path = spec.path
    if spec.kind == "str":
        if not isinstance(value, str) or not value:
            raise InvalidEvent(f"{path} must be a non-empty string, got {_show(value)}")
        return value
    if spec.kind == "currency":
        if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
            raise InvalidEvent(
                f"{path} must be a three-letter ISO 4217 currency code, got {_show(value)}"
            )
        if exponent(value) is None:
            raise InvalidEvent(
                f"{path} {value!r} is not an ISO 4217 currency, so its minor unit is unknown"
            )
        return value.lower()
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise InvalidEvent(f"{path} must be true or false, got {_show(value)}")
        return value
    if spec.kind == "count":
        if not isinstance(value, list):
            raise InvalidEvent(f"{path} must be a list, got {json_type(value)}")
        return len(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"{path} must be a number, got {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEvent(f"{path} must be a finite number, got {_show(value)}")
    if spec.kind == "float":
        try:
            return float(value)
        except OverflowError:
            raise InvalidEvent(
                f"{path} is {_show(value)}, too large for its column "
                f"{column.table.name}.{column.name} (DOUBLE PRECISION)"
            ) from None
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidEvent(f"{path} must be a whole number, got {_show(value)}")
        value = int(value)
    if spec.minimum is not None and value < spec.minimum:
        need = "it cannot be negative" if spec.minimum == 0 else f"the least is {spec.minimum}"
        raise InvalidEvent(f"{path} is {_show(value)}; {need}")
    return value


_ABSENT = object()


def _lookup(payload: dict, path: str) -> object:
    """The value at a dotted path; `_ABSENT` if a key is missing or a parent is null."""
    node: object = payload
    keys = path.split(".")
    for depth, key in enumerate(keys):
        if node is None:
            return _ABSENT
        if not isinstance(node, dict):
            parent = ".".join(keys[:depth])
            raise InvalidEvent(f"{parent} must be an object, got {json_type(node)}")
        node = node.get(key, _ABSENT)
        if node is _ABSENT:
            return _ABSENT
    return node


def _typed_row(schema: EventSchema, payload: dict, row: sa.Row) -> dict:
    values: dict[str, object] = {"source": row.source, "delivery_id": row.delivery_id}
    if schema.keep_event_type:
        values["event_type"] = row.event_type
    for spec in schema.fields:
        column = schema.table.c[spec.name]
        value = _lookup(payload, spec.path)
        if value is _ABSENT or value is None:
            if spec.required:
                state = "missing" if value is _ABSENT else "null"
                raise InvalidEvent(f"required field {spec.path} is {state}")
            value = spec.default
        else:
            value = _convert(spec, column, value)
        check_column(column, value, spec.path)
        values[spec.name] = value
    return values


#: The base row's values that come from the delivery, with the names reasons use for them.
_BASE_LABELS = {
    "source": "source",
    "delivery_id": "delivery id",
    "event_type": "event type",
    "received_at": "received_at",
    "payload": "payload",
}


@dataclass(frozen=True)
class Loadable:
    """One valid event: its inbox row, its wh_webhook_events row and its typed row, if any."""

    row: sa.Row
    base: dict
    typed: tuple[sa.Table, dict] | None

    @property
    def type_name(self) -> str:
        return f"{self.row.source}/{self.row.event_type}"


@dataclass
class Validated:
    """The outcome of checking a chunk of inbox rows."""

    events: list[Loadable] = field(default_factory=list)
    invalid: list[tuple[sa.Row, str]] = field(default_factory=list)

    @property
    def base(self) -> list[dict]:
        return [event.base for event in self.events]

    @property
    def typed(self) -> dict[str, tuple[sa.Table, list[dict]]]:
        return _typed_by_table(self.events)

    @property
    def valid_ids(self) -> list[int]:
        return [event.row.id for event in self.events]

    @property
    def by_type(self) -> dict[str, int]:
        return count_types(self.events)


def count_types(events: Sequence[Loadable]) -> dict[str, int]:
    """Events per "source/type", for the run's metadata."""
    counts: dict[str, int] = {}
    for event in events:
        counts[event.type_name] = counts.get(event.type_name, 0) + 1
    return counts


def _typed_by_table(events: Sequence[Loadable]) -> dict[str, tuple[sa.Table, list[dict]]]:
    grouped: dict[str, tuple[sa.Table, list[dict]]] = {}
    for event in events:
        if event.typed is not None:
            table, values = event.typed
            grouped.setdefault(table.name, (table, []))[1].append(values)
    return grouped


def check_event(row: sa.Row, now: float) -> Loadable:
    """One inbox row as warehouse rows, or `InvalidEvent` with the reason it can never load."""
    try:
        payload = parse_object(row.body)
    except PayloadError as error:
        raise InvalidEvent(str(error)) from None
    base = {
        "source": row.source,
        "delivery_id": row.delivery_id,
        "event_type": row.event_type,
        "received_at": row.received_at,
        "payload": row.body,
        "inbox_id": row.id,
        "loaded_at": now,
        "load_count": 1,
    }
    for name, label in _BASE_LABELS.items():
        check_column(events_table.c[name], base[name], label)
    schema = SCHEMAS.get((row.source, row.event_type))
    if schema is None:
        return Loadable(row, base, None)
    try:
        typed = _typed_row(schema, payload, row)
    except InvalidEvent as error:
        raise InvalidEvent(f"{row.event_type}: {error}") from None
    return Loadable(row, base, (schema.table, typed))


def validate(rows: Sequence[sa.Row], now: float) -> Validated:
    """Split inbox rows into loadable events and dead letters with their reasons.

    Each event is checked on its own, so nothing in one event's payload can stop another from
    loading; an unexpected error while checking one is that event's reason too.
    """
    out = Validated()
    for row in rows:
        try:
            out.events.append(check_event(row, now))
        except InvalidEvent as error:
            out.invalid.append((row, str(error)))
        except Exception as error:  # whatever it is, it came from this event alone
            out.invalid.append((row, f"could not be checked: {type(error).__name__}: {error}"))
    return out


class WriteRefused(Exception):
    """The database refused a write for a reason in the data (a value out of range, a constraint
    it enforces that the checks do not know), not because it is unavailable."""


def _execute(conn: sa.Connection, statement, rows: list[dict]) -> None:
    """Run one write; data errors become `WriteRefused`, anything else (a lost connection, a
    lock, a missing table) propagates to fail and retry the run."""
    try:
        conn.execute(statement, rows)
    except Exception as error:
        reason = data_refusal(error)
        if reason is None:
            raise
        raise WriteRefused(reason) from error


def _upsert(conn: sa.Connection, table: sa.Table, rows: list[dict], *, count_loads: bool) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table)
    keys = {"source", "delivery_id"}
    updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    if count_loads:
        updates["load_count"] = table.c.load_count + 1
        updates.pop("loaded_at", None)
    _execute(
        conn,
        statement.on_conflict_do_update(index_elements=["source", "delivery_id"], set_=updates),
        rows,
    )


def write(conn: sa.Connection, events: Validated | Sequence[Loadable]) -> None:
    """Upsert the events' rows, in the caller's transaction; `WriteRefused` if the database
    refuses one of them for a reason in the data."""
    if isinstance(events, Validated):
        events = events.events
    _upsert(conn, events_table, [event.base for event in events], count_loads=True)
    for table, rows in _typed_by_table(events).values():
        _upsert(conn, table, rows, count_loads=False)

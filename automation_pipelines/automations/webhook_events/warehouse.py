"""Warehouse tables and the schema each event type must satisfy, checked with pandas.

Every valid event lands in `wh_webhook_events`; types with a schema also get a typed row in their
own table. Rows are upserted on (source, delivery id), so loading an event twice changes nothing
but `load_count`, which is how the tests see that each event was loaded exactly once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from automation_pipelines.reliability import store


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
    kind: str  # "str" | "int" | "bool" | "float" | "count" (length of a list)
    required: bool = True
    default: object = None


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


def _payment_figures(frame: pd.DataFrame) -> dict[str, float]:
    """Amounts in major units per currency (Stripe sends minor units: cents)."""
    totals = frame.groupby("currency")["amount"].sum().sort_index()
    return {f"amount_{currency}": round(total / 100.0, 2) for currency, total in totals.items()}


_PAYMENT = EventSchema(
    stripe_payments_table,
    (
        Field("object_id", "data.object.id", "str"),
        Field("amount", "data.object.amount", "int"),
        Field("currency", "data.object.currency", "str"),
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
            Field("number", "number", "int"),
            Field("merged", "pull_request.merged", "bool", required=False, default=False),
            Field("additions", "pull_request.additions", "int", required=False),
            Field("deletions", "pull_request.deletions", "int", required=False),
        ),
        _pull_request_figures,
    ),
    ("stripe", "payment_intent.succeeded"): _PAYMENT,
    ("stripe", "payment_intent.payment_failed"): _PAYMENT,
    ("stripe", "charge.succeeded"): _PAYMENT,
}


class InvalidEvent(ValueError):
    """An event that can never load; it is dead-lettered with this reason."""


def _convert(kind: str, value: object, path: str) -> object:
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise InvalidEvent(f"{path} must be a non-empty string, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidEvent(f"{path} must be true or false, got {value!r}")
        return value
    if kind == "count":
        if not isinstance(value, list):
            raise InvalidEvent(f"{path} must be a list, got {type(value).__name__}")
        return len(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"{path} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidEvent(f"{path} must be finite, got {value!r}")
    if kind == "int":
        if value != int(value):
            raise InvalidEvent(f"{path} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass
class Validated:
    """The outcome of checking a chunk of inbox rows."""

    base: list[dict] = field(default_factory=list)
    typed: dict[str, tuple[sa.Table, list[dict]]] = field(default_factory=dict)
    valid_ids: list[int] = field(default_factory=list)
    invalid: list[tuple[sa.Row, str]] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=dict)


def validate(rows: Sequence[sa.Row], now: float) -> Validated:
    """Split inbox rows into warehouse rows and dead letters with their reasons.

    Payloads of one schema are flattened together with `pandas.json_normalize`; each required
    path must be present and of its type in every row, and a row that fails says which path.
    """
    out = Validated()
    parsed: list[tuple[sa.Row, dict]] = []
    for row in rows:
        try:
            payload = json.loads(row.body)
        except ValueError as exc:
            out.invalid.append((row, f"payload is not JSON: {exc}"))
            continue
        if not isinstance(payload, dict):
            out.invalid.append(
                (row, f"payload must be a JSON object, got {type(payload).__name__}")
            )
            continue
        parsed.append((row, payload))

    groups: dict[tuple[str, str] | None, list[tuple[sa.Row, dict]]] = {}
    for row, payload in parsed:
        key = (row.source, row.event_type)
        groups.setdefault(key if key in SCHEMAS else None, []).append((row, payload))

    for key, members in groups.items():
        schema = SCHEMAS.get(key) if key else None
        typed_rows: list[dict] = []
        if schema is not None:
            flat = pd.json_normalize([payload for _, payload in members], max_level=None)
            for position, (row, _payload) in enumerate(members):
                try:
                    typed_rows.append(_typed_row(schema, flat, position, row))
                except InvalidEvent as exc:
                    out.invalid.append((row, f"{row.event_type}: {exc}"))
        bad = {id(r) for r, _ in out.invalid}
        for row, _payload in members:
            if id(row) in bad:
                continue
            out.base.append(
                {
                    "source": row.source,
                    "delivery_id": row.delivery_id,
                    "event_type": row.event_type,
                    "received_at": row.received_at,
                    "payload": row.body,
                    "inbox_id": row.id,
                    "loaded_at": now,
                    "load_count": 1,
                }
            )
            out.valid_ids.append(row.id)
            name = f"{row.source}/{row.event_type}"
            out.by_type[name] = out.by_type.get(name, 0) + 1
        if schema is not None and typed_rows:
            _, collected = out.typed.setdefault(schema.table.name, (schema.table, []))
            collected.extend(typed_rows)
    return out


def _typed_row(schema: EventSchema, flat: pd.DataFrame, position: int, row: sa.Row) -> dict:
    values: dict[str, object] = {"source": row.source, "delivery_id": row.delivery_id}
    if schema.keep_event_type:
        values["event_type"] = row.event_type
    for spec in schema.fields:
        value = flat.at[position, spec.path] if spec.path in flat.columns else None
        if hasattr(value, "item") and not isinstance(value, list):
            value = value.item()  # numpy scalars from pandas back to Python values
        if _missing(value):
            if spec.required:
                raise InvalidEvent(f"required field {spec.path} is missing")
            values[spec.name] = spec.default
            continue
        values[spec.name] = _convert(spec.kind, value, spec.path)
    return values


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
    conn.execute(
        statement.on_conflict_do_update(index_elements=["source", "delivery_id"], set_=updates),
        rows,
    )


def write(conn: sa.Connection, validated: Validated) -> None:
    """Upsert the chunk's rows, in the caller's transaction."""
    _upsert(conn, events_table, validated.base, count_loads=True)
    for table, rows in validated.typed.values():
        _upsert(conn, table, rows, count_loads=False)

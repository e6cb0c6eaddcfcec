"""The durable webhook inbox: one row per delivery, committed before the sender gets its 2xx.

The inbox lives in the project database (SQLite in WAL mode by default, PostgreSQL when
configured) beside the warehouse tables, so the load job can mark a row done in the same
transaction that writes its warehouse rows. A row moves pending → done, or pending → dead after
it failed too often or could never be valid; `replay` moves dead rows back to pending. A dead
row's letter in `ap_dead_letters` stays open until the row loads.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from automation_pipelines.reliability import store
from automation_pipelines.reliability.deadletters import dead_letters_table
from automation_pipelines.reliability.secrets import redact

PENDING, DONE, DEAD = "pending", "done", "dead"

inbox_table = sa.Table(
    "ap_webhook_inbox",
    store.metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("delivery_id", sa.String(255), nullable=False),
    sa.Column("event_type", sa.String(255), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default=PENDING),
    #: The sensor's batch key once the row was handed to a run; NULL while waiting for one.
    sa.Column("batch", sa.String(64)),
    sa.Column("requested_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("dead_letter_id", sa.Integer),
    sa.Column("done_at", sa.Float),
    sa.Column("run_id", sa.String(64)),
    sa.UniqueConstraint("source", "delivery_id", name="uq_ap_webhook_inbox_delivery"),
    sa.Index("ix_ap_webhook_inbox_status_batch", "status", "batch"),
)


#: What drivers raise while binding a value they cannot send: SQLite's "Python int too large to
#: convert to SQLite INTEGER", psycopg2's NUL in a string, a lone surrogate.
_BIND_ERRORS = (OverflowError, ValueError, TypeError)


def data_refusal(error: BaseException) -> str | None:
    """Why the database refused a write because of the values in it (out of range, too long, a
    constraint), or None when the fault is elsewhere (connection, lock, missing table), which
    retrying can fix and which must never be blamed on one row."""
    if isinstance(error, sa.exc.DataError | sa.exc.IntegrityError):
        cause = error.orig
    elif isinstance(error, sa.exc.DBAPIError):
        return None
    elif isinstance(error, sa.exc.StatementError):
        if not isinstance(error.orig, _BIND_ERRORS):
            return None
        cause = error.orig
    elif isinstance(error, _BIND_ERRORS):
        cause = error
    else:
        return None
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@dataclass(frozen=True)
class Event:
    """A verified delivery, ready to be kept."""

    source: str
    delivery_id: str
    event_type: str
    body: str
    received_at: float


#: The columns a new row is given; the others start NULL.
_NEW_ROW = ("source", "delivery_id", "event_type", "body", "received_at", "status", "attempts")


@functools.lru_cache(maxsize=128)
def _group_insert(paramstyle: str, rows: int) -> str:
    """One INSERT of `rows` rows that skips keys already stored and returns the keys it added,
    in the driver's own placeholders (SQLite and PostgreSQL both read this SQL)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    row = "(" + ", ".join([mark] * len(_NEW_ROW)) + ")"
    return (
        f"INSERT INTO {inbox_table.name} ({', '.join(_NEW_ROW)}) VALUES "
        + ", ".join([row] * rows)
        + " ON CONFLICT (source, delivery_id) DO NOTHING RETURNING source, delivery_id"
    )


def insert_events(conn: sa.Connection, events: Sequence[Event]) -> list[bool]:
    """Insert each event unless its (source, delivery id) is there already; True where a row was
    added. Runs in the caller's transaction, so a batch of requests shares one commit.

    One statement for the whole group, written out here rather than compiled: SQLAlchemy's
    many-row INSERT spent about 30 us per row in Python, more than SQLite took to store it, and
    the receiver's requests wait on this. An event delivered twice in one group is added once,
    for the first of the two."""
    if not events:
        return []
    params: list = []
    for event in events:
        params += (
            event.source,
            event.delivery_id,
            event.event_type,
            event.body,
            event.received_at,
            PENDING,
            0,
        )
    sql = _group_insert(conn.dialect.paramstyle, len(events))
    inserted = set(map(tuple, conn.exec_driver_sql(sql, tuple(params))))
    added = []
    for event in events:
        key = (event.source, event.delivery_id)
        added.append(key in inserted)
        inserted.discard(key)  # a second delivery of the key in this group was not added
    return added


def _unbatched_query(limit: int) -> sa.Select:
    return (
        sa.select(inbox_table.c.id)
        .where(inbox_table.c.status == PENDING, inbox_table.c.batch.is_(None))
        .order_by(inbox_table.c.id)
        .limit(limit)
    )


def unbatched(engine: sa.Engine, limit: int) -> Sequence[sa.Row]:
    """Pending rows no run has been asked for yet, oldest first."""
    with engine.connect() as conn:
        return conn.execute(_unbatched_query(limit)).all()


def newest_id(engine: sa.Engine) -> int | None:
    """The id of the newest row: it moves with every event stored (one index lookup)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.max(inbox_table.c.id))).scalar()


def _assign(conn: sa.Connection, ids: Sequence[int], batch: str, now: float) -> int:
    """Hand rows to a batch in the caller's transaction; rows taken meanwhile are left alone."""
    return conn.execute(
        inbox_table.update()
        .where(
            inbox_table.c.id.in_(list(ids)),
            inbox_table.c.batch.is_(None),
            inbox_table.c.status == PENDING,
        )
        .values(batch=batch, requested_at=now)
    ).rowcount


def assign_batch(engine: sa.Engine, ids: Sequence[int], batch: str, now: float) -> int:
    """Hand rows to a batch; rows another tick took meanwhile are left alone."""
    with engine.begin() as conn:
        return _assign(conn, ids, batch, now)


def take_waiting(engine: sa.Engine, batch: str, up_to: int, now: float) -> int:
    """Hand the oldest unbatched rows to `batch` as its first run starts, until it holds
    `up_to` rows: events that came while the run waited to start go with it instead of waiting
    for the next tick and a run of their own. Only a batch never attempted takes any (late
    events must not share a failing batch's retries, nor join a finished one); rows a tick
    takes meanwhile are left alone."""
    with engine.begin() as conn:
        held = conn.execute(
            sa.select(
                sa.func.count().label("rows"),
                sa.func.max(inbox_table.c.attempts).label("attempts"),
            ).where(inbox_table.c.batch == batch)
        ).one()
        room = up_to - held.rows
        if not held.rows or held.attempts or room <= 0:
            return 0
        ids = list(conn.execute(_unbatched_query(room)).scalars())
        return _assign(conn, ids, batch, now) if ids else 0


def in_flight_batches(engine: sa.Engine, limit: int = 200) -> Sequence[sa.Row]:
    """Batches that still have pending rows: (batch, rows, first requested, attempts, error)."""
    query = (
        sa.select(
            inbox_table.c.batch,
            sa.func.count().label("rows"),
            sa.func.min(inbox_table.c.requested_at).label("requested_at"),
            sa.func.max(inbox_table.c.attempts).label("attempts"),
            sa.func.max(inbox_table.c.last_error).label("last_error"),
        )
        .where(inbox_table.c.status == PENDING, inbox_table.c.batch.is_not(None))
        .group_by(inbox_table.c.batch)
        .order_by(sa.func.min(inbox_table.c.id))
        .limit(limit)
    )
    with engine.connect() as conn:
        return conn.execute(query).all()


def pending_in_batch(conn: sa.Connection, batch: str, limit: int | None = None) -> Sequence[sa.Row]:
    """The rows of `batch` still to load, in arrival order (the first `limit` of them)."""
    query = (
        sa.select(inbox_table)
        .where(inbox_table.c.batch == batch, inbox_table.c.status == PENDING)
        .order_by(inbox_table.c.id)
    )
    return conn.execute(query.limit(limit) if limit else query).all()


def count_attempt(engine: sa.Engine, batch: str, run_id: str) -> int:
    """Record that `run_id` is loading the batch; return how many rows it holds."""
    with engine.begin() as conn:
        return conn.execute(
            inbox_table.update()
            .where(inbox_table.c.batch == batch, inbox_table.c.status == PENDING)
            .values(attempts=inbox_table.c.attempts + 1, run_id=run_id)
        ).rowcount


def record_error(engine: sa.Engine, batch: str, error: str) -> None:
    """Keep why the batch's last attempt failed, for the dead letter and the replay list."""
    with engine.begin() as conn:
        conn.execute(
            inbox_table.update()
            .where(inbox_table.c.batch == batch, inbox_table.c.status == PENDING)
            .values(last_error=redact(error)[:4000])
        )


def dead_letter_item(row: sa.Row) -> str:
    """How an inbox row is named in the dead letters; loading it later resolves by this name."""
    return redact(f"{row.source}/{row.delivery_id} ({row.event_type}, inbox id {row.id})")


def _resolve_letters(conn: sa.Connection, automation: str, items: list[str], now: float) -> int:
    """Close the open dead letters of `automation` with these item names (as
    `deadletters.resolve_items` does), in the caller's transaction."""
    if not items:
        return 0
    return conn.execute(
        dead_letters_table.update()
        .where(
            dead_letters_table.c.automation == automation,
            dead_letters_table.c.item.in_(items),
            dead_letters_table.c.resolved_at.is_(None),
        )
        .values(resolved_at=now)
    ).rowcount


def mark_done(conn: sa.Connection, ids: Iterable[int], run_id: str, now: float) -> int:
    """Mark rows loaded, in the transaction that wrote their warehouse rows."""
    ids = list(ids)
    if not ids:
        return 0
    return conn.execute(
        inbox_table.update()
        .where(inbox_table.c.id.in_(ids), inbox_table.c.status == PENDING)
        .values(status=DONE, done_at=now, run_id=run_id, last_error=None)
    ).rowcount


def mark_loaded(
    conn: sa.Connection, automation: str, rows: Sequence[sa.Row], run_id: str, now: float
) -> int:
    """Mark rows done and resolve the dead letters a replayed row still has open, in the
    transaction that wrote their warehouse rows: a dead letter closes exactly when its event
    loads. Returns how many rows were pending."""
    done = mark_done(conn, [row.id for row in rows], run_id, now)
    _resolve_letters(conn, automation, [dead_letter_item(row) for row in rows], now)
    return done


def mark_dead(
    conn: sa.Connection, automation: str, rows: Iterable[tuple[sa.Row, str]], now: float
) -> list[int]:
    """Dead-letter rows with their reasons, in the caller's transaction; return the ids of the
    dead-letter records (the digest counts them until the event loads). A replayed row that
    fails again gets a new letter with the new reason and its old one is closed, so each event
    has at most one open letter."""
    rows = list(rows)
    _resolve_letters(conn, automation, [dead_letter_item(row) for row, _ in rows], now)
    letters = []
    for row, reason in rows:
        reason = redact(reason)[:4000]
        letter = conn.execute(
            dead_letters_table.insert().values(
                automation=automation,
                item=dead_letter_item(row),
                reason=reason,
                created_at=now,
            )
        ).inserted_primary_key[0]
        conn.execute(
            inbox_table.update()
            .where(inbox_table.c.id == row.id, inbox_table.c.status == PENDING)
            .values(status=DEAD, last_error=reason, dead_letter_id=letter, done_at=now)
        )
        letters.append(letter)
    return letters


def replay(
    engine: sa.Engine,
    *,
    ids: Sequence[int] | None = None,
    source: str | None = None,
    everything: bool = False,
) -> int:
    """Put dead rows back in the queue (all, by inbox id, or by source); return how many were
    re-queued. The sensor batches them like new events. Their dead letters stay open until
    they load (the load resolves them) or are replaced by a new letter if they fail again, so
    the digest never calls an event handled before it is in the warehouse."""
    if not (everything or ids or source):
        raise ValueError("say which dead events to replay: ids, a source, or everything")
    where = [inbox_table.c.status == DEAD]
    if ids:
        where.append(inbox_table.c.id.in_(list(ids)))
    if source:
        where.append(inbox_table.c.source == source)
    with engine.begin() as conn:
        return conn.execute(
            inbox_table.update()
            .where(*where)
            .values(
                status=PENDING,
                batch=None,
                requested_at=None,
                attempts=0,
                dead_letter_id=None,
                done_at=None,
                run_id=None,
            )
        ).rowcount


def dead_rows(engine: sa.Engine, source: str | None = None) -> Sequence[sa.Row]:
    """Dead-lettered rows with their last error, oldest first."""
    query = sa.select(
        inbox_table.c.id,
        inbox_table.c.source,
        inbox_table.c.delivery_id,
        inbox_table.c.event_type,
        inbox_table.c.attempts,
        inbox_table.c.last_error,
    ).where(inbox_table.c.status == DEAD)
    if source:
        query = query.where(inbox_table.c.source == source)
    with engine.connect() as conn:
        return conn.execute(query.order_by(inbox_table.c.id)).all()


def counts(engine: sa.Engine) -> dict[tuple[str, str], int]:
    """Rows per (source, status), for `events status` and the tests."""
    query = sa.select(inbox_table.c.source, inbox_table.c.status, sa.func.count()).group_by(
        inbox_table.c.source, inbox_table.c.status
    )
    with engine.connect() as conn:
        return {(source, status): n for source, status, n in conn.execute(query)}

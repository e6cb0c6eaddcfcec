"""One bad event never takes its batch down, on SQLite and PostgreSQL.

- Every poison kind (values past a column's range, NaN and infinities, strings longer than their
  column or holding NUL or lone surrogates, unknown currencies, wrong types, deep or broken JSON)
  is dead-lettered alone with a reason naming the field and the limit; its neighbours load.
- Values are carried exactly: a big amount is not rounded through a float beside a missing one.
- When the database still refuses an event the validator let through (a constraint it does not
  know, or with the checks switched off), the chunk is bisected: only that event is
  dead-lettered, with the database's reason, and everything else commits once.
- A transient database error fails the load (to be retried) and dead-letters nothing.
- `events replay --all` of a batch that was dead-lettered whole loads the good events, puts the
  poison back alone, and resolves the good events' dead letters.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events import warehouse
from automation_pipelines.automations.webhook_events.ops import load_batch
from automation_pipelines.reliability import store
from automation_pipelines.reliability.deadletters import open_dead_letters
from automation_pipelines.reliability.errors import classify
from automation_pipelines.webhooks import inbox
from automation_pipelines_tests.automations.webhook_events.events import (
    partner_event,
    payment,
    pull_request,
    push,
    seed,
)
from automation_pipelines_tests.automations.webhook_events.poison import PAYMENT, POISONS

AUTOMATION = "webhook_events"


@pytest.fixture
def engine(events_db_url: str) -> sa.Engine:
    return store.engine(events_db_url)


def good_events(n: int, prefix: str = "good") -> list[tuple[str, str, str, object]]:
    """A mix of pushes, pull requests, Stripe payments and Standard Webhooks events."""
    kinds = [
        lambda i: ("github", f"{prefix}-push-{i}", "push", push(commits=i % 4)),
        lambda i: ("github", f"{prefix}-pr-{i}", "pull_request", pull_request(additions=i)),
        lambda i: (
            "stripe",
            f"{prefix}-evt-{i}",
            PAYMENT,
            payment(100 + i, ("usd", "jpy", "bhd", "EUR")[i % 4], f"{prefix}-evt-{i}"),
        ),
        lambda i: ("partner", f"{prefix}-msg-{i}", "order.created", partner_event(i)),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


def load(engine: sa.Engine, events, batch: str = "b", chunk_size: int = 200) -> dict:
    ids = seed(engine, events)
    assert inbox.assign_batch(engine, ids, batch, now=1.0) == len(events)
    return load_batch(engine, batch, "run-1", chunk_size)


def loaded_ids(engine: sa.Engine) -> dict[str, int]:
    table = warehouse.events_table
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(table.c.delivery_id, table.c.load_count)).all())


def letters(engine: sa.Engine) -> dict[str, str]:
    """Open dead letters: delivery id → reason."""
    return {
        letter.item.split(" ")[0].split("/", 1)[1]: letter.reason
        for letter in open_dead_letters(engine, AUTOMATION)
    }


def test_poisoned_batch_loads_everything_but_the_poison(engine) -> None:
    """The finding: one Stripe amount of 10**30 failed every run of its batch."""
    events = good_events(24)
    events.insert(7, ("stripe", "poison", PAYMENT, {**payment(), "id": "poison"}))
    events[7][3]["data"]["object"]["amount"] = 10**30

    result = load(engine, events)

    assert (result["loaded"], result["dead_lettered"]) == (24, 1)
    assert set(loaded_ids(engine)) == {delivery for _, delivery, _, _ in events} - {"poison"}
    assert set(loaded_ids(engine).values()) == {1}
    [reason] = letters(engine).values()
    assert "data.object.amount" in reason and "outside the range" in reason
    assert inbox.counts(engine) == {
        ("github", "done"): 12,
        ("stripe", "done"): 6,
        ("stripe", "dead"): 1,
        ("partner", "done"): 6,
    }


@pytest.mark.parametrize(
    ("source", "event_type", "payload", "fragments"),
    [pytest.param(*poison[1:], id=poison[0]) for poison in POISONS],
)
def test_each_poison_is_dead_lettered_alone_with_a_precise_reason(
    engine, source, event_type, payload, fragments
) -> None:
    events = good_events(6)
    events.insert(3, (source, "poison", event_type, payload))

    result = load(engine, events, chunk_size=4)

    assert (result["loaded"], result["dead_lettered"]) == (6, 1)
    assert set(loaded_ids(engine)) == {d for _, d, _, _ in events} - {"poison"}
    reasons = letters(engine)
    assert list(reasons) == ["poison"]
    for fragment in fragments:
        assert fragment in reasons["poison"]
    [dead] = inbox.dead_rows(engine)
    assert dead.delivery_id == "poison" and dead.last_error == reasons["poison"]


def test_fifty_good_events_and_every_poison_in_one_batch(engine) -> None:
    """The acceptance batch: 50 valid events with one of each poison kind spread among them
    load 50 rows; each poison is alone in the dead letters with its own precise reason."""
    events = good_events(50)
    for n, (name, source, event_type, payload, _) in enumerate(POISONS):
        events.insert((n * 7) % len(events), (source, f"poison-{name}", event_type, payload))

    result = load(engine, events, chunk_size=16)

    assert (result["loaded"], result["dead_lettered"]) == (50, len(POISONS))
    poisons = {f"poison-{name}" for name, *_ in POISONS}
    assert set(loaded_ids(engine)) == {d for _, d, _, _ in events} - poisons
    assert set(loaded_ids(engine).values()) == {1}
    reasons = letters(engine)
    assert set(reasons) == poisons
    for name, *_, fragments in POISONS:
        for fragment in fragments:
            assert fragment in reasons[f"poison-{name}"], (name, reasons[f"poison-{name}"])


def test_nan_amount_is_not_called_missing(engine) -> None:
    """A sender's bare NaN used to read as "required field … is missing"."""
    body = '{"created": 1, "data": {"object": {"id": "p", "amount": NaN, "currency": "usd"}}}'
    load(engine, [("stripe", "nan", PAYMENT, body)])
    reason = letters(engine)["nan"]
    assert "data.object.amount must be a finite number, got NaN" in reason
    assert "missing" not in reason


def test_exact_values_survive_a_missing_neighbour(engine) -> None:
    """2**53 + 1 is not a float; pandas made it one when a neighbour had no amount."""
    exact = 2**53 + 1
    events = [
        ("stripe", "big", PAYMENT, {**payment(exact), "id": "big"}),
        ("stripe", "no-amount", PAYMENT, {"id": "x", "created": 1, "data": {"object": {}}}),
        ("github", "pr", "pull_request", {**pull_request(), "number": 2**31 - 1}),
    ]
    load(engine, events)
    with engine.connect() as conn:
        amount = conn.execute(sa.select(warehouse.stripe_payments_table.c.amount)).scalar_one()
        number = conn.execute(sa.select(warehouse.github_pull_requests_table.c.number)).scalar()
    assert amount == exact
    assert number == 2**31 - 1


def test_limits_are_the_same_on_both_databases(engine) -> None:
    """INTEGER holds 64 bits on SQLite but 32 on PostgreSQL: the load follows the declared
    type on both, so what a developer's SQLite accepts production's PostgreSQL accepts too."""
    events = [("github", "pr-big", "pull_request", {**pull_request(), "number": 2**31})]
    load(engine, events)
    assert "outside the range" in letters(engine)["pr-big"]
    assert "INTEGER" in letters(engine)["pr-big"]


def _forbid_ref(engine: sa.Engine, ref: str) -> None:
    """A rule the validator does not know about: the database refuses pushes to `ref`."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(
                f"ALTER TABLE wh_github_pushes ADD CONSTRAINT no_frozen_ref CHECK (ref <> '{ref}')"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER no_frozen_ref BEFORE INSERT ON wh_github_pushes "
                f"WHEN NEW.ref = '{ref}' BEGIN SELECT RAISE(ABORT, 'ref is frozen'); END"
            )


@pytest.mark.parametrize("chunk_size", [1, 7, 200])
def test_refused_write_is_bisected_to_the_event(engine, chunk_size) -> None:
    _forbid_ref(engine, "refs/heads/frozen")
    events = good_events(40)
    for position in (0, 13, 39):
        events[position] = (
            "github",
            f"frozen-{position}",
            "push",
            {**push(), "ref": "refs/heads/frozen"},
        )

    result = load(engine, events, chunk_size=chunk_size)

    assert (result["loaded"], result["dead_lettered"]) == (37, 3)
    assert set(loaded_ids(engine).values()) == {1}
    assert len(loaded_ids(engine)) == 37
    reasons = letters(engine)
    assert sorted(reasons) == ["frozen-0", "frozen-13", "frozen-39"]
    for reason in reasons.values():
        assert "the warehouse refused it" in reason
    assert inbox.counts(engine).get(("github", "pending"), 0) == 0


def test_refused_write_without_the_checks_is_bisected(engine, monkeypatch) -> None:
    """The finding's exact error (and PostgreSQL's "bigint out of range") reaches the write only
    if the checks miss it; bisection still sets aside that one event."""
    monkeypatch.setattr(warehouse, "check_column", lambda column, value, label: None)
    events = good_events(20)
    events.insert(11, ("stripe", "poison", PAYMENT, {**payment(10**30), "id": "poison"}))

    result = load(engine, events, chunk_size=200)

    assert (result["loaded"], result["dead_lettered"]) == (20, 1)
    assert "the warehouse refused it" in letters(engine)["poison"]
    assert len(loaded_ids(engine)) == 20


def test_transient_error_fails_the_load_and_dead_letters_nothing(engine) -> None:
    calls = {"n": 0}

    def fail_once(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("INSERT INTO wh_webhook_events") and calls["n"] == 0:
            calls["n"] += 1
            if conn.dialect.name == "postgresql":
                import psycopg2

                raise psycopg2.OperationalError("server closed the connection unexpectedly")
            import sqlite3

            raise sqlite3.OperationalError("database is locked")

    events = good_events(10)
    events.insert(5, ("stripe", "poison", PAYMENT, {**payment(10**30), "id": "poison"}))
    sa.event.listen(engine, "before_cursor_execute", fail_once)
    try:
        with pytest.raises(Exception, match=r"locked|closed the connection") as raised:
            load(engine, events)
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail_once)

    assert classify(raised.value).transient  # so the op retries the run's load

    assert letters(engine) == {}
    assert loaded_ids(engine) == {}
    assert inbox.counts(engine) == {
        ("github", "pending"): 6,
        ("stripe", "pending"): 3,
        ("partner", "pending"): 2,
    }
    # The retry loads the batch: good events once, the poison alone in the dead letters.
    result = load_batch(engine, "b", "run-2", 200)
    assert (result["loaded"], result["dead_lettered"]) == (10, 1)
    assert list(letters(engine)) == ["poison"]


def test_replay_all_of_a_whole_dead_batch_loads_the_good_and_isolates_the_poison(engine) -> None:
    """What the old loader left behind: all events of a batch dead after 3 failed runs."""
    events = good_events(20)
    events.insert(4, ("stripe", "poison", PAYMENT, {**payment(10**30), "id": "poison"}))
    ids = seed(engine, events)
    table = inbox.inbox_table
    with engine.begin() as conn:
        rows = conn.execute(sa.select(table).where(table.c.id.in_(ids))).all()
        reason = "failed 3 runs: OverflowError: Python int too large to convert to SQLite INTEGER"
        inbox.mark_dead(conn, AUTOMATION, [(row, reason) for row in rows], 1.0)
    assert len(letters(engine)) == 21

    assert inbox.replay(engine, everything=True) == 21
    assert inbox.assign_batch(engine, ids, "replayed", now=2.0) == 21
    result = load_batch(engine, "replayed", "run-3", 200)

    assert (result["loaded"], result["dead_lettered"]) == (20, 1)
    reasons = letters(engine)
    assert list(reasons) == ["poison"]
    assert "outside the range" in reasons["poison"]
    assert len(loaded_ids(engine)) == 20

"""The inbox functions on SQLite and on PostgreSQL: duplicates are told apart inside one
transaction, batching never takes rows another batch holds, dead-lettering writes dead letters
(with secrets masked), replay by id, by source or of everything re-queues only dead rows, a dead
letter stays open until its event loads (and a replayed event that fails again has one open
letter, with the new reason), and `counts` tallies rows per source and state."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automation_pipelines.reliability import store
from automation_pipelines.reliability.deadletters import dead_letters_table, open_dead_letters
from automation_pipelines.webhooks import inbox
from automation_pipelines_tests.webhooks.conftest import add_events, inbox_rows, kill


@pytest.fixture
def engine(events_db_url: str) -> sa.Engine:
    return store.engine(events_db_url)


def event(source: str, delivery: str, body: str = "{}") -> inbox.Event:
    return inbox.Event(source, delivery, "push", body, 1_790_000_000.0)


def by_id(engine: sa.Engine) -> dict[int, sa.Row]:
    return {row.id: row for row in inbox_rows(engine)}


def test_duplicate_in_the_same_transaction_is_not_added(engine) -> None:
    with engine.begin() as conn:
        added = inbox.insert_events(conn, [event("github", "d-1"), event("github", "d-1", "{}\n")])

    assert added == [True, False]
    [row] = inbox_rows(engine)
    assert row.body == "{}"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 5)), max_size=6),
    group=st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 5)), max_size=40),
)
def test_a_group_adds_the_first_of_each_new_delivery_and_nothing_else(
    engine, stored, group
) -> None:
    """One statement for a whole group (the receiver's commit) answers, per event, exactly what
    one statement per event would: added for the first delivery of a key not stored yet."""
    run = uuid.uuid4().hex[:8]  # keys of this example only
    keys = lambda pairs: [(f"{run}-{s}", f"d-{n}") for s, n in pairs]  # noqa: E731
    with engine.begin() as conn:
        inbox.insert_events(conn, [event(*key) for key in keys(stored)])
    with engine.begin() as conn:
        added = inbox.insert_events(conn, [event(*key) for key in keys(group)])
    seen = set(keys(stored))
    expected = []
    for key in keys(group):
        expected.append(key not in seen)
        seen.add(key)
    assert added == expected
    mine = [row for row in inbox_rows(engine) if row.source.startswith(run)]
    assert sorted((row.source, row.delivery_id) for row in mine) == sorted(seen)


def test_redelivery_is_told_apart_per_source(engine) -> None:
    add_events(engine, [("github", "d-1")])

    with engine.begin() as conn:
        added = inbox.insert_events(conn, [event("github", "d-1"), event("stripe", "d-1")])

    assert added == [False, True]
    assert sorted(row.source for row in inbox_rows(engine)) == ["github", "stripe"]


def test_assign_batch_leaves_rows_another_batch_took(engine) -> None:
    ids = add_events(engine, [("github", f"d-{n}") for n in range(3)])

    assert inbox.assign_batch(engine, ids[:2], "batch-a", 100.0) == 2
    assert inbox.assign_batch(engine, ids, "batch-b", 200.0) == 1

    rows = by_id(engine)
    assert [(rows[i].batch, rows[i].requested_at) for i in ids] == [
        ("batch-a", 100.0),
        ("batch-a", 100.0),
        ("batch-b", 200.0),
    ]
    assert inbox.unbatched(engine, 10) == []


def test_a_batch_about_to_start_takes_the_oldest_waiting_rows_up_to_its_cap(engine) -> None:
    """Late arrivals join the batch whose first run is starting, oldest first, until the batch
    holds `up_to` rows; the rest wait for the next batch."""
    own = add_events(engine, [("github", f"own-{n}") for n in range(3)])
    inbox.assign_batch(engine, own, "batch-a", 100.0)
    late = add_events(engine, [("github", f"late-{n}") for n in range(4)])

    assert inbox.take_waiting(engine, "batch-a", up_to=5, now=150.0) == 2

    rows = by_id(engine)
    assert [rows[i].batch for i in own + late] == ["batch-a"] * 5 + [None, None]
    assert [rows[i].requested_at for i in late[:2]] == [150.0, 150.0]
    # Full: nothing more joins it.
    assert inbox.take_waiting(engine, "batch-a", up_to=5, now=160.0) == 0
    assert [row.id for row in inbox.unbatched(engine, 10)] == late[2:]


def test_only_a_batch_never_attempted_takes_waiting_rows(engine) -> None:
    """A batch run again after a failure, one whose rows are all loaded, and a name no batch
    has take nothing: late events must not share a failing batch's fate, nor join a finished
    one."""
    failing = add_events(engine, [("github", "f-0"), ("github", "f-1")])
    inbox.assign_batch(engine, failing, "failing", 100.0)
    inbox.count_attempt(engine, "failing", "run-1")
    finished = add_events(engine, [("github", "d-0")])
    inbox.assign_batch(engine, finished, "finished", 100.0)
    inbox.count_attempt(engine, "finished", "run-2")
    with engine.begin() as conn:
        inbox.mark_done(conn, finished, "run-2", 110.0)
    waiting = add_events(engine, [("github", f"w-{n}") for n in range(3)])

    for batch in ("failing", "finished", "no-such-batch"):
        assert inbox.take_waiting(engine, batch, up_to=100, now=200.0) == 0
    assert [row.id for row in inbox.unbatched(engine, 10)] == waiting


def test_a_starting_batch_and_a_sensor_tick_never_share_a_row(engine) -> None:
    """Runs taking late arrivals while ticks batch the same rows, at once: every row ends in
    exactly one batch, and each call's count is what it really took."""
    ids = add_events(engine, [("github", f"r-{n}") for n in range(400)])
    starting = [f"start-{n}" for n in range(4)]
    for n, batch in enumerate(starting):
        inbox.assign_batch(engine, [ids[n]], batch, 100.0)

    def run_takes(batch: str) -> int:
        return inbox.take_waiting(engine, batch, up_to=150, now=200.0)

    def tick_takes(n: int) -> int:
        waiting = [row.id for row in inbox.unbatched(engine, 60)]
        return inbox.assign_batch(engine, waiting, f"tick-{n}", 200.0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = [pool.submit(run_takes, batch) for batch in starting]
        ticks = [pool.submit(tick_takes, n) for n in range(6)]
        taken = [future.result() for future in runs + ticks]

    rows = by_id(engine)
    held: dict[str, int] = {}
    for row in rows.values():
        if row.batch is not None:
            held[row.batch] = held.get(row.batch, 0) + 1
    assert sum(taken) + len(starting) == sum(held.values())
    assert all(held[batch] <= 150 for batch in starting)
    assert [held.get(f"start-{n}", 0) - 1 for n in range(4)] == taken[:4]
    assert [held.get(f"tick-{n}", 0) for n in range(6)] == taken[4:]


def test_unbatched_gives_the_oldest_waiting_rows_first(engine) -> None:
    ids = add_events(engine, [("github", f"d-{n}") for n in range(4)])
    inbox.assign_batch(engine, [ids[0]], "batch-a", 100.0)

    assert [row.id for row in inbox.unbatched(engine, 2)] == ids[1:3]


def test_mark_dead_writes_a_dead_letter_per_row(engine, monkeypatch) -> None:
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "hunter2-webhook-secret")
    ids = add_events(engine, [("github", "d-1"), ("github", "d-2")])

    kill(engine, [ids[0]], "rejected with key hunter2-webhook-secret")

    rows = by_id(engine)
    assert (rows[ids[0]].status, rows[ids[1]].status) == (inbox.DEAD, inbox.PENDING)
    [letter] = open_dead_letters(engine, "webhook_events")
    assert letter.id == rows[ids[0]].dead_letter_id
    assert letter.item == f"github/d-1 (push, inbox id {ids[0]})"
    assert "hunter2-webhook-secret" not in letter.reason + rows[ids[0]].last_error
    assert "***" in letter.reason


@pytest.fixture
def dead(engine) -> dict[str, int]:
    """Three dead rows (two github, one stripe), one pending and one done row."""
    names = ["github/a", "github/b", "stripe/c", "github/pending", "github/done"]
    ids = dict(zip(names, add_events(engine, [tuple(n.split("/")) for n in names]), strict=True))
    inbox.assign_batch(engine, list(ids.values()), "batch-a", 100.0)
    inbox.count_attempt(engine, "batch-a", "run-1")
    with engine.begin() as conn:
        inbox.mark_done(conn, [ids["github/done"]], "run-1", 200.0)
    kill(engine, [ids["github/a"], ids["github/b"], ids["stripe/c"]])
    return ids


def requeued(engine: sa.Engine, ids: dict[str, int]) -> list[str]:
    """Which of the rows are back in the queue with a clean slate."""
    rows = by_id(engine)
    fresh = (inbox.PENDING, None, None, 0, None, None)
    return sorted(
        name
        for name, row_id in ids.items()
        if (
            rows[row_id].status,
            rows[row_id].batch,
            rows[row_id].requested_at,
            rows[row_id].attempts,
            rows[row_id].dead_letter_id,
            rows[row_id].run_id,
        )
        == fresh
    )


def open_items(engine: sa.Engine) -> list[str]:
    return sorted(letter.item.split(" ")[0] for letter in open_dead_letters(engine))


def test_replay_by_id_requeues_that_row_and_keeps_its_letter_open(engine, dead) -> None:
    assert inbox.replay(engine, ids=[dead["github/a"]]) == 1

    assert requeued(engine, dead) == ["github/a"]
    # Re-queued is not handled: the digest keeps counting it until it loads.
    assert open_items(engine) == ["github/a", "github/b", "stripe/c"]


def test_replay_by_source_requeues_only_that_source(engine, dead) -> None:
    assert inbox.replay(engine, source="github") == 2

    assert requeued(engine, dead) == ["github/a", "github/b"]
    assert by_id(engine)[dead["github/done"]].status == inbox.DONE
    assert by_id(engine)[dead["stripe/c"]].status == inbox.DEAD


def test_replay_everything_requeues_every_dead_row_and_nothing_else(engine, dead) -> None:
    assert inbox.replay(engine, everything=True) == 3

    assert requeued(engine, dead) == ["github/a", "github/b", "stripe/c"]
    rows = by_id(engine)
    assert (rows[dead["github/pending"]].batch, rows[dead["github/pending"]].attempts) == (
        "batch-a",
        1,
    )
    assert rows[dead["github/done"]].status == inbox.DONE
    assert len(open_items(engine)) == 3


def _rows(engine: sa.Engine, ids: list[int]) -> list[sa.Row]:
    return [by_id(engine)[row_id] for row_id in ids]


def test_loading_a_replayed_row_resolves_its_letter_in_the_same_transaction(engine, dead) -> None:
    inbox.replay(engine, everything=True)
    loaded = [dead["github/a"], dead["stripe/c"]]
    inbox.assign_batch(engine, loaded, "batch-r", 300.0)

    with engine.begin() as conn:
        assert inbox.mark_loaded(conn, "webhook_events", _rows(engine, loaded), "run-2", 300.0) == 2
        conn.rollback()  # a load that did not commit resolves nothing
    assert len(open_items(engine)) == 3

    with engine.begin() as conn:
        inbox.mark_loaded(conn, "webhook_events", _rows(engine, loaded), "run-2", 300.0)

    assert open_items(engine) == ["github/b"]
    assert {by_id(engine)[i].status for i in loaded} == {inbox.DONE}
    with engine.connect() as conn:
        resolved = conn.execute(
            sa.select(sa.func.count()).where(dead_letters_table.c.resolved_at.is_not(None))
        ).scalar()
    assert resolved == 2


def test_replayed_row_that_fails_again_has_one_open_letter_with_the_new_reason(
    engine, dead
) -> None:
    inbox.replay(engine, ids=[dead["github/a"]])
    inbox.assign_batch(engine, [dead["github/a"]], "batch-r", 300.0)

    kill(engine, [dead["github/a"]], "push: ref must be a non-empty string, got ''")

    [letter] = [x for x in open_dead_letters(engine) if x.item.startswith("github/a ")]
    assert letter.reason == "push: ref must be a non-empty string, got ''"
    assert by_id(engine)[dead["github/a"]].dead_letter_id == letter.id
    with engine.connect() as conn:
        history = conn.execute(
            sa.select(dead_letters_table.c.reason, dead_letters_table.c.resolved_at)
            .where(dead_letters_table.c.item.startswith("github/a "))
            .order_by(dead_letters_table.c.id)
        ).all()
    assert [(reason, closed is not None) for reason, closed in history] == [
        ("payload has no repository", True),
        ("push: ref must be a non-empty string, got ''", False),
    ]


def test_replay_of_a_row_that_is_not_dead_changes_nothing(engine, dead) -> None:
    assert inbox.replay(engine, ids=[dead["github/pending"], dead["github/done"]]) == 0

    assert requeued(engine, dead) == []
    assert len(open_items(engine)) == 3


def test_replay_without_a_selection_is_refused(engine, dead) -> None:
    with pytest.raises(ValueError, match="say which dead events"):
        inbox.replay(engine)

    assert len(open_items(engine)) == 3


def test_dead_rows_lists_dead_rows_with_their_error(engine, dead) -> None:
    assert [(r.source, r.delivery_id) for r in inbox.dead_rows(engine)] == [
        ("github", "a"),
        ("github", "b"),
        ("stripe", "c"),
    ]
    [stripe] = inbox.dead_rows(engine, "stripe")
    assert (stripe.delivery_id, stripe.attempts) == ("c", 1)
    assert stripe.last_error == "payload has no repository"


def test_counts_per_source_and_state(engine, dead) -> None:
    assert inbox.counts(engine) == {
        ("github", inbox.DEAD): 2,
        ("github", inbox.PENDING): 1,
        ("github", inbox.DONE): 1,
        ("stripe", inbox.DEAD): 1,
    }


def test_counts_of_an_empty_inbox(engine) -> None:
    assert inbox.counts(engine) == {}

"""The daily digest on a real run history (jobs executed on a SQLite instance): counts of runs,
failures (a run Dagster retries is not one), last success, open incidents and dead letters per
owner, the window, the title, once-a-day queueing, the op that sends it; and the dead-letter store.
"""

import time
from datetime import UTC, datetime
from types import SimpleNamespace

import dagster as dg
import pytest
import sqlalchemy as sa

from automation_pipelines.monitoring.digest import build_digest, queue_digest, send_daily_digest
from automation_pipelines.reliability import store
from automation_pipelines.reliability.alerts import incidents_table
from automation_pipelines.reliability.deadletters import (
    count_open_by_automation,
    dead_letters_table,
    open_dead_letters,
    record_dead_letter,
    resolve_dead_letters,
)
from automation_pipelines.reliability.messages import TITLE_LIMIT
from automation_pipelines_tests.alert_peers import deliver_queued

SECRET = "digest-s3cr3t-value"


class Mode(dg.Config):
    fail: bool = False


@dg.op
def work(config: Mode) -> None:
    if config.fail:
        raise ValueError("bad input")


@dg.job
def job_a():
    work()


@dg.job
def job_b():
    work()


@dg.job
def job_c():
    work()


def _run(job: dg.JobDefinition, instance, *, fail: bool, tags: dict[str, str] | None = None):
    result = job.execute_in_process(
        instance=instance,
        run_config={"ops": {"work": {"config": {"fail": fail}}}},
        tags=tags or {},
        raise_on_error=False,
    )
    assert result.success is not fail
    return result


def _day(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).strftime("%Y-%m-%d")


def _incident(conn, *, automation: str, owner: str, closed_at: float | None) -> None:
    now = time.time()
    conn.execute(
        incidents_table.insert().values(
            job="job_b",
            automation=automation,
            owner=owner,
            fingerprint=f"fp-{closed_at}",
            summary="ValueError: bad input",
            opened_at=now - 600,
            last_seen_at=now,
            last_alerted_at=now,
            failure_count=2,
            last_run_id="run-b",
            closed_at=closed_at,
        )
    )


@pytest.fixture
def history(sqlite_instance, alert_router, monkeypatch):
    """A: 3 runs, 1 failed. B: 2 failed runs and 1 failed run Dagster retries, never a success,
    2 open dead letters (1 resolved), 1 open and 1 closed incident. job_c: 1 untagged run."""
    monkeypatch.setenv("DIGEST_TEST_TOKEN", SECRET)
    a_tags = {"automation": "auto_a", "owner": "team:a"}
    b_tags = {"automation": "auto_b", "owner": "team:b"}
    _run(job_a, sqlite_instance, fail=False, tags=a_tags)
    last_a_success = _run(job_a, sqlite_instance, fail=False, tags=a_tags)
    _run(job_a, sqlite_instance, fail=True, tags=a_tags)
    _run(job_b, sqlite_instance, fail=True, tags=b_tags)
    _run(job_b, sqlite_instance, fail=True, tags=b_tags)
    retried = _run(job_b, sqlite_instance, fail=True, tags=b_tags)
    sqlite_instance.add_run_tags(retried.run_id, {"dagster/will_retry": "true"})
    _run(job_c, sqlite_instance, fail=False)

    outbox = alert_router.outbox()
    engine = store.engine(alert_router.database_url)
    assert engine is outbox.engine
    record_dead_letter(engine, "auto_b", "inbox/orders-17.csv", f"quarantined, token {SECRET}")
    record_dead_letter(engine, "auto_b", "event 9f2c", "schema mismatch")
    done = record_dead_letter(engine, "auto_b", "inbox/orders-16.csv", "handled by hand")
    resolve_dead_letters(engine, [done])
    with engine.begin() as conn:
        _incident(conn, automation="auto_b", owner="team:b", closed_at=None)
        _incident(conn, automation="auto_b", owner="team:b", closed_at=time.time())

    [record] = sqlite_instance.get_run_records(
        filters=dg.RunsFilter(run_ids=[last_a_success.run_id])
    )

    return SimpleNamespace(
        instance=sqlite_instance,
        outbox=outbox,
        engine=engine,
        last_success_a=datetime.fromtimestamp(record.end_time, tz=UTC),
    )


def test_digest_counts_each_owners_automations(history) -> None:
    now = time.time()
    digests = build_digest(history.instance, history.engine, now)
    assert set(digests) == {"team:a", "team:b", "unowned"}

    title_a, body_a = digests["team:a"]
    assert title_a == (
        f"[DIGEST {_day(now)}] team:a: 1 automation(s), 1 failed run(s), 0 open incident(s)"
    )
    assert "auto_a (automation, owner team:a)" in body_a
    assert "Runs in the last 24 h: 3 (2 succeeded, 1 failed, 0 failed and retried, 0 other)" in (
        body_a
    )
    assert "  Failed runs: 1\n" in body_a
    expected_success = history.last_success_a.strftime("%Y-%m-%d %H:%M UTC")
    assert f"Last successful run: {expected_success}" in body_a
    assert "Open incidents: 0" in body_a
    assert "Open dead-lettered/quarantined items: 0" in body_a
    assert "auto_b" not in body_a

    title_b, body_b = digests["team:b"]
    assert title_b == (
        f"[DIGEST {_day(now)}] team:b: 1 automation(s), 2 failed run(s), 1 open incident(s)"
    )
    assert "Runs in the last 24 h: 3 (0 succeeded, 2 failed, 1 failed and retried, 0 other)" in (
        body_b
    )
    assert "  Failed runs: 2\n" in body_b
    assert "Last successful run: never" in body_b
    assert "Open incidents: 1\n" in body_b
    assert "job_b: ValueError: bad input" in body_b
    assert "Open dead-lettered/quarantined items: 2\n" in body_b
    assert "inbox/orders-17.csv" in body_b and "event 9f2c: schema mismatch" in body_b
    assert "orders-16.csv" not in body_b  # resolved
    assert SECRET not in body_b and "token ***" in body_b

    title_c, body_c = digests["unowned"]
    assert title_c.endswith("unowned: 1 automation(s), 0 failed run(s), 0 open incident(s)")
    assert "job_c (job of no automation, owner unowned)" in body_c
    assert "Runs in the last 24 h: 1 (1 succeeded, 0 failed" in body_c

    for title, _ in digests.values():
        assert len(title) <= TITLE_LIMIT


def test_runs_outside_the_window_are_not_counted(history) -> None:
    later = time.time() + 48 * 3600
    digests = build_digest(history.instance, history.engine, later)
    # Nothing ran for A or job_c in the window and nothing of theirs is open.
    assert set(digests) == {"team:b"}
    title, body = digests["team:b"]
    assert title == (
        f"[DIGEST {_day(later)}] team:b: 1 automation(s), 0 failed run(s), 1 open incident(s)"
    )
    assert "Runs in the last 24 h: 0 (0 succeeded, 0 failed, 0 failed and retried, 0 other)" in body
    assert "  Failed runs: 0\n" in body
    assert "Open incidents: 1\n" in body
    assert "Open dead-lettered/quarantined items: 2\n" in body
    assert "Last successful run: never" in body

    wide = build_digest(history.instance, history.engine, later, window_hours=72)
    assert "Runs in the last 72 h: 3 (2 succeeded, 1 failed" in wide["team:a"][1]

    # Runs created after `now` are not in its window either.
    earlier = build_digest(history.instance, history.engine, time.time() - 48 * 3600)
    assert set(earlier) == {"team:b"}
    assert "Runs in the last 24 h: 0 (" in earlier["team:b"][1]


def test_long_owner_names_keep_the_title_short(sqlite_instance, alert_router) -> None:
    owner = "team:" + "very-long-owner-name-" * 8
    _run(job_a, sqlite_instance, fail=True, tags={"automation": "auto_x", "owner": owner})
    engine = store.engine(alert_router.database_url)
    title, _ = build_digest(sqlite_instance, engine, time.time())[owner]
    assert len(title) == TITLE_LIMIT
    assert title.startswith("[DIGEST ") and title.endswith("…")


def test_queue_digest_queues_one_message_per_owner_once_a_day(history) -> None:
    now = time.time()
    assert queue_digest(history.outbox, history.instance, history.engine, now) == 3
    alerts = history.outbox.alerts()
    assert sorted(a.owner for a in alerts) == ["team:a", "team:b", "unowned"]
    day = _day(now)
    assert {a.dedup_key for a in alerts} == {
        f"digest:{day}:team:a",
        f"digest:{day}:team:b",
        f"digest:{day}:unowned",
    }
    assert all(a.kind == "message" and a.status == "pending" for a in alerts)
    body_b = next(a.body for a in alerts if a.owner == "team:b")
    assert "Failed runs: 2" in body_b

    assert queue_digest(history.outbox, history.instance, history.engine, now) == 0
    assert len(history.outbox.alerts()) == 3

    # The next day only team:b still has something to report (its open incident and items).
    tomorrow = now + 24 * 3600
    assert queue_digest(history.outbox, history.instance, history.engine, tomorrow) == 1
    assert history.outbox.alerts()[-1].dedup_key == f"digest:{_day(tomorrow)}:team:b"


def test_send_daily_digest_op_queues_and_the_outbox_sensor_delivers(
    history, alert_router, json_receiver, monkeypatch
) -> None:
    monkeypatch.setenv("TEST_DEFAULT_URLS", json_receiver.url)

    @dg.job(resource_defs={"alerts": alert_router})
    def digest_job():
        send_daily_digest()

    def metadata(result: dg.ExecuteInProcessResult) -> dict:
        [output] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
        return {k: v.value for k, v in output.step_output_data.metadata.items()}

    first = digest_job.execute_in_process(instance=history.instance)
    assert first.success
    assert first.output_for_node("send_daily_digest") == 3
    assert metadata(first) == {"digests_queued": 3}
    assert json_receiver.received == []  # no channel holds the run
    assert "delivered 3" in deliver_queued(history.instance, alert_router)
    titles = sorted(json_receiver.titles())
    assert len(titles) == 3
    assert any(
        t.endswith("team:b: 1 automation(s), 2 failed run(s), 1 open incident(s)") for t in titles
    )
    assert all(a.status == "delivered" for a in history.outbox.alerts())

    second = digest_job.execute_in_process(instance=history.instance)
    assert second.success
    assert metadata(second)["digests_queued"] == 0
    deliver_queued(history.instance, alert_router)
    assert len(json_receiver.received) == 3


def test_dead_letters_record_count_resolve(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DIGEST_TEST_TOKEN", SECRET)
    engine = store.engine(f"sqlite:///{tmp_path / 'dead.db'}")
    first = record_dead_letter(engine, "auto_x", "a.csv", "bad header")
    second = record_dead_letter(engine, "auto_x", f"https://u:{SECRET}@host/b", f"key {SECRET}")
    third = record_dead_letter(engine, "auto_y", "event 1", "unknown type")

    assert [r.id for r in open_dead_letters(engine)] == [first, second, third]
    rows = open_dead_letters(engine, "auto_x")
    assert [r.item for r in rows] == ["a.csv", "https://u:***@host/b"]
    assert rows[1].reason == "key ***"
    assert all(r.resolved_at is None and r.created_at > 0 for r in rows)
    assert count_open_by_automation(engine) == {"auto_x": 2, "auto_y": 1}

    assert resolve_dead_letters(engine, [first, third]) == 2
    assert resolve_dead_letters(engine, [first]) == 0  # already resolved
    assert resolve_dead_letters(engine, []) == 0
    assert [r.id for r in open_dead_letters(engine)] == [second]
    assert open_dead_letters(engine, "auto_y") == []
    assert count_open_by_automation(engine) == {"auto_x": 1}
    with engine.connect() as conn:
        resolved = conn.execute(
            sa.select(dead_letters_table.c.resolved_at).where(dead_letters_table.c.id == first)
        ).scalar_one()
    assert resolved is not None and resolved <= time.time()

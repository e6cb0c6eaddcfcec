"""The watchdog: each finding (missed schedule tick, stopped, erroring or stalled trigger, no
success within the window, too many runs) appears in its scenario with time moved forward and
not in a healthy one; findings become one alert per incident and a recovery notice; the sensor
reads real run history from the instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime

import dagster as dg
import pytest

from automation_pipelines.monitoring import watchdog
from automation_pipelines.monitoring.watchdog import JobView, TriggerView, evaluate
from automation_pipelines_tests.monitoring.alert_fixtures import watchdog_ticks

HOUR = 3600.0
# 2026-11-22 10:30 UTC: an hourly schedule was due at 10:00, and at 09:00 before it.
NOW = datetime(2026, 11, 22, 10, 30, tzinfo=UTC).timestamp()
DUE = datetime(2026, 11, 22, 10, 0, tzinfo=UTC).timestamp()


def schedule(**kw) -> TriggerView:
    base = dict(
        name="nightly_schedule",
        kind="schedule",
        automation="backups",
        owner="team:test",
        running=True,
        paused=False,
        watched_since=NOW - 10 * HOUR,
        last_tick_at=DUE + 2,
        recent_ticks=("SUCCESS", "SUCCESS", "SKIPPED"),
        cron="0 * * * *",
    )
    base.update(kw)
    return TriggerView(**base)


def sensor(**kw) -> TriggerView:
    base = dict(
        name="inbox_sensor",
        kind="sensor",
        automation="web_images",
        owner="team:test",
        running=True,
        paused=False,
        watched_since=NOW - 10 * HOUR,
        last_tick_at=NOW - 30,
        recent_ticks=("SKIPPED", "SUCCESS", "SKIPPED"),
        min_interval=30,
        stale_after=600,
    )
    base.update(kw)
    return TriggerView(**base)


def job(**kw) -> JobView:
    base = dict(
        name="backup_job",
        automation="backups",
        owner="team:test",
        paused=False,
        watched_since=NOW - 100 * HOUR,
        success_within=26 * HOUR,
        max_runs_per_hour=50,
        last_success_at=NOW - 2 * HOUR,
        runs_last_hour=3,
    )
    base.update(kw)
    return JobView(**base)


def kinds(findings) -> list[tuple[str, str]]:
    return [(f.subject, f.kind) for f in findings]


def test_healthy_gives_no_finding() -> None:
    assert evaluate([job()], [schedule(), sensor()], NOW) == []


@pytest.mark.parametrize(
    ("jobs", "triggers", "expected", "words"),
    [
        (
            [],
            [schedule(last_tick_at=DUE - HOUR + 2)],
            ("schedule:nightly_schedule", "missed_tick"),
            "did not tick at 2026-11-22 10:00 UTC",
        ),
        (
            [],
            [schedule(running=False)],
            ("schedule:nightly_schedule", "trigger_stopped"),
            "automation-pipelines pause backups",
        ),
        ([], [sensor(running=False)], ("sensor:inbox_sensor", "trigger_stopped"), "is stopped"),
        (
            [],
            [sensor(recent_ticks=("FAILURE",) * 3, last_error="KeyError: 'path'")],
            ("sensor:inbox_sensor", "trigger_erroring"),
            "KeyError: 'path'",
        ),
        (
            [],
            [schedule(recent_ticks=("FAILURE",) * 3)],
            ("schedule:nightly_schedule", "trigger_erroring"),
            "failed",
        ),
        (
            [],
            [sensor(last_tick_at=NOW - 20 * 60)],
            ("sensor:inbox_sensor", "trigger_stalled"),
            "has not ticked for 20 min",
        ),
        (
            [job(last_success_at=NOW - 27 * HOUR)],
            [],
            ("job:backup_job", "no_success"),
            "No successful run of backup_job in the last 26 h",
        ),
        (
            [job(last_success_at=None, watched_since=NOW - 30 * HOUR)],
            [],
            ("job:backup_job", "no_success"),
            "last success: never",
        ),
        (
            [job(runs_last_hour=51)],
            [],
            ("job:backup_job", "too_many_runs"),
            "51 runs of backup_job",
        ),
    ],
)
def test_each_finding(jobs, triggers, expected, words) -> None:
    findings = evaluate(jobs, triggers, NOW)
    assert kinds(findings) == [expected]
    assert words in findings[0].sentence


@pytest.mark.parametrize(
    ("jobs", "triggers"),
    [
        ([], [schedule(last_tick_at=None, watched_since=DUE + 60)]),  # began watching after due
        ([], [sensor(recent_ticks=("FAILURE", "FAILURE", "SUCCESS"))]),
        ([], [sensor(last_tick_at=None, watched_since=NOW - 60)]),
        ([], [sensor(last_tick_at=NOW - 20 * 60, min_interval=600)]),  # slow sensor: 30 min
        ([job(last_success_at=None, watched_since=NOW - HOUR)], []),
        ([job(runs_last_hour=50)], []),
        (
            [job(last_success_at=NOW - 27 * HOUR, paused=True)],
            [schedule(running=False, paused=True)],
        ),
    ],
)
def test_borderline_and_paused_cases_are_healthy(jobs, triggers) -> None:
    assert evaluate(jobs, triggers, NOW) == []


def test_schedule_in_its_own_time_zone() -> None:
    due = datetime(2026, 11, 22, 1, 0, tzinfo=UTC).timestamp()  # 02:00 in Berlin (UTC+1)
    berlin = schedule(cron="0 2 * * *", timezone="Europe/Berlin", last_tick_at=due + 1)
    assert evaluate([], [berlin], NOW) == []
    [finding] = evaluate([], [replace(berlin, last_tick_at=due - 24 * HOUR)], NOW)
    assert "did not tick at 2026-11-22 01:00 UTC" in finding.sentence


def test_findings_alert_once_and_recover(alert_router, monkeypatch, json_receiver) -> None:
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    outbox = alert_router.outbox()
    findings = evaluate([job(last_success_at=NOW - 27 * HOUR)], [sensor(running=False)], NOW)
    assert watchdog.report(outbox, findings) == 2
    assert watchdog.report(outbox, findings) == 0
    outbox.deliver_due()
    assert len(json_receiver.received) == 2
    assert any(t.startswith("[NO SUCCESS] backups:") for t in json_receiver.titles())
    watchdog.report(outbox, [f for f in findings if f.kind == "no_success"])
    outbox.deliver_due()
    assert json_receiver.titles()[2].startswith("[RECOVERED] web_images:")
    assert len(outbox.open_incidents()) == 1
    watchdog.report(outbox, [], held_subjects=["job:backup_job"])  # paused: not a recovery
    outbox.deliver_due()
    assert len(json_receiver.received) == 3 and len(outbox.open_incidents()) == 1


@dg.op
def noop() -> None:
    return None


WATCHED_RUNBOOK = "https://git.example.com/team/watched/blob/main/README.md"


@dg.job(
    tags={"automation": "watched", "owner": "team:test"},
    metadata={
        "expect/success_within_seconds": int(26 * HOUR),
        "expect/max_runs_per_hour": 2,
        "runbook": dg.MetadataValue.url(WATCHED_RUNBOOK),
    },
)
def watched_job():
    noop()


watched_every_hour_schedule = dg.ScheduleDefinition(
    name="watched_every_hour_schedule",
    job=watched_job,
    cron_schedule="0 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def test_sensor_on_real_history_with_time_moved_forward(
    sqlite_instance, alert_router, monkeypatch, json_receiver
) -> None:
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    defs = dg.Definitions(
        jobs=[watched_job],
        schedules=[watched_every_hour_schedule],
        sensors=[watchdog.watchdog_sensor],
        resources={"alerts": alert_router},
    )
    for _ in range(3):
        assert watched_job.execute_in_process(instance=sqlite_instance).success
    clock, tick = watchdog_ticks(monkeypatch, sqlite_instance, defs, alert_router)
    cursor, message = tick(None)
    assert "1 finding(s)" in message and "3 runs of watched_job" in message
    assert set(json.loads(cursor)["first_seen"]) == {
        "job:watched_job",
        "schedule:watched_every_hour_schedule",
    }
    assert json_receiver.titles()[0].startswith("[TOO MANY RUNS] watched: 3 runs of watched_job")
    assert f"Runbook: {WATCHED_RUNBOOK}" in json_receiver.received[0]["message"]

    clock["now"] += 27 * HOUR
    cursor, message = tick(cursor)
    assert "2 finding(s), 2 new" in message
    assert [t.split("]")[0] + "]" for t in json_receiver.titles()] == [
        "[TOO MANY RUNS]",
        "[MISSED TICK]",
        "[NO SUCCESS]",
        "[RECOVERED]",
    ]
    assert "watched_every_hour_schedule did not tick" in json_receiver.received[1]["message"]

    cursor, message = tick(cursor)
    assert "2 finding(s), 0 new" in message
    assert len(json_receiver.received) == 4


_INTERVAL = (
    "from automation_pipelines.monitoring.watchdog import watchdog_sensor; "
    "print(watchdog_sensor.minimum_interval_seconds)"
)


@pytest.mark.parametrize(
    ("value", "interval", "error"),
    [
        (None, "60", None),
        ("", "60", None),
        ("15", "15", None),
        ("5", "5", None),
        ("3600", "3600", None),
        ("4", None, "WATCHDOG_INTERVAL_SECONDS=4 must be between 5 and 3600"),
        ("3601", None, "WATCHDOG_INTERVAL_SECONDS=3601 must be between 5 and 3600"),
        ("1m", None, "WATCHDOG_INTERVAL_SECONDS='1m' is not a whole number"),
    ],
)
def test_the_watchdog_looks_as_often_as_configured(value, interval, error) -> None:
    """Read as the code location loads (a fresh interpreter each time); a bad value stops the
    load naming the variable, as every setting does."""
    env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_INTERVAL_SECONDS"}
    if value is not None:
        env["WATCHDOG_INTERVAL_SECONDS"] = value
    done = subprocess.run(
        [sys.executable, "-c", _INTERVAL], env=env, capture_output=True, text=True, timeout=120
    )
    if error is None:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == interval
    else:
        assert done.returncode != 0
        assert error in done.stderr

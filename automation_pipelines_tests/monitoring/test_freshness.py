"""The freshness sensor: time-window and cron policies are stale exactly when Dagster's UI says
so, never-materialized assets get their grace period, owners are found, and on a real instance a
stale asset gives one alert (with a link to it) and one recovery notice once it is fresh again."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from automation_pipelines.monitoring import freshness
from automation_pipelines.monitoring.freshness import (
    AssetFreshnessView,
    evaluate_freshness,
    last_deadline,
)
from automation_pipelines.monitoring.watchdog import MONITORING_OWNER
from automation_pipelines.reliability import breaker
from automation_pipelines_tests.monitoring.alert_fixtures import tick_sensor

HOUR = 3600.0
# 2026-11-22 10:30 UTC; the daily 02:00 UTC deadline before it had the window 00:00-02:00.
NOW = datetime(2026, 11, 22, 10, 30, tzinfo=UTC).timestamp()


def at(day: int, hour: int, minute: int = 0) -> float:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC).timestamp()


WINDOW = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26))
DAILY = dg.FreshnessPolicy.cron(deadline_cron="0 2 * * *", lower_bound_delta=timedelta(hours=2))
HOURLY = dg.FreshnessPolicy.cron(deadline_cron="0 * * * *", lower_bound_delta=timedelta(hours=1))
BERLIN = dg.FreshnessPolicy.cron(
    deadline_cron="0 2 * * *", lower_bound_delta=timedelta(hours=2), timezone="Europe/Berlin"
)


def view(policy=WINDOW, last: float | None = NOW - 2 * HOUR, **kw) -> AssetFreshnessView:
    base = dict(
        key="webhook_daily_report",
        policy=policy,
        last_materialized_at=last,
        owner="team:test",
        automation="webhook_events",
        first_seen=NOW - 100 * HOUR,
    )
    base.update(kw)
    return AssetFreshnessView(**base)


@pytest.mark.parametrize(
    ("asset", "now", "sentence"),
    [
        pytest.param(view(), NOW, None, id="window-fresh"),
        pytest.param(view(last=NOW - 26 * HOUR + 1), NOW, None, id="window-one-second-left"),
        pytest.param(
            view(last=NOW - 26 * HOUR),
            NOW,
            "webhook_daily_report last materialized 26 h ago (2026-11-21 08:30 UTC); its "
            "freshness policy allows 26 h.",
            id="window-just-stale",
        ),
        pytest.param(
            view(last=NOW - 27.5 * HOUR),
            NOW,
            "webhook_daily_report last materialized 27.5 h ago (2026-11-21 07:00 UTC); its "
            "freshness policy allows 26 h.",
            id="window-stale",
        ),
        pytest.param(
            view(last=None, first_seen=NOW - 25 * HOUR), NOW, None, id="window-never-in-grace"
        ),
        pytest.param(
            view(last=None, first_seen=NOW - 30 * HOUR),
            NOW,
            "webhook_daily_report has not been materialized in the 30 h since this sensor first "
            "saw it (2026-11-21 04:30 UTC); its freshness policy allows 26 h.",
            id="window-never-after-grace",
        ),
        pytest.param(view(DAILY, at(22, 1, 30)), NOW, None, id="cron-inside-window"),
        pytest.param(view(DAILY, at(22, 0)), NOW, None, id="cron-at-lower-bound"),
        pytest.param(view(DAILY, at(22, 3)), NOW, None, id="cron-late-but-done"),
        pytest.param(view(DAILY, at(21, 1)), at(22, 1, 59), None, id="cron-before-deadline"),
        pytest.param(
            view(DAILY, at(21, 23, 59)),
            NOW,
            "webhook_daily_report was not materialized between 2026-11-22 00:00 UTC and the "
            "02:00 UTC deadline (last materialized 2026-11-21 23:59 UTC).",
            id="cron-too-early",
        ),
        pytest.param(
            view(DAILY, at(21, 1)),
            at(22, 2),
            "webhook_daily_report was not materialized between 2026-11-22 00:00 UTC and the "
            "02:00 UTC deadline (last materialized 2026-11-21 01:00 UTC).",
            id="cron-missed-deadline-at-the-tick",
        ),
        pytest.param(view(DAILY, None, first_seen=at(22, 1)), NOW, None, id="cron-never-in-grace"),
        pytest.param(
            view(DAILY, None, first_seen=at(21, 20)),
            NOW,
            "webhook_daily_report was not materialized between 2026-11-22 00:00 UTC and the "
            "02:00 UTC deadline (never materialized since this sensor first saw it at "
            "2026-11-21 20:00 UTC).",
            id="cron-never-after-deadline",
        ),
        pytest.param(
            view(HOURLY, at(21, 22, 30)),
            at(22, 0, 10),
            "webhook_daily_report was not materialized between 2026-11-21 23:00 UTC and the "
            "2026-11-22 00:00 UTC deadline (last materialized 2026-11-21 22:30 UTC).",
            id="cron-window-over-midnight",
        ),
        pytest.param(view(BERLIN, at(21, 23, 30)), NOW, None, id="cron-berlin-fresh"),
        pytest.param(
            view(BERLIN, at(21, 22, 30)),
            NOW,
            "webhook_daily_report was not materialized between 2026-11-22 00:00 Europe/Berlin "
            "and the 02:00 Europe/Berlin deadline (last materialized 2026-11-21 23:30 "
            "Europe/Berlin).",
            id="cron-berlin-stale",
        ),
        pytest.param(view(last=NOW - 40 * HOUR, paused=True), NOW, None, id="paused"),
    ],
)
def test_evaluate_freshness(asset: AssetFreshnessView, now: float, sentence: str | None) -> None:
    findings = evaluate_freshness([asset], now)
    assert [f.sentence for f in findings] == ([sentence] if sentence else [])
    for finding in findings:
        assert (finding.subject, finding.kind) == ("asset:webhook_daily_report", "stale_asset")
        assert (finding.owner, finding.automation) == ("team:test", "webhook_events")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (at(22, 2), at(22, 2)),  # a deadline counts from its very second
        (at(22, 2) - 1, at(21, 2)),
        (NOW, at(22, 2)),
    ],
)
def test_last_deadline(now: float, expected: float) -> None:
    assert last_deadline("0 2 * * *", "UTC", now) == expected


def test_long_ages_read_in_days() -> None:
    [finding] = evaluate_freshness([view(last=NOW - 30 * 24 * HOUR)], NOW)
    assert "last materialized 30 d ago" in finding.sentence


@dg.asset(
    freshness_policy=WINDOW,
    owners=["team:test"],
    tags={"automation": "reports"},
)
def daily_report() -> int:
    return 1


@dg.asset(freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=48)))
def weekly_summary() -> int:
    return 2


@dg.asset
def scratch() -> int:
    return 3


@dg.asset(freshness_policy=WINDOW, tags={"automation": "reports_owned_by_job"})
def automation_owner() -> int:
    return 5


@dg.op
def noop() -> None:
    return None


@dg.job(tags={"automation": "reports_owned_by_job", "owner": "team:jobs"})
def reports_job():
    noop()


def test_observe_finds_policies_owners_and_pauses(sqlite_instance) -> None:
    defs = dg.Definitions(
        assets=[daily_report, weekly_summary, scratch, automation_owner],
        jobs=[reports_job],
    )
    breaker.pause(breaker.engine_for(sqlite_instance), "reports", reason="maintenance")
    first_seen = {"removed_asset": NOW - HOUR, "daily_report": NOW - 5 * HOUR}
    views = freshness.observe_freshness(sqlite_instance, defs.get_repository_def(), first_seen, NOW)
    assert {v.key: (v.owner, v.automation, v.paused) for v in views} == {
        "automation_owner": ("team:jobs", "reports_owned_by_job", False),
        "daily_report": ("team:test", "reports", True),
        "weekly_summary": (MONITORING_OWNER, None, False),
    }
    assert first_seen == {
        "automation_owner": NOW,
        "daily_report": NOW - 5 * HOUR,
        "weekly_summary": NOW,
    }
    assert all(v.last_materialized_at is None for v in views)


def test_report_links_the_asset_and_recovers(alert_router, monkeypatch, json_receiver) -> None:
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    outbox = alert_router.outbox()
    stale = view(key="reports/daily", last=NOW - 27.5 * HOUR)
    findings = evaluate_freshness([stale], NOW)
    base = alert_router.ui_base_url
    assert freshness.report_stale(outbox, findings, base) == 1
    assert freshness.report_stale(outbox, findings, base) == 0
    freshness.report_stale(outbox, [], base, held_subjects=[stale.subject])  # paused: held
    outbox.deliver_due()
    [alert] = json_receiver.received
    assert alert["title"].startswith("[STALE ASSET] webhook_events: reports/daily last mat")
    assert "Asset: http://dagster.example:3000/assets/reports/daily" in alert["message"]
    freshness.report_stale(
        outbox, evaluate_freshness([replace(stale, last_materialized_at=NOW)], NOW), base
    )
    outbox.deliver_due()
    assert json_receiver.titles()[1].startswith("[RECOVERED] webhook_events: reports/daily")
    assert outbox.open_incidents() == []


def test_sensor_alerts_once_and_recovers_on_a_real_instance(
    sqlite_instance, alert_router, monkeypatch, json_receiver
) -> None:
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    defs = dg.Definitions(
        assets=[daily_report, weekly_summary, scratch],
        sensors=[freshness.freshness_alert_sensor],
        resources={"alerts": alert_router},
    )
    clock = {"now": time.time()}
    monkeypatch.setattr(freshness, "_now", lambda: clock["now"])
    outbox = alert_router.outbox()

    def tick(cursor):
        return tick_sensor(
            freshness.freshness_alert_sensor, sqlite_instance, defs, alert_router, cursor
        )

    assert dg.materialize([daily_report], instance=sqlite_instance).success
    materialized = sqlite_instance.get_latest_materialization_event(
        dg.AssetKey("daily_report")
    ).timestamp
    cursor, message = tick(None)
    assert message == "2 asset(s) with freshness policies; 0 stale, 0 new"
    assert set(json.loads(cursor)["first_seen"]) == {"daily_report", "weekly_summary"}

    clock["now"] = materialized + 27.5 * HOUR  # weekly_summary is still within its 48 h grace
    cursor, message = tick(cursor)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(materialized))
    sentence = (
        f"daily_report last materialized 27.5 h ago ({when}); its freshness policy allows 26 h."
    )
    assert message == f"2 asset(s) with freshness policies; 1 stale, 1 new: {sentence}"
    [alert] = outbox.alerts()
    assert (alert.job, alert.owner, alert.automation) == (
        "asset:daily_report",
        "team:test",
        "reports",
    )
    assert json_receiver.titles()[0].startswith("[STALE ASSET] reports: daily_report last")
    body = json_receiver.received[0]["message"]
    assert sentence in body and "Asset: http://dagster.example:3000/assets/daily_report" in body

    cursor, message = tick(cursor)
    assert message.startswith("2 asset(s) with freshness policies; 1 stale, 0 new")
    assert len(outbox.alerts()) == 1 and len(json_receiver.received) == 1

    assert dg.materialize([daily_report], instance=sqlite_instance).success
    clock["now"] = time.time() + HOUR
    cursor, message = tick(cursor)
    assert message == "2 asset(s) with freshness policies; 0 stale, 0 new"
    assert [a.kind for a in outbox.alerts()] == ["condition", "recovery"]
    assert json_receiver.titles()[1].startswith("[RECOVERED] reports: daily_report")

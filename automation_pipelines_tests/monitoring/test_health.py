"""Each automation's health in the UI: the state a watchdog evaluation gives each automation
(healthy, late, stalled, failing, breaker open, paused), its colour, and — the point — that the
watchdog's alerts and the UI's health come from one evaluation: the sensor's tick on real history,
with one condition changed, changes both the alert and the asset check evaluation."""

from __future__ import annotations

import json
import time

import dagster as dg
import pytest

from automation_pipelines.monitoring import health as health_defs
from automation_pipelines.monitoring import outside, watchdog
from automation_pipelines.monitoring.watchdog import Watch, evaluate
from automation_pipelines.reliability import breaker
from automation_pipelines.reliability.breaker import SwitchState
from automation_pipelines.reliability.conditions import Finding
from automation_pipelines.reliability.health import (
    HEALTH_CHECK,
    Health,
    check_evaluation,
    health_of,
    report_health,
    unwatched,
)
from automation_pipelines.reliability.numbers import automation_key
from automation_pipelines_tests.monitoring.alert_fixtures import watchdog_ticks
from automation_pipelines_tests.monitoring.test_watchdog import (
    HOUR,
    NOW,
    job,
    schedule,
    sensor,
)

HEALTHY = "healthy"


def switch(automation: str, status: str, reason: str = "maintenance") -> SwitchState:
    return SwitchState(automation, status, reason, NOW - HOUR, "cli")


def watch_of(jobs, triggers, switches=None) -> Watch:
    return Watch(list(jobs), list(triggers), evaluate(jobs, triggers, NOW), switches or {})


@pytest.mark.parametrize(
    ("jobs", "triggers", "switches", "state", "words", "to_act"),
    [
        ([job()], [schedule(), sensor()], {}, HEALTHY, "Healthy", "nothing"),
        (
            [job(paused=True)],
            [schedule(paused=True)],
            {"backups": switch("backups", "paused", "disk swap")},
            "paused",
            "automation backups is paused since",
            "automation-pipelines resume backups",
        ),
        (
            [job(paused=True)],
            [],
            {"backups": switch("backups", "tripped", "5 consecutive failed runs")},
            "breaker_open",
            "stopped by its circuit breaker",
            "automation-pipelines resume backups",
        ),
        (
            [job(failures_in_a_row=2, last_failure_at=NOW - 60)],
            [],
            {},
            "failing",
            "The last 2 run(s) of backup_job failed",
            "tag automation=backups",
        ),
        (
            [],
            [sensor(last_tick_at=NOW - 20 * 60)],
            {},
            "stalled",
            "Sensor inbox_sensor has not ticked for 20 min",
            "automation-pipelines watchdog",
        ),
        (
            [],
            [sensor(running=False)],
            {},
            "stalled",
            "Sensor inbox_sensor is stopped",
            "turn inbox_sensor on in the UI",
        ),
        (
            [],
            [sensor(recent_ticks=("FAILURE",) * 3, last_error="KeyError: 'path'")],
            {},
            "failing",
            "KeyError: 'path'",
            "tick errors of inbox_sensor",
        ),
        (
            [],
            [schedule(last_tick_at=NOW - 3 * HOUR)],
            {},
            "late",
            "Schedule nightly_schedule did not tick",
            "automation-pipelines watchdog",
        ),
        (
            [job(last_success_at=NOW - 27 * HOUR)],
            [],
            {},
            "late",
            "No successful run of backup_job in the last 26 h",
            "latest runs",
        ),
    ],
)
def test_each_state_names_its_cause_and_what_to_do(
    jobs, triggers, switches, state, words, to_act
) -> None:
    healths = {h.automation: h for h in watch_of(jobs, triggers, switches).health()}
    automation = (jobs or triggers)[0].automation
    found = healths[automation]
    assert found.state == state
    assert words in found.sentence
    assert to_act in found.to_act
    evaluation = check_evaluation(found, {automation: "https://runbooks.example/x"})
    assert evaluation.asset_key == automation_key(automation)
    assert evaluation.check_name == HEALTH_CHECK
    assert evaluation.passed is (state == HEALTHY)
    assert words in (evaluation.description or "")
    assert evaluation.metadata["to_act"].value == found.to_act
    assert evaluation.metadata["runbook"].value == "https://runbooks.example/x"


def test_colours_and_which_state_wins() -> None:
    findings = evaluate(
        [job(last_success_at=NOW - 27 * HOUR)], [sensor(automation="backups", running=False)], NOW
    )
    [both] = health_of(["backups"], findings, {}, {})
    assert both.state == "stalled"  # the stopped sensor is what to fix first
    assert "Also: No successful run of backup_job" in both.sentence
    severity = {
        h.state: h.severity
        for h in health_of(
            ["a", "b", "c", "d", "e"],
            [f for f in findings],
            {"a": switch("a", "paused"), "b": switch("b", "tripped")},
            {"c": "The last run of c_job failed."},
        )
    }
    assert severity["paused"] == dg.AssetCheckSeverity.WARN
    assert severity["breaker_open"] == dg.AssetCheckSeverity.ERROR
    assert severity["failing"] == dg.AssetCheckSeverity.ERROR
    assert severity["stalled"] == dg.AssetCheckSeverity.ERROR
    assert health_of(["x"], [], {}, {})[0].passed
    late = evaluate([job(last_success_at=NOW - 27 * HOUR)], [], NOW)
    assert health_of(["backups"], late, {}, {})[0].severity == dg.AssetCheckSeverity.WARN
    # A closed switch (resumed) is no state of its own.
    resumed = SwitchState("a", "active", "resumed", NOW, "cli")
    assert health_of(["a"], [], {"a": resumed}, {})[0].state == HEALTHY


def check_history(instance: dg.DagsterInstance, automation: str) -> list:
    """The health check's evaluations of `automation` as the UI lists them, newest first."""
    key = dg.AssetCheckKey(automation_key(automation), HEALTH_CHECK)
    records = instance.event_log_storage.get_asset_check_execution_history(key, limit=50)
    return [record.event.dagster_event.event_specific_data for record in records if record.event]


def test_report_health_records_changes_and_refreshes_hourly(sqlite_instance) -> None:
    healthy = Health("backups", HEALTHY, "Healthy.", "nothing")
    reported = report_health(sqlite_instance, [healthy], {}, NOW)
    assert len(check_history(sqlite_instance, "backups")) == 1
    assert report_health(sqlite_instance, [healthy], reported, NOW + 60) == reported
    assert len(check_history(sqlite_instance, "backups")) == 1  # unchanged: not again
    paused = Health("backups", "paused", "Paused: …", "`automation-pipelines resume backups`")
    reported = report_health(sqlite_instance, [paused], reported, NOW + 120)
    [latest, first] = check_history(sqlite_instance, "backups")
    assert (latest.passed, first.passed) == (False, True)
    assert latest.severity == dg.AssetCheckSeverity.WARN
    report_health(sqlite_instance, [paused], reported, NOW + 120 + HOUR)
    assert len(check_history(sqlite_instance, "backups")) == 3


@dg.op
def noop() -> None:
    return None


@dg.op
def broken() -> None:
    raise dg.Failure("the upstream refused", allow_retries=False)


WATCHED = {"automation": "watched", "owner": "team:test"}


@dg.job(tags=WATCHED, metadata={"expect/success_within_seconds": int(26 * HOUR)})
def watched_job():
    noop()


@dg.job(
    tags=WATCHED, metadata={"expect/success_within_seconds": int(26 * HOUR)}, name="watched_job"
)
def watched_job_failing():
    broken()


@dg.sensor(job=watched_job, default_status=dg.DefaultSensorStatus.RUNNING)
def watched_inbox_sensor():
    return dg.SkipReason("nothing new")


def test_alert_and_ui_health_come_from_one_evaluation(
    sqlite_instance, alert_router, monkeypatch, json_receiver
) -> None:
    """One condition changed once (time moves past the job's success window) changes the
    watchdog's alert and the UI's health together, with the same sentence; pausing, then
    resuming, the automation turns the check yellow, then green again."""
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    defs = dg.Definitions(
        jobs=[watched_job],
        sensors=[watchdog.watchdog_sensor],
        resources={"alerts": alert_router},
    )
    assert watched_job.execute_in_process(instance=sqlite_instance).success
    clock, tick = watchdog_ticks(monkeypatch, sqlite_instance, defs, alert_router)
    cursor, message = tick(None)
    assert "0 finding(s)" in message and "all healthy" in message
    [green] = check_history(sqlite_instance, "watched")
    assert green.passed and json_receiver.received == []

    clock["now"] += 27 * HOUR  # the one change: no success within the declared 26 h
    cursor, message = tick(cursor)
    [alert] = json_receiver.titles()
    assert alert.startswith("[NO SUCCESS] watched: No successful run of watched_job")
    late = check_history(sqlite_instance, "watched")[0]
    assert (late.passed, late.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert late.metadata["state"].value == "late"
    sentence = alert.split("watched: ", 1)[1]
    assert late.metadata["finding"].value.startswith(sentence.rstrip("…"))
    assert "health: watched late" in message

    engine = breaker.engine_for(sqlite_instance)
    breaker.pause(engine, "watched", "moving the inbox")
    cursor, message = tick(cursor)
    assert "health: watched paused" in message, message
    paused = check_history(sqlite_instance, "watched")[0]
    assert paused.metadata["state"].value == "paused"
    assert "moving the inbox" in paused.metadata["finding"].value
    assert paused.metadata["to_act"].value == "`automation-pipelines resume watched`"

    breaker.resume(engine, "watched")
    assert watched_job.execute_in_process(instance=sqlite_instance).success
    cursor, message = tick(cursor)
    healthy = check_history(sqlite_instance, "watched")[0]
    assert healthy.passed and healthy.metadata["state"].value == "healthy"
    assert json_receiver.titles()[-1].startswith("[RECOVERED] watched:")
    assert "all healthy" in message
    assert json.loads(cursor)["health"]["watched"][1] == clock["now"]


def test_failed_runs_show_failing_until_a_success_or_resume(sqlite_instance, alert_router) -> None:
    assert not watched_job_failing.execute_in_process(
        instance=sqlite_instance, raise_on_error=False
    ).success
    defs = dg.Definitions(jobs=[watched_job], resources={"alerts": alert_router})
    repository = defs.get_repository_def()
    seen = watchdog.watch(sqlite_instance, repository, {}, time.time())
    [failing] = seen.health()
    assert failing.state == "failing"
    assert "The last 1 run(s) of watched_job failed" in failing.sentence
    assert watched_job.execute_in_process(instance=sqlite_instance).success
    [healthy] = watchdog.watch(sqlite_instance, repository, {}, time.time()).health()
    assert healthy.passed
    # After `resume` failures before it no longer count, as for the breaker.
    for _ in range(2):
        watched_job_failing.execute_in_process(instance=sqlite_instance, raise_on_error=False)
    [failing] = watchdog.watch(sqlite_instance, repository, {}, time.time()).health()
    assert "The last 2 run(s) of watched_job failed" in failing.sentence
    breaker.resume(breaker.engine_for(sqlite_instance), "watched")
    [resumed] = watchdog.watch(sqlite_instance, repository, {}, time.time()).health()
    assert resumed.passed


def test_every_automation_has_its_asset_and_health_check() -> None:
    from automation_pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    automations = {
        job.metadata["automation"].value
        for job in defs.get_repository_def().get_all_jobs()
        if "automation" in job.metadata
    }
    assert automations >= {"backups", "disk_space", "web_images", "webhook_events", "monitoring"}
    for name in automations:
        node = graph.get(automation_key(name))
        assert node.group_name == name and node.tags["automation"] == name
        assert dg.AssetCheckKey(automation_key(name), HEALTH_CHECK) in graph.asset_check_keys


def test_the_check_run_by_hand_evaluates_as_the_watchdog(sqlite_instance) -> None:
    """*Execute* on the check in the UI runs the same evaluation: a paused automation's check
    fails, and passes again once it is resumed and has run."""
    loaded = [dg.Definitions(jobs=[watched_job], sensors=[watched_inbox_sensor])]
    location = dg.Definitions.merge(*loaded, health_defs.definitions(loaded))
    checks = location.get_repository_def().asset_graph.asset_check_keys
    assert checks == {dg.AssetCheckKey(automation_key("watched"), HEALTH_CHECK)}
    repository = location.get_repository_def()
    engine = breaker.engine_for(sqlite_instance)
    breaker.pause(engine, "watched", "by hand")
    [result] = health_defs.evaluate_now(sqlite_instance, repository, ["watched"])
    assert not result.passed and result.metadata["state"].value == "paused"
    assert "by hand" in result.description
    breaker.resume(engine, "watched")
    assert watched_job.execute_in_process(instance=sqlite_instance).success
    [result] = health_defs.evaluate_now(sqlite_instance, repository, ["watched"])
    assert result.passed


def test_a_dead_daemon_shows_in_every_automations_health_until_its_watchdog_ticks_again(
    sqlite_home, sqlite_instance, alert_router, monkeypatch, json_receiver
) -> None:
    """The watchdog sensor dies with the daemon and would leave "healthy" standing in the UI:
    `automation-pipelines watchdog` (cron) sets each automation's health to the daemon being
    down, with its sentence, once; the sensor's first tick once the daemon is back sets the real
    health again, although its own cursor says it already had."""
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    monkeypatch.setenv("DAGSTER_HOME", str(sqlite_home))
    defs = dg.Definitions(
        jobs=[watched_job], sensors=[watchdog.watchdog_sensor], resources={"alerts": alert_router}
    )
    assert watched_job.execute_in_process(instance=sqlite_instance).success
    # Its runs record their numbers on automations/watched, which makes it known to the instance.
    sqlite_instance.report_runless_asset_event(dg.AssetMaterialization(automation_key("watched")))
    _, tick = watchdog_ticks(monkeypatch, sqlite_instance, defs, alert_router)
    cursor, _ = tick(None)
    assert check_history(sqlite_instance, "watched")[0].passed

    # No daemon heartbeat at all in this instance: the daemon is down.
    for _ in range(2):  # cron runs it every few minutes: the UI gets it once
        outcome = outside.check(
            alert_router, ping_url=None, max_heartbeat_age=60, max_watchdog_age=180
        )
        assert [f.kind for f in outcome.findings] == ["daemon_down"]
        assert not any("UI" in line for line in outcome.lines), outcome.lines
    [down, green] = check_history(sqlite_instance, "watched")
    assert (down.passed, down.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert down.metadata["state"].value == "stalled"
    assert down.metadata["finding"].value.startswith("Nothing of it runs: The Dagster daemon")
    assert "restart the Dagster daemon" in down.metadata["to_act"].value
    assert green.passed

    cursor, message = tick(cursor)  # the daemon is back: nothing changed in the sensor's view
    assert "all healthy" in message
    latest = check_history(sqlite_instance, "watched")[0]
    assert latest.passed and latest.metadata["state"].value == "healthy"


@pytest.mark.parametrize(
    ("kind", "state", "lead"),
    [
        ("daemon_down", "stalled", "Nothing of it runs: "),
        ("watchdog_silent", "late", "Its health here is not current: "),
    ],
)
def test_what_is_down_outside_becomes_every_automations_health(
    kind: str, state: str, lead: str
) -> None:
    down = Finding("daemon", kind, "team:platform", "monitoring", "It is down.")
    healths = unwatched(["b", "a", "b"], down)
    assert [h.automation for h in healths] == ["a", "b"]
    assert {(h.state, h.sentence, h.kinds) for h in healths} == {
        (state, lead + "It is down.", (kind,))
    }
    assert all(not h.passed and h.to_act for h in healths)

"""The circuit breaker: a job that always fails trips it after N runs, its guarded sensor and
schedule request no more runs (a SkipReason naming the breaker), the owner gets one alert with
the resume command, the state survives an instance restart, `resume` re-enables it and a manual
`pause` uses the same switch."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines import cli
from automation_pipelines.monitoring.alerting import run_failure_alert_sensor
from automation_pipelines.reliability import breaker
from automation_pipelines.reliability.automation import Automation, Expectation
from automation_pipelines.reliability.errors import PermanentError, RetryPreset, reliable_op
from automation_pipelines_tests.alert_peers import deliver_queued

RUNBOOK = Path(__file__).parent.parent / "reliability" / "fixture_runbooks" / "complete"
FLAKY = Automation(
    name="flaky_feed",
    owner="team:test",
    folder=RUNBOOK,
    expect=Expectation(success_within_hours=26),
    breaker_after_failures=3,
)


class Mode(dg.Config):
    fail: bool = True


@reliable_op(RetryPreset("none", max_retries=0, base_delay=0.01, max_delay=0.01))
def fetch_feed(config: Mode) -> None:
    if config.fail:
        raise PermanentError("feed answers 410 Gone")


@FLAKY.job(name="fetch_feed_job", description="Fetches a feed.")
def fetch_feed_job():
    fetch_feed()


@FLAKY.sensor(job=fetch_feed_job, minimum_interval_seconds=30, description="Polls the feed.")
def feed_sensor(context: dg.SensorEvaluationContext):
    return dg.RunRequest(run_key=None)


feed_hourly_schedule = FLAKY.schedule(
    name="feed_hourly_schedule",
    cron_schedule="0 * * * *",
    job=fetch_feed_job,
    description="Fetches the feed every hour.",
)


@pytest.fixture
def world(sqlite_home, alert_router, monkeypatch, json_receiver):
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    monkeypatch.setenv("DAGSTER_HOME", str(sqlite_home))
    defs = dg.Definitions(
        jobs=[fetch_feed_job],
        sensors=[feed_sensor, run_failure_alert_sensor],
        schedules=[feed_hourly_schedule],
        resources={"alerts": alert_router},
    )
    instances = []

    class World:
        def instance(self) -> dg.DagsterInstance:
            if not instances:
                instances.append(dg.DagsterInstance.from_config(str(sqlite_home)))
            return instances[-1]

        def restart(self) -> None:
            instances.pop().dispose()

        def run(self, fail: bool = True) -> None:
            defs.get_job_def("fetch_feed_job").execute_in_process(
                instance=self.instance(),
                run_config={"ops": {"fetch_feed": {"config": {"fail": fail}}}},
                raise_on_error=False,
            )

        def alert_tick(self) -> None:
            context = dg.build_sensor_context(
                instance=self.instance(),
                repository_def=defs.get_repository_def(),
                resources={"alerts": alert_router},
            )
            run_failure_alert_sensor(context)
            deliver_queued(self.instance(), alert_router)  # the outbox sensor's next tick

        def sensor_result(self):
            return feed_sensor(dg.build_sensor_context(instance=self.instance()))

        def schedule_result(self):
            context = dg.build_schedule_context(instance=self.instance())
            return feed_hourly_schedule.evaluate_tick(context)

    yield World()
    for instance in instances:
        instance.dispose()


def test_breaker_trips_stops_requests_survives_restart_and_resumes(world, json_receiver) -> None:
    assert isinstance(world.sensor_result(), dg.RunRequest)
    for _ in range(2):
        world.run()
    world.alert_tick()
    assert isinstance(world.sensor_result(), dg.RunRequest)  # 2 failures: still closed

    world.run()
    world.alert_tick()
    skipped = world.sensor_result()
    assert isinstance(skipped, dg.SkipReason)
    assert "stopped by its circuit breaker" in skipped.skip_message
    assert "3 consecutive failed runs" in skipped.skip_message
    assert "automation-pipelines resume flaky_feed" in skipped.skip_message
    schedule_data = world.schedule_result()
    assert schedule_data.run_requests == [] and "circuit breaker" in schedule_data.skip_message

    world.alert_tick()
    breaker_alerts = [t for t in json_receiver.titles() if t.startswith("[CIRCUIT BREAKER]")]
    assert breaker_alerts == [
        "[CIRCUIT BREAKER] flaky_feed stopped after 3 consecutive failed runs"
    ]
    body = next(p["message"] for p in json_receiver.received if "CIRCUIT" in p["title"])
    assert "Resume, once the cause is fixed: automation-pipelines resume flaky_feed" in body

    world.restart()
    assert isinstance(world.sensor_result(), dg.SkipReason)

    assert cli.main(["resume", "flaky_feed"]) == 0
    assert isinstance(world.sensor_result(), dg.RunRequest)
    world.run()
    world.alert_tick()
    assert isinstance(world.sensor_result(), dg.RunRequest)  # old failures no longer count
    assert breaker.consecutive_failures(world.instance(), FLAKY.job_names) == 4


def test_success_resets_the_count(world) -> None:
    world.run()
    world.run()
    world.run(fail=False)
    world.run()
    world.alert_tick()
    assert breaker.consecutive_failures(world.instance(), FLAKY.job_names) == 1
    assert isinstance(world.sensor_result(), dg.RunRequest)


def test_manual_pause_uses_the_same_switch(world, capsys) -> None:
    engine = breaker.engine_for(world.instance())
    breaker.pause(engine, "flaky_feed", "supplier maintenance until Monday", by="alice")
    skipped = world.sensor_result()
    assert isinstance(skipped, dg.SkipReason)
    assert "is paused since" in skipped.skip_message
    assert "supplier maintenance until Monday" in skipped.skip_message
    assert cli.main(["status"]) == 0
    assert "flaky_feed: automation flaky_feed is paused" in capsys.readouterr().out
    breaker.resume(engine, "flaky_feed")
    assert isinstance(world.sensor_result(), dg.RunRequest)


CRASHY = Automation(
    name="crashy_feed",
    owner="team:test",
    folder=RUNBOOK,
    expect=Expectation(success_within_hours=26),
    breaker_after_failures=5,
)


@CRASHY.job(name="crash_feed_job", description="Crashes on every run.")
def crash_feed_job():
    fetch_feed()


@pytest.fixture
def crash_loop(sqlite_instance, alert_router, monkeypatch, json_receiver):
    """A job whose every run fails; `attempt(retried=True)` is a failed run Dagster's run
    retries will repeat (tagged `dagster/will_retry=true`, as the daemon does)."""
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    defs = dg.Definitions(
        jobs=[crash_feed_job],
        sensors=[run_failure_alert_sensor],
        resources={"alerts": alert_router},
    )
    cursor: list[str | None] = [None]

    class Loop:
        instance = sqlite_instance

        def attempt(self, *, retried: bool, fail: bool = True) -> None:
            result = defs.get_job_def("crash_feed_job").execute_in_process(
                instance=sqlite_instance,
                run_config={"ops": {"fetch_feed": {"config": {"fail": fail}}}},
                raise_on_error=False,
            )
            if retried:
                sqlite_instance.add_run_tags(result.run_id, {"dagster/will_retry": "true"})

        def final_failure(self, retried_attempts: int) -> None:
            """One failure as the owner sees it: retried attempts, then the final one."""
            for _ in range(retried_attempts):
                self.attempt(retried=True)
            self.attempt(retried=False)

        def alert_tick(self) -> None:
            context = dg.build_sensor_context(
                instance=sqlite_instance,
                cursor=cursor[0],
                repository_def=defs.get_repository_def(),
                resources={"alerts": alert_router},
            )
            run_failure_alert_sensor(context)
            cursor[0] = context.cursor
            deliver_queued(sqlite_instance, alert_router)  # the outbox sensor's next tick

        def tripped(self) -> breaker.SwitchState | None:
            state = breaker.get_state(breaker.engine_for(sqlite_instance), "crashy_feed")
            return state if state and state.status == "tripped" else None

    return Loop()


@pytest.mark.parametrize("retried_attempts", [1, 2])
def test_a_crash_loop_with_run_retries_trips_after_five_final_failures(
    crash_loop, json_receiver, retried_attempts
) -> None:
    for _ in range(4):
        crash_loop.final_failure(retried_attempts)
        crash_loop.alert_tick()
    assert crash_loop.tripped() is None
    assert breaker.consecutive_failures(crash_loop.instance, CRASHY.job_names) == 4

    crash_loop.final_failure(retried_attempts)
    crash_loop.alert_tick()
    state = crash_loop.tripped()
    assert state is not None and state.reason == "5 consecutive failed runs"
    crash_loop.alert_tick()
    assert [t for t in json_receiver.titles() if t.startswith("[CIRCUIT BREAKER]")] == [
        "[CIRCUIT BREAKER] crashy_feed stopped after 5 consecutive failed runs"
    ]


def test_counting_reads_past_any_number_of_retried_attempts(crash_loop) -> None:
    for _ in range(3):
        crash_loop.final_failure(retried_attempts=2)
    count = breaker.consecutive_failures
    assert count(crash_loop.instance, CRASHY.job_names, page_size=2) == 3
    assert count(crash_loop.instance, CRASHY.job_names, limit=2, page_size=2) == 2

    crash_loop.attempt(retried=True)
    crash_loop.attempt(retried=False, fail=False)  # the retry healed it
    crash_loop.final_failure(retried_attempts=2)
    assert count(crash_loop.instance, CRASHY.job_names, page_size=2) == 1

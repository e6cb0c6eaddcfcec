"""Hook + run-failure sensor on a real SQLite instance with jobs executed for real: one alert
per incident, none for a transient error that healed, one for a permanent error (run once),
the last attempt of a retried run alerted, recovery notices, and a cursor that never skips a run
whose alert could not be recorded."""

from __future__ import annotations

from urllib.parse import urlsplit

import dagster as dg
import pytest
import sqlalchemy as sa

from automation_pipelines import settings
from automation_pipelines.monitoring.alerting import alert_outbox_sensor, run_failure_alert_sensor
from automation_pipelines.reliability import store
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines_tests.alert_peers import deliver_queued
from automation_pipelines_tests.monitoring import alert_fixtures as fx


@pytest.fixture
def world(sqlite_instance, alert_router, monkeypatch, json_receiver):
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    monkeypatch.setenv("FIXTURE_ACCESS_CODE", fx.SECRET)
    defs = fx.make_defs(alert_router)

    class World:
        def __init__(self) -> None:
            # Plain attributes: a resource as a class attribute acts as a descriptor.
            self.instance = sqlite_instance
            self.router = alert_router
            self.receiver = json_receiver
            self.outbox = alert_router.outbox()
            self.cursor: str | None = None

        def run(self, mode: str, counter: str = "", **kw) -> dg.ExecuteInProcessResult:
            return defs.get_job_def("upstream_job").execute_in_process(
                instance=sqlite_instance,
                run_config=fx.run_config(mode, counter),
                raise_on_error=False,
                **kw,
            )

        def tick(self, sensor=run_failure_alert_sensor, router=None):
            context = dg.build_sensor_context(
                instance=sqlite_instance,
                cursor=self.cursor,
                repository_def=defs.get_repository_def(),
                resources={"alerts": router or alert_router},
            )
            result = sensor(context)
            self.cursor = context.cursor
            return result

        def deliver(self) -> str:
            """What the daemon's alert_outbox_sensor does next: send what the ticks queued."""
            return deliver_queued(sqlite_instance, alert_router)

    return World()


def _events(result, event_type) -> list:
    return [e for e in result.all_events if e.event_type == event_type]


def test_op_failing_after_retries_gives_one_alert(world) -> None:
    result = world.run("down")
    assert not result.success
    assert len(_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 2
    [detail] = world.outbox.failure_details(result.run_id)
    assert (detail.op, detail.error_class) == ("call_upstream", "ConnectionError")
    assert detail.attempts == 3

    world.tick()
    world.tick()
    assert world.receiver.received == []  # the sensor queues; the outbox sensor sends
    world.deliver()
    [payload] = world.receiver.received
    assert payload["title"].startswith(
        "[FAILED] alert_fixture/upstream_job · call_upstream: ConnectionError: upstream"
    )
    body = payload["message"]
    assert f"Run: {result.run_id}" in body
    assert f"Link: http://dagster.example:3000/runs/{result.run_id}" in body
    assert "Attempts: 3 attempt(s) of the op; run attempt 1" in body
    assert "Runbook: " in body and "fixture_runbooks/complete/README.md" in body
    assert (
        'How to pause: automation-pipelines pause alert_fixture --reason "…" (holds '
        "upstream_hourly_schedule; `automation-pipelines resume alert_fixture` undoes it)"
    ) in body

    world.run("down")
    world.tick()
    world.deliver()
    assert len(world.receiver.received) == 1
    assert world.outbox.open_incidents()[0].failure_count == 2


def test_transient_error_that_heals_gives_success_and_no_alert(world, tmp_path) -> None:
    result = world.run("flaky", str(tmp_path / "calls"))
    assert result.success
    assert len(_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 2
    world.tick()
    assert world.receiver.received == []
    assert world.outbox.alerts() == []


def test_permanent_error_runs_once_alerts_once_and_hides_the_secret(world) -> None:
    result = world.run("permanent")
    assert not result.success
    assert len(_events(result, dg.DagsterEventType.STEP_START)) == 1
    assert _events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY) == []
    assert world.instance.get_run_by_id(result.run_id).tags["dagster/will_retry"] == "false"
    world.tick()
    world.tick()
    world.deliver()
    [payload] = world.receiver.received
    assert "Item at fault: batch-42" in payload["message"]
    assert "PermanentError: login with access code *** was refused" in payload["message"]
    assert fx.SECRET not in str(payload)
    logged = world.instance.get_records_for_run(result.run_id).records
    assert fx.SECRET not in str([r.event_log_entry for r in logged])
    with store.engine(world.router.database_url).connect() as conn:
        for table in store.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                assert fx.SECRET not in str(tuple(row)), table.name


def _runbook_line(body: str) -> str:
    [line] = [line for line in body.splitlines() if line.startswith("Runbook: ")]
    return line.removeprefix("Runbook: ")


def test_the_alert_links_the_runbook_at_the_configured_base_url(world, monkeypatch) -> None:
    """A repository path does not open from Slack or e-mail; a URL at RUNBOOK_BASE_URL does."""
    runbook = "automation_pipelines_tests/reliability/fixture_runbooks/complete/README.md"
    monkeypatch.delenv("RUNBOOK_BASE_URL", raising=False)
    world.run("down")
    world.tick()
    monkeypatch.setenv("RUNBOOK_BASE_URL", "https://code.example.org/ops/automations/-/blob/v2/")
    world.run("permanent")  # another incident, so a second alert
    world.tick()
    world.deliver()

    by_default, configured = (_runbook_line(p["message"]) for p in world.receiver.received)
    assert urlsplit(by_default).scheme == "https" and urlsplit(by_default).netloc
    assert by_default == f"{settings.DEFAULT_RUNBOOK_BASE_URL}/{runbook}"
    assert configured == f"https://code.example.org/ops/automations/-/blob/v2/{runbook}"


def test_a_retried_run_is_alerted_on_its_last_attempt(world) -> None:
    first = world.run("down")
    world.instance.add_run_tags(first.run_id, {"dagster/will_retry": "true"})
    second = world.run(
        "down", tags={"dagster/root_run_id": first.run_id, "dagster/parent_run_id": first.run_id}
    )
    world.tick()
    world.deliver()
    [payload] = world.receiver.received
    assert f"Run: {second.run_id}" in payload["message"]
    assert "run attempt 2" in payload["message"]


def test_success_after_failure_sends_a_recovery_notice(world) -> None:
    world.run("down")
    world.tick()
    world.run("ok")
    world.tick()
    world.run("ok")
    world.tick()
    world.deliver()
    assert [t.split(" ")[0] for t in world.receiver.titles()] == ["[FAILED]", "[RECOVERED]"]


def test_run_level_failure_without_any_op_failing(world) -> None:
    job = fx.make_defs(world.router).get_job_def("upstream_job")
    run = world.instance.create_run_for_job(
        job_def=job, run_config=fx.run_config("ok"), tags={**job.tags, "dagster/max_retries": "0"}
    )
    world.instance.report_run_failed(run, "Exceeded maximum runtime of 3 seconds.")
    world.tick()
    world.deliver()
    [payload] = world.receiver.received
    assert "MaxRuntimeExceeded" in payload["title"]
    assert "Failed op: - (the run failed outside any op)" in payload["message"]


def test_cursor_stays_when_the_outbox_cannot_record(world, tmp_path) -> None:
    world.run("down")
    missing = tmp_path / "missing" / "dir" / "outbox.db"
    broken = AlertRouter(**{**world.router.model_dump(), "database_url": f"sqlite:///{missing}"})
    with pytest.raises(Exception, match="unable to open database file"):
        world.tick(router=broken)
    assert world.cursor is None
    world.tick()
    world.deliver()
    assert len(world.receiver.received) == 1


def test_outbox_sensor_shows_a_broken_channel_and_delivers_after(world) -> None:
    world.run("down")
    world.receiver.status = 500
    world.tick()
    with pytest.raises(RuntimeError, match=r"alerts are waiting: .*500"):
        world.tick(sensor=alert_outbox_sensor)
    world.receiver.status = 200
    result = world.tick(sensor=alert_outbox_sensor)
    assert "delivered 1" in result.skip_message
    assert len(world.receiver.received) == 1

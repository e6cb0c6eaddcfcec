"""Jobs that fail in the ways alerting must handle, declared like a real automation."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

from automation_pipelines.monitoring.alerting import alert_outbox_sensor, run_failure_alert_sensor
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.automation import Automation
from automation_pipelines.reliability.errors import PermanentError, RetryPreset, reliable_op
from automation_pipelines.reliability.secrets import secret_env
from automation_pipelines_tests.alert_peers import deliver_queued

HERE = Path(__file__).parent
AUTOMATION = Automation(
    name="alert_fixture",
    owner="team:test",
    folder=HERE.parent / "reliability" / "fixture_runbooks" / "complete",
)
FAST = RetryPreset("fast", max_retries=2, base_delay=0.01, max_delay=0.02)


class WarehouseClient(dg.ConfigurableResource):
    """Stands in for a resource holding a credential read from the environment."""

    access_code: str


class Behaviour(dg.Config):
    mode: str = "ok"  # ok | down | flaky | permanent
    counter_file: str = ""


@reliable_op(FAST)
def call_upstream(config: Behaviour, warehouse: WarehouseClient) -> str:
    if config.mode == "down":
        raise ConnectionError("upstream 10.0.0.7 refused the connection")
    if config.mode == "flaky":
        counter = Path(config.counter_file)
        calls = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(calls + 1))
        if calls < 2:
            raise TimeoutError(f"upstream timed out (call {calls + 1})")
    if config.mode == "permanent":
        raise PermanentError(
            f"login with access code {warehouse.access_code} was refused", item="batch-42"
        )
    return "done"


@AUTOMATION.job(name="upstream_job", description="Calls an upstream service.")
def upstream_job():
    call_upstream()


upstream_hourly_schedule = dg.ScheduleDefinition(
    name="upstream_hourly_schedule", job=upstream_job, cron_schedule="0 * * * *"
)


def make_defs(router: AlertRouter) -> dg.Definitions:
    return dg.Definitions(
        jobs=[upstream_job],
        schedules=[upstream_hourly_schedule],
        sensors=[run_failure_alert_sensor, alert_outbox_sensor],
        resources={
            "alerts": router,
            "warehouse": WarehouseClient(access_code=secret_env("FIXTURE_ACCESS_CODE")),
        },
    )


def run_config(mode: str, counter_file: str = "") -> dict:
    return {"ops": {"call_upstream": {"config": {"mode": mode, "counter_file": counter_file}}}}


SECRET = "Zq8-not-for-alerts-91x"
os.environ.setdefault("FIXTURE_ACCESS_CODE", SECRET)


def watchdog_ticks(monkeypatch, instance, defs: dg.Definitions, router: AlertRouter):
    """(clock, tick): the watchdog sensor's tick for real, at the time `clock["now"]`, which the
    test moves; `tick(cursor)` returns (new cursor, skip message) like `tick_sensor`."""
    from automation_pipelines.monitoring import watchdog

    clock = {"now": time.time()}
    monkeypatch.setattr(watchdog.time, "time", lambda: clock["now"])

    def tick(cursor: str | None):
        return tick_sensor(watchdog.watchdog_sensor, instance, defs, router, cursor)

    return clock, tick


def tick_sensor(sensor, instance, defs: dg.Definitions, router: AlertRouter, cursor: str | None):
    """Evaluate one tick of a monitoring sensor for real, then one of alert_outbox_sensor, which
    delivers what it queued, as the daemon does; return (new cursor, the sensor's skip message)."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        repository_def=defs.get_repository_def(),
        resources={"alerts": router},
    )
    result = sensor(context)
    deliver_queued(instance, router)
    return context.cursor, result.skip_message

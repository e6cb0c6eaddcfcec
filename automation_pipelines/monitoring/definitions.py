"""The monitoring layer's contribution: the alert router, the sensors that watch every job, and
the digest (plus the optional dead-man's-switch ping)."""

import dagster as dg

from automation_pipelines.monitoring.alerting import alert_outbox_sensor, run_failure_alert_sensor
from automation_pipelines.monitoring.freshness import freshness_alert_sensor
from automation_pipelines.monitoring.jobs import monitoring_jobs
from automation_pipelines.monitoring.watchdog import watchdog_sensor
from automation_pipelines.reliability.alerts import AlertRouter

jobs, schedules = monitoring_jobs()

defs = dg.Definitions(
    jobs=jobs,
    schedules=schedules,
    sensors=[
        run_failure_alert_sensor,
        alert_outbox_sensor,
        watchdog_sensor,
        freshness_alert_sensor,
    ],
    resources={"alerts": AlertRouter.from_env()},
)

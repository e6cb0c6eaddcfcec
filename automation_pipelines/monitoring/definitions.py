"""The monitoring layer's contribution: the alert router, the sensors that watch every job, the
digest (plus the optional dead-man's-switch ping), and the daily credentials and drift checks."""

import dagster as dg

from automation_pipelines.monitoring import credentials, drift
from automation_pipelines.monitoring.alerting import alert_outbox_sensor, run_failure_alert_sensor
from automation_pipelines.monitoring.freshness import freshness_alert_sensor
from automation_pipelines.monitoring.jobs import monitoring_jobs
from automation_pipelines.monitoring.orphans import orphaned_run_sensor
from automation_pipelines.monitoring.watchdog import watchdog_sensor
from automation_pipelines.reliability.alerts import AlertRouter

jobs, schedules = monitoring_jobs()

defs = dg.Definitions(
    assets=[credentials.credentials_asset, drift.python_environment],
    asset_checks=[credentials.check_credentials, drift.check_python_environment],
    jobs=[*jobs, credentials.credentials_check_job, drift.python_environment_check_job],
    schedules=[
        *schedules,
        credentials.credentials_daily_schedule,
        drift.python_environment_daily_schedule,
    ],
    sensors=[
        run_failure_alert_sensor,
        alert_outbox_sensor,
        watchdog_sensor,
        freshness_alert_sensor,
        orphaned_run_sensor,
    ],
    resources={"alerts": AlertRouter.deployed(), **credentials.RESOURCES},
)

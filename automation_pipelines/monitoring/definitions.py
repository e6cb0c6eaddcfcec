"""The monitoring layer's contribution: the alert router and the sensors that watch every job."""

import dagster as dg

from automation_pipelines.monitoring.alerting import alert_outbox_sensor, run_failure_alert_sensor
from automation_pipelines.reliability.alerts import AlertRouter

defs = dg.Definitions(
    sensors=[run_failure_alert_sensor, alert_outbox_sensor],
    resources={"alerts": AlertRouter.from_env()},
)

"""What the webhook events automation contributes to the code location."""

from automation_pipelines.automations.webhook_events import AUTOMATION
from automation_pipelines.automations.webhook_events.jobs import load_webhook_events_job
from automation_pipelines.automations.webhook_events.ops import WAREHOUSE_ASSET_KEY
from automation_pipelines.automations.webhook_events.report import (
    webhook_daily_report,
    webhook_daily_report_job,
    webhook_report_daily_schedule,
)
from automation_pipelines.automations.webhook_events.resources import EventWarehouse
from automation_pipelines.automations.webhook_events.sensors import webhook_inbox_sensor

warehouse_asset = AUTOMATION.spec(
    WAREHOUSE_ASSET_KEY,
    description="Signed webhook events loaded from the inbox: wh_webhook_events (every event) "
    "and the typed tables wh_github_pushes, wh_github_pull_requests, wh_stripe_payments. Each "
    "load run records events loaded and dead-lettered.",
    kinds={"sql"},
)

defs = AUTOMATION.definitions(
    assets=[warehouse_asset, webhook_daily_report],
    jobs=[load_webhook_events_job, webhook_daily_report_job],
    sensors=[webhook_inbox_sensor],
    schedules=[webhook_report_daily_schedule],
    resources={"warehouse": EventWarehouse.from_env()},
)

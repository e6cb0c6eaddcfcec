"""When the disk space job runs."""

import dagster as dg

from automation_pipelines.automations.disk_space import AUTOMATION
from automation_pipelines.automations.disk_space.jobs import check_disk_space_job

disk_space_hourly_schedule = dg.ScheduleDefinition(
    name="disk_space_hourly_schedule",
    job=check_disk_space_job,
    cron_schedule="17 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=AUTOMATION.describe("Checks free disk space every hour at :17."),
)

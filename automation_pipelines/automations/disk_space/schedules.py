"""When the disk space job runs."""

from automation_pipelines.automations.disk_space import AUTOMATION
from automation_pipelines.automations.disk_space.jobs import check_disk_space_job

disk_space_hourly_schedule = AUTOMATION.schedule(
    name="disk_space_hourly_schedule",
    job=check_disk_space_job,
    cron_schedule="17 * * * *",
    description="Checks free disk space every hour at :17.",
)

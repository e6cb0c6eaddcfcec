"""What the disk space automation contributes to the code location."""

from automation_pipelines.automations.disk_space import AUTOMATION
from automation_pipelines.automations.disk_space.jobs import check_disk_space_job
from automation_pipelines.automations.disk_space.schedules import disk_space_hourly_schedule

defs = AUTOMATION.definitions(jobs=[check_disk_space_job], schedules=[disk_space_hourly_schedule])

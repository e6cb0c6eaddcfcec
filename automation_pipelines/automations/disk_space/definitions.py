"""What the disk space automation contributes to the code location."""

import dagster as dg

from automation_pipelines.automations.disk_space.jobs import check_disk_space_job
from automation_pipelines.automations.disk_space.schedules import disk_space_hourly_schedule

defs = dg.Definitions(jobs=[check_disk_space_job], schedules=[disk_space_hourly_schedule])

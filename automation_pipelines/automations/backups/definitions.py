"""What the backups automation contributes to the code location."""

from automation_pipelines.automations.backups import AUTOMATION
from automation_pipelines.automations.backups.assets import backup_snapshots, check_backup_health
from automation_pipelines.automations.backups.jobs import backup_snapshots_job, check_backups_job
from automation_pipelines.automations.backups.resources import BackupSettings
from automation_pipelines.automations.backups.schedules import (
    backup_health_daily_schedule,
    backup_nightly_schedule,
)

defs = AUTOMATION.definitions(
    assets=[backup_snapshots],
    asset_checks=[check_backup_health],
    jobs=[backup_snapshots_job, check_backups_job],
    schedules=[backup_nightly_schedule, backup_health_daily_schedule],
    resources={"backups": BackupSettings.from_config()},
)

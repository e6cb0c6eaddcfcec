"""When the backup and the health check run: cron and time zone from backups.yaml."""

from automation_pipelines.automations.backups import AUTOMATION
from automation_pipelines.automations.backups.jobs import backup_snapshots_job, check_backups_job
from automation_pipelines.automations.backups.resources import read_config

_config = read_config()

backup_nightly_schedule = AUTOMATION.schedule(
    name="backup_nightly_schedule",
    job=backup_snapshots_job,
    cron_schedule=_config["schedule"]["cron"],
    execution_timezone=_config["schedule"].get("timezone", "UTC"),
    description="Makes the nightly snapshot (cron and time zone from backups.yaml).",
)

backup_health_daily_schedule = AUTOMATION.schedule(
    name="backup_health_daily_schedule",
    job=check_backups_job,
    cron_schedule=_config["health_check"]["cron"],
    execution_timezone=_config["health_check"].get("timezone", "UTC"),
    description="Checks the backups every day, apart from the backup itself, so a backup "
    "that stopped running is noticed.",
)

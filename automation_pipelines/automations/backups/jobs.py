"""The two jobs: the backup and its health check, separate so one can run when the other fails."""

import dagster as dg

from automation_pipelines.automations.backups import AUTOMATION
from automation_pipelines.automations.backups.assets import BACKUP_JOB, BACKUP_KEY

backup_snapshots_job = AUTOMATION.asset_job(
    BACKUP_JOB,
    # Only the asset: by default an asset job also runs the asset's checks, and the health
    # check must stay its own job so that it runs when the backup does not.
    selection=dg.AssetSelection.assets(BACKUP_KEY).without_checks(),
    description="Makes a verified snapshot of every source in backups.yaml, then deletes old "
    "snapshots beyond the retention policy (never before the new one is verified).",
)

check_backups_job = AUTOMATION.asset_job(
    "check_backups_job",
    selection=dg.AssetSelection.checks_for_assets(BACKUP_KEY),
    description="Checks the backups: destination ready, newest snapshot recent, every snapshot "
    "intact (restic check), a sample restore matches, no stale lock; alerts the owner once "
    "per problem.",
)

"""The backup as an asset (so the UI shows when it is stale) and the health check as its asset
checks (so the UI shows what was checked), each run by its own job.

A backup that fails raises, so the run fails and the run-failure sensor alerts the owner; the
health check always completes, records each check, and reports what it found through the alert
outbox as conditions: one alert when a problem appears, a recovery notice when it is gone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import dagster as dg

from automation_pipelines.automations.backups import AUTOMATION, engine, health
from automation_pipelines.automations.backups.resources import BackupSettings
from automation_pipelines.automations.backups.sources import check_destination
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.conditions import report_findings
from automation_pipelines.reliability.errors import LOCAL_IO
from automation_pipelines.reliability.numbers import report_run

BACKUP_KEY = dg.AssetKey("backup_snapshots")
BACKUP_JOB = "backup_snapshots_job"
#: The freshness policy's window; backups.yaml's max_age_hours drives the health check.
FRESH_WITHIN = timedelta(hours=26)


@AUTOMATION.asset(
    key=BACKUP_KEY,
    errors=LOCAL_IO,
    kinds={"restic"},
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=FRESH_WITHIN),
    description="A verified restic snapshot of every source in backups.yaml (folders as they "
    "are, SQLite through its online backup API, PostgreSQL through pg_dump), tagged by source "
    "and run; then restic forget --prune thins them to the retention policy.",
)
def backup_snapshots(
    context: dg.AssetExecutionContext, backups: BackupSettings
) -> dg.MaterializeResult:
    sources = backups.resolved_sources(context.instance)
    local = backups.local_destination
    if local is not None:
        check_destination(local)
    repo = backups.open_repository()
    result = engine.back_up(repo, sources, destination=local, now=engine._utcnow())
    deleted = engine.apply_retention(
        repo, [s.name for s in sources], backups.keep_daily, backups.keep_weekly
    )
    if result.removed_locks:
        context.log.warning(f"removed locks of killed backups: {result.removed_locks}")
    megabytes_in, megabytes_added = result.bytes_in / 1e6, result.bytes_added / 1e6
    report_run(context, AUTOMATION.name, items=len(result.sources))
    return dg.MaterializeResult(
        metadata={
            "snapshot": dg.MetadataValue.text(result.run_id),
            "created_at_unix": dg.MetadataValue.float(result.created.timestamp()),
            "repository": dg.MetadataValue.text(repo.location),
            "snapshots": dg.MetadataValue.json(result.snapshots),
            "files": dg.MetadataValue.int(result.files),
            "source_mb": dg.MetadataValue.float(round(megabytes_in, 3)),
            "added_mb": dg.MetadataValue.float(round(megabytes_added, 3)),
            "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
            "mb_per_second": dg.MetadataValue.float(
                round(megabytes_in / result.seconds, 1) if result.seconds else 0.0
            ),
            "snapshots_deleted": dg.MetadataValue.text(", ".join(deleted) or "none"),
            "sources": dg.MetadataValue.json(result.sources),
        }
    )


def last_good(instance: dg.DagsterInstance) -> health.LastGood | None:
    """The newest snapshot a successful backup run recorded."""
    event = instance.get_latest_materialization_event(BACKUP_KEY)
    materialization = event.asset_materialization if event else None
    if materialization is None:
        return None
    metadata = materialization.metadata
    if "snapshot" not in metadata or "created_at_unix" not in metadata:
        return None
    return health.LastGood(metadata["snapshot"].value, float(metadata["created_at_unix"].value))


def last_failure(instance: dg.DagsterInstance) -> str | None:
    """Why the latest finished backup run failed, in its own words; None if it succeeded."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=BACKUP_JOB,
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
        ),
        limit=1,
    )
    if not records or records[0].dagster_run.status == dg.DagsterRunStatus.SUCCESS:
        return None
    run_id = records[0].dagster_run.run_id
    for event_type in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
        found = instance.get_records_for_run(run_id, of_type=event_type, limit=1).records
        if not found:
            continue
        event = found[0].event_log_entry.dagster_event
        data = getattr(event, "step_failure_data", None) if event else None
        user = getattr(data, "user_failure_data", None)
        if user is not None and "error" in (user.metadata or {}):
            return str(user.metadata["error"].value)
        if data is not None and data.error is not None:
            return data.error.message.strip()
        return found[0].event_log_entry.message or "no reason recorded"
    return "no reason recorded"


CHECK_SPECS = [
    dg.AssetCheckSpec(
        health.CHECK_DESTINATION,
        asset=BACKUP_KEY,
        description="The destination exists, is writable, and has room for the next snapshot.",
    ),
    dg.AssetCheckSpec(
        health.CHECK_RECENT,
        asset=BACKUP_KEY,
        description="The newest snapshot of every source is younger than max_age_hours.",
    ),
    dg.AssetCheckSpec(
        health.CHECK_INTACT,
        asset=BACKUP_KEY,
        description="restic check is clean, reading a different seventh of the packs each day.",
    ),
    dg.AssetCheckSpec(
        health.CHECK_RESTORE,
        asset=BACKUP_KEY,
        description="A sample of the newest snapshots' files restores and verifies byte for byte.",
    ),
    dg.AssetCheckSpec(
        health.CHECK_UNLOCKED,
        asset=BACKUP_KEY,
        description="No stale lock (a killed process, or not refreshed for hours) in the "
        "repository.",
    ),
]


def _now() -> float:
    return time.time()


@AUTOMATION.multi_asset_check(
    name="check_backup_health",
    specs=CHECK_SPECS,
    errors=LOCAL_IO,
    description="The daily backup health check; alerts the owner once per problem found.",
)
def check_backup_health(
    context: dg.AssetCheckExecutionContext, backups: BackupSettings, alerts: AlertRouter
) -> Iterator[dg.AssetCheckResult]:
    report = health.inspect(
        destination=backups.destination,
        local=backups.local_destination,
        open_repository=backups.open_repository,
        expected=backups.expected_sources(),
        folders=backups.folders(),
        limits=health.Limits(
            max_age_hours=backups.max_age_hours,
            min_free_percent=backups.min_free_percent,
            sample_files=backups.sample_files,
            check_days=backups.check_days,
            stale_lock_hours=backups.stale_lock_hours,
        ),
        owner=AUTOMATION.owner,
        automation=AUTOMATION.name,
        last_good=last_good(context.instance),
        last_failure=last_failure(context.instance),
        now=_now(),
    )
    outbox = alerts.outbox(context.instance)
    opened = report_findings(
        outbox,
        report.findings,
        health.KINDS,
        details=lambda _finding: [
            f"Runbook: {AUTOMATION.runbook_ref}",
            "Check again after a fix: launch check_backups_job in the UI",
        ],
    )
    context.log.info(
        f"{len(report.findings)} problem(s), {opened} new alert(s): "
        + json.dumps({name: c.sentence for name, c in report.checks.items()})
    )
    for name, outcome in report.checks.items():
        yield dg.AssetCheckResult(
            asset_key=BACKUP_KEY,
            check_name=name,
            passed=outcome.passed,
            description=outcome.sentence,
            metadata={"finding": outcome.sentence, **outcome.metadata},
        )

"""The backups automation as the project's code location loads it: two jobs that run apart
(the backup without its checks, the checks without the backup), schedules from backups.yaml, and
a freshness policy the freshness sensor watches and alerts on."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from automation_pipelines.definitions import defs
from automation_pipelines.monitoring import freshness


def test_backup_and_health_check_are_separate_jobs() -> None:
    backup = defs.resolve_job_def("backup_snapshots_job")
    check = defs.resolve_job_def("check_backups_job")

    assert [node.name for node in backup.graph.nodes] == ["backup_snapshots"]
    assert [node.name for node in check.graph.nodes] == ["check_backup_health"]
    assert backup.owners == check.owners == ["team:platform"]


def test_schedules_come_from_backups_yaml() -> None:
    nightly = defs.resolve_schedule_def("backup_nightly_schedule")
    daily = defs.resolve_schedule_def("backup_health_daily_schedule")

    assert (nightly.cron_schedule, nightly.execution_timezone) == ("30 2 * * *", "UTC")
    assert (daily.cron_schedule, daily.execution_timezone) == ("0 7 * * *", "UTC")
    assert nightly.job_name == "backup_snapshots_job" and daily.job_name == "check_backups_job"


def test_freshness_sensor_watches_the_backup(sqlite_instance) -> None:
    now = 1_790_000_000.0
    views = freshness.observe_freshness(sqlite_instance, defs.get_repository_def(), {}, now)
    [view] = [v for v in views if v.key == "backup_snapshots"]

    assert (view.owner, view.automation) == ("team:platform", "backups")
    assert view.policy.fail_window.to_timedelta() == timedelta(hours=26)
    assert freshness.evaluate_freshness([replace(view, last_materialized_at=now - 3600)], now) == []
    [stale] = freshness.evaluate_freshness(
        [replace(view, last_materialized_at=now - 27 * 3600)], now
    )
    assert stale.sentence.startswith("backup_snapshots last materialized 27 h ago")
    assert "its freshness policy allows 26 h" in stale.sentence

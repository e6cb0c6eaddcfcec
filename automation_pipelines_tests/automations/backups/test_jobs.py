"""The backup and health-check jobs executed for real on a SQLite instance, with alerts through
the real run-failure sensor and outbox to a loopback HTTP server.

The two-week story: the destination disappears; the backup run fails and alerts; the next health
check (the clock moved 49 h on) says the newest good snapshot is too old and why; the destination
comes back, the next backup succeeds, and recovery notices follow. Then each kind of damage,
and the checks the UI shows.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.automations.backups import assets
from automation_pipelines.automations.backups import snapshots as s
from automation_pipelines.automations.backups.jobs import backup_snapshots_job, check_backups_job
from automation_pipelines.automations.backups.resources import BackupSettings
from automation_pipelines.monitoring.alerting import run_failure_alert_sensor
from automation_pipelines_tests.automations.backups.trees import make_tree, tree_hashes


class World:
    """An instance, the backup definitions on `destination`, and a run-failure sensor."""

    def __init__(self, instance, router, receiver, tmp_path: Path) -> None:
        self.instance = instance
        self.receiver = receiver
        self.router = router
        self.source = make_tree(tmp_path / "documents", files=30)
        self.destination = tmp_path / "mnt" / "backup"
        self.destination.mkdir(parents=True)
        self.configure()
        self.cursor: str | None = None

    def configure(self, **changes) -> None:
        """(Re)build the definitions with these settings changed."""
        settings = BackupSettings(
            destination=str(self.destination),
            sources={"documents": {"folder": str(self.source)}},
            **{"max_age_hours": 26, "min_free_percent": 0.5, "sample_files": 5, **changes},
        )
        self.defs = dg.Definitions(
            assets=[assets.backup_snapshots],
            asset_checks=[assets.check_backup_health],
            jobs=[backup_snapshots_job, check_backups_job],
            sensors=[run_failure_alert_sensor],
            resources={"backups": settings, "alerts": self.router},
        )

    def backup(self) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(backup_snapshots_job.name)
        return job.execute_in_process(instance=self.instance, raise_on_error=False)

    def check(self) -> dict[str, dg.AssetCheckEvaluation]:
        job = self.defs.resolve_job_def(check_backups_job.name)
        result = job.execute_in_process(instance=self.instance)
        assert result.success  # problems are findings, never a failed run
        return {e.check_name: e for e in result.get_asset_check_evaluations()}

    def tick(self) -> None:
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            repository_def=self.defs.get_repository_def(),
            resources={"alerts": self.router},
        )
        run_failure_alert_sensor(context)
        self.cursor = context.cursor

    def titles(self) -> list[str]:
        return self.receiver.titles()


@pytest.fixture
def world(sqlite_instance, alert_router, json_receiver, monkeypatch, tmp_path) -> World:
    monkeypatch.setenv("TEST_DEFAULT_URLS", json_receiver.url)  # owner team:platform's route
    return World(sqlite_instance, alert_router, json_receiver, tmp_path)


def test_the_two_week_story(world: World, monkeypatch, tmp_path) -> None:
    first = world.backup()
    assert first.success
    [snapshot] = s.list_snapshots(world.destination)
    checks = world.check()
    assert all(e.passed for e in checks.values()), checks
    world.tick()
    assert world.titles() == []

    # The storage location changes: the backup fails at once (not retried) and alerts.
    moved = tmp_path / "mnt" / "backup-old-mount"
    world.destination.rename(moved)
    failed = world.backup()
    assert not failed.success
    world.tick()
    [alert] = world.receiver.received
    assert alert["title"].startswith("[FAILED] backups/backup_snapshots_job")
    assert f"destination {world.destination} does not exist" in alert["message"]

    # Two days later the health check names the age, the limit and the cause.
    later = snapshot.created.timestamp() + 49 * 3600
    monkeypatch.setattr(assets, "_now", lambda: later)
    checks = world.check()
    recent = checks["snapshot_recent"]
    assert not recent.passed
    expected = (
        "latest snapshot is 49 h old, expected ≤ 26 h; last backup run failed: destination "
        f"{world.destination} does not exist"
    )
    assert recent.description.startswith(expected), recent.description
    assert f"snapshot {snapshot.id} (as last recorded; the destination cannot be read)" in (
        recent.description
    )
    assert not checks["destination_ready"].passed
    destination_alert, too_old_alert = sorted(world.receiver.received[1:], key=lambda a: a["title"])
    gone = f"destination {world.destination} does not exist"
    assert destination_alert["title"].startswith("[BACKUP DESTINATION] backups: destination /")
    assert gone in destination_alert["message"]
    assert all(len(a["title"]) <= 120 for a in (destination_alert, too_old_alert))
    assert too_old_alert["title"].startswith(f"[BACKUP TOO OLD] backups: {expected[:60]}")
    assert recent.description in too_old_alert["message"]
    assert "Runbook: automation_pipelines/automations/backups/README.md" in too_old_alert["message"]

    # A second look finds the same problems: no new alerts.
    world.check()
    assert len(world.titles()) == 3

    # The destination comes back: the next backup succeeds and the failure incident recovers.
    moved.rename(world.destination)
    monkeypatch.setattr(s, "_utcnow", lambda: datetime.fromtimestamp(later + 600, tz=UTC))
    assert world.backup().success
    world.tick()
    assert world.titles()[3].startswith("[RECOVERED] backups")
    monkeypatch.setattr(assets, "_now", lambda: later + 3600)
    checks = world.check()
    assert [name for name, e in checks.items() if not e.passed] == []
    recoveries = [t for t in world.titles()[4:] if t.startswith("[RECOVERED]")]
    assert len(recoveries) == 2 and len(world.titles()) == 6


DAMAGE = {
    "one byte flipped": ("_flip_one_byte", "the archive is corrupt"),
    "truncated": ("_truncate", "the archive is truncated"),
    "manifest deleted": ("_delete_manifest", "manifest.json is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damage_fails_the_health_check_precisely(world: World, damage: str) -> None:
    from automation_pipelines_tests.automations.backups import test_snapshots

    assert world.backup().success
    [snapshot] = s.list_snapshots(world.destination)
    harm, words = DAMAGE[damage]
    getattr(test_snapshots, harm)(snapshot.path)

    checks = world.check()

    intact = checks["snapshots_intact"]
    assert not intact.passed
    assert intact.description.startswith(f"snapshot {snapshot.id}: ")
    assert words in intact.description
    assert not checks["test_restore"].passed
    assert checks["snapshot_recent"].passed and checks["destination_ready"].passed
    [title, *_] = world.titles()
    assert title.startswith(f"[BACKUP DAMAGED] backups: snapshot {snapshot.id}: ")


def test_unwritable_destination_is_reported(world: World) -> None:
    if os.geteuid() == 0:
        # root writes through permission bits: use a destination that is a file instead
        assert world.backup().success
        world.destination.rename(world.destination.with_name("kept"))
        world.destination.write_text("not a folder")
        expected = f"destination {world.destination} is not a folder"
    else:
        assert world.backup().success
        world.destination.chmod(0o500)
        expected = f"destination {world.destination} is not writable"

    checks = world.check()

    assert not checks["destination_ready"].passed
    assert checks["destination_ready"].description.startswith(expected)


def test_almost_full_destination_is_reported(world: World, monkeypatch) -> None:
    assert world.backup().success
    total, free = 100 * 10**9, 3 * 10**9
    monkeypatch.setattr(
        "automation_pipelines.automations.backups.health.shutil.disk_usage",
        lambda _path: shutil._ntuple_diskusage(total, total - free, free),
    )
    world.configure(min_free_percent=10.0)

    checks = world.check()

    assert checks["destination_ready"].description == (
        f"destination {world.destination} is almost full: 3.00 GB free (3.0%), below 10%"
    )


def test_backup_restores_byte_for_byte_through_the_job(world: World, tmp_path) -> None:
    assert world.backup().success
    [snapshot] = s.list_snapshots(world.destination)

    s.restore(snapshot.path, tmp_path / "restored")

    assert tree_hashes(tmp_path / "restored" / "documents") == tree_hashes(world.source)
    event = world.instance.get_latest_materialization_event(assets.BACKUP_KEY)
    metadata = event.asset_materialization.metadata
    assert metadata["snapshot"].value == snapshot.id
    assert metadata["files"].value == 31


def test_retention_runs_after_each_verified_backup(world: World, monkeypatch) -> None:
    world.configure(keep_daily=1, keep_weekly=0)
    base = datetime.now(tz=UTC).timestamp()
    made = []
    for day in (2, 1, 0):
        when = datetime.fromtimestamp(base - day * 86400, tz=UTC)
        monkeypatch.setattr(s, "_utcnow", lambda when=when: when)
        assert world.backup().success
        made.append(s.list_snapshots(world.destination)[0].id)

    assert [x.id for x in s.list_snapshots(world.destination)] == [made[-1]]

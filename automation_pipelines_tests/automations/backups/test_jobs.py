"""The backup and health-check jobs executed for real on a SQLite instance and the real restic
binary, with alerts through the real run-failure sensor and outbox to a loopback HTTP server.

The two-week story: the destination disappears; the backup run fails and alerts; the next health
check (the clock moved 49 h on) says the newest good snapshot is too old and why; the destination
comes back, the next backup succeeds, and recovery notices follow. Then each kind of damage to
the repository, a SIGKILL in the middle of a backup, and the password that appears nowhere.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.automations.backups import assets, engine, health
from automation_pipelines.automations.backups.jobs import backup_snapshots_job, check_backups_job
from automation_pipelines.automations.backups.resources import BackupSettings
from automation_pipelines.monitoring.alerting import run_failure_alert_sensor
from automation_pipelines.reliability.numbers import automation_key
from automation_pipelines.settings import runbook_url
from automation_pipelines_tests.alert_peers import deliver_queued
from automation_pipelines_tests.automations.backups.conftest import (
    PASSWORD,
    RunsJobs,
    delete_index,
    flip_byte_in_biggest_pack,
    kill_backup_midway,
)
from automation_pipelines_tests.automations.backups.trees import make_tree, tree_hashes


class World(RunsJobs):
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
        self.settings = settings = BackupSettings(
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

    def tick(self) -> None:
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            repository_def=self.defs.get_repository_def(),
            resources={"alerts": self.router},
        )
        run_failure_alert_sensor(context)
        self.cursor = context.cursor
        deliver_queued(self.instance, self.router)  # the outbox sensor's next tick

    def check(self) -> dict[str, dg.AssetCheckEvaluation]:
        """The health check's run, then the outbox sensor's tick that sends what it queued."""
        checks = super().check()
        deliver_queued(self.instance, self.router)
        return checks

    def titles(self) -> list[str]:
        return self.receiver.titles()

    @property
    def repository(self) -> Path:
        return self.destination / "restic"

    def runs(self) -> list[engine.Run]:
        return engine.list_runs(self.settings.open_repository())


@pytest.fixture
def world(sqlite_instance, alert_router, json_receiver, restic_env, monkeypatch, tmp_path) -> World:
    monkeypatch.setenv("TEST_DEFAULT_URLS", json_receiver.url)  # owner team:platform's route
    return World(sqlite_instance, alert_router, json_receiver, tmp_path)


def test_the_two_week_story(world: World, monkeypatch, tmp_path) -> None:
    first = world.backup()
    assert first.success
    [snapshot] = world.runs()
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
    later = snapshot.time.timestamp() + 49 * 3600
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
    runbook = runbook_url("automation_pipelines/automations/backups/README.md")
    assert f"Runbook: {runbook}" in too_old_alert["message"] and runbook.startswith("http")

    # A second look finds the same problems: no new alerts.
    world.check()
    assert len(world.titles()) == 3

    # The destination comes back: the next backup succeeds and the failure incident recovers.
    moved.rename(world.destination)
    monkeypatch.setattr(engine, "_utcnow", lambda: datetime.fromtimestamp(later + 600, tz=UTC))
    assert world.backup().success
    world.tick()
    assert world.titles()[3].startswith("[RECOVERED] backups")
    monkeypatch.setattr(assets, "_now", lambda: later + 3600)
    checks = world.check()
    assert [name for name, e in checks.items() if not e.passed] == []
    recoveries = [t for t in world.titles()[4:] if t.startswith("[RECOVERED]")]
    assert len(recoveries) == 2 and len(world.titles()) == 6


def _on_the_day_that_reads(monkeypatch, pack: str, after: datetime) -> None:
    """Move the health check's clock to the first day from `after` on whose
    `--read-data-subset` slice holds `pack`: restic reads, on slice n of 7, the packs whose id
    starts with a byte that is n-1 modulo 7."""
    wanted = int(pack[:2], 16) % 7
    day = after
    while health.data_subset(day.timestamp(), 7) != f"{wanted + 1}/7":
        day += timedelta(days=1)
    monkeypatch.setattr(assets, "_now", lambda: day.timestamp() + 60)


def test_a_flipped_byte_in_a_pack_fails_the_check_precisely(world: World, monkeypatch) -> None:
    world.configure(sample_files=100, max_age_hours=8 * 24)
    assert world.backup().success
    [run] = world.runs()
    flipped = flip_byte_in_biggest_pack(world.repository)
    _on_the_day_that_reads(monkeypatch, flipped, run.time)

    checks = world.check()

    intact = checks["snapshots_intact"]
    assert not intact.passed
    assert intact.description.startswith(f"repository {world.repository}: restic check (data ")
    assert f"pack {flipped[:12]}… does not match its ID: its content changed on the disk" in (
        intact.description
    )
    restore = checks["test_restore"]
    assert not restore.passed
    assert restore.description.startswith("test restore of 31 file(s) of source 'documents'")
    assert ": ciphertext verification failed" in restore.description
    assert checks["snapshot_recent"].passed and checks["destination_ready"].passed
    assert "[BACKUP DAMAGED] backups: repository /" in "".join(world.titles())
    assert "[BACKUP RESTORE FAILED] backups: test restore of 31 file(s)" in "".join(world.titles())


def test_on_another_day_the_check_reads_another_slice(world: World, monkeypatch) -> None:
    world.configure(max_age_hours=8 * 24, sample_files=0)
    assert world.backup().success
    [run] = world.runs()
    flipped = flip_byte_in_biggest_pack(world.repository)
    _on_the_day_that_reads(monkeypatch, flipped, run.time)
    reading_day = assets._now()
    monkeypatch.setattr(assets, "_now", lambda: reading_day + 86400)

    checks = world.check()

    assert checks["snapshots_intact"].passed  # the damaged pack is not in this day's slice
    monkeypatch.setattr(assets, "_now", lambda: reading_day + 7 * 86400)
    assert not world.check()["snapshots_intact"].passed  # a week on, the slice comes round


def test_a_deleted_index_fails_the_check_precisely(world: World) -> None:
    assert world.backup().success
    delete_index(world.repository)

    checks = world.check()

    intact = checks["snapshots_intact"]
    assert not intact.passed
    assert "not referenced in any index" in intact.description
    assert "not found in repository" in intact.description
    assert not checks["test_restore"].passed
    assert checks["snapshot_recent"].passed


def test_a_missing_repository_is_named(world: World) -> None:
    assert world.backup().success
    [run] = world.runs()
    shutil.rmtree(world.repository)

    checks = world.check()

    assert checks["snapshots_intact"].description == (
        f"repository {world.repository} does not exist, although backup run {run.id} was "
        "recorded there"
    )
    assert checks["snapshot_recent"].description.startswith(
        f"no snapshot can be found at {world.destination} although run {run.id} made one"
    )
    assert checks["destination_ready"].passed
    assert any(t.startswith("[BACKUP REPOSITORY] backups: repository /") for t in world.titles())


def test_a_backup_killed_midway_is_reported_then_the_next_run_succeeds(
    world: World, tmp_path
) -> None:
    big = make_tree(tmp_path / "big", files=40, size=3_000_000)
    world.source = big
    world.configure()
    kill_backup_midway(world.repository, big, PASSWORD)

    checks = world.check()
    unlocked = checks["repository_unlocked"]
    assert not unlocked.passed
    assert unlocked.description.startswith(f"repository {world.repository} holds a lock ")
    assert "its process no longer runs; it is not removed automatically" in unlocked.description

    done = world.backup()
    assert done.success
    repo = world.settings.open_repository()
    assert repo.check() == []
    assert repo.locks() == []
    event = world.instance.get_latest_materialization_event(assets.BACKUP_KEY)
    assert event.asset_materialization.metadata["files"].value == 41
    numbers = world.instance.get_latest_materialization_event(automation_key("backups"))
    assert numbers.run_id == event.run_id == done.run_id
    sources = event.asset_materialization.metadata["sources"].value
    assert numbers.asset_materialization.metadata["items"].value == len(sources) > 0
    checks = world.check()
    assert [name for name, e in checks.items() if not e.passed] == []
    assert any(t.startswith("[RECOVERED]") for t in world.titles())


def test_the_password_appears_nowhere(world: World, sqlite_home: Path, tmp_path) -> None:
    assert world.backup().success
    assert world.check()["snapshots_intact"].passed
    delete_index(world.repository)
    world.check()
    world.destination.rename(tmp_path / "elsewhere")
    assert not world.backup().success
    world.tick()
    world.check()
    assert len(world.titles()) >= 3

    secret = PASSWORD.encode()
    places = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sqlite_home in {p.parent for p in places} or any(
        sqlite_home in p.parents for p in places
    )
    assert any(p.name == "outbox.db" for p in places)
    assert [p for p in places if secret in p.read_bytes()] == []
    assert not [a for a in world.receiver.received if PASSWORD in repr(a)]
    for record in world.instance.get_run_records():
        assert PASSWORD not in repr(record.dagster_run.run_config)


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
    [snapshot] = world.runs()

    engine.restore(world.settings.open_repository(), snapshot, tmp_path / "restored")

    assert tree_hashes(tmp_path / "restored" / "documents") == tree_hashes(world.source)
    event = world.instance.get_latest_materialization_event(assets.BACKUP_KEY)
    metadata = event.asset_materialization.metadata
    assert metadata["snapshot"].value == snapshot.id
    assert metadata["files"].value == 31
    assert metadata["repository"].value == str(world.repository)
    assert set(metadata["snapshots"].value) == {"documents"}


def test_retention_runs_after_each_verified_backup(world: World, monkeypatch) -> None:
    world.configure(keep_daily=1, keep_weekly=0)
    base = datetime.now(tz=UTC).timestamp()
    made = []
    for day in (2, 1, 0):
        when = datetime.fromtimestamp(base - day * 86400, tz=UTC)
        monkeypatch.setattr(engine, "_utcnow", lambda when=when: when)
        assert world.backup().success
        made.append(world.runs()[0].id)

    assert [x.id for x in world.runs()] == [made[-1]]
    assert world.settings.open_repository().check() == []


def test_the_daily_slice_turns_so_every_pack_is_read_in_a_week() -> None:
    day = datetime(2026, 11, 23, 7, tzinfo=UTC).timestamp()  # a Monday
    slices = [health.data_subset(day + n * 86400, 7) for n in range(7)]

    assert sorted(slices) == [f"{n}/7" for n in range(1, 8)]
    assert health.data_subset(day + 7 * 86400, 7) == slices[0]

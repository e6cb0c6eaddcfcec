"""Shared by the backups tests: the real restic binary (skipped locally without it, a failure
where CI forbids skipping), its password in the environment, and a cache folder in tmp."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.automations.backups.jobs import backup_snapshots_job, check_backups_job
from automation_pipelines_tests.conftest import require_program

PASSWORD = "Correct-Horse-Restic-7781"


@pytest.fixture
def restic_binary() -> Path:
    return require_program(Path("/usr/bin/restic"), "restic")


@pytest.fixture
def restic_env(restic_binary, monkeypatch, tmp_path) -> str:
    """The repository password in BACKUP_RESTIC_PASSWORD and restic's cache under tmp."""
    monkeypatch.setenv("BACKUP_RESTIC_PASSWORD", PASSWORD)
    monkeypatch.delenv("BACKUP_RESTIC_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return PASSWORD


def flip_byte_in_biggest_pack(repository: Path) -> str:
    """Flip one bit in the middle of the largest pack file; return the pack's id."""
    pack = max((repository / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    return pack.name


def delete_index(repository: Path) -> str:
    for index in (repository / "index").iterdir():
        index.unlink()
    return "index"


KILL_SCRIPT = """
import sys
from pathlib import Path
from automation_pipelines.automations.backups import engine
from automation_pipelines.automations.backups.restic import Repository
from automation_pipelines.automations.backups.sources import FolderSource
repo = Repository(sys.argv[1], password=sys.argv[3])
engine.back_up(repo, [FolderSource("big", Path(sys.argv[2]))], destination=None)
"""


def kill_backup_midway(repository: Path, tree: Path, password: str) -> int:
    """Start a backup in a child process and SIGKILL its whole process group (restic too) once
    restic has written its lock and the first packs; return the killed group's id."""
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(repository), str(tree), password],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            locks = list((repository / "locks").glob("*")) if repository.is_dir() else []
            packs = list((repository / "data").glob("*/*")) if locks else []
            if locks and len(packs) >= 2:
                break
            assert process.poll() is None, "the backup finished before it could be killed"
            time.sleep(0.005)
        else:
            raise AssertionError("the backup never started writing")
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    return process.pid


@pytest.fixture
def busy_sqlite(tmp_path: Path) -> Iterator[Path]:
    """A SQLite database (WAL) with 500 committed rows and a writer holding an open
    transaction with one more, for as long as the test runs."""
    database = tmp_path / "app.db"
    writer = sqlite3.connect(database)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT)")
    writer.executemany("INSERT INTO events (body) VALUES (?)", [(f"e{i}",) for i in range(500)])
    writer.commit()
    writer.execute("INSERT INTO events (body) VALUES ('uncommitted')")  # open transaction
    try:
        yield database
    finally:
        writer.rollback()
        writer.close()


class RunsJobs:
    """The backup and health-check jobs of `self.defs`, run in process on `self.instance`."""

    defs: dg.Definitions
    instance: dg.DagsterInstance

    def backup(self) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(backup_snapshots_job.name)
        return job.execute_in_process(instance=self.instance, raise_on_error=False)

    def check(self) -> dict[str, dg.AssetCheckEvaluation]:
        job = self.defs.resolve_job_def(check_backups_job.name)
        result = job.execute_in_process(instance=self.instance)
        assert result.success  # problems are findings, never a failed run
        return {e.check_name: e for e in result.get_asset_check_evaluations()}

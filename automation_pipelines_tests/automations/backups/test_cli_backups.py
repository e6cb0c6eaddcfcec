"""`automation-pipelines backups list|restore|rotate-key` through the installed console script on
the real restic binary: a whole run, one source and one file come back byte for byte; archives
of the format before restic stay listable and restorable; a damaged archive is refused; the key
rotation leaves the repository opening with the new password only."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from automation_pipelines.automations.backups import engine
from automation_pipelines.automations.backups import snapshots as archives
from automation_pipelines.automations.backups.restic import Repository, WrongPassword
from automation_pipelines.automations.backups.sources import FolderSource, SqliteSource
from automation_pipelines_tests.automations.backups.test_snapshots import _flip_one_byte
from automation_pipelines_tests.automations.backups.trees import make_tree, tree_hashes
from automation_pipelines_tests.e2e.harness import venv_script


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [venv_script("automation-pipelines"), "backups", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def backed_up(tmp_path: Path, restic_env: str) -> tuple[Path, Path, Path, engine.BackupResult]:
    """A destination holding one run of two sources: a folder and a SQLite database."""
    tree = make_tree(tmp_path / "docs", files=25)
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    destination = tmp_path / "backups"
    destination.mkdir()
    repo = Repository(str(destination / "restic"), password=restic_env)
    sources = [FolderSource("docs", tree), SqliteSource("app", database)]
    made = engine.back_up(repo, sources, destination=destination)
    return destination, tree, database, made


def test_list_and_restore_a_whole_run_byte_for_byte(backed_up, tmp_path: Path) -> None:
    destination, tree, _database, made = backed_up

    listed = cli("list", "--destination", str(destination))
    restored = cli("restore", "--destination", str(destination), "--to", str(tmp_path / "r"))

    assert listed.returncode == 0, listed.stderr
    assert f"{made.run_id}  restic  2 source(s): app, docs" in listed.stdout
    assert restored.returncode == 0, restored.stderr
    folders = sum(p.is_dir() for p in tree.rglob("*"))
    assert (
        f"Restored 27 file(s), {made.bytes_in:,} bytes, {folders} folder(s), from {made.run_id}"
        in restored.stdout
    )
    assert tree_hashes(tmp_path / "r" / "docs") == tree_hashes(tree)
    copy = sqlite3.connect(tmp_path / "r" / "app" / "app.db")
    assert copy.execute("SELECT count(*) FROM t").fetchone() == (100,)
    assert [p.name for p in (tmp_path / "r").iterdir()] != [] and not [
        p for p in (tmp_path / "r").iterdir() if p.name.startswith(".restoring")
    ]


def test_restore_one_source_and_one_file(backed_up, tmp_path: Path) -> None:
    destination, tree, _database, made = backed_up
    files = cli("list", "--destination", str(destination), "--files", made.run_id)
    assert "docs/a/b/file-8.txt" in files.stdout

    source = cli(
        "restore",
        made.run_id,
        "--destination",
        str(destination),
        "--to",
        str(tmp_path / "s"),
        "--source",
        "docs",
    )
    one = cli(
        "restore",
        made.run_id,
        "--destination",
        str(destination),
        "--to",
        str(tmp_path / "one"),
        "--file",
        "docs/a/b/file-8.txt",
    )
    again = cli(
        "restore",
        made.run_id,
        "--destination",
        str(destination),
        "--to",
        str(tmp_path / "one"),
        "--file",
        "docs/a/b/file-8.txt",
    )

    assert source.returncode == 0, source.stderr
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["docs"]
    assert tree_hashes(tmp_path / "s" / "docs") == tree_hashes(tree)
    assert one.returncode == 0, one.stderr
    back = tmp_path / "one" / "docs" / "a" / "b" / "file-8.txt"
    assert back.read_bytes() == (tree / "a" / "b" / "file-8.txt").read_bytes()
    assert [p for p in (tmp_path / "one").rglob("*") if p.is_file()] == [back]
    assert again.returncode == 1
    assert f"{back} exists; restore elsewhere or pass --overwrite" in again.stderr


def test_archives_of_the_old_format_stay_restorable(backed_up, tmp_path: Path) -> None:
    destination, tree, _database, _made = backed_up
    old = archives.create_snapshot(destination, [FolderSource("docs", tree)])

    listed = cli("list", "--destination", str(destination))
    restored = cli(
        "restore", old.snapshot.id, "--destination", str(destination), "--to", str(tmp_path / "o")
    )

    assert f"{old.snapshot.id}  archive" in listed.stdout and "verified" in listed.stdout
    assert "1 restic run(s) and 1 archive(s)" in listed.stdout
    assert restored.returncode == 0, restored.stderr
    assert "every SHA-256 matched the manifest" in restored.stdout
    assert tree_hashes(tmp_path / "o" / "docs") == tree_hashes(tree)


def test_a_damaged_archive_is_refused_with_the_reason(backed_up, tmp_path: Path) -> None:
    destination, tree, _database, _made = backed_up
    old = archives.create_snapshot(destination, [FolderSource("docs", tree)])
    _flip_one_byte(old.snapshot.path)

    done = cli(
        "restore", old.snapshot.id, "--destination", str(destination), "--to", str(tmp_path / "r")
    )

    assert done.returncode == 1
    assert f"✗ snapshot {old.snapshot.id}: archive.tar.zst does not match" in done.stderr
    assert not (tmp_path / "r").exists()


def test_rotate_key_replaces_the_password(backed_up, tmp_path: Path, restic_env: str) -> None:
    destination, tree, _database, made = backed_up
    new = tmp_path / "new-password"
    new.write_text("Another-Long-Passphrase-0420\n")
    new.chmod(0o600)

    done = cli("rotate-key", "--destination", str(destination), "--new-password-file", str(new))

    assert done.returncode == 0, done.stderr
    assert "now opens with the password in" in done.stdout
    assert restic_env not in done.stdout + done.stderr
    old_repo = Repository(str(destination / "restic"), password=restic_env)
    with pytest.raises(WrongPassword, match="does not open with the configured password"):
        old_repo.snapshots()
    rotated = cli(
        "restore",
        "--destination",
        str(destination),
        "--to",
        str(tmp_path / "r"),
        env={"BACKUP_RESTIC_PASSWORD": "", "BACKUP_RESTIC_PASSWORD_FILE": str(new)},
    )
    assert rotated.returncode == 0, rotated.stderr
    assert f"from {made.run_id}" in rotated.stdout
    assert tree_hashes(tmp_path / "r" / "docs") == tree_hashes(tree)


def test_missing_destination_exits_1(tmp_path: Path, restic_env: str) -> None:
    done = cli("list", "--destination", str(tmp_path / "gone"))

    assert done.returncode == 1
    assert f"destination {tmp_path / 'gone'} does not exist" in done.stderr


def test_a_wrong_password_is_named_by_list_and_restore(backed_up, tmp_path: Path) -> None:
    """This host knows the repository's snapshots (the backup just read them), yet neither
    command gets past restic without the password that opens it."""
    destination, _tree, _database, _made = backed_up
    wrong = {"BACKUP_RESTIC_PASSWORD": "Not-The-Password-1234", "BACKUP_RESTIC_PASSWORD_FILE": ""}

    listed = cli("list", "--destination", str(destination), env=wrong)
    restored = cli(
        "restore", "--destination", str(destination), "--to", str(tmp_path / "r"), env=wrong
    )

    for done in (listed, restored):
        assert done.returncode == 1, done.stdout
        assert "does not open with the configured password" in done.stderr
    assert not (tmp_path / "r").exists()

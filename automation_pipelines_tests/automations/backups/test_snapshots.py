"""Archives of the format used before restic, on real files: they stay restorable byte for byte
(folders, SQLite, PostgreSQL via pg_dump), each kind of damage is named precisely, and a crash
while one was written leaves nothing that looks finished."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automation_pipelines.automations.backups import snapshots as s
from automation_pipelines.automations.backups.sources import DestinationMissing
from automation_pipelines_tests.automations.backups.trees import make_tree, tree_hashes


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "source", files=60)


@pytest.fixture
def destination(tmp_path: Path) -> Path:
    path = tmp_path / "backups"
    path.mkdir()
    return path


def test_restore_reproduces_the_tree_byte_for_byte(tree, destination, tmp_path) -> None:
    result = s.create_snapshot(destination, [s.FolderSource("photos", tree)])

    restored = s.restore(result.snapshot.path, tmp_path / "restored")

    assert tree_hashes(tmp_path / "restored" / "photos") == tree_hashes(tree)
    assert len(restored.files) == result.files == 61  # with empty.txt
    original = tree / "a" / "b" / "file-8.txt"
    again = tmp_path / "restored" / "photos" / "a" / "b" / "file-8.txt"
    assert again.stat().st_mode == original.stat().st_mode
    assert int(again.stat().st_mtime) == int(original.stat().st_mtime)


def test_manifest_lists_every_file_with_size_and_sha256(tree, destination) -> None:
    result = s.create_snapshot(destination, [s.FolderSource("photos", tree)])

    manifest = s.read_manifest(result.snapshot.path)

    expected = {
        f"photos/{p.relative_to(tree).as_posix()}": (len(p.read_bytes()), digest)
        for p in tree.rglob("*")
        if p.is_file() and (digest := hashlib.sha256(p.read_bytes()).hexdigest())
    }
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == expected
    archive = result.snapshot.archive.read_bytes()
    assert manifest["archive"]["bytes"] == len(archive)
    assert manifest["archive"]["sha256"] == hashlib.sha256(archive).hexdigest()
    assert (result.snapshot.path / s.VERIFIED).is_file()
    assert [p.name for p in destination.iterdir()] == [result.snapshot.id]


def test_sqlite_is_copied_online_while_a_writer_holds_it(
    tmp_path, destination, busy_sqlite
) -> None:
    database = busy_sqlite
    result = s.create_snapshot(destination, [s.SqliteSource("app", database)])

    s.restore(result.snapshot.path, tmp_path / "restored")
    copy = sqlite3.connect(tmp_path / "restored" / "app" / "app.db")
    assert copy.execute("SELECT count(*), max(body) FROM events").fetchone() == (500, "e99")
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.postgres
def test_postgres_is_dumped_with_pg_dump(postgres_database, destination, tmp_path) -> None:
    import psycopg2

    with psycopg2.connect(**postgres_database) as conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE invoices (id serial PRIMARY KEY, total numeric)")
        cursor.execute("INSERT INTO invoices (total) SELECT g FROM generate_series(1, 250) g")
    db = postgres_database
    dsn = f"host={db['host']} port={db['port']} user={db['user']} dbname={db['dbname']}"

    result = s.create_snapshot(destination, [s.PostgresSource("billing", dsn)])

    s.restore(result.snapshot.path, tmp_path / "restored")
    dump = tmp_path / "restored" / "billing" / "billing.dump"
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "TABLE DATA public invoices" in listing.stdout


def test_failing_pg_dump_fails_the_backup_with_its_message(destination) -> None:
    source = s.PostgresSource("billing", "host=127.0.0.1 port=1 dbname=none connect_timeout=2")

    with pytest.raises(s.BackupError, match=r"source 'billing': pg_dump failed: .*127\.0\.0\.1"):
        s.create_snapshot(destination, [source])

    assert list(destination.iterdir()) == []


def test_missing_destination_says_so(tree, tmp_path) -> None:
    gone = tmp_path / "mnt" / "backup"

    with pytest.raises(DestinationMissing, match=f"destination {gone} does not exist"):
        s.create_snapshot(gone, [s.FolderSource("photos", tree)])


def test_missing_source_folder_fails_unless_marked_skip(tmp_path, tree, destination) -> None:
    absent = tmp_path / "not-mounted"
    with pytest.raises(s.BackupError, match=f"source 'nas': folder {absent} does not exist"):
        s.create_snapshot(destination, [s.FolderSource("nas", absent)])

    result = s.create_snapshot(
        destination, [s.FolderSource("nas", absent, missing="skip"), s.FolderSource("p", tree)]
    )
    assert result.sources[0]["status"] == f"skipped: {absent} does not exist"
    assert result.files == 61


def test_file_that_shrinks_while_read_is_padded_and_flagged(tree, destination, monkeypatch):
    """The stat says more bytes than the file has: the archive stays well formed."""
    real_fstat = os.fstat
    victim = (tree / "a" / "b" / "file-8.txt").stat().st_ino

    def fstat(fd):
        result = real_fstat(fd)
        if result.st_ino != victim:
            return result
        fields = list(result)
        fields[6] += 1000  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(s.os, "fstat", fstat)
    result = s.create_snapshot(destination, [s.FolderSource("photos", tree)])

    [entry] = [
        f for f in s.read_manifest(result.snapshot.path)["files"] if f.get("shrank_while_reading")
    ]
    assert entry["path"] == "photos/a/b/file-8.txt"
    assert s.verify(result.snapshot.path) == []


def _flip_one_byte(snapshot: Path) -> None:
    archive = snapshot / s.ARCHIVE
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))


def _truncate(snapshot: Path) -> None:
    archive = snapshot / s.ARCHIVE
    os.truncate(archive, archive.stat().st_size // 3)


def _delete_manifest(snapshot: Path) -> None:
    (snapshot / s.MANIFEST).unlink()


DAMAGE = {
    "one byte flipped": (
        _flip_one_byte,
        r"archive.tar.zst does not match the SHA-256 in its manifest \(expected [0-9a-f]{12}…, "
        r"found [0-9a-f]{12}…\): the archive is corrupt",
    ),
    "truncated": (
        _truncate,
        r"archive.tar.zst is [\d,]+ bytes, the manifest says [\d,]+: the archive is truncated",
    ),
    "manifest deleted": (_delete_manifest, r"manifest.json is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
@pytest.mark.parametrize("depth", [s.ARCHIVE_HASH, s.READ_BACK, s.EVERY_FILE])
def test_each_kind_of_damage_is_named(tree, destination, damage, depth) -> None:
    result = s.create_snapshot(destination, [s.FolderSource("photos", tree)])
    harm, message = DAMAGE[damage]

    harm(result.snapshot.path)

    [problem] = s.verify(result.snapshot.path, depth=depth)
    assert problem.startswith(f"snapshot {result.snapshot.id}: ")
    assert __import__("re").search(message, problem), problem


def test_every_file_check_names_the_file_that_differs(tree, destination) -> None:
    result = s.create_snapshot(destination, [s.FolderSource("photos", tree)])
    manifest = json.loads(result.snapshot.manifest.read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "photos/file-3.bin")
    entry["sha256"] = "0" * 64
    result.snapshot.manifest.write_text(json.dumps(manifest))

    assert s.verify(result.snapshot.path, depth=s.READ_BACK) == []  # the archive itself is sound
    [problem] = s.verify(result.snapshot.path, depth=s.EVERY_FILE)
    assert "photos/file-3.bin in the archive differs from the manifest" in problem
    [restore_problem] = s.sample_restore(result.snapshot.path, count=1000)
    assert "photos/file-3.bin: the restored bytes do not match" in restore_problem


def test_restore_of_one_file(tree, destination, tmp_path) -> None:
    result = s.create_snapshot(destination, [s.FolderSource("photos", tree)])

    done = s.restore(result.snapshot.path, tmp_path / "one", files=["photos/a/b/file-8.txt"])

    assert done.files == ["photos/a/b/file-8.txt"]
    restored = [p for p in (tmp_path / "one").rglob("*") if p.is_file()]
    assert restored == [tmp_path / "one" / "photos" / "a" / "b" / "file-8.txt"]
    assert restored[0].read_bytes() == (tree / "a" / "b" / "file-8.txt").read_bytes()


def test_restore_refuses_to_overwrite_and_unknown_files(tree, destination, tmp_path) -> None:
    result = s.create_snapshot(destination, [s.FolderSource("photos", tree)])
    target = tmp_path / "into"
    s.restore(result.snapshot.path, target, files=["photos/a/b/file-8.txt"])
    (target / "photos" / "a" / "b" / "file-8.txt").write_text("edited since")

    with pytest.raises(s.BackupError, match=r"file-8\.txt exists; restore elsewhere or pass"):
        s.restore(result.snapshot.path, target, files=["photos/a/b/file-8.txt"])
    with pytest.raises(s.BackupError, match=r"has no file 'photos/nope\.txt'"):
        s.restore(result.snapshot.path, target, files=["photos/nope.txt"])

    s.restore(result.snapshot.path, target, files=["photos/a/b/file-8.txt"], overwrite=True)
    assert (target / "photos/a/b/file-8.txt").read_bytes() == (tree / "a/b/file-8.txt").read_bytes()


def test_archive_restore_never_writes_through_a_link_in_the_target(
    tree, destination, tmp_path
) -> None:
    result = s.create_snapshot(destination, [s.FolderSource("photos", tree)])
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "into"
    (target / "photos").mkdir(parents=True)
    (target / "photos" / "a").symlink_to(outside)

    with pytest.raises(s.BackupError, match="is a symbolic link"):
        s.restore(result.snapshot.path, target, overwrite=True)

    assert list(outside.iterdir()) == []


def test_restore_of_a_corrupt_snapshot_writes_nothing(tree, destination, tmp_path) -> None:
    result = s.create_snapshot(destination, [s.FolderSource("photos", tree)])
    _flip_one_byte(result.snapshot.path)

    with pytest.raises(s.BackupError, match="the archive is corrupt"):
        s.restore(result.snapshot.path, tmp_path / "into")

    assert not (tmp_path / "into").exists()


CRASH_SCRIPT = """
import sys
from pathlib import Path
from automation_pipelines.automations.backups import snapshots as s
s.create_snapshot(Path(sys.argv[1]), [s.FolderSource("big", Path(sys.argv[2]))], threads=1)
"""


def test_killed_backup_leaves_nothing_that_passes_as_complete(tmp_path, destination) -> None:
    big = make_tree(tmp_path / "big", files=40, size=3_000_000)
    process = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(destination), str(big)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = [p / s.ARCHIVE for p in s.partials(destination)]
            if started and started[0].exists() and started[0].stat().st_size > 200_000:
                break
            assert process.poll() is None, "the backup finished before it could be killed"
            time.sleep(0.01)
        else:
            raise AssertionError("the backup never started writing")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)

    assert process.returncode == -signal.SIGKILL
    assert s.list_snapshots(destination) == []
    assert len(s.partials(destination)) == 1
    assert not (s.partials(destination)[0] / s.VERIFIED).exists()

    result = s.create_snapshot(destination, [s.FolderSource("big", big)])
    assert result.removed_partials and s.partials(destination) == []
    assert [snap.id for snap in s.list_snapshots(destination)] == [result.snapshot.id]

"""The restic engine on real files and the real binary: a SQLite copy taken online and a
PostgreSQL `pg_dump` streamed in come back byte for byte / restorable, a failing pg_dump leaves
no snapshot, a missing destination or source is named, and each snapshot is tagged by source
and run."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from automation_pipelines.automations.backups import engine
from automation_pipelines.automations.backups.known_snapshots import KnownSnapshots
from automation_pipelines.automations.backups.restic import Repository, ResticError
from automation_pipelines.automations.backups.sources import (
    BackupError,
    DestinationMissing,
    FolderSource,
    PostgresSource,
    SqliteSource,
)
from automation_pipelines_tests.automations.backups.conftest import flip_byte_in_biggest_pack
from automation_pipelines_tests.automations.backups.trees import make_tree

NO_ROOM = "no space left on device"


@pytest.fixture
def destination(tmp_path: Path) -> Path:
    path = tmp_path / "backups"
    path.mkdir()
    return path


@pytest.fixture
def repo(destination: Path, restic_env: str) -> Repository:
    return Repository(str(destination / "restic"), password=restic_env)


def test_snapshots_are_tagged_by_source_and_run(repo, destination, tmp_path) -> None:
    tree = make_tree(tmp_path / "docs", files=12)

    made = engine.back_up(repo, [FolderSource("docs", tree)], destination=destination)
    again = engine.back_up(repo, [FolderSource("docs", tree)], destination=destination)

    [first, second] = sorted(repo.snapshots(), key=lambda s: s.time)
    assert (first.tag("source"), first.tag("run")) == ("docs", made.run_id)
    assert second.tag("run") == again.run_id != made.run_id
    assert made.bytes_added > 0 and again.bytes_added < made.bytes_added / 10  # deduplicated
    assert [r.id for r in engine.list_runs(repo)] == [again.run_id, made.run_id]


def test_sqlite_is_copied_online_while_a_writer_holds_it(
    repo, destination, tmp_path, busy_sqlite
) -> None:
    database = busy_sqlite
    engine.back_up(repo, [SqliteSource("app", database)], destination=destination)

    [run] = engine.list_runs(repo)
    engine.restore(repo, run, tmp_path / "restored")
    copy = sqlite3.connect(tmp_path / "restored" / "app" / "app.db")
    assert copy.execute("SELECT count(*), max(body) FROM events").fetchone() == (500, "e99")
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.postgres
def test_postgres_is_streamed_from_pg_dump(postgres_database, repo, destination, tmp_path):
    import psycopg2

    with psycopg2.connect(**postgres_database) as conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE invoices (id serial PRIMARY KEY, total numeric)")
        cursor.execute("INSERT INTO invoices (total) SELECT g FROM generate_series(1, 250) g")
    db = postgres_database
    dsn = f"host={db['host']} port={db['port']} user={db['user']} dbname={db['dbname']}"
    source = PostgresSource("billing", dsn, password=db.get("password"))

    made = engine.back_up(repo, [source], destination=destination)

    [snapshot] = repo.snapshots()
    assert snapshot.paths == ("/billing.dump",)
    [run] = engine.list_runs(repo)
    engine.restore(repo, run, tmp_path / "restored")
    dump = tmp_path / "restored" / "billing" / "billing.dump"
    assert dump.stat().st_size == made.bytes_in
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "TABLE DATA public invoices" in listing.stdout


def test_failing_pg_dump_fails_the_backup_and_leaves_no_snapshot(repo, destination) -> None:
    source = PostgresSource("billing", "host=127.0.0.1 port=1 dbname=none connect_timeout=2")

    with pytest.raises(BackupError, match=r"source 'billing': pg_dump failed: .*127\.0\.0\.1"):
        engine.back_up(repo, [source], destination=destination)

    assert repo.snapshots() == []


def test_missing_destination_says_so_and_creates_nothing(tmp_path, restic_env) -> None:
    gone = tmp_path / "mnt" / "backup"
    repo = Repository(str(gone / "restic"), password=restic_env)

    with pytest.raises(DestinationMissing, match=f"destination {gone} does not exist"):
        engine.back_up(repo, [FolderSource("docs", tmp_path)], destination=gone)

    assert not gone.exists()


def test_missing_source_folder_fails_unless_marked_skip(repo, destination, tmp_path) -> None:
    tree = make_tree(tmp_path / "p", files=10)
    absent = tmp_path / "not-mounted"
    with pytest.raises(BackupError, match=f"source 'nas': folder {absent} does not exist"):
        engine.back_up(repo, [FolderSource("nas", absent)], destination=destination)

    result = engine.back_up(
        repo,
        [FolderSource("nas", absent, missing="skip"), FolderSource("p", tree)],
        destination=destination,
    )
    assert result.sources[0]["status"] == f"skipped: {absent} does not exist"
    assert result.files == 11 and set(result.snapshots) == {"p"}


def test_restore_refuses_unknown_files(repo, destination, tmp_path) -> None:
    tree = make_tree(tmp_path / "p", files=5)
    engine.back_up(repo, [FolderSource("p", tree)], destination=destination)
    [run] = engine.list_runs(repo)

    with pytest.raises(BackupError, match=r"has no file 'p/nope\.txt'"):
        engine.restore(repo, run, tmp_path / "into", files=["p/nope.txt"])

    assert not (tmp_path / "into").exists()


def odd_tree(root: Path) -> dict[str, str]:
    """Files beside empty folders and symbolic links: relative, absolute, dangling, to a
    folder. Returns each link's text."""
    make_tree(root, files=3)
    (root / "empty").mkdir()
    (root / "deep" / "er" / "est").mkdir(parents=True)
    (root / "private.txt").write_text("mine")
    (root / "private.txt").chmod(0o600)
    links = {
        "rel": "private.txt",
        "abs": "/etc/hostname",
        "dangling": "no/such/file",
        "to_folder": "deep/er",
        "deep/up": "../../private.txt",
    }
    for name, text in links.items():
        (root / name).symlink_to(text)
    return links


def test_restore_brings_back_empty_folders_and_links_as_links(repo, destination, tmp_path):
    root = tmp_path / "p"
    links = odd_tree(root)
    engine.back_up(repo, [FolderSource("p", root)], destination=destination)
    [run] = engine.list_runs(repo)

    (tmp_path / "existing").mkdir()  # a target that exists takes the restore item by item
    for into, source in (
        (tmp_path / "whole", None),
        (tmp_path / "one", "p"),
        (tmp_path / "existing", None),
    ):
        result = engine.restore(repo, run, into, source=source)
        back = into / "p"
        assert (back / "empty").is_dir() and not any((back / "empty").iterdir())
        assert (back / "deep" / "er" / "est").is_dir()
        for name, text in links.items():
            assert (back / name).is_symlink(), name
            assert os.readlink(back / name) == text, name
        assert (back / "rel").read_text() == "mine"  # resolves inside the restore
        assert (back / "private.txt").stat().st_mode & 0o777 == 0o600
        assert sorted(result.links) == sorted(f"p/{name}" for name in links)
        assert {"p/empty", "p/deep/er/est"} <= set(result.folders)
        assert not list(into.glob(".restoring-*"))


def test_a_named_link_is_restored_alone_and_an_existing_one_is_not_replaced(
    repo, destination, tmp_path
):
    root = tmp_path / "p"
    odd_tree(root)
    engine.back_up(repo, [FolderSource("p", root)], destination=destination)
    [run] = engine.list_runs(repo)
    into = tmp_path / "into"

    result = engine.restore(repo, run, into, files=["p/abs"])
    assert result.links == ["p/abs"] and result.files == []
    assert os.readlink(into / "p" / "abs") == "/etc/hostname"
    with pytest.raises(BackupError, match="exists"):
        engine.restore(repo, run, into, files=["p/abs"])


def test_restore_never_writes_through_a_link_already_in_the_target(repo, destination, tmp_path):
    root = tmp_path / "p"
    make_tree(root / "sub", files=2)
    engine.back_up(repo, [FolderSource("p", root)], destination=destination)
    [run] = engine.list_runs(repo)
    outside = tmp_path / "outside"
    outside.mkdir()
    into = tmp_path / "into"
    (into / "p").mkdir(parents=True)
    (into / "p" / "sub").symlink_to(outside)

    with pytest.raises(BackupError, match="symbolic link"):
        engine.restore(repo, run, into, overwrite=True)

    assert list(outside.iterdir()) == []


def test_names_of_any_characters_are_listed_as_they_are(repo, tmp_path):
    tree = tmp_path / "odd"
    odd = ["next\x85line", "separator\u2028line", "file\x1cseparator", "tab\tand\vform\x0c"]
    for n, name in enumerate(odd):
        (tree / name).mkdir(parents=True)
        (tree / name / name).write_bytes(b"x" * n)
    repo.init()
    summary, _ = repo.backup_paths(tree, ["."], ["source:odd"], None)

    _, nodes = repo.listing(summary["snapshot_id"])

    assert sorted(node["name"] for node in nodes) == sorted(odd * 2)


class LateListing(Repository):
    """Lists the snapshots only after the backup running beside the listing has saved its
    own, so the listing always holds the new snapshot."""

    def snapshots(self, *tags: str):
        time.sleep(4)
        return super().snapshots(*tags)


def test_two_backups_in_the_same_second_take_consecutive_run_ids(repo, destination, tmp_path):
    tree = make_tree(tmp_path / "p", files=3)
    moment = datetime(2026, 12, 1, 2, 0, 0, tzinfo=UTC)
    engine.back_up(repo, [FolderSource("q", tree)], destination=destination)  # it exists
    late = LateListing(repo.location, password=repo.password)

    first = engine.back_up(late, [FolderSource("p", tree)], destination=destination, now=moment)
    second = engine.back_up(repo, [FolderSource("p", tree)], destination=destination, now=moment)

    assert (first.run_id, second.run_id) == ("20261201T020000Z", "20261201T020001Z")
    runs = {run.id: run for run in engine.list_runs(repo) if run.snapshots[0].tag("source") == "p"}
    assert sorted(runs) == [first.run_id, second.run_id]
    assert [s.short_id for s in runs[second.run_id].snapshots] == [second.snapshots["p"][:8]]
    assert [s.short_id for s in runs[first.run_id].snapshots] == [first.snapshots["p"][:8]]


class CountsOpens(Repository):
    """A repository that counts the restic commands run against it, by their verb."""

    opened: list[str]

    def run(self, *args: str, **kwargs):
        verb = next(a for a in args if not a.startswith("-"))
        self.opened.append(verb)
        return super().run(*args, **kwargs)


def counting(repo: Repository, kind: type[CountsOpens] = CountsOpens) -> CountsOpens:
    counted = kind(repo.location, password=repo.password)
    object.__setattr__(counted, "opened", [])
    return counted


def hand_made_snapshot(repo: Repository, folder: Path, *tags: str) -> None:
    """A snapshot made with the plain restic CLI (another host's run, one made by hand)."""
    args = [arg for tag in tags for arg in ("--tag", tag)]
    subprocess.run(
        ["restic", "--repo", repo.location, "backup", "--quiet", *args, "."],
        cwd=folder,
        env=repo.env(),
        check=True,
        capture_output=True,
    )


def test_a_backup_whose_repository_this_host_knows_opens_it_only_to_back_up_and_verify(
    repo, destination, tmp_path
):
    tree = make_tree(tmp_path / "p", files=3)
    moment = datetime(2026, 12, 1, 2, 0, 0, tzinfo=UTC)
    first = engine.back_up(repo, [FolderSource("p", tree)], destination=destination, now=moment)
    counted = counting(repo)

    second = engine.back_up(counted, [FolderSource("p", tree)], destination=destination, now=moment)

    # restic backup alone: no `restic snapshots` for a run id, and the new snapshot is read
    # back in this process, with the key derived while restic backed up.
    assert counted.opened == ["backup"]
    assert (first.run_id, second.run_id) == ("20261201T020000Z", "20261201T020001Z")
    assert [run.id for run in engine.list_runs(repo)] == [second.run_id, first.run_id]


def test_a_snapshot_this_host_has_not_seen_sends_the_backup_to_restics_list(
    repo, destination, tmp_path
):
    tree = make_tree(tmp_path / "p", files=3)
    moment = datetime(2026, 12, 1, 2, 0, 0, tzinfo=UTC)
    engine.back_up(repo, [FolderSource("p", tree)], destination=destination, now=moment)
    hand_made_snapshot(repo, tree, "source:p", "run:20261201T020001Z")  # another host's run
    hand_made_snapshot(repo, tree)  # by hand, no run at all
    counted = counting(repo)

    third = engine.back_up(counted, [FolderSource("p", tree)], destination=destination, now=moment)

    assert third.run_id == "20261201T020002Z"
    assert counted.opened.count("snapshots") == 1
    # Now known here: the next backup in the same second needs no list.
    counted.opened.clear()
    fourth = engine.back_up(counted, [FolderSource("p", tree)], destination=destination, now=moment)
    assert fourth.run_id == "20261201T020003Z"
    assert counted.opened == ["backup"]


def test_the_host_that_backed_up_lists_the_runs_without_restic(repo, destination, tmp_path):
    tree = make_tree(tmp_path / "p", files=3)
    made = engine.back_up(repo, [FolderSource("p", tree)], destination=destination)
    counted = counting(repo)

    assert [run.id for run in engine.list_runs(counted)] == [made.run_id]
    assert counted.opened == []
    # Asked of restic when the caller wants the password proven, or the repository changed.
    assert [run.id for run in engine.list_runs(counted, known_here=False)] == [made.run_id]
    assert counted.opened == ["snapshots"]
    hand_made_snapshot(repo, tree)
    runs = engine.list_runs(counted)
    assert counted.opened == ["snapshots", "snapshots"] and len(runs) == 2
    assert engine.list_runs(counted) == runs and len(counted.opened) == 2
    # And a restore from the list reads every file back all the same.
    restored = engine.restore(counted, runs[-1], tmp_path / "r")
    assert counted.opened[2:] == ["restore"] and restored.files


@pytest.mark.parametrize("damage", [b"{not json", b'["a list"]', b'{"0123abcd": 7}', b""])
def test_a_damaged_ledger_of_snapshots_only_costs_a_list(repo, destination, tmp_path, damage):
    tree = make_tree(tmp_path / "p", files=3)
    moment = datetime(2026, 12, 1, 2, 0, 0, tzinfo=UTC)
    engine.back_up(repo, [FolderSource("p", tree)], destination=destination, now=moment)
    ledger = KnownSnapshots.of(repo).ledger
    assert ledger.is_file()
    ledger.write_bytes(damage)
    counted = counting(repo)

    second = engine.back_up(counted, [FolderSource("p", tree)], destination=destination, now=moment)

    assert second.run_id == "20261201T020001Z"
    assert counted.opened.count("snapshots") == 1


class ReadOneMore(CountsOpens):
    """A repository whose backups read one file more than their snapshots hold."""

    def backup_paths(self, *args, **kwargs):
        summary, warnings = super().backup_paths(*args, **kwargs)
        return {**summary, "total_files_processed": summary["total_files_processed"] + 1}, warnings


class DamagedOnceWritten(CountsOpens):
    """A repository whose new snapshot file loses a byte to the disk as soon as it is written."""

    def backup_paths(self, *args, **kwargs):
        summary, warnings = super().backup_paths(*args, **kwargs)
        [written] = Path(self.location, "snapshots").glob(f"{summary['snapshot_id']}*")
        data = bytearray(written.read_bytes())
        data[len(data) // 2] ^= 0x01
        written.chmod(0o600)
        written.write_bytes(bytes(data))
        return summary, warnings


@pytest.mark.parametrize(
    ("kind", "reason", "opened"),
    [
        # Read back here first; a count that differs goes to restic's listing, whose verdict
        # stands.
        (ReadOneMore, r"the new snapshot \w{8} lists 5 file.+but 6 file", ["backup", "ls"]),
        # Damage read here stands: restic's cache holds the snapshot as written, so `restic ls`
        # alone would list it unharmed.
        (DamagedOnceWritten, r"snapshot \w{8} is damaged.+does not match its id", ["backup"]),
    ],
    ids=["not-what-was-read", "damaged-on-disk"],
)
def test_a_snapshot_that_is_not_what_restic_read_fails_the_backup(
    repo, destination, tmp_path, kind, reason, opened
):
    tree = make_tree(tmp_path / "p", files=4)
    engine.back_up(repo, [FolderSource("p", tree)], destination=destination)  # it exists
    broken = counting(repo, kind)

    with pytest.raises(BackupError, match=reason):
        engine.back_up(broken, [FolderSource("p", tree)], destination=destination)

    assert broken.opened == opened
    _, nodes = broken.listing(broken.snapshots()[-1].id)
    assert len([node for node in nodes if node["type"] == "file"]) == 5


def test_a_restore_that_fails_verification_places_nothing(repo, destination, tmp_path):
    tree = make_tree(tmp_path / "p", files=6)
    engine.back_up(repo, [FolderSource("p", tree)], destination=destination)
    [run] = engine.list_runs(repo)
    flip_byte_in_biggest_pack(destination / "restic")
    (tmp_path / "existing").mkdir()

    for into in (tmp_path / "new", tmp_path / "existing"):
        with pytest.raises(BackupError, match="restic"):
            engine.restore(repo, run, into)

    assert not (tmp_path / "new").exists()
    assert list((tmp_path / "existing").iterdir()) == []


def test_a_full_destination_fails_the_backup_and_the_next_one_recovers(
    small_volume, restic_env, tmp_path
):
    source = tmp_path / "s"
    source.mkdir()
    (source / "notes.txt").write_text("kept")
    (source / "big.bin").write_bytes(os.urandom(20_000_000))  # does not compress; 8 MB volume
    repo = Repository(str(small_volume / "restic"), password=restic_env)

    with pytest.raises(BackupError, match="no space left on device"):
        engine.back_up(repo, [FolderSource("s", source)], destination=small_volume)
    assert engine.list_runs(repo) == []

    (source / "big.bin").unlink()
    done = engine.back_up(repo, [FolderSource("s", source)], destination=small_volume)
    assert done.files == 1
    assert [run.id for run in engine.list_runs(repo)] == [done.run_id]
    assert repo.check() == [] and repo.locks() == []


def test_a_failed_write_means_a_full_destination_only_where_the_destination_lacks_room(
    repo, small_volume, tmp_path
):
    retry = "Save(<data/2c67377e8e>) returned error, retrying after 552ms: Write: sftp: Failure"
    enospc = f"Fatal: unable to save snapshot: write {repo.location}/data/ab/ab-tmp-1: {NO_ROOM}"
    restoring = f"ignoring error for /photos/a.jpg: write {tmp_path}/a.jpg: {NO_ROOM}"
    small = Repository(str(small_volume / "restic"), password="unused")

    # Plenty of room: a retried write is a passing fault; restic's own retries are for it.
    assert repo.no_room(retry) == ""
    assert repo.no_room(restoring) == small.no_room(restoring) == ""  # not the repository
    assert repo.no_room(enospc) == f"the destination is full (restic: {enospc[7:]})"
    # Less room than one pack: full, with the figures.
    assert re.fullmatch(
        r"the destination is full: [78]\.\d MB free of 8\.4 MB, less than the 16\.8 MB "
        r"restic writes at a time \(restic: Save\(<data/2c67377e8e>\): Write: sftp: Failure\)",
        small.no_room(retry),
    )


RESTORE_SCRIPT = """
import sys
from pathlib import Path
from automation_pipelines.automations.backups import engine
from automation_pipelines.automations.backups.restic import Repository, ResticError
from automation_pipelines.automations.backups.known_snapshots import KnownSnapshots
repo = Repository(sys.argv[1], password=sys.argv[3])
engine.restore(repo, engine.list_runs(repo)[0], Path(sys.argv[2]))
"""


def test_a_restore_killed_midway_leaves_its_work_folder_to_the_next_one(
    repo, destination, tmp_path
):
    tree = tmp_path / "p"
    tree.mkdir()
    for n in range(40):
        (tree / f"f{n}.bin").write_bytes(os.urandom(1_000_000))
    engine.back_up(repo, [FolderSource("p", tree)], destination=destination)
    target = tmp_path / "into"
    target.mkdir()  # an existing target: the restore goes item by item
    child = subprocess.Popen(
        [sys.executable, "-c", RESTORE_SCRIPT, repo.location, str(target), repo.password],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(target.glob(".restoring-*/p/*")):
            assert child.poll() is None and time.monotonic() < deadline, "nothing to kill"
            time.sleep(0.005)
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    [left] = list(target.glob(".restoring-*"))
    # Work folders of a live process of this host, or of another host, are never touched.
    alive = target / f".restoring-{socket.gethostname()}-{os.getpid()}-{'a' * 12}"
    elsewhere = target / f".restoring-other-host-{child.pid}-{'b' * 12}"
    alive.mkdir()
    elsewhere.mkdir()

    done = engine.restore(repo, engine.list_runs(repo)[0], target, overwrite=True)

    assert len(done.files) == 40 and not left.exists()
    assert sorted(target.glob(".restoring-*")) == sorted([alive, elsewhere])
    assert all((target / "p" / p.name).read_bytes() == p.read_bytes() for p in tree.iterdir())


def test_a_restic_that_hangs_is_stopped_at_its_time_limit(tmp_path) -> None:
    """Also while a stream is being fed to it (a pg_dump into `backup --stdin`)."""
    hung = tmp_path / "restic"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")  # reads nothing, never exits
    hung.chmod(0o755)
    repo = Repository(str(tmp_path / "repo"), password="x", binary=str(hung), timeout_seconds=1)

    class Endless:
        def read(self, size: int) -> bytes:
            return b"\0" * size

    began = time.monotonic()
    with pytest.raises(ResticError, match=r"restic check did not finish within 1 s"):
        repo.run("check")
    with pytest.raises(ResticError, match=r"restic backup did not finish within 1 s"):
        repo.backup_stream(Endless(), "db.dump", ["source:db"])
    assert time.monotonic() - began < 30

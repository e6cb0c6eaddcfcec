"""Backups on restic: one repository per destination, one snapshot per source per run.

Every snapshot carries `source:<name>` and `run:<id>` (the run's UTC time, as archives were
named before), so a run is restored whole, a source alone, or a single file. Folders go in as
they are; a SQLite database is first copied with its online backup API; a PostgreSQL database
is streamed from `pg_dump --format=custom` into `restic backup --stdin`. A snapshot counts only
once it is read back from the repository with as many files and bytes as restic read (see
reader.py; `restic ls` where it cannot be read here); retention runs after that, never before.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from automation_pipelines.automations.backups import snapshots as archives
from automation_pipelines.automations.backups.known_snapshots import KnownSnapshots
from automation_pipelines.automations.backups.reader import (
    DamagedSnapshot,
    LocalRepository,
    open_local,
    read_back,
)
from automation_pipelines.automations.backups.restic import (
    Lock,
    Repository,
    RepositoryMissing,
    ResticError,
    ResticSnapshot,
    is_remote,
    parse_time,
)
from automation_pipelines.automations.backups.sources import (
    BackupError,
    FolderSource,
    PostgresSource,
    Source,
    SqliteSource,
    check_destination,
    copy_sqlite_online,
    no_link_on_the_way,
    restore_plan,
    safe_relative,
)
from automation_pipelines.reliability.processes import pid_gone

SOURCE, RUN = "source", "run"


def _utcnow() -> datetime:
    return datetime.now(tz=UTC)


@dataclass
class BackupResult:
    """What one backup run wrote, for the run's metadata."""

    run_id: str
    created: datetime
    snapshots: dict[str, str]
    files: int
    bytes_in: int
    bytes_added: int
    seconds: float
    sources: list[dict] = field(default_factory=list)
    removed_locks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    """The snapshots one backup run made, one per source."""

    id: str
    time: datetime
    snapshots: tuple[ResticSnapshot, ...]

    def source(self, name: str) -> ResticSnapshot | None:
        return next((s for s in self.snapshots if s.tag(SOURCE) == name), None)


def lock_holder_gone(lock: Lock, now: datetime | None = None) -> bool:
    """True only when the holder is provably dead: a process of this host that no longer runs.
    A lock of another host is never judged from here."""
    return _process_gone(lock.hostname, lock.pid)


def _process_gone(hostname: str, pid: int) -> bool:
    return hostname == socket.gethostname() and pid_gone(pid)


_WORK = re.compile(r"\.restoring-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{12}")


def _clear_dead_work(target: Path) -> None:
    """Remove the work folders that restores killed midway left in `target`: those of a
    process of this host that no longer runs. Another host's, or a live one's, stay."""
    for folder in target.glob(".restoring-*"):
        found = _WORK.fullmatch(folder.name)
        if found and _process_gone(found["host"], int(found["pid"])):
            shutil.rmtree(folder, ignore_errors=True)


def clear_dead_locks(repo: Repository) -> list[Lock]:
    """Remove the locks a killed backup of this host left, so retention can take its exclusive
    lock; anything else (another host, a live process) is left and reported by the check."""
    if not _may_hold_locks(repo):
        return []
    dead = [lock for lock in repo.locks() if lock_holder_gone(lock)]
    if dead:
        repo.unlock_stale()
    return dead


def _may_hold_locks(repo: Repository) -> bool:
    """False only for a local repository whose locks folder is empty. Every restic command
    that opens a repository pays for deriving its key (about half a second here), so the
    common case asks the folder instead; a remote one is always asked through restic."""
    if is_remote(repo.location):
        return True
    try:
        return any(os.scandir(Path(repo.location) / "locks"))
    except OSError:
        return True


def _open_or_init(repo: Repository) -> list[ResticSnapshot]:
    """The repository's snapshots, creating the repository first if there is none; one restic
    command in the usual case. A wrong password raises and never leads to a new repository."""
    try:
        return repo.snapshots()
    except RepositoryMissing:
        repo.init()
        return []


def _free_run_id(taken: set[str | None], moment: datetime) -> tuple[str, datetime]:
    while archives.snapshot_id(moment) in taken:
        moment += timedelta(seconds=1)
    return archives.snapshot_id(moment), moment


def _verify(
    repo: Repository,
    opened: Future[LocalRepository | None],
    name: str,
    snapshot: str,
    files: int,
    size: int,
) -> ResticSnapshot | None:
    """The new snapshot's tree loads and holds what restic read: its file count and bytes.
    Returns the snapshot as restic lists it. Read back in this process where the repository
    opened here (its key derived while restic backed up); else, or if that reading finds
    a count that differs, restic reads it and its verdict stands; damage read here fails it
    even where restic's cache still holds a good copy."""
    try:
        read = read_back(opened.result(), snapshot)
    except DamagedSnapshot as error:
        raise BackupError(
            f"source {name!r}: the new snapshot {snapshot[:8]} is damaged in the repository: "
            f"{error}"
        ) from error
    if read is not None and read[1:] == (files, size):
        return read[0]
    made, nodes = repo.listing(snapshot)
    nodes = [n for n in nodes if n.get("type") == "file"]
    found = sum(int(n.get("size", 0)) for n in nodes)
    if len(nodes) != files or found != size:
        raise BackupError(
            f"source {name!r}: the new snapshot {snapshot[:8]} lists {len(nodes):,} file(s) and "
            f"{found:,} bytes, but {files:,} file(s) and {size:,} bytes were read"
        )
    return made


class _Prefixed:
    """A stream whose first bytes were already read (to see whether pg_dump produced any)."""

    def __init__(self, first: bytes, rest: IO[bytes]) -> None:
        self.first, self.rest = first, rest

    def read(self, size: int) -> bytes:
        if self.first:
            chunk, self.first = self.first, b""
            return chunk
        return self.rest.read(size)


def _back_up_folder(repo: Repository, source: FolderSource, tags, moment) -> dict:
    root = source.path
    report = {"name": source.name, "kind": "folder", "path": str(root)}
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        if source.missing == "skip" and not root.exists():
            return {**report, "status": f"skipped: {root} {what}"}
        raise BackupError(f"source {source.name!r}: folder {root} {what}")
    summary, warnings = repo.backup_paths(root, ["."], tags, moment)
    report = {**report, "status": "ok" if not warnings else f"incomplete: {warnings}"}
    return _with_summary(report, summary)


def _with_summary(report: dict, summary: dict) -> dict:
    """The source's report with restic's figures; `back_up` verifies the snapshot after."""
    files, size = summary["total_files_processed"], summary["total_bytes_processed"]
    return {
        **report,
        "snapshot": summary["snapshot_id"],
        "files": files,
        "bytes": size,
        "bytes_added": summary.get("data_added", 0),
    }


def _back_up_sqlite(repo: Repository, source: SqliteSource, tags, moment) -> dict:
    with tempfile.TemporaryDirectory(prefix="backup-sqlite-") as work:
        copy = Path(work) / source.path.name
        copy_sqlite_online(source, copy)
        summary, _ = repo.backup_paths(Path(work), [copy.name], tags, moment)
    report = {"name": source.name, "kind": "sqlite", "path": str(source.path), "status": "ok"}
    return _with_summary(report, summary)


def _back_up_postgres(repo: Repository, source: PostgresSource, tags, moment) -> dict:
    command = [source.pg_dump, "--format=custom", "--no-password", f"--dbname={source.dsn}"]
    env = {**os.environ, "PGPASSWORD": source.password} if source.password else None
    with tempfile.TemporaryFile() as errors:
        try:
            dump = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env)
        except FileNotFoundError:
            raise BackupError(
                f"source {source.name!r}: {source.pg_dump} is not installed"
            ) from None

        def failure() -> BackupError:
            errors.seek(0)
            text = errors.read().decode(errors="replace")
            message = " ".join(line.strip() for line in text.splitlines() if line.strip())
            return BackupError(
                f"source {source.name!r}: pg_dump failed: {message[:500] or 'no output'}"
            )

        try:
            first = dump.stdout.read(1 << 20)
            if not first:
                dump.wait(timeout=source.timeout_seconds)
                raise failure()
            stream = _Prefixed(first, dump.stdout)
            summary, count = repo.backup_stream(stream, f"{source.name}.dump", tags, moment)
            returncode = dump.wait(timeout=source.timeout_seconds)
        finally:
            if dump.poll() is None:
                dump.kill()
                dump.wait()
        if returncode != 0:
            repo.forget_ids(summary["snapshot_id"])  # a truncated dump is no backup
            raise failure()
    if summary["total_bytes_processed"] != count:
        raise BackupError(
            f"source {source.name!r}: restic stored {summary['total_bytes_processed']:,} bytes "
            f"of a {count:,}-byte dump"
        )
    report = {"name": source.name, "kind": "postgres", "status": "ok"}
    return _with_summary(report, summary)


def back_up(
    repo: Repository,
    sources: Sequence[Source],
    *,
    destination: Path | None,
    now: datetime | None = None,
) -> BackupResult:
    """Back up every source into the repository (initialised on first use) and verify each new
    snapshot. `destination` is the local folder that holds the repository, if any: it must
    exist (an unmounted disk is an error, not a place to start a new repository)."""
    started = time.monotonic()
    names = [s.name for s in sources]
    if len(set(names)) != len(names) or not names:
        raise BackupError(f"source names must be unique and present, got {names}")
    if destination is not None:
        check_destination(destination)
    start = now or _utcnow()
    # Every restic command pays for deriving the key (about half a second here). A local
    # repository that exists is not opened for a free run id: its snapshots are known on this
    # host (see known_snapshots), or it is listed after the backup, beside the verification of
    # the new snapshots; should the id turn out taken, the new snapshots are forgotten and made
    # again under a free one.
    known = not is_remote(repo.location) and (Path(repo.location) / "config").is_file()
    existing = None if known else _open_or_init(repo)
    ledger = KnownSnapshots.of(repo)
    if ledger and existing is not None:
        ledger.record(existing)
    removed = clear_dead_locks(repo)
    if existing is None and ledger:
        existing = ledger.snapshots()
    taken = {s.tag(RUN) for s in existing or ()}
    listed = not known  # by restic, just now: no second look needed after the backup
    run_id, moment = _free_run_id(taken, start)
    background = ThreadPoolExecutor(max_workers=1)
    # The reader's key is derived on the CPU restic's own key derivation leaves idle.
    opened = background.submit(open_local, repo)
    background.shutdown(wait=False)
    while True:
        reports = _back_up_sources(repo, sources, run_id, moment)
        new = [r for r in reports if "snapshot" in r]
        ours = {r["snapshot"][:8] for r in new}
        if not listed:
            # Read again after the backup: another host may have added one meanwhile.
            existing = ledger.snapshots(ignoring=ours) if ledger else None
        with ThreadPoolExecutor(max_workers=len(new) + 1) as pool:
            listing = pool.submit(repo.snapshots) if existing is None else None
            checks = [
                pool.submit(_verify, repo, opened, r["name"], r["snapshot"], r["files"], r["bytes"])
                for r in new
            ]
            verified = [check.result() for check in checks]
            if listing is not None:
                existing = [s for s in listing.result() if s.short_id not in ours]
                listed = True
                if ledger:
                    ledger.record(existing)
            taken = {s.tag(RUN) for s in existing or ()}
        if run_id not in taken:
            break
        repo.forget_ids(*(r["snapshot"] for r in new))
        run_id, moment = _free_run_id(taken, start)
    if ledger:
        ledger.record(snapshot for snapshot in verified if snapshot is not None)
    made = {r["name"]: r["snapshot"] for r in reports if "snapshot" in r}
    return BackupResult(
        run_id=run_id,
        created=moment,
        snapshots=made,
        files=sum(r.get("files", 0) for r in reports),
        bytes_in=sum(r.get("bytes", 0) for r in reports),
        bytes_added=sum(r.get("bytes_added", 0) for r in reports),
        seconds=time.monotonic() - started,
        sources=reports,
        removed_locks=[f"{lock.id[:8]} (pid {lock.pid})" for lock in removed],
    )


def _back_up_sources(
    repo: Repository, sources: Sequence[Source], run_id: str, moment: datetime
) -> list[dict]:
    reports = []
    for source in sources:
        tags = [f"{SOURCE}:{source.name}", f"{RUN}:{run_id}"]
        if isinstance(source, FolderSource):
            reports.append(_back_up_folder(repo, source, tags, moment))
        elif isinstance(source, SqliteSource):
            reports.append(_back_up_sqlite(repo, source, tags, moment))
        else:
            reports.append(_back_up_postgres(repo, source, tags, moment))
    return reports


def apply_retention(
    repo: Repository, source_names: Iterable[str], keep_daily: int, keep_weekly: int
) -> list[str]:
    """`restic forget --keep-daily --keep-weekly` per source, pruning with the last one. Call it
    only after a backup verified: the newest snapshot of each source is always kept."""
    names = list(source_names)
    removed: list[str] = []
    for index, name in enumerate(names):
        removed += repo.forget(
            f"{SOURCE}:{name}", keep_daily, keep_weekly, prune=index == len(names) - 1
        )
    return [ident[:8] for ident in removed]


def list_runs(repo: Repository, *, known_here: bool = True) -> list[Run]:
    """Runs, newest first; a snapshot without a run tag (made by hand) is a run of its own.
    With `known_here`, a local repository whose snapshots this host has all read is listed
    without restic (no key to derive); without it, restic lists them (and so proves the
    password)."""
    ledger = KnownSnapshots.of(repo)
    listed = ledger.snapshots() if ledger and known_here else None
    if listed is None:
        listed = repo.snapshots()
        if ledger:
            ledger.record(listed)
    grouped: dict[str, list[ResticSnapshot]] = {}
    for snap in listed:
        grouped.setdefault(snap.tag(RUN) or snap.short_id, []).append(snap)
    runs = [Run(key, min(s.time for s in snaps), tuple(snaps)) for key, snaps in grouped.items()]
    return sorted(runs, key=lambda r: r.time, reverse=True)


def newest_per_source(snapshots: Iterable[ResticSnapshot]) -> dict[str, ResticSnapshot]:
    newest: dict[str, ResticSnapshot] = {}
    for snap in snapshots:
        name = snap.tag(SOURCE)
        if name and (name not in newest or snap.time > newest[name].time):
            newest[name] = snap
    return newest


@dataclass
class RestoreResult:
    """What a restore wrote; restic read every file back against the snapshot's hashes."""

    run: str
    files: list[str]
    bytes: int
    links: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)


def restore(
    repo: Repository,
    run: Run,
    target: Path,
    *,
    source: str | None = None,
    files: Iterable[str] | None = None,
    overwrite: bool = False,
) -> RestoreResult:
    """Restore a run, one source of it, or single files or links (named `<source>/<path>`)
    under `target/<source>/…`. restic restores into a temp folder inside `target` and reads
    every file back against the snapshot's content hashes (`--verify`, failing on any
    mismatch or error); only then does anything reach its place. A whole restore also brings
    back folders (empty ones too) and symbolic links as links, never followed; into a target
    that did not exist, each source's folder is renamed into place whole, and otherwise links
    go in last, so no file is written through one. Nothing is replaced unless `overwrite`,
    nothing is written through a link already in the target, and nothing at all when a name
    is unknown or would be replaced."""
    chosen = [s for s in run.snapshots if source is None or s.tag(SOURCE) == source]
    if not chosen:
        raise BackupError(f"run {run.id} has no snapshot of source {source!r}")
    prefixes = [f"{snap.tag(SOURCE) or snap.short_id}/" for snap in chosen]
    named = None if files is None else sorted({str(safe_relative(name)) for name in files})
    created = not target.exists()
    work = target / f".restoring-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    done = False
    try:
        target.mkdir(parents=True, exist_ok=True)
        _clear_dead_work(target)
        for snap, prefix in zip(chosen, prefixes, strict=True):
            if named is None:
                repo.restore(snap.id, work / prefix)
                continue
            mine = [n.removeprefix(prefix) for n in named if n.startswith(prefix)]
            if mine:
                repo.restore(snap.id, work / prefix, [f"/{p}" for p in mine])
        found = _restored(work)
        known = {name for name, kind in found.items() if kind != "dir"}
        wanted = restore_plan(f"run {run.id}", known, named, target, overwrite)
        folders = sorted(n for n, kind in found.items() if kind == "dir" and named is None)
        files_ = sorted(n for n in wanted if found[n] == "file")
        links = sorted(n for n in wanted if found[n] == "link")
        total = sum((work / name).stat().st_size for name in files_)
        if created and named is None:
            for prefix in prefixes:  # a new target: each source's tree goes in whole
                if (work / prefix).is_dir():
                    os.replace(work / prefix, target / prefix)
        else:
            for name in folders:
                no_link_on_the_way(target, safe_relative(name), including_last=True)
            # Taken before any file moves out of them, which would change their times.
            attributes = {name: (work / name).stat() for name in folders}
            for name in files_:
                final = target / name
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(work / name, final)
            _make_folders(target, attributes)
            for name in links:
                final = target / name
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(work / name, final)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not done:
            shutil.rmtree(target, ignore_errors=True)  # refused before anything was placed
    return RestoreResult(run.id, files_, total, links, folders)


def _restored(work: Path) -> dict[str, str]:
    """What restic put into the work folder, by `<source>/<path>`: file, link or dir (the
    sources' own folders left out); a link is never followed."""
    found: dict[str, str] = {}
    pending = [(work, "")] if work.is_dir() else []
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_symlink():
                    found[name] = "link"
                elif entry.is_dir():
                    if prefix:
                        found[name] = "dir"
                    pending.append((Path(entry.path), name + "/"))
                else:
                    found[name] = "file"
    return found


def _make_folders(target: Path, attributes: dict[str, os.stat_result]) -> None:
    """Create the restored folders that the files did not (empty ones), with the mode and,
    deepest first once everything is in, the time restic gave them."""
    for name in sorted(attributes):
        (target / name).mkdir(parents=True, exist_ok=True)
    for name in sorted(attributes, key=lambda n: n.count("/"), reverse=True):
        try:
            (target / name).chmod(attributes[name].st_mode & 0o777)
            os.utime(target / name, (attributes[name].st_atime, attributes[name].st_mtime))
        except OSError:
            pass  # the folder is there; its attributes are a courtesy


def _file_nodes(repo: Repository, snap: ResticSnapshot) -> dict[str, dict]:
    return {n["path"].lstrip("/"): n for n in repo.ls(snap.id) if n.get("type") == "file"}


def _unchanged(source: Path, node: dict) -> bool:
    """The source file still has the size and mtime the snapshot recorded."""
    try:
        stat = source.stat()
        mtime = parse_time(node["mtime"]).timestamp()
    except (OSError, KeyError, ValueError):
        return False
    return stat.st_size == node.get("size") and abs(stat.st_mtime - mtime) < 1e-5


def _same_bytes(a: Path, b: Path) -> bool:
    with a.open("rb") as left, b.open("rb") as right:
        while True:
            one, two = left.read(1 << 20), right.read(1 << 20)
            if one != two:
                return False
            if not one:
                return True


def sample_restore(
    repo: Repository,
    snapshots: dict[str, ResticSnapshot],
    count: int,
    folders: dict[str, Path],
    rng: random.Random | None = None,
) -> tuple[int, list[str]]:
    """Restore up to `count` files picked at random from the newest snapshot of each source
    into a temp folder, with restic reading each back against the snapshot's content hashes;
    a file whose source is unchanged since the snapshot is also compared with it byte for
    byte. Returns (files restored, one sentence per problem)."""
    rng = rng or random.Random()
    pool = []
    try:
        for name, snap in sorted(snapshots.items()):
            pool += [(name, snap, path, node) for path, node in _file_nodes(repo, snap).items()]
    except ResticError as exc:
        return 0, [f"test restore impossible: {exc}"]
    chosen = rng.sample(pool, min(count, len(pool)))
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="backup-test-restore-") as temp:
        for name, snap in sorted(snapshots.items()):
            mine = [(path, node) for n, s, path, node in chosen if n == name]
            if not mine:
                continue
            into = Path(temp) / name
            try:
                repo.restore(snap.id, into, [f"/{path}" for path, _ in mine])
            except ResticError as exc:
                problems.append(
                    f"test restore of {len(mine)} file(s) of source {name!r} from snapshot "
                    f"{snap.short_id} failed: {str(exc).split(': restic: ', 1)[-1]}"
                )
                continue
            for path, node in mine:
                restored = into / path
                origin = folders.get(name)
                if not restored.is_file() or restored.stat().st_size != node.get("size"):
                    problems.append(f"test restore: {name}/{path} did not come back whole")
                elif (
                    origin is not None
                    and _unchanged(origin / path, node)
                    and not _same_bytes(restored, origin / path)
                ):
                    problems.append(
                        f"test restore: {name}/{path} differs from the source, which has not "
                        "changed since the snapshot"
                    )
    return len(chosen), problems


def rotate_key(repo: Repository, new_password_file: Path) -> tuple[str, str]:
    """Add a key for the new password, prove it opens the repository, then remove the key of
    the old one. Returns (removed key id, added key id)."""
    if not new_password_file.is_file() or not new_password_file.read_bytes().strip():
        raise BackupError(f"{new_password_file} is missing or empty")
    before = repo.list_keys()
    current = [k["id"] for k in before if k.get("current")]
    if len(current) != 1:
        raise BackupError("cannot tell which key the current password opens")
    repo.key_add(new_password_file)
    added = [k["id"] for k in repo.list_keys() if k["id"] not in {b["id"] for b in before}]
    if len(added) != 1:
        raise BackupError("restic added no key, or more than one")
    repo.run("cat", "config", "--no-lock", password_file=str(new_password_file), timeout=120)
    repo.key_remove(current[0], password_file=str(new_password_file))
    return current[0][:8], added[0][:8]

"""What a backup reads: folders, SQLite databases and PostgreSQL databases, and the errors a
backup or restore raises when it cannot succeed as configured."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from automation_pipelines.reliability.errors import PermanentError


class BackupError(PermanentError):
    """A backup or restore that cannot succeed as configured (missing source, bad snapshot)."""


class DestinationMissing(BackupError):
    """The destination folder is gone: unmounted, moved, or never created."""


def safe_relative(name: str) -> PurePosixPath:
    """A restored file's path under the target; one that would land outside it is refused."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BackupError(f"refusing to restore {name!r}: it would land outside the target")
    return path


def restore_plan(
    what: str,
    known: Iterable[str],
    files: Iterable[str] | None,
    target: Path,
    overwrite: bool,
) -> set[str]:
    """The files a restore writes (all of `known`, or `files`), checked before anything is
    written: an unknown one is named, and an existing file is never replaced unless
    `overwrite`."""
    known = set(known)
    wanted = known if files is None else set(files)
    unknown = sorted(wanted - known)
    if unknown:
        raise BackupError(
            f"{what} has no file {unknown[0]!r}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + "; `automation-pipelines backups list --files` shows what it holds"
        )
    checked: set[PurePosixPath] = set()
    for name in wanted:
        relative = safe_relative(name)
        if relative.parent not in checked:  # each folder once, not once per file in it
            no_link_on_the_way(target, relative)
            checked.add(relative.parent)
        existing = target / relative
        if (existing.exists() or existing.is_symlink()) and not overwrite:
            raise BackupError(f"{existing} exists; restore elsewhere or pass --overwrite")
    return wanted


def no_link_on_the_way(
    target: Path, relative: PurePosixPath, *, including_last: bool = False
) -> None:
    """Refuse a restore whose path passes through a symbolic link already in the target: the
    write would land wherever that link points, outside the target."""
    folder = target
    for part in relative.parts if including_last else relative.parts[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise BackupError(
                f"{folder} is a symbolic link; restoring {relative} through it could write "
                f"outside {target}: remove it or restore elsewhere"
            )


@dataclass(frozen=True)
class FolderSource:
    """A folder, backed up as it is."""

    name: str
    path: Path
    #: "fail": a missing folder fails the backup; "skip": it is noted and left out.
    missing: str = "fail"


@dataclass(frozen=True)
class SqliteSource:
    """A SQLite database, copied with its online backup API so writers need not stop."""

    name: str
    path: Path


@dataclass(frozen=True)
class PostgresSource:
    """A PostgreSQL database dumped with `pg_dump --format=custom`; the password comes from the
    environment (PGPASSWORD) or ~/.pgpass, never from the connection string."""

    name: str
    dsn: str
    pg_dump: str = "pg_dump"
    timeout_seconds: float = 3600.0
    #: Passed to pg_dump as PGPASSWORD; kept out of repr so it never reaches a log.
    password: str | None = field(default=None, repr=False)


Source = FolderSource | SqliteSource | PostgresSource


def check_destination(destination: Path) -> None:
    """Fail with the exact reason when a local destination cannot take a backup. It is never
    created here: an unmounted disk's empty mount point must not silently receive backups."""
    if not destination.exists():
        raise DestinationMissing(f"destination {destination} does not exist")
    if not destination.is_dir():
        raise BackupError(f"destination {destination} is not a folder")
    if not os.access(destination, os.W_OK | os.X_OK):
        raise BackupError(f"destination {destination} is not writable by this user")


def copy_sqlite_online(source: SqliteSource, copy: Path) -> None:
    """A consistent copy of a live database through SQLite's online backup API, which waits
    out writers instead of copying a file half-written."""
    if not source.path.is_file():
        raise BackupError(f"source {source.name!r}: database {source.path} does not exist")
    # mode=ro: a missing file must not be created empty by the backup itself.
    origin = sqlite3.connect(f"file:{source.path}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(copy)
    try:
        origin.backup(target)
    finally:
        target.close()
        origin.close()

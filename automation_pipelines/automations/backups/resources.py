"""What to back up, where to, and the limits of healthy: read from `backups.yaml`.

The repository password is no setting: the settings name the variables that hold it (or the
file holding it), read at run time and handed to restic in its environment only.

The file is validated strictly, because a typo there shows up weeks later as a backup that never
contained what everyone thought it did. The destination can be overridden from the environment,
so one reviewed file serves every machine. A password written into a PostgreSQL DSN is taken out
before the settings become the resource's config (which Dagster stores in clear in every job
snapshot and shows in the UI), and the backup then fails saying where the password belongs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
import yaml

from automation_pipelines.automations.backups.restic import Repository, ResticError, is_remote
from automation_pipelines.automations.backups.sources import (
    BackupError,
    FolderSource,
    PostgresSource,
    Source,
    SqliteSource,
)
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import credentials, store
from automation_pipelines.reliability.credentials import ProbeResult
from automation_pipelines.reliability.secrets import password_kind, strip_passwords

CONFIG_ENV = "BACKUPS_CONFIG_FILE"
DESTINATION_ENV = "BACKUP_DESTINATION"
PASSWORD_ENV = "BACKUP_RESTIC_PASSWORD"
PASSWORD_FILE_ENV = "BACKUP_RESTIC_PASSWORD_FILE"
#: The repository's folder inside a local destination; old archives stay beside it.
REPOSITORY_FOLDER = "restic"
_SOURCE_KINDS = ("folder", "sqlite", "postgres", "project_database")


class BackupConfigError(ValueError):
    """backups.yaml says something the automation cannot safely run on."""


def config_file() -> Path:
    override = os.environ.get(CONFIG_ENV)
    return Path(override) if override else PROJECT_ROOT / "backups.yaml"


def _project_path(value: str) -> str:
    path = Path(os.path.expandvars(value)).expanduser()
    return str(path if path.is_absolute() else PROJECT_ROOT / path)


def _destination(value: str) -> str:
    return value if is_remote(value) else _project_path(value)


def read_config(path: Path | None = None) -> dict[str, Any]:
    """The parsed file, checked: unknown keys and malformed sources are errors, not defaults."""
    file = path or config_file()
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupConfigError(f"{file} does not exist (set {CONFIG_ENV} or create it)") from None
    if not isinstance(raw, dict):
        raise BackupConfigError(f"{file}: expected a mapping at the top")
    known = {
        "destination",
        "schedule",
        "health_check",
        "max_age_hours",
        "retention",
        "min_free_percent",
        "sample_files",
        "compression",
        "check_days",
        "stale_lock_hours",
        "restic_options",
        "sources",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise BackupConfigError(f"{file}: unknown setting(s) {', '.join(unknown)}")
    sources = raw.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise BackupConfigError(f"{file}: `sources:` must name at least one source")
    for name, spec in sources.items():
        kinds = [k for k in _SOURCE_KINDS if isinstance(spec, dict) and k in spec]
        if len(kinds) != 1:
            raise BackupConfigError(
                f"{file}: source {name!r} needs exactly one of {', '.join(_SOURCE_KINDS)}"
            )
        extra = set(spec) - {kinds[0], "missing"}
        if extra or spec.get("missing", "fail") not in ("fail", "skip"):
            raise BackupConfigError(f"{file}: source {name!r}: unexpected {sorted(extra)}")
    options = raw.get("restic_options", [])
    if not isinstance(options, list) or not all(
        isinstance(o, str) and "=" in o and not o.startswith("=") for o in options
    ):
        raise BackupConfigError(
            f"{file}: `restic_options:` must be a list of key=value strings (restic's -o), "
            "e.g. sftp.command=ssh -i /path/key backup@host -s sftp"
        )
    for trigger in ("schedule", "health_check"):
        entry = raw.get(trigger)
        if not isinstance(entry, dict) or not isinstance(entry.get("cron"), str):
            raise BackupConfigError(f"{file}: `{trigger}:` needs a `cron:` line")
    return raw


def _without_passwords(
    sources: dict[str, dict[str, Any]], file: Path
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The sources with every password taken out of their PostgreSQL DSNs, and a problem per
    source that had one (naming the source, never the password)."""
    clean: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name, spec in sources.items():
        dsn = spec.get("postgres")
        kind = password_kind(dsn) if isinstance(dsn, str) else None
        if kind is None:
            clean[name] = spec
            continue
        clean[name] = {**spec, "postgres": strip_passwords(dsn)}
        problems.append(
            f"source {name!r}: {file.name} holds its password in {kind}, where Dagster would keep "
            "it in clear in the job's snapshot; remove it and give pg_dump the password through "
            "PGPASSWORD or ~/.pgpass of the backup's service account"
        )
    return clean, problems


class BackupSettings(dg.ConfigurableResource):
    """Where snapshots go and what they hold; `sources` maps a name to one kind of source.
    `config_problems` lists what backups.yaml got wrong in a way only a run may report (a
    password in a DSN): the backup fails with it instead of the code location failing to load."""

    destination: str
    sources: dict[str, dict[str, Any]]
    max_age_hours: float = 26.0
    keep_daily: int = 7
    keep_weekly: int = 4
    min_free_percent: float = 10.0
    sample_files: int = 20
    #: restic's --compression: auto, off or max.
    compression: str = "auto"
    #: `restic check --read-data-subset=n/check_days`, n by day: every pack read in that time.
    check_days: int = 7
    #: A lock older than this is reported; restic refreshes a live one every 5 minutes.
    stale_lock_hours: float = 6.0
    #: Names of the variables holding the repository password, or the path of a file with it.
    password_env: str = PASSWORD_ENV
    password_file_env: str = PASSWORD_FILE_ENV
    restic_binary: str = "restic"
    #: restic's cache folder; empty: restic's default (~/.cache/restic).
    cache_dir: str = ""
    #: Extended options (`-o key=value`), e.g. sftp.command for an SFTP destination; the
    #: health check measures that destination's free space through the same command.
    restic_options: list[str] = []
    config_problems: list[str] = []

    @classmethod
    def from_config(cls, path: Path | None = None) -> BackupSettings:
        """backups.yaml, with the destination from $BACKUP_DESTINATION when set."""
        raw = read_config(path)
        retention = raw.get("retention") or {}
        sources, problems = _without_passwords(raw["sources"], path or config_file())
        return cls(
            destination=_destination(os.environ.get(DESTINATION_ENV) or raw["destination"]),
            sources=sources,
            config_problems=problems,
            max_age_hours=float(raw.get("max_age_hours", 26)),
            keep_daily=int(retention.get("daily", 7)),
            keep_weekly=int(retention.get("weekly", 4)),
            min_free_percent=float(raw.get("min_free_percent", 10)),
            sample_files=int(raw.get("sample_files", 20)),
            compression=str(raw.get("compression", "auto")),
            check_days=int(raw.get("check_days", 7)),
            stale_lock_hours=float(raw.get("stale_lock_hours", 6)),
            restic_options=list(raw.get("restic_options", [])),
        )

    @property
    def destination_path(self) -> Path:
        return Path(self.destination)

    @property
    def local_destination(self) -> Path | None:
        """The destination folder, or None for a remote repository (sftp:, s3:, …)."""
        return None if is_remote(self.destination) else Path(self.destination)

    @property
    def repository_location(self) -> str:
        local = self.local_destination
        return str(local / REPOSITORY_FOLDER) if local is not None else self.destination

    def open_repository(self, password_file: str | None = None) -> Repository:
        """The repository, with the password from $BACKUP_RESTIC_PASSWORD or the file named by
        $BACKUP_RESTIC_PASSWORD_FILE, read now; fails loudly when neither is set."""
        password = os.environ.get(self.password_env) or None
        file = password_file or os.environ.get(self.password_file_env) or None
        if password is None and file is None:
            raise BackupError(
                f"no repository password: set {self.password_env} (or {self.password_file_env}, "
                "a file readable only by the backup's service account); see the backups runbook"
            )
        if file is not None and password is None and not Path(file).is_file():
            raise BackupError(f"{self.password_file_env} names {file}, which does not exist")
        return Repository(
            location=self.repository_location,
            password=None if password_file else password,
            password_file=file,
            binary=self.restic_binary,
            cache_dir=self.cache_dir or None,
            compression=self.compression,
            options=tuple(self.restic_options),
        )

    def folders(self) -> dict[str, Path]:
        """Folder sources by name: the health check compares restored files with them."""
        return {
            name: Path(_project_path(spec["folder"]))
            for name, spec in self.sources.items()
            if "folder" in spec
        }

    def expected_sources(self) -> list[str]:
        """Sources that must have a recent snapshot: all but skipped folders that are absent."""
        return [
            name
            for name, spec in self.sources.items()
            if not ("folder" in spec and spec.get("missing") == "skip")
            or Path(_project_path(spec["folder"])).exists()
        ]

    def resolved_sources(self, instance: dg.DagsterInstance | None = None) -> list[Source]:
        """The sources as the snapshot code takes them; the project database is whichever the
        project uses (SQLite file, or PostgreSQL through pg_dump). Raises `BackupConfigError`
        (permanent: the run fails once and the owner is alerted) while `config_problems` or a
        DSN still holds a password."""
        problems = list(self.config_problems) or [
            f"source {name!r}: its DSN holds a password; give pg_dump the password through "
            "PGPASSWORD or ~/.pgpass instead"
            for name, spec in self.sources.items()
            if isinstance(spec.get("postgres"), str) and password_kind(spec["postgres"])
        ]
        if problems:
            raise BackupConfigError("; ".join(problems))
        resolved: list[Source] = []
        for name, spec in self.sources.items():
            if "folder" in spec:
                path = Path(_project_path(spec["folder"]))
                resolved.append(FolderSource(name, path, spec.get("missing", "fail")))
            elif "sqlite" in spec:
                resolved.append(SqliteSource(name, Path(_project_path(spec["sqlite"]))))
            elif "postgres" in spec:
                resolved.append(PostgresSource(name, spec["postgres"]))
            else:
                root = instance.root_directory if instance is not None else None
                resolved.append(project_database_source(name, store.database_url(root)))
        return resolved


def project_database_source(name: str, url: str) -> Source:
    """SQLite through its backup API, or PostgreSQL through pg_dump with the password passed
    in the environment (never on the command line, where `ps` would show it)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return SqliteSource(name, Path(parsed.database or ""))
    parts = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "dbname": parsed.database,
    }
    dsn = " ".join(f"{key}={value}" for key, value in parts.items() if value)
    return PostgresSource(name, dsn, password=parsed.password)


def probe_restic_password(_credential: credentials.Credential, value: str) -> ProbeResult:
    """The daily credentials check's probe of the repository password: `restic cat config`
    opens the repository with it (nothing is locked or written)."""
    location = BackupSettings.from_config().repository_location
    try:
        found = Repository(location, password=value, timeout_seconds=60).exists()
    except ResticError as error:
        return ProbeResult(False, str(error))
    if not found:
        return ProbeResult(True, f"no repository at {location} yet; the first backup creates it")
    return ProbeResult(True, f"opens the repository {location}")


credentials.register_probe("restic_repository", probe_restic_password)

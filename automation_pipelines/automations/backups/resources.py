"""What to back up, where to, and the limits of healthy: read from `backups.yaml`.

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

from automation_pipelines.automations.backups.snapshots import (
    FolderSource,
    PostgresSource,
    Source,
    SqliteSource,
)
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import store
from automation_pipelines.reliability.secrets import password_kind, strip_passwords

CONFIG_ENV = "BACKUPS_CONFIG_FILE"
DESTINATION_ENV = "BACKUP_DESTINATION"
_SOURCE_KINDS = ("folder", "sqlite", "postgres", "project_database")


class BackupConfigError(ValueError):
    """backups.yaml says something the automation cannot safely run on."""


def config_file() -> Path:
    override = os.environ.get(CONFIG_ENV)
    return Path(override) if override else PROJECT_ROOT / "backups.yaml"


def _project_path(value: str) -> str:
    path = Path(os.path.expandvars(value)).expanduser()
    return str(path if path.is_absolute() else PROJECT_ROOT / path)


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
        "zstd_level",
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
    zstd_level: int = 3
    threads: int = 2
    config_problems: list[str] = []

    @classmethod
    def from_config(cls, path: Path | None = None) -> BackupSettings:
        """backups.yaml, with the destination from $BACKUP_DESTINATION when set."""
        raw = read_config(path)
        retention = raw.get("retention") or {}
        sources, problems = _without_passwords(raw["sources"], path or config_file())
        return cls(
            destination=_project_path(os.environ.get(DESTINATION_ENV) or raw["destination"]),
            sources=sources,
            config_problems=problems,
            max_age_hours=float(raw.get("max_age_hours", 26)),
            keep_daily=int(retention.get("daily", 7)),
            keep_weekly=int(retention.get("weekly", 4)),
            min_free_percent=float(raw.get("min_free_percent", 10)),
            sample_files=int(raw.get("sample_files", 20)),
            zstd_level=int(raw.get("zstd_level", 3)),
        )

    @property
    def destination_path(self) -> Path:
        return Path(self.destination)

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

"""Where the Dagster instance lives, decided the same way by every command and process.

The home is $DAGSTER_HOME, else `.dagster_home/` in the project; its dagster.yaml is a link to
the config in force: $AUTOMATION_INSTANCE_CONFIG, else `deploy/postgres/dagster.yaml` when the
PostgreSQL settings (DAGSTER_PG_HOST, …) are given, else the project's SQLite `dagster.yaml`.
`make run` and `make run-prod` make the link; every other command uses the home as it finds it
and refuses one linked to another config than the settings name, so nothing ever acts on a
store other than the one the running deployment uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import yaml

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.settings import ConfigurationError

HOME_ENV = "DAGSTER_HOME"
DEFAULT_HOME = PROJECT_ROOT / ".dagster_home"
DEFAULT_CONFIG = PROJECT_ROOT / "dagster.yaml"
POSTGRES_CONFIG = PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml"
CONFIG_ENV = "AUTOMATION_INSTANCE_CONFIG"
#: Setting this (in .env or the environment) puts the instance on PostgreSQL.
PG_HOST_ENV = "DAGSTER_PG_HOST"


def instance_config_path() -> Path:
    """The dagster.yaml the settings choose: $AUTOMATION_INSTANCE_CONFIG, else the PostgreSQL
    config when DAGSTER_PG_HOST is set, else the project's own (SQLite)."""
    configured = os.environ.get(CONFIG_ENV)
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else (PROJECT_ROOT / path)
    if os.environ.get(PG_HOST_ENV):
        return POSTGRES_CONFIG
    return DEFAULT_CONFIG


def home_path() -> Path:
    """$DAGSTER_HOME, else the project's `.dagster_home/`, as an absolute path (a relative one,
    as `.env` may give, is taken from the project root, not from wherever cron starts)."""
    path = Path(os.environ.get(HOME_ENV) or DEFAULT_HOME)
    return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()


def prepare_home(home: Path | None = None, config: Path | None = None) -> Path:
    """Create the instance home and link its dagster.yaml; return the absolute home path."""
    home = Path(home or home_path()).resolve()
    explicit = config is not None or bool(os.environ.get(CONFIG_ENV))
    config = (config or instance_config_path()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if target.exists() and not target.is_symlink():
        if explicit:
            raise FileExistsError(
                f"{target} is a file of its own, not a link to {config}; move it away or point "
                "DAGSTER_HOME at another folder"
            )
        return home
    if not config.is_file():
        raise FileNotFoundError(f"instance config {config} does not exist (see {CONFIG_ENV})")
    if not (target.is_symlink() and target.resolve() == config):
        target.unlink(missing_ok=True)
        target.symlink_to(config)
    return home


def instance_home() -> Path:
    """The home a command (not a starter) acts on: the one `make run` / `make run-prod` made.

    A home that does not exist yet is made with the config in force, unless DAGSTER_HOME names
    it (a typo would otherwise start an empty instance). A home linked to another config than
    the settings choose is refused: the processes running on it use that other store.
    """
    home = home_path()
    target = home / "dagster.yaml"
    if not target.exists():
        if os.environ.get(HOME_ENV) and not home.is_dir():
            raise ConfigurationError(
                f"DAGSTER_HOME={home} does not exist: point it at the instance home that "
                "`make run` or `make run-prod` uses (or unset it for the project's .dagster_home)"
            )
        return prepare_home(home)
    if target.is_symlink():
        linked, chosen = target.resolve(), instance_config_path().resolve()
        if linked != chosen:
            raise ConfigurationError(
                f"the instance at {home} runs on {_shown(linked)}, but the settings choose "
                f"{_shown(chosen)} ({_why_chosen()}): fix {CONFIG_ENV} / {PG_HOST_ENV} in .env, "
                "or restart the deployment with the new settings"
            )
    return home


def _shown(path: Path) -> str:
    try:
        return path.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def _why_chosen() -> str:
    if os.environ.get(CONFIG_ENV):
        return f"{CONFIG_ENV} is set"
    if os.environ.get(PG_HOST_ENV):
        return f"{PG_HOST_ENV} is set"
    return f"neither {CONFIG_ENV} nor {PG_HOST_ENV} is set"


@dataclass(frozen=True)
class Storage:
    """Where an instance keeps its runs and events, read off its dagster.yaml."""

    config: Path
    postgres_url: str | None = None  # a SQLAlchemy URL, when the instance is on PostgreSQL
    where: str = ""  # host:port/db, for messages (no password)
    settings: tuple[str, ...] = ()  # the variables the connection comes from

    @property
    def is_postgres(self) -> bool:
        return self.postgres_url is not None


def storage_of(home: Path) -> Storage:
    """The storage of the instance at `home` (its dagster.yaml, else the config in force)."""
    linked = Path(home) / "dagster.yaml"
    return config_storage(linked if linked.exists() else instance_config_path())


def config_storage(config: Path) -> Storage:
    """The storage an instance with this dagster.yaml uses."""
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigurationError(
            f"instance config {config} does not exist ({CONFIG_ENV})"
        ) from None
    section = _postgres_section(raw)
    if section is None:
        return Storage(config=config)
    return _postgres_storage(config, section)


def _postgres_section(raw: dict[str, Any]) -> dict[str, Any] | None:
    storage = raw.get("storage") or {}
    if isinstance(storage, dict) and isinstance(storage.get("postgres"), dict):
        return storage["postgres"]
    run_storage = raw.get("run_storage") or {}
    if isinstance(run_storage, dict) and "postgres" in str(run_storage.get("module", "")):
        return run_storage.get("config") or {}
    return None


def _postgres_storage(config: Path, section: dict[str, Any]) -> Storage:
    missing: list[str] = []
    names: list[str] = []

    def value(raw: Any, *, required: bool = True) -> str | None:
        if isinstance(raw, dict) and "env" in raw:
            names.append(raw["env"])
            found = os.environ.get(raw["env"])
            if found is None and required:
                missing.append(raw["env"])
            return found
        return None if raw is None else str(raw)

    if "postgres_url" in section:
        url = value(section["postgres_url"])
        if missing or not url:
            raise _missing(config, missing or ["postgres_url"])
        sa_url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
        where = sa_url.rsplit("@", 1)[-1].split("?")[0]
        return Storage(config, sa_url, where, tuple(names))
    db = section.get("postgres_db") or {}
    host = value(db.get("hostname"))
    port = value(db.get("port"), required=False) or "5432"
    name = value(db.get("db_name"))
    user = value(db.get("username"))
    password = value(db.get("password")) if "password" in db else ""
    params = db.get("params") or {}
    if missing:
        raise _missing(config, missing)
    auth = quote(user or "", safe="")
    if password:
        auth += ":" + quote(password, safe="")
    query = f"?{urlencode(params)}" if params else ""
    where = f"{host}:{port}/{name}"
    return Storage(
        config, f"postgresql+psycopg2://{auth}@{where}{query}", where, tuple(dict.fromkeys(names))
    )


def _missing(config: Path, names: list[str]) -> ConfigurationError:
    verb = "is" if len(names) == 1 else "are"
    return ConfigurationError(
        f"the instance ({_shown(config.resolve())}) stores everything in PostgreSQL, but "
        f"{', '.join(names)} {verb} not set: set {'it' if len(names) == 1 else 'them'} in the "
        "project's .env (or the environment)"
    )

"""The project database: durable state of our own (alert outbox, incidents) beside Dagster's.

SQLite in WAL mode inside the instance home by default; PostgreSQL when AUTOMATION_DB_URL is set,
or when the instance itself runs on PostgreSQL (its dagster.yaml says so), so a team shares one
server and the project's state always lives beside the instance's.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import sqlalchemy as sa

from automation_pipelines.instance import home_path, storage_of
from automation_pipelines.settings import ConfigurationError

DB_URL_ENV = "AUTOMATION_DB_URL"
DB_FILE = "automation_pipelines.db"

metadata = sa.MetaData()

_engines: dict[str, sa.Engine] = {}
#: How many tables of `metadata` each engine's database has had created so far.
_tables_created: dict[str, int] = {}
_lock = threading.Lock()


def database_url(instance_root: str | Path | None = None) -> str:
    """AUTOMATION_DB_URL, else the PostgreSQL server of the instance at `instance_root` (default:
    the instance home), else SQLite in that home. An instance on PostgreSQL whose settings are
    missing raises `ConfigurationError`: its state never goes to a SQLite file by mistake."""
    return database_target(instance_root)[0]


def database_target(instance_root: str | Path | None = None) -> tuple[str, str]:
    """The project database's URL and, for messages, the settings it comes from."""
    explicit = os.environ.get(DB_URL_ENV)
    if explicit:
        return explicit, DB_URL_ENV
    root = Path(instance_root) if instance_root else home_path()
    storage = storage_of(root)
    if storage.postgres_url:
        return storage.postgres_url, ", ".join(storage.settings) or str(storage.config)
    return f"sqlite:///{root.resolve() / DB_FILE}", f"DAGSTER_HOME={root}"


def check_reachable(instance_root: str | Path | None = None, timeout: int = 5) -> str:
    """The project database's URL after one round trip to it; `ConfigurationError` naming the
    settings when it cannot be reached, so a command fails clearly instead of half-acting."""
    url, named = database_target(instance_root)
    if url.startswith("sqlite"):
        return url
    probe = sa.create_engine(
        url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": timeout}
    )
    try:
        with probe.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        where = sa.engine.make_url(url).render_as_string(hide_password=True)
        raise ConfigurationError(
            f"cannot reach the project database {where} (settings: {named}): {reason}"
        ) from None
    finally:
        probe.dispose()
    return url


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _create_tables(created: sa.Engine) -> None:
    try:
        metadata.create_all(created)
    except sa.exc.DBAPIError:
        # Another process created the same tables at the same moment (PostgreSQL).
        metadata.create_all(created)


def engine(url: str, *, lazy: bool = False) -> sa.Engine:
    """One engine per URL per process, with every table of `metadata` created — including
    tables of modules imported after the engine was first made. With `lazy`, a database that
    is down now does not stop the caller: its tables are made by a later call (`ensure_tables`)
    once it is back, so a process can start, answer 503 and wait for its database."""
    with _lock:
        found = _engines.get(url)
        if found is None:
            if url.startswith("sqlite"):
                found = sa.create_engine(url, connect_args={"timeout": 30})
                sa.event.listen(found, "connect", _sqlite_pragmas)
            else:
                found = sa.create_engine(
                    url, pool_pre_ping=True, connect_args={"connect_timeout": 10}
                )
            _engines[url] = found
            _tables_created[url] = -1
        if _tables_created[url] != len(metadata.tables):
            try:
                _create_tables(found)
            except sa.exc.DBAPIError:
                if lazy:
                    return found
                raise
            _tables_created[url] = len(metadata.tables)
        return found


def ensure_tables(created: sa.Engine) -> None:
    """Create the tables of an engine made with `lazy=True` (raises while its database is down)."""
    for url, known in list(_engines.items()):
        if known is created:
            engine(url)
            return


def dispose_all() -> None:
    """Close every pooled connection (tests, and processes about to fork)."""
    with _lock:
        for created in _engines.values():
            created.dispose()
        _engines.clear()
        _tables_created.clear()

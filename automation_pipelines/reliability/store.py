"""The project database: durable state of our own (alert outbox, incidents) beside Dagster's.

SQLite in WAL mode inside the instance home by default; PostgreSQL when AUTOMATION_DB_URL is set,
or when the instance itself runs on PostgreSQL (DAGSTER_PG_* set), so a team shares one server.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

DB_URL_ENV = "AUTOMATION_DB_URL"
DB_FILE = "automation_pipelines.db"

metadata = sa.MetaData()

_engines: dict[str, sa.Engine] = {}
#: How many tables of `metadata` each engine's database has had created so far.
_tables_created: dict[str, int] = {}
_lock = threading.Lock()


def database_url(instance_root: str | Path | None = None) -> str:
    """AUTOMATION_DB_URL, else the instance's PostgreSQL, else SQLite in the instance home."""
    explicit = os.environ.get(DB_URL_ENV)
    if explicit:
        return explicit
    if os.environ.get("DAGSTER_PG_HOST"):
        user = quote(os.environ.get("DAGSTER_PG_USERNAME") or "postgres", safe="")
        password = quote(os.environ.get("DAGSTER_PG_PASSWORD") or "", safe="")
        auth = f"{user}:{password}" if password else user
        host = os.environ["DAGSTER_PG_HOST"]
        port = os.environ.get("DAGSTER_PG_PORT") or "5432"
        name = os.environ.get("DAGSTER_PG_DB") or "dagster"
        return f"postgresql+psycopg2://{auth}@{host}:{port}/{name}"
    root = instance_root or os.environ.get("DAGSTER_HOME")
    if not root:
        raise RuntimeError(f"no project database: set {DB_URL_ENV} or DAGSTER_HOME")
    return f"sqlite:///{Path(root).resolve() / DB_FILE}"


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


def engine(url: str) -> sa.Engine:
    """One engine per URL per process, with every table of `metadata` created — including
    tables of modules imported after the engine was first made."""
    with _lock:
        found = _engines.get(url)
        if found is not None:
            if _tables_created[url] != len(metadata.tables):
                _create_tables(found)
                _tables_created[url] = len(metadata.tables)
            return found
        if url.startswith("sqlite"):
            created = sa.create_engine(url, connect_args={"timeout": 30})
            sa.event.listen(created, "connect", _sqlite_pragmas)
        else:
            created = sa.create_engine(
                url, pool_pre_ping=True, connect_args={"connect_timeout": 10}
            )
        _create_tables(created)
        _engines[url] = created
        _tables_created[url] = len(metadata.tables)
        return created


def dispose_all() -> None:
    """Close every pooled connection (tests, and processes about to fork)."""
    with _lock:
        for created in _engines.values():
            created.dispose()
        _engines.clear()
        _tables_created.clear()

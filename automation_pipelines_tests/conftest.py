"""Fixtures shared by every test: instance homes on the project's configs, and PostgreSQL.

PostgreSQL is found through AP_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test).
When it is unreachable the tests that need it skip, naming that variable, unless
AP_REQUIRE_POSTGRES=1 (set by .ci/run) makes that a failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg2
import pytest
from hypothesis import settings as hypothesis_settings

from automation_pipelines.instance import DEFAULT_CONFIG, prepare_home
from automation_pipelines.paths import PROJECT_ROOT

# Property-based tests: no timing deadline (the machine may be busy), no example database in
# the tree; CI replays the same examples on every run, a developer's run explores new ones.
hypothesis_settings.register_profile(
    "project", deadline=None, database=None, derandomize=os.environ.get("CI") == "true"
)
hypothesis_settings.load_profile("project")

# Commands read the project's .env; a developer's own must not leak into the tests (the tests that
# are about .env give their commands a project copy with one of its own).
os.environ["AUTOMATION_ENV_FILE"] = os.devnull

#: What deploy/postgres/dagster.yaml reads, and with AUTOMATION_DB_URL, every variable that would
#: point the project database elsewhere than the instance home.
PG_VARIABLES = (
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_DB",
    "DAGSTER_PG_USERNAME",
    "DAGSTER_PG_PASSWORD",
)
DATABASE_ENV = ("AUTOMATION_DB_URL", *PG_VARIABLES)

POSTGRES_URL_ENV = "AP_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "AP_REQUIRE_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_CONFIG = PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml"


@pytest.fixture
def sqlite_home(tmp_path: Path) -> Path:
    """An instance home that uses the project's own dagster.yaml (SQLite)."""
    return prepare_home(tmp_path / "dagster_home", DEFAULT_CONFIG)


@pytest.fixture
def sqlite_instance(sqlite_home: Path) -> Iterator[dg.DagsterInstance]:
    instance = dg.DagsterInstance.from_config(str(sqlite_home))
    try:
        yield instance
    finally:
        instance.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> dict[str, str]:
    """Connection settings of the test server; skip (or fail in CI) when it is unreachable."""
    url = os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL
    parts = urlsplit(url)
    settings = {
        "host": parts.hostname or "127.0.0.1",
        "port": str(parts.port or 5432),
        "user": parts.username or "postgres",
        "password": parts.password or "",
        "dbname": parts.path.lstrip("/") or "test",
    }
    try:
        psycopg2.connect(connect_timeout=3, **settings).close()
    except psycopg2.OperationalError as error:
        reason = f"PostgreSQL at {POSTGRES_URL_ENV}={url} is unreachable: {error}".strip()
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_POSTGRES_ENV}=1 forbids skipping)")
        pytest.skip(reason)
    return settings


@pytest.fixture
def postgres_database(postgres_server: dict[str, str]) -> Iterator[dict[str, str]]:
    """A fresh database on the test server, dropped afterwards, so tests never share state."""
    name = f"ap_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(connect_timeout=3, **postgres_server)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {**postgres_server, "dbname": name}
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def postgres_env(postgres_database: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict:
    """The DAGSTER_PG_* variables deploy/postgres/dagster.yaml reads, set for a fresh database."""
    env = {
        "DAGSTER_PG_HOST": postgres_database["host"],
        "DAGSTER_PG_PORT": postgres_database["port"],
        "DAGSTER_PG_DB": postgres_database["dbname"],
        "DAGSTER_PG_USERNAME": postgres_database["user"],
        "DAGSTER_PG_PASSWORD": postgres_database["password"],
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def json_receiver():
    from automation_pipelines_tests.alert_peers import JsonReceiver

    receiver = JsonReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def smtp_receiver():
    from automation_pipelines_tests.alert_peers import SmtpReceiver

    receiver = SmtpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def alert_routes(tmp_path: Path) -> Path:
    """Routes for tests: owner team:test → $TEST_ALERT_URLS, everyone else → $TEST_DEFAULT_URLS."""
    path = tmp_path / "alert_routes.yaml"
    path.write_text("default: [TEST_DEFAULT_URLS]\nowners:\n  team:test: [TEST_ALERT_URLS]\n")
    return path


@pytest.fixture
def alert_router(tmp_path: Path, alert_routes: Path):
    """An AlertRouter on a SQLite outbox in tmp_path that retries deliveries at once."""
    from automation_pipelines.reliability.alerts import AlertRouter

    return AlertRouter(
        ui_base_url="http://dagster.example:3000",
        database_url=f"sqlite:///{tmp_path / 'outbox.db'}",
        routes_file=str(alert_routes),
        retry_base_seconds=0.0,
        retry_max_seconds=0.0,
    )


def sqlalchemy_url(db: dict[str, str]) -> str:
    auth = f"{db['user']}:{db['password']}" if db["password"] else db["user"]
    return f"postgresql+psycopg2://{auth}@{db['host']}:{db['port']}/{db['dbname']}"


@pytest.fixture
def events_db_url_postgres(postgres_database: dict[str, str]) -> Iterator[str]:
    """A fresh PostgreSQL database as a SQLAlchemy URL for the project database."""
    from automation_pipelines.reliability import store

    yield sqlalchemy_url(postgres_database)
    # Before postgres_database drops the database: no pooled connection may hold it.
    store.dispose_all()


@pytest.fixture(params=["sqlite", "postgres"])
def events_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The project database on SQLite and on PostgreSQL: code that keeps state runs on both."""
    from automation_pipelines.reliability import store

    if request.param == "postgres":
        yield request.getfixturevalue("events_db_url_postgres")
        return
    yield f"sqlite:///{tmp_path / 'project.db'}"
    store.dispose_all()


def require_program(path: Path, package: str) -> Path:
    """`path` of a Debian package's program; skip when it is missing, or fail where CI forbids
    skipping."""
    if path.is_file() and os.access(path, os.X_OK):
        return path
    reason = (
        f"{path} is missing: install Debian's package with `sudo apt-get install {package}` "
        "(make test does it when it can)"
    )
    if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_POSTGRES_ENV}=1 forbids skipping)")
    pytest.skip(reason)


@pytest.fixture
def small_volume(tmp_path: Path):
    """An 8 MB tmpfs, unmounted (lazily, even if busy) whatever happens."""
    if os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("mounting a tmpfs needs root (this test runs as root in CI)")
    volume = tmp_path / "vol"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(volume)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {volume} (needs root): {mounted.stderr.strip()}")
    try:
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)

"""The project database: SQLite in WAL mode in the instance home by default, PostgreSQL settings
followed when given, and tables of modules imported after the first engine still created."""

from __future__ import annotations

import sqlalchemy as sa

from automation_pipelines.reliability import store


def test_default_is_sqlite_in_the_instance_home(tmp_path, monkeypatch) -> None:
    for name in ("AUTOMATION_DB_URL", "DAGSTER_PG_HOST"):
        monkeypatch.delenv(name, raising=False)
    url = store.database_url(tmp_path)
    assert url == f"sqlite:///{tmp_path.resolve() / 'automation_pipelines.db'}"
    with store.engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_explicit_url_wins(monkeypatch) -> None:
    monkeypatch.setenv("AUTOMATION_DB_URL", "sqlite:////srv/x.db")
    monkeypatch.setenv("DAGSTER_PG_HOST", "db.example.org")
    assert store.database_url("/anywhere") == "sqlite:////srv/x.db"


def test_postgres_url_from_instance_settings(monkeypatch, tmp_path) -> None:
    # A home without a linked dagster.yaml: the config in force decides, whatever a
    # developer's own .dagster_home links to.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.delenv("AUTOMATION_DB_URL", raising=False)
    monkeypatch.setenv("DAGSTER_PG_HOST", "db.example.org")
    monkeypatch.setenv("DAGSTER_PG_USERNAME", "dagster")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "p@ss word")
    monkeypatch.setenv("DAGSTER_PG_DB", "prod")
    monkeypatch.delenv("DAGSTER_PG_PORT", raising=False)
    assert store.database_url() == (
        "postgresql+psycopg2://dagster:p%40ss%20word@db.example.org:5432/prod"
    )


def test_tables_defined_after_the_first_engine_are_created(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'late.db'}"
    engine = store.engine(url)
    late = sa.Table("ap_test_late", store.metadata, sa.Column("id", sa.Integer, primary_key=True))
    try:
        assert not sa.inspect(engine).has_table("ap_test_late")
        assert store.engine(url) is engine
        assert sa.inspect(engine).has_table("ap_test_late")
    finally:
        store.metadata.remove(late)

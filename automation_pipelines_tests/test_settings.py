"""One configuration for every command: `.env` under the environment, the instance and the project
database decided from it the same way everywhere, and no silent fallback to a new SQLite file when
the instance is on PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from automation_pipelines import instance, settings
from automation_pipelines.instance import DEFAULT_CONFIG, POSTGRES_CONFIG, prepare_home
from automation_pipelines.reliability import store
from automation_pipelines.settings import ConfigurationError
from automation_pipelines_tests.conftest import DATABASE_ENV, PG_VARIABLES


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No instance or database settings in the environment; .env is tmp_path/.env."""
    for name in (*DATABASE_ENV, "AUTOMATION_INSTANCE_CONFIG", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(settings.ENV_FILE_ENV, str(tmp_path / ".env"))
    return monkeypatch


def test_env_file_fills_what_the_environment_lacks(clean, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AP_TEST_A=from-file\nAP_TEST_B=from-file\n")
    clean.setenv("AP_TEST_B", "from-environment")
    clean.delenv("AP_TEST_A", raising=False)

    assert settings.load_project_env() == tmp_path / ".env"

    assert os.environ["AP_TEST_A"] == "from-file"
    assert os.environ["AP_TEST_B"] == "from-environment"
    clean.delenv("AP_TEST_A")


def test_reading_the_env_file_again_replaces_what_came_from_it_only(clean, tmp_path) -> None:
    env = tmp_path / ".env"
    env.write_text("AP_TEST_A=old\nAP_TEST_B=from-file\nAP_TEST_C=going\n")
    clean.setenv("AP_TEST_B", "from-environment")
    for name in ("AP_TEST_A", "AP_TEST_C", "AP_TEST_D", settings.FROM_FILE_ENV):
        clean.delenv(name, raising=False)
    settings.load_project_env()
    env.write_text("AP_TEST_A=new\nAP_TEST_B=changed-in-file\nAP_TEST_D=added\n")

    settings.reload_project_env()

    assert os.environ["AP_TEST_A"] == "new"
    assert os.environ["AP_TEST_B"] == "from-environment"  # the environment proper still wins
    assert "AP_TEST_C" not in os.environ
    assert os.environ["AP_TEST_D"] == "added"
    assert os.environ[settings.FROM_FILE_ENV] == "AP_TEST_A,AP_TEST_D"
    for name in ("AP_TEST_A", "AP_TEST_D", settings.FROM_FILE_ENV):
        clean.delenv(name)


def test_no_env_file_is_fine(clean) -> None:
    assert settings.load_project_env() is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [("abc", "WEBHOOKS_PORT='abc' is not a whole number"), ("0", "between 1 and 65535")],
)
def test_bad_port_names_the_variable(clean, raw: str, message: str) -> None:
    clean.setenv("WEBHOOKS_PORT", raw)
    with pytest.raises(ConfigurationError, match=message):
        settings.port("WEBHOOKS_PORT", 3001)


def test_runbook_links_follow_the_base_url_from_the_env_file(clean, tmp_path: Path) -> None:
    clean.delenv(settings.RUNBOOK_BASE_URL_ENV, raising=False)
    path = "automation_pipelines/automations/disk_space/README.md"
    assert settings.runbook_url(path) == f"{settings.DEFAULT_RUNBOOK_BASE_URL}/{path}"
    (tmp_path / ".env").write_text("RUNBOOK_BASE_URL=https://git.team.example/ops/src/main/\n")
    settings.load_project_env()

    assert settings.runbook_url(path) == f"https://git.team.example/ops/src/main/{path}"
    clean.delenv(settings.RUNBOOK_BASE_URL_ENV)


@pytest.mark.parametrize("raw", ["git.team.example/ops", "file:///srv/repo", "https://"])
def test_a_runbook_base_url_that_would_not_open_names_the_variable(clean, raw: str) -> None:
    clean.setenv(settings.RUNBOOK_BASE_URL_ENV, raw)
    with pytest.raises(ConfigurationError, match=r"RUNBOOK_BASE_URL=.* is not an http"):
        settings.runbook_url("README.md")


def test_postgres_settings_choose_the_postgres_instance(clean) -> None:
    assert instance.instance_config_path() == DEFAULT_CONFIG
    clean.setenv("DAGSTER_PG_HOST", "db.example.org")
    assert instance.instance_config_path() == POSTGRES_CONFIG
    clean.setenv("AUTOMATION_INSTANCE_CONFIG", "dagster.yaml")
    assert instance.instance_config_path() == DEFAULT_CONFIG


def test_postgres_instance_without_its_settings_never_falls_back_to_sqlite(
    clean, tmp_path: Path
) -> None:
    home = prepare_home(tmp_path / "home", POSTGRES_CONFIG)
    clean.setenv("DAGSTER_PG_HOST", "db.example.org")
    clean.setenv("DAGSTER_PG_PORT", "5432")

    with pytest.raises(ConfigurationError) as raised:
        store.database_url(home)

    message = str(raised.value)
    assert "DAGSTER_PG_DB, DAGSTER_PG_USERNAME, DAGSTER_PG_PASSWORD are not set" in message
    assert "deploy/postgres/dagster.yaml" in message
    assert not (home / store.DB_FILE).exists()


def test_postgres_url_is_built_from_the_instance_config(clean, tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home", POSTGRES_CONFIG)
    values = ["db.example.org", "6543", "prod", "dag ster", "p@ss:word"]
    for name, value in zip(PG_VARIABLES, values, strict=True):
        clean.setenv(name, value)

    url, named = store.database_target(home)

    assert url == "postgresql+psycopg2://dag%20ster:p%40ss%3Aword@db.example.org:6543/prod"
    assert named == ", ".join(PG_VARIABLES)


def test_postgres_url_form_and_literal_values(clean, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_url:\n      env: AP_TEST_PG_URL\n"
    )
    with pytest.raises(ConfigurationError, match="AP_TEST_PG_URL is not set"):
        store.database_url(home)
    clean.setenv("AP_TEST_PG_URL", "postgresql://u:p@h:5/d")
    assert store.database_url(home) == "postgresql+psycopg2://u:p@h:5/d"

    (home / "dagster.yaml").write_text(
        "run_storage:\n  module: dagster_postgres.run_storage\n  class: PostgresRunStorage\n"
        "  config:\n    postgres_db:\n      hostname: h\n      db_name: d\n      username: u\n"
    )
    assert store.database_url(home) == "postgresql+psycopg2://u@h:5432/d"


def test_sqlite_instance_keeps_its_database_in_the_home(clean, tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home", DEFAULT_CONFIG)
    clean.setenv("DAGSTER_PG_HOST", "db.example.org")  # the home's own config decides

    assert store.database_url(home) == f"sqlite:///{home / store.DB_FILE}"


def test_commands_refuse_a_home_linked_to_another_config(clean, tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home", DEFAULT_CONFIG)
    clean.setenv("DAGSTER_HOME", str(home))
    assert instance.instance_home() == home

    clean.setenv("DAGSTER_PG_HOST", "db.example.org")
    with pytest.raises(ConfigurationError, match=r"runs on dagster\.yaml, but the settings choose"):
        instance.instance_home()
    assert (home / "dagster.yaml").resolve() == DEFAULT_CONFIG  # left as the deployment made it


def test_a_named_home_that_does_not_exist_is_an_error(clean, tmp_path: Path) -> None:
    clean.setenv("DAGSTER_HOME", str(tmp_path / "typo"))
    with pytest.raises(ConfigurationError, match="typo does not exist"):
        instance.instance_home()
    assert not (tmp_path / "typo").exists()


@pytest.mark.postgres
def test_unreachable_postgres_names_its_settings(clean, tmp_path: Path, postgres_env) -> None:
    for name, value in postgres_env.items():
        clean.setenv(name, value)
    home = prepare_home(tmp_path / "home", POSTGRES_CONFIG)
    assert store.check_reachable(home).startswith("postgresql+psycopg2://")

    from automation_pipelines.local_stack import free_port

    clean.setenv("DAGSTER_PG_PORT", str(free_port()))  # nothing listens there
    with pytest.raises(ConfigurationError) as raised:
        store.check_reachable(home, timeout=2)
    assert "cannot reach the project database" in str(raised.value)
    assert "DAGSTER_PG_HOST, DAGSTER_PG_PORT" in str(raised.value)


def test_a_relative_home_is_taken_from_the_project_root(clean, tmp_path: Path) -> None:
    from automation_pipelines.paths import PROJECT_ROOT

    clean.setenv("DAGSTER_HOME", "instances/team")
    clean.chdir(tmp_path)
    assert instance.home_path() == PROJECT_ROOT / "instances" / "team"

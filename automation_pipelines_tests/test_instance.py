"""The instance configs: what dagster.yaml promises, history that survives a restart (SQLite),
and runs and events read back from a real PostgreSQL through deploy/postgres/dagster.yaml."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml

from automation_pipelines.instance import DEFAULT_CONFIG, prepare_home
from automation_pipelines_tests.conftest import POSTGRES_CONFIG


@dg.op
def add_numbers() -> int:
    return 2 + 3


@dg.job(tags={"automation": "instance_test"})
def instance_test_job():
    add_numbers()


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_local_instance_settings(sqlite_instance: dg.DagsterInstance) -> None:
    instance = sqlite_instance
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    concurrency = instance.get_concurrency_config()
    assert concurrency.run_queue_config.max_concurrent_runs == 4
    assert concurrency.run_queue_config.tag_concurrency_limits == []
    assert concurrency.run_queue_config.should_block_op_concurrency_limited_runs
    assert concurrency.pool_config.pool_granularity.value == "run"
    assert concurrency.pool_config.default_pool_limit == 1
    assert instance.event_log_storage.supports_global_concurrency_limits
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_max_resume_run_attempts == 0
    assert instance.run_monitoring_max_runtime_seconds == 7200
    assert instance.run_retries_enabled
    assert instance.run_retries_max_retries == 1
    assert instance.run_retries_retry_on_asset_or_op_failure is False
    config = _load(DEFAULT_CONFIG)
    assert config["telemetry"] == {"enabled": False}
    assert config["retention"]["schedule"]["purge_after_days"] > 0


def test_postgres_config_keeps_the_local_limits() -> None:
    local, team = _load(DEFAULT_CONFIG), _load(POSTGRES_CONFIG)
    assert "postgres" in team["storage"]
    assert {k: v for k, v in local.items() if k != "storage"} == {
        k: v for k, v in team.items() if k != "storage"
    }


def test_postgres_config_reads_every_connection_setting_from_env() -> None:
    db = _load(POSTGRES_CONFIG)["storage"]["postgres"]["postgres_db"]
    assert set(db) == {"hostname", "port", "db_name", "username", "password"}
    assert all(set(value) == {"env"} for value in db.values()), db


def test_history_survives_an_instance_restart(sqlite_home: Path) -> None:
    first = dg.DagsterInstance.from_config(str(sqlite_home))
    result = instance_test_job.execute_in_process(instance=first)
    run_id = result.run_id
    first.dispose()

    second = dg.DagsterInstance.from_config(str(sqlite_home))
    try:
        run = second.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        events = [
            r.event_log_entry.dagster_event_type for r in second.get_records_for_run(run_id).records
        ]
        assert dg.DagsterEventType.STEP_SUCCESS in events
        assert (sqlite_home / "history" / "runs.db").is_file()
    finally:
        second.dispose()


def test_prepare_home_links_the_config_and_refuses_a_foreign_one(tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home", DEFAULT_CONFIG)
    link = home / "dagster.yaml"
    assert link.is_symlink() and link.resolve() == DEFAULT_CONFIG.resolve()
    assert prepare_home(home, POSTGRES_CONFIG) == home
    assert link.resolve() == POSTGRES_CONFIG.resolve()

    own = prepare_home(tmp_path / "own")
    (own / "dagster.yaml").unlink()
    (own / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.raises(FileExistsError, match="file of its own"):
        prepare_home(own, DEFAULT_CONFIG)


@pytest.mark.postgres
def test_runs_and_events_are_stored_in_postgres(
    tmp_path: Path, postgres_env: dict[str, str], postgres_database: dict[str, str]
) -> None:
    home = prepare_home(tmp_path / "pg_home", POSTGRES_CONFIG)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        result = instance_test_job.execute_in_process(instance=instance)
        assert result.success
        assert result.output_for_node("add_numbers") == 5
    finally:
        instance.dispose()

    with psycopg2.connect(connect_timeout=3, **postgres_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, pipeline_name FROM runs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchall() == [("SUCCESS", "instance_test_job")]
        cur.execute("SELECT dagster_event_type FROM event_logs WHERE run_id = %s", (result.run_id,))
        kinds = {row[0] for row in cur.fetchall()}
    # Dagster stores run-level events under their older PIPELINE_* names.
    assert {"PIPELINE_START", "STEP_SUCCESS", "PIPELINE_SUCCESS"} <= kinds

    reopened = dg.DagsterInstance.from_config(str(home))
    try:
        assert reopened.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
    finally:
        reopened.dispose()

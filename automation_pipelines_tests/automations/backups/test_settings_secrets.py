"""A PostgreSQL password written into backups.yaml never reaches Dagster's storage: the settings
the job carries (its snapshot, shown in the UI) and its run config hold the DSN without it, and
the backup fails with an error that says where the password belongs instead. The credentials
check's restic_repository probe tells a repository password that opens it from one that does
not."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.automations.backups import assets
from automation_pipelines.automations.backups.jobs import backup_snapshots_job
from automation_pipelines.automations.backups.resources import BackupSettings

PASSWORD = "Leaky-Backup-Pw-5521"


@pytest.fixture
def leaky_config(tmp_path: Path) -> Path:
    path = tmp_path / "backups.yaml"
    path.write_text(
        f"""\
destination: {tmp_path / "dest"}
schedule: {{cron: "30 2 * * *"}}
health_check: {{cron: "0 7 * * *"}}
sources:
  billing: {{postgres: "host=127.0.0.1 user=backup password={PASSWORD} dbname=billing"}}
  ledger: {{postgres: "postgresql://backup:{PASSWORD}@127.0.0.1:5432/ledger"}}
"""
    )
    (tmp_path / "dest").mkdir()
    return path


def test_the_password_is_taken_out_of_the_settings(leaky_config: Path) -> None:
    settings = BackupSettings.from_config(leaky_config)
    assert settings.sources == {
        "billing": {"postgres": "host=127.0.0.1 user=backup dbname=billing"},
        "ledger": {"postgres": "postgresql://backup@127.0.0.1:5432/ledger"},
    }
    assert [p.split(":")[0] for p in settings.config_problems] == [
        "source 'billing'",
        "source 'ledger'",
    ]


def test_no_password_in_the_job_snapshot_run_config_or_events(
    leaky_config: Path, sqlite_instance: dg.DagsterInstance, alert_router
) -> None:
    defs = dg.Definitions(
        assets=[assets.backup_snapshots],
        jobs=[backup_snapshots_job],
        resources={"backups": BackupSettings.from_config(leaky_config), "alerts": alert_router},
    )
    job = defs.resolve_job_def(backup_snapshots_job.name)
    result = job.execute_in_process(instance=sqlite_instance, raise_on_error=False)

    assert not result.success
    run = sqlite_instance.get_run_by_id(result.run_id)
    snapshot = sqlite_instance.get_job_snapshot(run.job_snapshot_id)
    stored = [
        dg.serialize_value(snapshot),
        repr(run.run_config),
        *(str(r.event_log_entry) for r in sqlite_instance.get_records_for_run(run.run_id).records),
    ]
    assert "billing" in stored[0] and "dbname=billing" in stored[0]  # the settings are there
    assert not [text for text in stored if PASSWORD in text]

    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "source 'billing': backups.yaml holds its password" in message
    assert "PGPASSWORD or ~/.pgpass" in message
    assert "Failure: BackupConfigError: source 'billing'" in message
    assert "(permanent" in message  # no op retries: it fails once and alerts the owner


def test_the_project_backups_yaml_has_no_problem() -> None:
    settings = BackupSettings.from_config()
    assert settings.config_problems == []


def test_the_credentials_probe_opens_the_repository(tmp_path, monkeypatch, restic_env) -> None:
    from automation_pipelines.reliability import credentials

    config = tmp_path / "backups.yaml"
    config.write_text(
        f"destination: {tmp_path / 'dest'}\nschedule: {{cron: '30 2 * * *'}}\n"
        f"health_check: {{cron: '0 7 * * *'}}\nsources:\n  docs: {{folder: {tmp_path}}}\n"
    )
    (tmp_path / "dest").mkdir()
    monkeypatch.setenv("BACKUPS_CONFIG_FILE", str(config))
    [entry] = [c for c in credentials.load().credentials if c.probe == "restic_repository"]
    probe = credentials.PROBE_FUNCTIONS["restic_repository"]
    before = probe(entry, restic_env)
    settings = BackupSettings.from_config()
    settings.open_repository().init()

    assert before.ok and "the first backup creates it" in before.sentence
    assert probe(entry, restic_env).sentence == f"opens the repository {tmp_path / 'dest/restic'}"
    wrong = probe(entry, "not-the-password")
    assert not wrong.ok and "does not open with the configured password" in wrong.sentence

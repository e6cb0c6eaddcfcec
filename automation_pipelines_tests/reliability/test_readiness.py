"""The readiness checklist: the project passes it, and each rule alone fails a job that breaks
it, naming the job and the rule, through the real `automation-pipelines check` command."""

from __future__ import annotations

import dagster as dg
import pytest

from automation_pipelines import cli
from automation_pipelines.instance import DEFAULT_CONFIG
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import readiness
from automation_pipelines.reliability.automation import (
    GUARDED_BY_KEY,
    UNGUARDED_KEY,
    Automation,
    unguarded,
)
from automation_pipelines.reliability.identity import job_automation
from automation_pipelines_tests.reliability import readiness_fixtures as fixtures

FIXTURES = "automation_pipelines_tests.reliability.readiness_fixtures"
RULE_NAMES = [r.name for r in readiness.RULES]


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["check", *args])
    return code, capsys.readouterr().out


def test_the_project_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(capsys)
    assert code == 0, out
    assert "check_disk_space_job" in out
    assert "✗" not in out


@pytest.mark.parametrize("name", ["ready", "job_level_retry"])
def test_ready_fixtures_pass(capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, out = run_check(capsys, "--defs", f"{FIXTURES}:{name}")
    assert code == 0, out
    assert f"pass all {len(RULE_NAMES)} rule(s)" in out


@pytest.mark.parametrize(
    ("defs", "job", "rule", "why"),
    [
        ("no_owner", "no_owner_job", "owner", "no owner (the job's `owners`)"),
        ("no_runbook", "no_runbook_job", "runbook", "no 'Runbook: <path>/README.md' line"),
        ("incomplete_runbook", "incomplete_runbook_job", "runbook", "'## What it touches'"),
        ("untriggered", "untriggered_job", "trigger", "no schedule or sensor targets it"),
        ("no_retry", "no_retry_job", "retries", "unprotected_step"),
        (
            "blind_retry",
            "blind_retry_job",
            "retries",
            "op(s) retried whatever the error, permanent ones too (wrap the body in "
            "classify_errors or use reliable_op): blindly_retried_step",
        ),
        ("no_max_runtime", "no_max_runtime_job", "max_runtime", "no `dagster/max_runtime` tag"),
        (
            "crowded",
            "crowded_job",
            "run_list",
            "its runs would carry owner: the run list gives each tag",
        ),
        ("unlimited", "unlimited_job", "concurrency", "step_in_no_pool are not in the pool"),
        ("multiprocess", "multiprocess_job", "in_process", "executor 'multiprocess' runs steps"),
        ("unhooked", "unhooked_job", "alerting", "no `alert_on_failure_hook`"),
        ("unrouted", "unrouted_job", "alert_route", "owner 'team:nobody' has no entry"),
        ("unexpected", "unexpected_job", "silence", "no expectation"),
        (
            "unguarded",
            "unguarded_job",
            "guarded",
            "schedule unguarded_job_hourly_schedule does not check the pause switch",
        ),
        (
            "leaky_settings",
            "leaky_settings_job",
            "settings_secrets",
            "leaky_settings/backups.yaml: sources.billing.postgres holds a password",
        ),
        (
            "overrun",
            "overrun_job",
            "paced",
            "schedule overrun_job_hourly_schedule fires up to 60 times an hour, over its "
            "max_runs_per_hour of 30",
        ),
    ],
)
def test_each_rule_fails_alone(
    capsys: pytest.CaptureFixture[str], defs: str, job: str, rule: str, why: str
) -> None:
    code, out = run_check(capsys, "--defs", f"{FIXTURES}:{defs}")
    assert code == 1, out
    failures = [line for line in out.splitlines() if line.startswith("✗ ")]
    assert len(failures) == 1, out
    assert failures[0].startswith(f"✗ {job} · {rule}: ")
    assert why in failures[0]
    assert "Fixture-Leak-7731" not in out


def test_every_rule_has_a_breaking_fixture() -> None:
    broken = {
        "owner",
        "runbook",
        "trigger",
        "retries",
        "max_runtime",
        "run_list",
        "concurrency",
        "in_process",
        "alerting",
        "alert_route",
        "silence",
        "guarded",
        "settings_secrets",
        "paced",
    }
    assert set(RULE_NAMES) == broken


def test_max_runtime_needs_run_monitoring() -> None:
    config = readiness.load_instance_config(DEFAULT_CONFIG)
    config["run_monitoring"] = {"enabled": False}
    findings = readiness.run_checks(fixtures.ready, config)
    failed = [f for f in findings if not f.ok]
    assert [(f.job, f.rule) for f in failed] == [("ready_job", "max_runtime")]
    assert "run_monitoring is not enabled" in failed[0].reason


@pytest.mark.parametrize(
    ("pools", "reason"),
    [
        ({"default_limit": 1}, "granularity is not `run`"),
        ({"granularity": "op", "default_limit": 1}, "granularity is not `run`"),
        ({"granularity": "run"}, "default_limit is None, not 1"),
        ({"granularity": "run", "default_limit": 0}, "default_limit is 0, not 1"),
        ({"granularity": "run", "default_limit": 2}, "default_limit is 2, not 1"),
    ],
)
def test_pools_that_would_let_runs_overlap_or_never_start_are_reported(
    pools: dict, reason: str
) -> None:
    config = readiness.load_instance_config(DEFAULT_CONFIG)
    config["concurrency"]["pools"] = pools
    failed = [f for f in readiness.run_checks(fixtures.ready, config) if not f.ok]
    assert [(f.job, f.rule) for f in failed] == [("ready_job", "concurrency")]
    assert reason in failed[0].reason


def test_an_empty_project_fails() -> None:
    findings = readiness.run_checks(dg.Definitions(), {})
    assert [(f.ok, f.reason) for f in findings] == [(False, "no jobs are defined")]


def test_report_table_marks_each_cell() -> None:
    findings = [
        readiness.Finding("a_job", "owner", True),
        readiness.Finding("a_job", "trigger", False, "no schedule"),
    ]
    report = readiness.format_report(findings)
    header, row = report.splitlines()[:2]
    assert header.split() == ["job", "owner", "trigger"]
    assert row.split() == ["a_job", "✓", "✗"]
    assert "✗ a_job · trigger: no schedule" in report


def test_console_script_exit_codes() -> None:
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("automation-pipelines", path=str(Path(sys.executable).parent))
    assert script, "the automation-pipelines console script is not installed"
    ok = subprocess.run([script, "check"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = subprocess.run(
        [script, "check", "--defs", f"{FIXTURES}:untriggered"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert broken.returncode == 1
    assert "✗ untriggered_job · trigger:" in broken.stdout


def _failed(defs, **kwargs) -> list[readiness.Finding]:
    config = readiness.load_instance_config(DEFAULT_CONFIG)
    return [f for f in readiness.run_checks(defs, config, **kwargs) if not f.ok]


def _job_with(*triggers, job=None) -> dg.Definitions:
    job = job or fixtures.job_level_retry_job
    return dg.Definitions(jobs=[job], sensors=triggers, resources=fixtures.RESOURCES)


def test_a_plain_sensor_is_not_guarded() -> None:
    @dg.sensor(name="plain_sensor", job=fixtures.job_level_retry_job)
    def plain_sensor(context):
        return dg.RunRequest()

    [finding] = _failed(_job_with(plain_sensor))
    assert (finding.job, finding.rule) == ("job_level_retry_job", "guarded")
    assert "sensor plain_sensor does not check the pause switch" in finding.reason
    assert "@AUTOMATION.sensor(...)" in finding.reason


def test_a_trigger_guarded_by_another_automation_fails() -> None:
    other = Automation(name="other", owner="team:test", folder=fixtures.GOOD.folder)

    @other.sensor(name="borrowed_sensor", job=fixtures.job_level_retry_job)
    def borrowed_sensor(context):
        return dg.RunRequest()

    [finding] = _failed(_job_with(borrowed_sensor))
    assert finding.rule == "guarded"
    assert "checks the switch of automation 'other', not of 'fixture'" in finding.reason


def test_an_exemption_needs_a_reason_and_is_reported_as_such() -> None:
    with pytest.raises(ValueError, match="reason"):
        unguarded("  ")

    @dg.sensor(
        name="exempt_sensor",
        job=fixtures.job_level_retry_job,
        metadata=unguarded("the fixture must run even while paused"),
    )
    def exempt_sensor(context):
        return dg.RunRequest()

    assert _failed(_job_with(exempt_sensor)) == []


def test_triggers_that_start_no_job_are_checked_too() -> None:
    @dg.sensor(name="lonely_sensor")
    def lonely_sensor(context):
        return dg.SkipReason("nothing")

    @dg.sensor(name="declared_sensor", metadata=unguarded("it only reads the instance"))
    def declared_sensor(context):
        return dg.SkipReason("nothing")

    defs = dg.Definitions(
        jobs=[fixtures.job_level_retry_job],
        sensors=[fixtures.job_level_retry_sensor, lonely_sensor, declared_sensor],
        resources=fixtures.RESOURCES,
    )
    config = readiness.load_instance_config(DEFAULT_CONFIG)
    findings = readiness.run_checks(defs, config)
    rows = {(f.job, f.rule): f for f in findings if f.kind == "trigger"}
    assert set(rows) == {("sensor:lonely_sensor", "guarded"), ("sensor:declared_sensor", "guarded")}
    assert rows[("sensor:declared_sensor", "guarded")].ok
    lonely = rows[("sensor:lonely_sensor", "guarded")]
    assert not lonely.ok and "declare it exempt with metadata=unguarded(" in lonely.reason
    report = readiness.format_report(findings)
    assert "✗ sensor:lonely_sensor · guarded: " in report
    assert "1 problem(s) in 1 trigger(s)." in report


def test_the_monitoring_sensors_are_exempt_with_a_reason(capsys) -> None:
    from automation_pipelines.definitions import defs

    repository = defs.get_repository_def()
    jobless = [s for s in repository.sensor_defs if not s.targets]
    assert {s.name for s in jobless} >= {
        "run_failure_alert_sensor",
        "alert_outbox_sensor",
        "watchdog_sensor",
        "freshness_alert_sensor",
        "orphaned_run_sensor",
    }
    for sensor in jobless:
        reason = sensor.metadata[UNGUARDED_KEY].value
        assert len(reason) > 40, (sensor.name, reason)
    code, out = run_check(capsys)
    assert code == 0, out
    assert "sensor:watchdog_sensor" in out
    for schedule in repository.schedule_defs:
        assert (
            schedule.metadata[GUARDED_BY_KEY].value
            == repository.get_job(schedule.job_name).metadata["automation"].value
        )


LEAKY_BACKUPS = """\
destination: data/backups
schedule: {cron: "30 2 * * *"}
health_check: {cron: "0 7 * * *"}
sources:
  project_database: {project_database: true}
  billing: {postgres: "postgresql://backup:Tr0ub4dor-3@db.internal:5432/billing"}
"""


def test_a_password_in_the_backups_dsn_fails_every_job(tmp_path) -> None:
    (tmp_path / "backups.yaml").write_text(LEAKY_BACKUPS)
    (tmp_path / "alert_routes.yaml").write_text("default: [ALERT_URLS]\n")
    # The fixture's runbook link is relative to the project root.
    (tmp_path / "automation_pipelines_tests").symlink_to(
        PROJECT_ROOT / "automation_pipelines_tests"
    )
    failed = _failed(fixtures.ready, project_root=tmp_path)
    assert [(f.job, f.rule) for f in failed] == [("ready_job", "settings_secrets")]
    reason = failed[0].reason
    assert "backups.yaml: sources.billing.postgres holds a password in a URL" in reason
    assert "PGPASSWORD or ~/.pgpass" in reason and "dg.EnvVar" in reason
    assert "Tr0ub4dor-3" not in reason


def test_a_literal_password_in_the_instance_config_fails() -> None:
    config = readiness.load_instance_config(DEFAULT_CONFIG)
    config["storage"] = {"postgres": {"postgres_db": {"username": "dagster", "password": "pw-42"}}}
    failed = [f for f in readiness.run_checks(fixtures.ready, config) if not f.ok]
    assert [(f.job, f.rule) for f in failed] == [("ready_job", "settings_secrets")]
    assert "instance config: storage.postgres.postgres_db.password is a literal" in (
        failed[0].reason
    )
    config["storage"]["postgres"]["postgres_db"]["password"] = {"env": "DAGSTER_PG_PASSWORD"}
    assert [f for f in readiness.run_checks(fixtures.ready, config) if not f.ok] == []


def test_a_job_without_its_runs_at_once_is_reported() -> None:
    config = readiness.load_instance_config(DEFAULT_CONFIG)
    metadata = {
        k: v for k, v in fixtures.GOOD.job_metadata().items() if k != "automation/runs_at_once"
    }
    defs = fixtures._make("no_pool_limit_job", metadata=metadata)
    failed = [f for f in readiness.run_checks(defs, config) if not f.ok]
    assert [(f.job, f.rule) for f in failed] == [("no_pool_limit_job", "concurrency")]
    assert "automation/runs_at_once" in failed[0].reason


def test_every_op_is_in_its_automations_pool_and_only_web_images_runs_side_by_side() -> None:
    """Runs of one automation wait for each other through the pool named after it; only
    web_images' runs, kept apart by the photo tree's lock, may be two at once. No run tag says
    so: the run list shows none."""
    from automation_pipelines.definitions import defs

    repository = defs.get_repository_def()
    at_once = {}
    for job in repository.get_all_jobs():
        automation = job_automation(job)
        if automation is None or job.name.startswith("__"):
            continue
        assert {op.pool for op in job.graph.iterate_op_defs()} == {automation}, job.name
        assert "automation/serial" not in job.tags
        at_once[job.name] = job.metadata["automation/runs_at_once"].value
    assert {name: n for name, n in at_once.items() if n != 1} == {"render_web_images_job": 2}
    assert len(at_once) >= 8

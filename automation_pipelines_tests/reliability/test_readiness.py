"""The readiness checklist: the project passes it, and each rule alone fails a job that breaks
it, naming the job and the rule, through the real `automation-pipelines check` command."""

from __future__ import annotations

import pytest

from automation_pipelines import cli
from automation_pipelines.instance import DEFAULT_CONFIG
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import readiness
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
        ("no_owner", "no_owner_job", "owner", "no `owner` tag"),
        ("no_runbook", "no_runbook_job", "runbook", "no 'Runbook: <path>/README.md' line"),
        ("incomplete_runbook", "incomplete_runbook_job", "runbook", "'## What it touches'"),
        ("untriggered", "untriggered_job", "trigger", "no schedule or sensor targets it"),
        ("no_retry", "no_retry_job", "retries", "unprotected_step"),
        ("no_max_runtime", "no_max_runtime_job", "max_runtime", "no `dagster/max_runtime` tag"),
        ("unlimited", "unlimited_job", "concurrency", "no tag of the job is limited"),
        ("multiprocess", "multiprocess_job", "in_process", "executor 'multiprocess' runs steps"),
        ("unhooked", "unhooked_job", "alerting", "no `alert_on_failure_hook`"),
        ("unrouted", "unrouted_job", "alert_route", "owner 'team:nobody' has no entry"),
        ("unexpected", "unexpected_job", "silence", "no expectation"),
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


def test_every_rule_has_a_breaking_fixture() -> None:
    broken = {
        "owner",
        "runbook",
        "trigger",
        "retries",
        "max_runtime",
        "concurrency",
        "in_process",
        "alerting",
        "alert_route",
        "silence",
    }
    assert set(RULE_NAMES) == broken


def test_max_runtime_needs_run_monitoring() -> None:
    config = readiness.load_instance_config(DEFAULT_CONFIG)
    config["run_monitoring"] = {"enabled": False}
    findings = readiness.run_checks(fixtures.ready, config)
    failed = [f for f in findings if not f.ok]
    assert [(f.job, f.rule) for f in failed] == [("ready_job", "max_runtime")]
    assert "run_monitoring is not enabled" in failed[0].reason


def test_a_zero_concurrency_limit_is_reported() -> None:
    config = readiness.load_instance_config(DEFAULT_CONFIG)
    config["run_queue"]["tag_concurrency_limits"] = [{"key": "automation", "limit": 0}]
    failed = [f for f in readiness.run_checks(fixtures.ready, config) if not f.ok]
    assert [(f.rule, f.reason) for f in failed] == [
        ("concurrency", "a matching concurrency limit is below 1, so its runs would never start")
    ]


def test_an_empty_project_fails() -> None:
    import dagster as dg

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

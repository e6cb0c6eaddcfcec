"""The code location loads exactly as workspace.yaml loads it, every automation folder is merged
in, and names and descriptions follow the project's conventions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg

from automation_pipelines import automations
from automation_pipelines.definitions import defs
from automation_pipelines.instance import prepare_home
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability.identity import job_automation
from automation_pipelines_tests.e2e.harness import venv_script


def test_workspace_validates_with_dagster_cli(tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home")
    result = subprocess.run(
        [venv_script("dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Validation successful for code location automation_pipelines" in output


def test_definitions_are_loadable_in_process() -> None:
    dg.Definitions.validate_loadable(defs)


def test_every_automation_folder_contributes() -> None:
    folders = sorted(
        p.name for p in Path(automations.__path__[0]).iterdir() if (p / "definitions.py").is_file()
    )
    assert folders, "no automation folders found"
    repository = defs.get_repository_def()
    tagged = {job_automation(job) for job in repository.get_all_jobs()}
    assert set(folders) <= tagged
    for folder in folders:
        assert (Path(automations.__path__[0]) / folder / "README.md").is_file()


def test_names_and_descriptions_follow_conventions() -> None:
    repository = defs.get_repository_def()
    problems = []
    for job in repository.get_all_jobs():
        if job.name.startswith("__"):
            continue
        if not job.name.endswith("_job"):
            problems.append(f"job {job.name} does not end in _job")
        if not job.description:
            problems.append(f"job {job.name} has no description")
    for schedule in repository.schedule_defs:
        if not re.search(
            r"_(hourly|daily|nightly|weekly|monthly|every_\w+)_schedule$", schedule.name
        ):
            problems.append(
                f"schedule {schedule.name} does not name its cadence and end in _schedule"
            )
        if not schedule.description:
            problems.append(f"schedule {schedule.name} has no description")
    for sensor in repository.sensor_defs:
        if not sensor.name.endswith("_sensor"):
            problems.append(f"sensor {sensor.name} does not end in _sensor")
        if not sensor.description:
            problems.append(f"sensor {sensor.name} has no description")
    assert problems == []


def test_product_code_imports_no_private_dagster_module() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+dagster\._", re.MULTILINE)
    offenders = [
        str(path.relative_to(PROJECT_ROOT))
        for path in (PROJECT_ROOT / "automation_pipelines").rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_loading_the_code_location_imports_no_report_library() -> None:
    """Every run worker loads the whole code location before its first step: a library only the
    daily report uses (pandas, about 0.6 s here) is imported by the report, not at load."""
    probe = (
        "import sys, automation_pipelines.definitions; "
        "print(sorted(m for m in ('pandas', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout

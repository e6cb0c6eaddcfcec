"""Dagster's own `dg` reads the project ([tool.dg] in pyproject.toml): `dg check defs` passes on it
and fails on a copy with a half-made automation folder, naming it; `dg list defs` shows what
the definitions snapshot records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines_tests.project_copy import copy_project


def dg(project: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    """`dg` as `make check` runs it: the project's interpreter, a home of its own."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AUTOMATION_", "DAGSTER_", "PYTEST_"))
    }
    env.update(
        DAGSTER_HOME=str(home),
        VIRTUAL_ENV=str(Path(sys.executable).parent.parent),
        PYTHONPATH=str(project),
        AUTOMATION_ENV_FILE=str(project / "no.env"),
    )
    return subprocess.run(
        [str(Path(sys.executable).with_name("dg")), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dg_check_defs_passes_on_the_project(tmp_path: Path) -> None:
    done = dg(PROJECT_ROOT, tmp_path / "home", "check", "defs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr


def test_dg_list_defs_shows_what_the_snapshot_records(tmp_path: Path) -> None:
    done = dg(PROJECT_ROOT, tmp_path / "home", "list", "defs", "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    snapshot = json.loads((PROJECT_ROOT / "definitions.snapshot.json").read_text())
    for kind in ("jobs", "schedules", "sensors"):
        assert sorted(d["name"] for d in listed[kind]) == sorted(snapshot[kind]), kind
    assert sorted(a["asset_key"] for a in listed["assets"]) == sorted(snapshot["assets"])
    owners = {a["asset_key"]: a["owners"] for a in listed["assets"]}
    assert owners["web_images"] == [{"team": "platform"}]


@pytest.mark.timeout(600)
def test_dg_check_defs_fails_on_a_half_made_folder_and_names_it(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    folder = project / "automation_pipelines" / "automations" / "half_made"
    folder.mkdir()
    (folder / "definitions.py").write_text("import no_such_module_anywhere\n")
    done = dg(project, tmp_path / "home", "check", "defs")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "half_made" in output and "no_such_module_anywhere" in output

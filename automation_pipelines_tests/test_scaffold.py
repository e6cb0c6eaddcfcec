"""`automation-pipelines new`: in a copy of the project, a generated automation passes `check`,
ruff, its own test and the definitions snapshot (which `new` writes again) as generated; without
its runbook, or without its owner's route, `check` names exactly that. Names, owners and
schedules it cannot use are refused before anything is written, and the expectation it declares
follows from its schedule."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from automation_pipelines import scaffold
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines_tests.project_copy import copy_project

NAME = "invoice_sync"
TESTS = f"automation_pipelines_tests/automations/{NAME}"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project `new` can write into."""
    return copy_project(tmp_path_factory.mktemp("project"))


def run(project: Path, *args: str) -> subprocess.CompletedProcess:
    """A command of the copy's own package (its folder first on the path), as a user runs it."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AUTOMATION_", "DAGSTER_", "PYTEST_"))
    }
    env.update(PYTHONPATH=str(project), AUTOMATION_ENV_FILE=str(project / "no.env"))
    return subprocess.run(
        [sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def check(project: Path) -> subprocess.CompletedProcess:
    return run(project, "-m", "automation_pipelines.cli", "check")


def problems(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith("✗")]


@pytest.mark.timeout(900)
def test_a_generated_automation_passes_check_lint_and_its_test(project: Path) -> None:
    made = run(
        project, "-m", "automation_pipelines.cli", "new", NAME, "--owner", "team:finance",
        "--cron", "*/15 * * * *",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    folder = project / "automation_pipelines" / "automations" / NAME
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == [
        "README.md", "__init__.py", "definitions.py", "jobs.py", "ops.py", "schedules.py",
    ]  # fmt: skip
    assert "added a route for team:finance" in made.stdout
    assert (
        "  team:finance: [ALERT_URLS_FINANCE, ALERT_URLS]"
        in (project / "alert_routes.yaml").read_text()
    )

    checked = check(project)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{NAME}_job" in checked.stdout
    assert "All 10 job(s) pass" in checked.stdout

    ruff = Path(sys.executable).with_name("ruff")
    linted = subprocess.run(
        [str(ruff), "check", "--no-cache", str(folder), str(project / TESTS)],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert linted.returncode == 0, linted.stdout
    formatted = subprocess.run(
        [str(ruff), "format", "--check", "--no-cache", str(folder)],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert formatted.returncode == 0, formatted.stdout

    tested = run(
        project, "-m", "pytest", "-q", "-p", "no:cacheprovider", TESTS,
        "automation_pipelines_tests/test_definitions_snapshot.py",
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout[-3000:]
    assert "3 passed" in tested.stdout  # its test, and the snapshot `new` wrote again

    # Without its runbook: check names that, and nothing else.
    runbook = folder / "README.md"
    text = runbook.read_text()
    runbook.unlink()
    broken = check(project)
    runbook.write_text(text)
    assert broken.returncode == 1
    assert problems(broken) == [
        f"✗ {NAME}_job · runbook: runbook automation_pipelines/automations/{NAME}/README.md "
        "does not exist"
    ]

    # Without its owner's route: check names that, and nothing else.
    routes = project / "alert_routes.yaml"
    kept = routes.read_text()
    routes.write_text(kept.replace("  team:finance: [ALERT_URLS_FINANCE, ALERT_URLS]\n", ""))
    unrouted = check(project)
    routes.write_text(kept)
    assert unrouted.returncode == 1
    [line] = problems(unrouted)
    assert line.startswith(f"✗ {NAME}_job · alert_route: ") and "team:finance" in line


@pytest.mark.parametrize(
    ("name", "owner", "cron", "says"),
    [
        ("Invoice", "team:a", "0 6 * * *", "is not a usable name"),
        ("class", "team:a", "0 6 * * *", "is not a usable name"),
        ("has-dash", "team:a", "0 6 * * *", "is not a usable name"),
        ("disk_space", "team:a", "0 6 * * *", "already exists"),
        ("fine_name", "alice", "0 6 * * *", "is not an owner"),
        ("fine_name", "team:a", "every day", "is not a cron expression"),
        ("fine_name", "team:a", "0 0 29 2 *", "fires less than twice"),
    ],
)
def test_what_new_cannot_use_is_refused_before_anything_is_written(
    tmp_path: Path, name: str, owner: str, cron: str, says: str
) -> None:
    (tmp_path / "automation_pipelines" / "automations" / "disk_space").mkdir(parents=True)
    (tmp_path / "alert_routes.yaml").write_text("default: [ALERT_URLS]\n")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(scaffold.ScaffoldError, match=says):
        scaffold.create(name, owner, cron, tmp_path)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("cron", "word", "within", "max_runs"),
    [
        ("*/15 * * * *", "every_15_minutes", 3, 5),
        ("0 * * * *", "hourly", 3, 2),
        ("0 */6 * * *", "every_6_hours", 8, 2),
        ("0 6 * * *", "daily", 26, 2),
        ("0 6 * * 1-5", "daily", 74, 2),  # Friday to Monday
        ("0 6 * * 1", "weekly", 170, 2),
    ],
)
def test_the_expectation_follows_from_the_schedule(
    cron: str, word: str, within: int, max_runs: int
) -> None:
    assert scaffold.cadence(cron) == scaffold.Cadence(word, within, max_runs)


def test_an_owner_with_a_route_keeps_it(tmp_path: Path) -> None:
    routes = tmp_path / "alert_routes.yaml"
    routes.write_text("# comment\ndefault: [ALERT_URLS]\nowners:\n  team:data: [X]\n")
    (tmp_path / "automation_pipelines" / "automations").mkdir(parents=True)
    made = scaffold.create("sync_it", "team:data", "0 6 * * *", tmp_path)
    assert not made.route_added
    assert routes.read_text() == "# comment\ndefault: [ALERT_URLS]\nowners:\n  team:data: [X]\n"
    made = scaffold.create("other_one", "team:new", "0 6 * * *", tmp_path)
    assert made.route_added
    assert routes.read_text().endswith(
        "  team:data: [X]\n  team:new: [ALERT_URLS_NEW, ALERT_URLS]\n"
    )


@pytest.mark.parametrize("cron", ["*/15 * * * *", "0,15,30,45 9-17 * * 1-5"])
def test_the_longest_name_generates_code_ruff_passes(tmp_path: Path, cron: str) -> None:
    (tmp_path / "automation_pipelines" / "automations").mkdir(parents=True)
    (tmp_path / "alert_routes.yaml").write_text("default: [ALERT_URLS]\n")
    longest = "a_thirty_character_name_abcdef"
    assert len(longest) == 30
    made = scaffold.create(longest, "team:a-rather-long-team-name", cron, tmp_path)
    ruff = Path(sys.executable).with_name("ruff")
    config = tmp_path / "pyproject.toml"  # the project's settings, beside the generated files
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", config)
    for args in (["check"], ["format", "--check"]):
        linted = subprocess.run(
            [str(ruff), *args, "--no-cache", "--config", config, *map(str, made.files)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert linted.returncode == 0, linted.stdout + linted.stderr

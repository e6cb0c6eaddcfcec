"""The PostgreSQL gate: an unreachable server makes its tests skip with a reason that names
AP_TEST_POSTGRES_URL, and AP_REQUIRE_POSTGRES=1 (as in CI) turns that skip into a failure."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from automation_pipelines.paths import PROJECT_ROOT

TARGET = "automation_pipelines_tests/test_instance.py::test_runs_and_events_are_stored_in_postgres"
UNREACHABLE = "postgresql://postgres@127.0.0.1:9/test"


def _pytest(**env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", TARGET, "-rs", "-p", "no:cacheprovider", "-q"],
        cwd=PROJECT_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    ("require", "code", "expected"),
    [("0", 0, "1 skipped"), ("1", 1, "AP_REQUIRE_POSTGRES=1 forbids skipping")],
)
def test_unreachable_postgres(require: str, code: int, expected: str) -> None:
    result = _pytest(AP_TEST_POSTGRES_URL=UNREACHABLE, AP_REQUIRE_POSTGRES=require)
    assert result.returncode == code, result.stdout
    assert expected in result.stdout
    assert f"AP_TEST_POSTGRES_URL={UNREACHABLE} is unreachable" in result.stdout

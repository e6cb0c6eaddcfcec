"""The e2e fixture: real Dagster processes on a temp instance, torn down whatever happens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from automation_pipelines_tests.e2e.harness import DagsterProcesses


@pytest.fixture
def dagster_processes(tmp_path: Path) -> Iterator[Callable[..., DagsterProcesses]]:
    """Factory: `dagster_processes(module, env=...)` gives a DagsterProcesses to start things in."""
    started: list[DagsterProcesses] = []

    def make(module: str, env=None, instance_overrides=None) -> DagsterProcesses:
        processes = DagsterProcesses(
            tmp_path / f"e2e{len(started)}", module, env, instance_overrides
        )
        started.append(processes)
        return processes

    yield make
    for processes in started:
        processes.stop()

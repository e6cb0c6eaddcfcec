"""Runs of one automation never overlap, with no tag of ours on the runs: the real daemon's run
queue, on the project's dagster.yaml, keeps each automation's runs within its pool."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.local_stack import wait_for
from automation_pipelines.reliability import pools

pytestmark = pytest.mark.e2e

RUNS = 6
#: Dagster's namespaces: `dagster/` (folded into "View all tags") and `.dagster/` (never shown).
DAGSTERS = ("dagster/", ".dagster/")


def most_at_once(spans: list[dict]) -> int:
    """The largest number of spans open at one moment."""
    edges = sorted([(s["began"], 1) for s in spans] + [(s["ended"], -1) for s in spans])
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


def test_each_automation_keeps_to_its_pool_and_runs_carry_no_concurrency_tag(
    dagster_processes, tmp_path: Path
) -> None:
    spans_dir = tmp_path / "spans"
    spans_dir.mkdir()
    processes = dagster_processes(
        "automation_pipelines_tests.e2e.pools_location", env={"POOLS_SPAN_DIR": str(spans_dir)}
    )
    processes.start_daemon()
    instance = processes.instance

    def finished() -> list[dg.DagsterRun] | None:
        runs = instance.get_runs()
        done = [r for r in runs if r.is_finished]
        return runs if len(runs) == RUNS and len(done) == RUNS else None

    runs = wait_for("six finished runs", finished, 300, processes.logs)
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs), processes.logs()
    spans = [json.loads(path.read_text()) for path in spans_dir.glob("*.json")]
    by_automation = {
        name: [s for s in spans if s["automation"] == name] for name in ("serial", "paired")
    }
    assert [len(v) for v in by_automation.values()] == [3, 3]
    assert most_at_once(by_automation["serial"]) == 1
    assert most_at_once(by_automation["paired"]) == 2
    assert pools.current_limits(instance) == {"serial": 1, "paired": 2}
    for run in runs:  # Dagster's own tags only: the run list gives each other tag a line
        assert not [key for key in run.tags if not key.startswith(DAGSTERS)], run.tags

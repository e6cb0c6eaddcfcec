"""The e2e harness works: a real dagster-daemon evaluates a sensor, the run queue launches the
run, the run succeeds in the instance, and every process is gone after teardown."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psutil
import pytest

from automation_pipelines.local_stack import free_port
from automation_pipelines_tests.e2e.harness import graphql

pytestmark = pytest.mark.e2e


def test_daemon_runs_a_sensor_requested_job(dagster_processes, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    processes = dagster_processes(
        "automation_pipelines_tests.e2e.tiny_location", env={"TINY_MARK_DIR": str(marks)}
    )
    processes.start_daemon()
    base_url = processes.start_webserver(free_port())

    run = processes.wait_for_run("tiny_job")

    assert run.status == dg.DagsterRunStatus.SUCCESS, processes.logs()
    assert run.tags.get("dagster/sensor_name") == "tiny_sensor"
    assert (marks / "ran.txt").read_text() == "ran by the daemon\n"
    query = '{ runsOrError(filter: {pipelineName: "tiny_job"}) { ... on Runs { results { %s } } } }'
    runs = graphql(base_url, query % "runId status")
    assert runs["runsOrError"]["results"] == [{"runId": run.run_id, "status": "SUCCESS"}]

    pids = [p.pid for p in processes.group.members()]
    assert len(pids) >= 2
    processes.stop()
    assert [
        pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ] == []

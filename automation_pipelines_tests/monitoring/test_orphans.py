"""Started runs whose worker is gone unrecorded: failed (and so retried and alerted), while a
run whose worker lives, a young run and a run without a recorded pid are left alone."""

from __future__ import annotations

import os
import subprocess
import time

import dagster as dg

from automation_pipelines.monitoring import orphans


@dg.op
def noop() -> None:
    pass


@dg.job
def plain_job() -> None:
    noop()


def started_run(instance: dg.DagsterInstance, pid: int | None) -> dg.DagsterRun:
    """A run as the default launcher leaves it: STARTED, with its worker's pid recorded."""
    run = instance.create_run_for_job(plain_job)
    if pid is not None:
        instance.report_engine_event(f"Started process for run (pid: {pid}).", run)
    instance.report_dagster_event(
        dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_START.value, job_name=run.job_name
        ),
        run_id=run.run_id,
    )
    return run


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_run_whose_worker_is_gone_is_failed_and_others_are_left(sqlite_instance) -> None:
    gone = started_run(sqlite_instance, dead_pid())
    alive = started_run(sqlite_instance, os.getpid())
    unknown = started_run(sqlite_instance, None)
    later = time.time() + orphans.GRACE_SECONDS + 5

    assert orphans.fail_orphaned_runs(sqlite_instance, now=time.time()) == []  # too young
    assert orphans.fail_orphaned_runs(sqlite_instance, now=later) == [gone.run_id]

    status = {
        r.run_id: sqlite_instance.get_run_by_id(r.run_id).status for r in (gone, alive, unknown)
    }
    assert status == {
        gone.run_id: dg.DagsterRunStatus.FAILURE,
        alive.run_id: dg.DagsterRunStatus.STARTED,
        unknown.run_id: dg.DagsterRunStatus.STARTED,
    }
    [failure] = sqlite_instance.get_records_for_run(
        gone.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
    ).records
    assert "is gone and its end was never recorded" in failure.event_log_entry.message
    assert orphans.fail_orphaned_runs(sqlite_instance, now=later) == []  # once


def test_the_sensor_says_what_it_did(sqlite_instance, monkeypatch) -> None:
    gone = started_run(sqlite_instance, dead_pid())
    monkeypatch.setattr(orphans, "GRACE_SECONDS", -60.0)
    context = dg.build_sensor_context(instance=sqlite_instance)

    result = orphans.orphaned_run_sensor(context)

    assert isinstance(result, dg.SkipReason)
    assert (
        result.skip_message == f"1 run(s) with a vanished worker marked failed: {gone.run_id[:8]}"
    )

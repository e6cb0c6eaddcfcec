"""Runs whose worker is gone but whose end was never recorded.

With Dagster's default run launcher, a run's end is written by its worker or, when the worker
dies, by the code server that started it. When the code server dies too, or the database is down
at that moment, nobody writes it: the run stays STARTED until `max_runtime_seconds` (two hours),
and with it the automation's one concurrency slot, so every later run of the automation waits in
the queue. Dagster's run monitoring cannot see such a worker (the default launcher has no worker
health check). This sensor can: each worker records its pid when it starts ("Started process for
run (pid: N)"), and the code server that evaluates the sensor is where that launcher starts its
workers. A run whose worker pid no longer exists is reported failed, which frees the slot, lets
Dagster's run retries run it again and the run-failure sensor alert its owner.
"""

from __future__ import annotations

import re
import time

import dagster as dg

from automation_pipelines.reliability.automation import unguarded
from automation_pipelines.reliability.processes import pid_gone

ORPHANS_SENSOR = "orphaned_run_sensor"
_WORKER_STARTED = re.compile(r"Started process for run \(pid: (\d+)\)")
#: A run this young may not have recorded its worker's pid yet.
GRACE_SECONDS = 30.0


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid the run's worker recorded when it started, if it did."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20
    ).records
    for record in records:
        found = _WORKER_STARTED.search(record.event_log_entry.message or "")
        if found:
            return int(found.group(1))
    return None


def fail_orphaned_runs(instance: dg.DagsterInstance, now: float | None = None) -> list[str]:
    """Report failed every started run whose worker pid is gone; returns their ids. Only for the
    default launcher, whose workers run on this machine."""
    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return []
    now = time.time() if now is None else now
    failed = []
    for record in instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=100
    ):
        run = record.dagster_run
        started = record.start_time or record.create_timestamp.timestamp()
        if now - started < GRACE_SECONDS:
            continue
        pid = worker_pid(instance, run.run_id)
        if pid is None or not pid_gone(pid):
            continue
        latest = instance.get_run_by_id(run.run_id)
        if latest is None or latest.status != dg.DagsterRunStatus.STARTED:
            continue  # it ended while we looked
        instance.report_run_failed(
            latest,
            f"The run's worker (pid {pid}) is gone and its end was never recorded (its code "
            "server or the database was down when it stopped); marked failed so the "
            "automation's next runs are not held behind it.",
        )
        failed.append(run.run_id)
    return failed


@dg.sensor(
    name=ORPHANS_SENSOR,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    metadata=unguarded(
        "it frees the slot of a run whose worker died unrecorded, for every automation; a "
        "paused automation's stuck run must be ended too, or it blocks the automation on resume"
    ),
    description=(
        "Marks failed a started run whose worker process is gone though its end was never "
        "recorded (the code server or the database was down when it stopped), so it no longer "
        "holds its automation's concurrency slot; Dagster's run retries and the run-failure "
        "alert then take over. For the default run launcher, whose workers run on this machine."
    ),
)
def orphaned_run_sensor(context: dg.SensorEvaluationContext):
    failed = fail_orphaned_runs(context.instance)
    return dg.SkipReason(
        f"{len(failed)} run(s) with a vanished worker marked failed"
        + (f": {', '.join(r[:8] for r in failed)}" if failed else "")
    )

"""Alerting with the real daemon: an op failing after retries, a killed run worker, a max-runtime
kill and a run retried by run retries each give exactly one alert (the retried ones on their last
attempt); a permanent error runs once and alerts once with its secret masked; a transient error
that heals gives no alert; alerts refused by a channel that is down all arrive once it is back."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from automation_pipelines.reliability import store
from automation_pipelines.reliability.alerts import alerts_table
from automation_pipelines_tests.e2e.harness import sensor_ticks, wait_for

pytestmark = pytest.mark.e2e

SECRET = "e2e-Vault-Code-5521"
FAILING = {"op_fails_job": 1, "worker_killed_job": 2, "too_slow_job": 2, "refused_job": 1}


ALERT_SENSORS = ("run_failure_alert_sensor", "alert_outbox_sensor")


def ticks_since(instance: dg.DagsterInstance, sensor: str, since: float) -> int:
    """Ticks of `sensor` begun after `since` and ended."""
    ticks = sensor_ticks(instance, sensor, limit=10)
    return sum(t.timestamp > since and t.status.value != "STARTED" for t in ticks)


@pytest.mark.timeout(600)
def test_every_failure_kind_alerts_exactly_once(dagster_processes, json_receiver, tmp_path: Path):
    routes = tmp_path / "routes.yaml"
    routes.write_text("default: [E2E_ALERT_URLS]\nowners:\n  team:test: [E2E_ALERT_URLS]\n")
    state = tmp_path / "state"
    state.mkdir()
    json_receiver.status = 500  # the channel is down while the failures happen
    processes = dagster_processes(
        "automation_pipelines_tests.e2e.alerting_location",
        env={
            "E2E_ALERT_URLS": json_receiver.url,
            "E2E_ROUTES_FILE": str(routes),
            "E2E_ACCESS_CODE": SECRET,
            "E2E_STATE_DIR": str(state),
        },
        instance_overrides={"run_monitoring": {"poll_interval_seconds": 2}},
    )
    processes.start_daemon()
    instance = processes.instance
    finished = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}

    def all_runs_done() -> bool:
        for job, attempts in {**FAILING, "flaky_job": 1}.items():
            runs = instance.get_runs(filters=dg.RunsFilter(job_name=job))
            if len(runs) < attempts or any(r.status not in finished for r in runs):
                return False
        return True

    wait_for("every run and run retry to finish", all_runs_done, 300, processes.logs)
    outbox = store.engine(store.database_url(processes.home))

    def alerts() -> list:
        with outbox.connect() as conn:
            return conn.execute(sa.select(alerts_table)).all()

    wait_for("four alerts in the outbox", lambda: len(alerts()) >= 4, 120, processes.logs)
    wait_for("a refused delivery", lambda: json_receiver.refused > 0, 120, processes.logs)
    assert json_receiver.received == []

    json_receiver.status = 200
    wait_for("four delivered alerts", lambda: len(json_receiver.received) >= 4, 120, processes.logs)
    # Nothing more may arrive over two more whole ticks of each alert sensor.
    since = time.time()
    wait_for(
        "two more ticks of each alert sensor",
        lambda: all(ticks_since(instance, name, since) >= 2 for name in ALERT_SENSORS),
        180,
        processes.logs,
    )
    titles = sorted(json_receiver.titles())
    assert len(titles) == 4, titles
    by_job = {
        job: [p for p in json_receiver.received if f"Job: {job}\n" in p["message"]]
        for job in FAILING
    }
    assert {job: len(found) for job, found in by_job.items()} == dict.fromkeys(FAILING, 1)

    for job, attempts in FAILING.items():
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job))
        assert len(runs) == attempts, (job, [r.status for r in runs])
        last = max(runs, key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp)
        body = by_job[job][0]["message"]
        assert f"Run: {last.run_id}" in body, (job, body)
        assert f"run attempt {attempts}" in body, (job, body)

    assert "ConnectionError" in by_job["op_fails_job"][0]["title"]
    assert "3 attempt(s) of the op" in by_job["op_fails_job"][0]["message"]
    assert "RunWorkerCrashed" in by_job["worker_killed_job"][0]["title"]
    assert "MaxRuntimeExceeded" in by_job["too_slow_job"][0]["title"]
    refused = by_job["refused_job"][0]
    assert "PermanentError: access code *** was refused" in refused["message"]
    assert "Item at fault: order-7" in refused["message"]

    [refused_run] = instance.get_runs(filters=dg.RunsFilter(job_name="refused_job"))
    starts = instance.get_records_for_run(
        refused_run.run_id, of_type=dg.DagsterEventType.STEP_START
    ).records
    assert len(starts) == 1
    logged = instance.get_records_for_run(refused_run.run_id).records
    assert SECRET not in str([r.event_log_entry for r in logged])

    [flaky] = instance.get_runs(filters=dg.RunsFilter(job_name="flaky_job"))
    assert flaky.status == dg.DagsterRunStatus.SUCCESS
    assert (state / "flaky_calls").read_text() == "3"

    assert SECRET not in str(json_receiver.received)
    with outbox.connect() as conn:
        for table in store.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                assert SECRET not in str(tuple(row)), table.name

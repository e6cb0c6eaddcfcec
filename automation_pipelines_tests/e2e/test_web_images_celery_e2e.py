"""Web images on Celery workers (WEB_IMAGES_EXECUTOR=celery), on PostgreSQL, with the real
daemon, webserver and two `dagster-celery` workers that share only the broker (this machine's
RabbitMQ, on loopback, a queue of this test's own), PostgreSQL and the photo tree.

24 photos land in the inbox; the sensor's run splits them into parts of 3. Once each worker has
finished a step, one that has just begun a part is killed with SIGKILL (its whole
process group: the CLI, Celery's main process and its pool process). Then: its part was handed
to the other worker by the broker and finished there, every run succeeded without a retry,
every photo has exactly one set of renditions, one row, one manifest entry and one original in
processed/, both workers finished steps, and the webserver's run list shows the runs like any
other.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.automations.web_images import execution
from automation_pipelines.automations.web_images.ops import render_web_images_part
from automation_pipelines_tests.e2e import web_images_support as support
from automation_pipelines_tests.e2e.harness import (
    LOCAL_BROKER,
    CeleryWorker,
    celery_attempts,
    delete_queue,
    graphql,
    venv_script,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PHOTOS = 24
FILES_PER_STEP = 3
WIDTH = 1600


def port_in_range(first: int = 3400, last: int = 3499) -> int:
    for port in range(first, last + 1):
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    raise AssertionError(f"no free port in {first}-{last}")


def postgres_storage() -> dict:
    """deploy/postgres/dagster.yaml's storage: every setting from DAGSTER_PG_*."""
    names = {
        "hostname": "DAGSTER_PG_HOST",
        "port": "DAGSTER_PG_PORT",
        "db_name": "DAGSTER_PG_DB",
        "username": "DAGSTER_PG_USERNAME",
        "password": "DAGSTER_PG_PASSWORD",
    }
    return {"postgres": {"postgres_db": {key: {"env": env} for key, env in names.items()}}}


def succeeded(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """step -> when it succeeded."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.STEP_SUCCESS, limit=5000
    ).records
    return {r.event_log_entry.step_key: r.event_log_entry.timestamp for r in records}


def finished_by(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """step -> the worker of its last attempt, for the steps that succeeded."""
    done = succeeded(instance, run_id)
    last = {step: worker for _, step, worker in celery_attempts(instance, run_id)}
    return {step: worker for step, worker in last.items() if step in done}


@pytest.mark.timeout(600)
def test_parts_spread_over_two_workers_and_a_killed_one_loses_nothing(
    dagster_processes, postgres_env, tmp_path: Path
) -> None:
    began = time.monotonic()
    root = tmp_path / "photos"
    queue = f"web_images_test_{uuid.uuid4().hex[:8]}"
    names = [f"c{n:02d}.jpg" for n in range(PHOTOS)]
    sources = support.make_sources(tmp_path / "sources", WIDTH)
    processes = dagster_processes(
        "automation_pipelines.definitions",
        env={
            "WEB_IMAGES_ROOT": str(root),
            execution.EXECUTOR_ENV: execution.CELERY,
            execution.BROKER_ENV: LOCAL_BROKER,
            execution.QUEUE_ENV: queue,
            execution.FILES_PER_STEP_ENV: str(FILES_PER_STEP),
            "PATH": f"{Path(venv_script('celery')).parent}:/usr/bin:/bin",
        },
        instance_overrides={"storage": postgres_storage()},
    )
    # The instance's tables are made once, here: two workers starting on a fresh database
    # would both try to create them, and the loser dies on the duplicate.
    processes.instance.get_runs_count()
    workers = {
        name: CeleryWorker(name, processes.env, queue, tmp_path / f"{name}.log")
        for name in ("w1", "w2")
    }
    processes.log_files += [worker.log for worker in workers.values()]
    try:
        wait_for(
            "both workers ready",
            lambda: all(w.ready() for w in workers.values()),
            120,
            processes.logs,
        )
        processes.start_daemon()
        ui = processes.start_webserver(port_in_range())
        instance = processes.instance
        support.stage_photos(root, sources, names)

        def a_worker_mid_part():
            """(worker, step, run) for a worker that finished a step and began a part so
            recently that the kill lands inside it: less than half as long ago as the
            shortest part so far took, however fast this machine renders."""
            runs = instance.get_runs(
                dg.RunsFilter(job_name=support.JOB, statuses=[dg.DagsterRunStatus.STARTED])
            )
            seen_runs = [
                (run, succeeded(instance, run.run_id), celery_attempts(instance, run.run_id))
                for run in runs
            ]
            took = [
                done[step] - began
                for _, done, attempts in seen_runs
                for began, step, _ in attempts
                if step in done and step.startswith(render_web_images_part.name)
            ]
            if not took:
                return None
            now = time.time()
            for run, done, attempts in seen_runs:
                last = {step: worker for _, step, worker in attempts}
                finished = {worker for step, worker in last.items() if step in done}
                current = {worker: (began, step) for began, step, worker in attempts}
                for worker, (began, step) in current.items():
                    in_part = step.startswith(render_web_images_part.name)
                    young = now - began < min(took) / 2
                    if worker in finished and in_part and step not in done and young:
                        return worker, step, run.run_id
            return None

        def seen() -> str:
            lines = [processes.logs()]
            for run in instance.get_runs(dg.RunsFilter(job_name=support.JOB)):
                lines.append(
                    f"run {run.run_id} {run.status}: {celery_attempts(instance, run.run_id)}"
                )
                lines.append(f"succeeded: {succeeded(instance, run.run_id)}")
            return "\n".join(lines)

        worker, step, run_id = wait_for(
            "a worker in the middle of a part", a_worker_mid_part, 240, seen, 0.05
        )
        killed_at = time.time()
        dead = workers[worker.split("@")[0]]
        dead.kill()
        assert dead.group.members() == [], "a process of the killed worker lives on"
        # The other worker may retake and finish the part while the kill is still being
        # confirmed: what matters is that it had not ended when the kill was sent.
        ended = succeeded(instance, run_id).get(step, float("inf"))
        assert ended > killed_at, f"{step} ended before the kill"

        wait_for(
            "every photo in processed/",
            lambda: len(list((root / "processed").glob("*.jpg"))) == len(names),
            240,
            processes.logs,
        )

        def all_finished() -> list[dg.DagsterRun] | None:
            runs = instance.get_runs(dg.RunsFilter(job_name=support.JOB))
            return runs if runs and all(r.is_finished for r in runs) else None

        runs = wait_for("every run to finish", all_finished, 180, processes.logs)
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}, processes.logs()
        assert all(r.parent_run_id is None for r in runs), "a run was retried: something was lost"

        # The killed worker's part went back to the queue and the other worker finished it.
        survivor = next(w.name for w in workers.values() if w.name != worker)
        retaken = [
            (when, w)
            for when, s, w in celery_attempts(instance, run_id)
            if s == step and when > killed_at
        ]
        assert [w for _, w in retaken] == [survivor], celery_attempts(instance, run_id)
        assert finished_by(instance, run_id)[step] == survivor

        # Both workers finished steps (the killed one before its death).
        finishers = {w for r in runs for w in finished_by(instance, r.run_id).values()}
        assert finishers == {w.name for w in workers.values()}, finishers
        parts = sum(
            s.startswith(render_web_images_part.name)
            for r in runs
            for s in succeeded(instance, r.run_id)
        )
        assert parts >= PHOTOS // FILES_PER_STEP

        support.check_every_photo_delivered_once(root, processes.home, names)
        assert not (root / ".steps" / run_id).exists()  # the run's step outputs were cleared
        manifest_outputs = {
            output["path"]
            for entry in json.loads((root / "web" / "manifest.json").read_text()).values()
            for output in entry["outputs"]
        }
        on_disk = {
            p.relative_to(root / "web").as_posix()
            for p in (root / "web").rglob("*")
            if p.is_file() and p.name != "manifest.json"
        }
        assert on_disk == manifest_outputs  # one set per photo: nothing rendered twice is left

        listed = graphql(
            ui,
            "{ runsOrError(filter: {pipelineName: "
            + json.dumps(support.JOB)
            + "}) { ... on Runs { results { runId status pipelineName } } } }",
        )["runsOrError"]["results"]
        assert {(r["runId"], r["status"]) for r in listed} == {(r.run_id, "SUCCESS") for r in runs}
        print(
            f"\n{len(runs)} run(s), {parts} parts; killed {worker} in {step}, finished by "
            f"{survivor}; {time.monotonic() - began:.0f}s"
        )
    finally:
        for worker in workers.values():
            worker.stop()
        delete_queue(LOCAL_BROKER, queue)

"""SIGKILL of web_images run workers mid-batch, 20 times in one session of the real daemon.

600 small photos are in the inbox when the daemon starts; the sensor turns them into 24 runs of
25 (4 spare, for kills that land after their batch was done, which do not count; each such kill
puts another 25 in the inbox). As soon as a
run (a first attempt, never Dagster's retry of it) has written the first output of its batch,
the test waits a random moment (seeded) and kills its worker with SIGKILL. Dagster marks the run
failed and retries it once (run_retries), while the other batches go on. Afterwards: no process
of a killed run outlived it, no two runs of the automation executed their step at the same time,
every photo has its renditions, exactly one row and one manifest entry, one original in
processed/, and the circuit breaker did not trip. The queue is dequeued every second instead of
every five and run monitoring polls every 2 s, only to make the session shorter; the run limits
and retries are the project's own.
"""

from __future__ import annotations

import functools
import random
import signal
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from automation_pipelines.monitoring.orphans import worker_pid
from automation_pipelines.reliability import breaker
from automation_pipelines_tests.e2e import web_images_support as support
from automation_pipelines_tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e

KILLS = 20
SPARE_BATCHES = 4
FILES_PER_RUN = 25
SEED = 1_306
WIDTH = 640  # one size of renditions (400 px): a batch of 25 takes about a second


def first_output_written(instance: dg.DagsterInstance, web: Path, run: dg.DagsterRun) -> bool:
    names = support.batch_files(instance, run)
    return any(next(web.glob(f"{name}-400.*"), None) for name in names)


def finished_run(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun | None:
    run = instance.get_run_by_id(run_id)
    return run if run.is_finished else None


def step_succeeded(instance: dg.DagsterInstance, run_id: str) -> bool:
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.STEP_SUCCESS, limit=1
    ).records
    return bool(records)


def delivered(instance: dg.DagsterInstance, root: Path, run: dg.DagsterRun) -> int:
    names = support.batch_files(instance, run)
    return sum((root / "processed" / name).exists() for name in names)


@pytest.mark.timeout(600)
def test_killed_run_workers_leave_no_orphan_no_overlap_and_no_lost_record(
    dagster_processes, tmp_path: Path
) -> None:
    began = time.monotonic()
    root = tmp_path / "photos"
    # Spare batches for kills that land after a batch was already done (they do not count).
    names = [f"p{n:03d}.jpg" for n in range((KILLS + SPARE_BATCHES) * FILES_PER_RUN)]
    sources = support.make_sources(tmp_path / "sources", WIDTH)
    support.stage_photos(root, sources, names)

    def spare_batch() -> None:
        """A kill that did not count used up a batch: put another one in the inbox, so the
        session never runs out of first attempts to kill however many signals come late."""
        more = [f"p{n:03d}.jpg" for n in range(len(names), len(names) + FILES_PER_RUN)]
        support.stage_photos(root, sources, more)
        names.extend(more)

    processes = dagster_processes(
        "automation_pipelines.definitions",
        # Runs of 25 even with the whole backlog waiting, so there are enough runs to kill.
        env={"WEB_IMAGES_ROOT": str(root), "WEB_IMAGES_MAX_FILES_PER_RUN": str(FILES_PER_RUN)},
        instance_overrides={
            "run_monitoring": {"poll_interval_seconds": 2},
            "run_queue": {"dequeue_interval_seconds": 1},
        },
    )
    processes.start_daemon()
    instance, web = processes.instance, root / "web"
    rng = random.Random(SEED)
    killed_at: dict[str, float] = {}
    done_at_kill: list[int] = []
    survivors: list[str] = []
    late = 0
    deadline = time.monotonic() + 420
    while len(killed_at) < KILLS:
        assert time.monotonic() < deadline, f"only {len(killed_at)} kills\n{processes.logs()}"
        candidates = [
            run
            for run in instance.get_runs(
                dg.RunsFilter(job_name=support.JOB, statuses=[dg.DagsterRunStatus.STARTED])
            )
            if run.run_id not in killed_at and run.parent_run_id is None
        ]
        run = next((r for r in candidates if first_output_written(instance, web, r)), None)
        pid = worker_pid(instance, run.run_id) if run else None
        if run is None or pid is None:
            time.sleep(0.05)
            continue
        time.sleep(rng.uniform(0.0, 0.6))  # somewhere in the batch
        try:
            worker = psutil.Process(pid)
            assert "--multiprocessing-fork" in worker.cmdline(), worker.cmdline()
            family = [worker, *worker.children(recursive=True)]
            # Taken before the signal: the run waiting beside it takes the lock only once this
            # worker is dead, so any of its work starts after this moment.
            at = time.time()
            worker.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            late += 1  # the batch was done before the kill: not a kill
            spare_batch()
            continue
        done = delivered(instance, root, run)
        psutil.wait_procs([worker], timeout=5)
        ended = wait_for(
            "the killed run to be marked finished",
            functools.partial(finished_run, instance, run.run_id),
            60,
            processes.logs,
            interval=0.1,
        )
        if ended.status == dg.DagsterRunStatus.SUCCESS or step_succeeded(instance, run.run_id):
            # The worker had finished its step an instant before the signal: not a mid-batch
            # kill (Dagster fails such a run without a retry, as there is nothing to re-run).
            late += 1
            spare_batch()
            continue
        killed_at[run.run_id] = at
        done_at_kill.append(done)
        # Right after the kill nothing of the run may still work; Dagster's compute-log mirrors
        # (`tail -F`, watch_orphans.py) notice their dead parent within a second and exit.
        working = support.describe(
            [
                p
                for p in support.alive(family)
                if not support.is_log_mirror(p) and not support.is_exiting(p)
            ]
        )
        gone_by = time.monotonic() + 15
        while support.alive(family) and time.monotonic() < gone_by:
            time.sleep(0.1)
        lingering = support.describe(support.alive(family))
        if working or lingering:
            survivors.append(
                f"run {run.run_id}: right after the kill:\n{working}\n15 s later:\n{lingering}"
            )
    assert survivors == [], "processes of killed runs outlived them:\n" + "\n".join(survivors)

    wait_for(
        "every photo in processed/",
        lambda: len(list((root / "processed").glob("*.jpg"))) == len(names),
        240,
        processes.logs,
    )
    finished = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}
    wait_for(
        "every run to finish",
        lambda: all(
            r.status in finished for r in instance.get_runs(dg.RunsFilter(job_name=support.JOB))
        ),
        120,
        processes.logs,
    )

    support.check_every_photo_delivered_once(root, processes.home, names)
    runs = instance.get_runs(dg.RunsFilter(job_name=support.JOB))
    for run_id in killed_at:
        killed = instance.get_run_by_id(run_id)
        assert killed.status == dg.DagsterRunStatus.FAILURE
        assert killed.tags.get("dagster/will_retry") == "true"
    retries = [r for r in runs if r.parent_run_id in killed_at]
    assert len(retries) == KILLS and all(r.status == dg.DagsterRunStatus.SUCCESS for r in retries)
    spans = support.step_spans(instance, killed_at)
    assert support.overlapping(spans) == []
    state = breaker.get_state(breaker.engine_for(instance), "web_images")
    assert state is None or not state.open, state
    mid_batch = sum(0 < done < FILES_PER_RUN for done in done_at_kill)
    print(
        f"\n{KILLS} kills ({mid_batch} after part of the batch was delivered; photos delivered "
        f"per killed run: {done_at_kill}), {len(runs)} runs, {len(names)} photos in "
        f"{time.monotonic() - began:.0f}s; {late} signal(s) came after the batch was done"
    )
    assert mid_batch > 0, done_at_kill


@pytest.mark.timeout(420)
def test_a_run_whose_worker_and_code_server_die_together_is_ended_and_retried(
    dagster_processes, tmp_path: Path
) -> None:
    """The code server dies first (SIGKILL), then the run's worker: nobody records the run's end,
    so it would stay STARTED for max_runtime_seconds and hold the automation's slot. The
    orphaned-run sensor ends it; Dagster retries it; every photo is delivered once."""
    root = tmp_path / "photos"
    names = [f"q{n:03d}.jpg" for n in range(3 * FILES_PER_RUN)]
    support.stage_photos(root, support.make_sources(tmp_path / "sources", WIDTH), names)
    processes = dagster_processes(
        "automation_pipelines.definitions",
        env={"WEB_IMAGES_ROOT": str(root), "WEB_IMAGES_MAX_FILES_PER_RUN": str(FILES_PER_RUN)},
        instance_overrides={"run_queue": {"dequeue_interval_seconds": 1}},
    )
    processes.start_daemon()
    instance, web = processes.instance, root / "web"

    def a_worker_mid_batch():
        for run in instance.get_runs(
            dg.RunsFilter(job_name=support.JOB, statuses=[dg.DagsterRunStatus.STARTED])
        ):
            pid = worker_pid(instance, run.run_id)
            if pid and run.parent_run_id is None and first_output_written(instance, web, run):
                return run, pid
        return None

    run, pid = wait_for("a run mid-batch", a_worker_mid_batch, 120, processes.logs, interval=0.05)
    worker = psutil.Process(pid)
    server = worker.parent()
    assert "grpc" in " ".join(server.cmdline()), server.cmdline()
    server.send_signal(signal.SIGKILL)
    worker.send_signal(signal.SIGKILL)
    psutil.wait_procs([server, worker], timeout=10)

    ended = wait_for(
        "the orphaned run to be ended",
        functools.partial(finished_run, instance, run.run_id),
        120,
        processes.logs,
    )
    assert ended.status == dg.DagsterRunStatus.FAILURE
    [failure] = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
    ).records
    assert f"worker (pid {pid}) is gone" in failure.event_log_entry.message
    wait_for(
        "every photo in processed/",
        lambda: len(list((root / "processed").glob("*.jpg"))) == len(names),
        180,
        processes.logs,
    )
    retries = instance.get_runs(dg.RunsFilter(job_name=support.JOB))
    assert any(r.parent_run_id == run.run_id for r in retries)
    support.check_every_photo_delivered_once(root, processes.home, names)

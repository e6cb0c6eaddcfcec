"""workers: a burst of photos through the daemon with web_images' steps on 1 and on 2 Celery
worker processes, against the same rendering in one process.

Side by side in one run, on the same photos (BENCH_WORKERS_PHOTOS, default 200, camera-like
JPEGs of BENCH_WORKERS_SIZE, default 1600x1200, large enough that rendering outweighs a step's
start; made once and kept in bench/.data/workers):
- the baseline: `render_image` on every photo, one after another, in this process: the work
  itself, with nothing around it (no sensor, no run, no step, no record, no move);
- this project, as `make run` starts it (its definitions and `dagster.yaml`, the real daemon)
  with `WEB_IMAGES_EXECUTOR=celery` on this machine's RabbitMQ, twice: with 1 and with 2
  `dagster-celery` workers started from deploy/celery/worker.yaml as an operator starts them,
  each taking one step at a time (`--concurrency=1`) and rendering one photo at a time
  (`WEB_IMAGES_RENDER_THREADS=1`). Every photo is renamed into the inbox in
  one go; the time runs until the last original is in processed/ and the manifest lists every
  photo.

The two rounds differ only in the number of workers: each has a fresh instance home and a
queue of its own (deleted after), its workers are up and listening before the daemon starts,
and the photos, parts (`WEB_IMAGES_FILES_PER_STEP`, default 10) and everything else that runs
(daemon, code server, run workers) are the same. Figures: seconds and photos per second of
each, the steps each worker ran (from dagster-celery's engine events), each round against the
one-process rendering, and the speedup of 2 workers over 1; the target (issue "Scale") is at
least 1.6x on a 2-core machine, where the run worker and the daemon share the cores with the
workers. Every worker's process group is stopped and everything but the kept photos is removed
after, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import dagster as dg

from automation_pipelines.automations.web_images import execution
from automation_pipelines.automations.web_images.resources import THREADS_ENV
from automation_pipelines.local_stack import (
    LOCAL_BROKER,
    CeleryWorker,
    DagsterProcesses,
    celery_attempts,
    delete_queue,
    wait_for,
)
from bench.bench_burst import in_one_process, through_the_daemon
from bench.photos import camera_photos
from bench.tables import dagster_machine, load_average, photo_set, print_columns, verdict

PHOTOS = int(os.environ.get("BENCH_WORKERS_PHOTOS", "200"))
SIZE = tuple(int(n) for n in os.environ.get("BENCH_WORKERS_SIZE", "1600x1200").split("x"))
DATA = Path(__file__).parent / ".data" / "workers"
SOURCES = DATA / f"sources-v1-{SIZE[0]}x{SIZE[1]}"  # bench/photos.py's camera photos
WORK = DATA / "work"
ROUNDS = (1, 2)  # worker processes
TARGET = 1.6  # x the speed of 1 worker, with 2
TIMEOUT = 1800.0


def main() -> None:
    sources = camera_photos(SOURCES, PHOTOS, size=SIZE)
    celery = f"dagster-celery {version('dagster-celery')} on this machine's RabbitMQ"
    print(
        f"{dagster_machine(celery)}\n"
        f"{photo_set(sources, SIZE)}; {execution.files_per_step()} photos per step",
        flush=True,
    )
    shutil.rmtree(WORK, ignore_errors=True)
    try:
        alone = in_one_process(sources, WORK / "alone")
        print(f"  the same rendering in one process: {alone:.1f} s", flush=True)
        shutil.rmtree(WORK / "alone", ignore_errors=True)
        rounds = {}
        for count in ROUNDS:
            rounds[count] = on_workers(sources, WORK / f"workers-{count}", count)
            print(
                f"  on {_workers(count)}: photos dropped into the inbox -> all published: "
                f"{rounds[count][0]:.1f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    rate = f"{len(sources) / alone:.1f}"
    rows = [["rendering in one process", f"{alone:.1f}", rate, "1.00x", "-", "-"]]
    for count, (seconds, runs, steps) in rounds.items():
        rows.append(
            [
                f"through the daemon, {_workers(count)}",
                f"{seconds:.1f}",
                f"{len(sources) / seconds:.1f}",
                f"{alone / seconds:.2f}x",
                str(runs),
                ", ".join(str(n) for n in steps),
            ]
        )
    header = ["", "seconds", "photos/s", "vs one process", "runs", "steps per worker"]
    print_columns(header, rows)
    speedup = rounds[1][0] / rounds[2][0]
    print(
        f"\n{len(sources)}-photo burst: {speedup:.2f}x as fast on 2 workers as on 1; "
        f"target >= {TARGET}x: {verdict(speedup >= TARGET)}"
    )
    print(f"load average at the end: {load_average()}")


def on_workers(sources: list[Path], root: Path, count: int) -> tuple[float, int, list[int]]:
    """Seconds from the photos renamed into the inbox to all published, runs, and the steps each
    worker ran, with web_images' steps on `count` Celery workers of a queue of their own."""
    queue = f"bench_workers_{uuid.uuid4().hex[:8]}"
    workers: list[CeleryWorker] = []

    def start_workers(processes: DagsterProcesses) -> None:
        # The instance's storage first: workers open it as they start, two at once on a fresh
        # SQLite home could both create it.
        processes.instance.get_daemon_heartbeats()
        for number in range(1, count + 1):
            log = root / f"worker-{number}.log"
            workers.append(CeleryWorker(f"bench{number}", processes.env, queue, log))
            processes.log_files.append(log)
        wait_for("the workers", lambda: all(w.ready() for w in workers), 120, processes.logs)

    settings = {
        execution.EXECUTOR_ENV: execution.CELERY,
        execution.BROKER_ENV: LOCAL_BROKER,
        execution.BACKEND_ENV: "",
        execution.QUEUE_ENV: queue,
        # One photo at a time per worker: the rounds measure spreading over worker processes,
        # which a worker rendering on every core by itself would hide on this machine.
        THREADS_ENV: "1",
    }
    try:
        seconds, runs, _ = through_the_daemon(
            sources, root, timeout=TIMEOUT, env=settings, before_daemon=start_workers
        )
        with dg.DagsterInstance.from_config(str(root / "dagster_home")) as instance:
            steps = Counter(
                worker
                for run in instance.get_runs(dg.RunsFilter(job_name="render_web_images_job"))
                for _, _, worker in celery_attempts(instance, run.run_id)
            )
    finally:
        for worker in workers:
            worker.stop()
        delete_queue(LOCAL_BROKER, queue)
    return seconds, runs, [steps[worker.name] for worker in workers]


def _workers(count: int) -> str:
    return f"{count} worker{'s' if count > 1 else ''}"


if __name__ == "__main__":
    main()

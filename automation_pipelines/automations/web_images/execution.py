"""Where the steps of a web images run execute: inside the run worker (the default), or spread
over Celery workers on other machines that share only the broker, PostgreSQL and the photo tree.

`WEB_IMAGES_EXECUTOR=celery` switches the job to Dagster's own `dagster_celery` executor: a run
then splits its batch into parts of `WEB_IMAGES_FILES_PER_STEP` photos, and each part is a step
that any worker listening on `WEB_IMAGES_CELERY_QUEUE` may take. The broker's URL (with its
password) is read from `CELERY_BROKER_URL` when a run starts, never written down. Workers
acknowledge a step only once it is done (`task_acks_late`), so a worker that dies mid-step
leaves its step in the queue for another worker; RabbitMQ hands it on as soon as the dead
worker's connection drops. Workers start from `deploy/celery/worker.yaml`, which carries the
same settings (a test keeps the two in step).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dagster as dg

from automation_pipelines.settings import ConfigurationError, integer

EXECUTOR_ENV = "WEB_IMAGES_EXECUTOR"
IN_PROCESS = "in_process"
CELERY = "celery"
BROKER_ENV = "CELERY_BROKER_URL"
BACKEND_ENV = "CELERY_RESULT_BACKEND"
#: Results travel back to the run worker over the broker itself: nothing else to run.
DEFAULT_BACKEND = "rpc://"
QUEUE_ENV = "WEB_IMAGES_CELERY_QUEUE"
DEFAULT_QUEUE = "web_images"
FILES_PER_STEP_ENV = "WEB_IMAGES_FILES_PER_STEP"
DEFAULT_FILES_PER_STEP = 10
STEP_OUTPUTS_ENV = "WEB_IMAGES_STEP_OUTPUTS_DIR"
#: The IO manager that hands one step's output to the next, wherever each one ran.
STEP_OUTPUTS_KEY = "web_images_step_outputs"

#: What both the executor and the workers (deploy/celery/worker.yaml) set: a step is
#: acknowledged when it ends, so a lost worker's step goes back to the queue, and a worker
#: takes one step at a time, leaving the rest of the queue to the others.
CELERY_SETTINGS = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}


def executor_choice() -> str:
    """$WEB_IMAGES_EXECUTOR: `in_process` (default) or `celery`; anything else is refused."""
    chosen = (os.environ.get(EXECUTOR_ENV) or IN_PROCESS).strip()
    if chosen not in (IN_PROCESS, CELERY):
        raise ConfigurationError(f"{EXECUTOR_ENV}={chosen!r} must be {IN_PROCESS} or {CELERY}")
    return chosen


def files_per_step() -> int:
    """$WEB_IMAGES_FILES_PER_STEP, else 10: smaller parts spread over more workers and redo less
    after a lost worker; each part costs a task's start (a second or so)."""
    return integer(FILES_PER_STEP_ENV, DEFAULT_FILES_PER_STEP, minimum=1)


def queue() -> str:
    return (os.environ.get(QUEUE_ENV) or DEFAULT_QUEUE).strip()


def celery_executor() -> dg.ExecutorDefinition:
    """`dagster_celery.celery_executor` with the broker from $CELERY_BROKER_URL (read when a run
    starts: a missing one fails the launch, naming it), the result backend from
    $CELERY_RESULT_BACKEND (else the broker), the queue and `CELERY_SETTINGS`."""
    from dagster_celery import celery_executor as executor

    backend = {"env": BACKEND_ENV} if os.environ.get(BACKEND_ENV) else DEFAULT_BACKEND
    return executor.configured(
        {
            "broker": {"env": BROKER_ENV},
            "backend": backend,
            "config_source": {**CELERY_SETTINGS, "task_default_queue": queue()},
        },
        name=CELERY,
    )


def step_outputs_dir(root: str) -> str:
    """$WEB_IMAGES_STEP_OUTPUTS_DIR, else `.steps` in the photo tree: a folder every worker can
    write, since a step's output is read by the next step on whichever worker takes it."""
    return os.environ.get(STEP_OUTPUTS_ENV) or str(Path(root) / ".steps")


def worker_name() -> str:
    """Which machine and process ran a step, for its log."""
    return f"{socket.gethostname()} (pid {os.getpid()})"

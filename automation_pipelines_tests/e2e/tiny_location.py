"""A test-only code location: one sensor that asks for one run of a job that writes a file."""

import os
from pathlib import Path

import dagster as dg


@dg.op
def write_mark() -> str:
    path = Path(os.environ["TINY_MARK_DIR"]) / "ran.txt"
    path.write_text("ran by the daemon\n")
    return str(path)


@dg.job(tags={"automation": "tiny"})
def tiny_job():
    write_mark()


@dg.sensor(
    job=tiny_job,
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests exactly one run (fixed run_key).",
)
def tiny_sensor(context: dg.SensorEvaluationContext):
    return dg.RunRequest(run_key="tiny-once")


defs = dg.Definitions(jobs=[tiny_job], sensors=[tiny_sensor])

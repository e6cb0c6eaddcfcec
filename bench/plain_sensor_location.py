"""The baseline of the latency bench: what a Dagster user writes first to react to a file.

A plain `@dg.sensor` at Dagster's fastest useful interval (its sensor daemon looks every 5 s)
requests one run per new file (run key: name and modification time), and the run's op copies
the file to the output folder. No quiet period, no batching, no decoding: the trivial round
trip through Dagster's sensor daemon, run queue and default run launcher.
"""

import os
import shutil
from pathlib import Path

import dagster as dg

INBOX_ENV, OUTPUT_ENV = "PLAIN_INBOX", "PLAIN_OUTPUT"


class CopyConfig(dg.Config):
    name: str


@dg.op
def copy_file(config: CopyConfig) -> None:
    output = Path(os.environ[OUTPUT_ENV])
    output.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(os.environ[INBOX_ENV]) / config.name, output / config.name)


@dg.job
def copy_job() -> None:
    copy_file()


@dg.sensor(job=copy_job, minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING)
def plain_inbox_sensor(context: dg.SensorEvaluationContext):
    for entry in sorted(os.scandir(os.environ[INBOX_ENV]), key=lambda e: e.name):
        if entry.is_file():
            yield dg.RunRequest(
                run_key=f"{entry.name}:{entry.stat().st_mtime_ns}",
                run_config={"ops": {"copy_file": {"config": {"name": entry.name}}}},
            )


defs = dg.Definitions(jobs=[copy_job], sensors=[plain_inbox_sensor])

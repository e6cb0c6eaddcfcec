"""A test-only code location: two automations made with `Automation` whose sensors each ask for
three runs at once; `serial` may run one at a time, `paired` two (side_by_side=2). Each run
records when its op began and ended in $POOLS_SPAN_DIR."""

import json
import os
import time
from pathlib import Path

import dagster as dg

from automation_pipelines.reliability.automation import Automation
from automation_pipelines.reliability.errors import LOCAL_IO

HERE = Path(__file__).resolve().parent
SERIAL = Automation(name="serial", owner="team:test", folder=HERE, max_runtime_seconds=300)
PAIRED = Automation(
    name="paired", owner="team:test", folder=HERE, max_runtime_seconds=300, side_by_side=2
)
#: Long enough that runs launched together are surely in their op at the same time.
WORK_SECONDS = 6.0


def _spans(automation: Automation):
    @automation.op(LOCAL_IO, name=f"{automation.name}_work")
    def work(context: dg.OpExecutionContext) -> None:
        began = time.time()
        time.sleep(WORK_SECONDS)
        span = {"automation": automation.name, "began": began, "ended": time.time()}
        path = Path(os.environ["POOLS_SPAN_DIR"]) / f"{context.run_id}.json"
        path.write_text(json.dumps(span))

    @automation.job(name=f"{automation.name}_job", description="Works for a while.")
    def job():
        work()

    @automation.sensor(
        name=f"{automation.name}_sensor",
        job=job,
        minimum_interval_seconds=1,
        description="Asks for three runs at once, once.",
    )
    def sensor(context: dg.SensorEvaluationContext):
        return [dg.RunRequest(run_key=f"{automation.name}-{n}") for n in range(3)]

    return automation.definitions(jobs=[job], sensors=[sensor])


defs = dg.Definitions.merge(_spans(SERIAL), _spans(PAIRED))

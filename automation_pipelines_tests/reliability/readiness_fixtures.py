"""Jobs that are ready but for one rule each, so every readiness rule is seen to fail alone.

Ready jobs are started by triggers the `Automation` helpers make (guarded by the pause switch and
the circuit breaker); `unguarded` is started by a plain `dg.ScheduleDefinition`, `leaky_settings`
keeps a settings file with a password next to its runbook."""

from pathlib import Path

import dagster as dg

from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.automation import Automation, Expectation
from automation_pipelines.reliability.errors import (
    LOCAL_IO,
    LOCAL_IO_RETRY,
    classify_errors,
    reliable_op,
)
from automation_pipelines.reliability.hooks import alert_on_failure_hook

HERE = Path(__file__).parent
RESOURCES = {"alerts": AlertRouter(routes_file=str(HERE / "fixture_alert_routes.yaml"))}
EXPECT = Expectation(success_within_hours=26)
GOOD = Automation(
    name="fixture", owner="team:test", folder=HERE / "fixture_runbooks" / "complete", expect=EXPECT
)
LEAKY = Automation(
    name="fixture",
    owner="team:test",
    folder=HERE / "fixture_runbooks" / "leaky_settings",
    expect=EXPECT,
)
INCOMPLETE = Automation(
    name="fixture",
    owner="team:test",
    folder=HERE / "fixture_runbooks" / "incomplete",
    expect=EXPECT,
)


@GOOD.op(LOCAL_IO)
def add_numbers() -> int:
    return 2 + 3


@dg.op(pool=GOOD.pool)
def unprotected_step(value: int) -> int:
    return value * 2


@dg.op(retry_policy=dg.RetryPolicy(max_retries=5), pool=GOOD.pool)
def blindly_retried_step(value: int) -> int:
    return value + 1


@reliable_op(LOCAL_IO)
def step_in_no_pool(value: int) -> int:
    return value - 1


def _make(
    name: str,
    *,
    tags=None,
    owners=None,
    metadata=None,
    description=None,
    retry=True,
    blind=False,
    pooled=True,
    automation=GOOD,
    triggered=True,
    guarded=True,
    hooks=frozenset({alert_on_failure_hook}),
    executor=dg.in_process_executor,
    cron="0 * * * *",
) -> dg.Definitions:
    tags = automation.job_tags() if tags is None else tags
    owners = [automation.owner] if owners is None else owners
    metadata = automation.job_metadata() if metadata is None else metadata

    @dg.job(
        name=name,
        tags=tags,
        owners=owners,
        metadata=metadata,
        description=automation.describe("Adds numbers.") if description is None else description,
        hooks=hooks,
        executor_def=executor,
    )
    def _job():
        value = add_numbers()
        if not retry:
            unprotected_step(value)
        if blind:
            blindly_retried_step(value)
        if not pooled:
            step_in_no_pool(value)

    schedules = []
    if triggered and guarded:
        schedules.append(
            automation.schedule(
                name=f"{name}_hourly_schedule",
                cron_schedule=cron,
                job=_job,
                description="Adds numbers every hour.",
            )
        )
    elif triggered:
        schedules.append(
            dg.ScheduleDefinition(
                name=f"{name}_hourly_schedule", job=_job, cron_schedule="0 * * * *"
            )
        )
    return dg.Definitions(jobs=[_job], schedules=schedules, resources=RESOURCES)


def _without(key: str) -> dict[str, str]:
    return {k: v for k, v in GOOD.job_tags().items() if k != key}


ready = _make("ready_job")
no_owner = _make("no_owner_job", owners=[])
no_runbook = _make("no_runbook_job", description="Adds numbers, and says nothing about a runbook.")
incomplete_runbook = _make("incomplete_runbook_job", automation=INCOMPLETE)
untriggered = _make("untriggered_job", triggered=False)
no_retry = _make("no_retry_job", retry=False)
blind_retry = _make("blind_retry_job", blind=True)
no_max_runtime = _make("no_max_runtime_job", tags=_without("dagster/max_runtime"))
unlimited = _make("unlimited_job", pooled=False)
unhooked = _make("unhooked_job", hooks=frozenset())
crowded = _make("crowded_job", tags={**GOOD.job_tags(), "owner": "team:test"})
unexpected = _make(
    "unexpected_job",
    metadata={
        k: v
        for k, v in GOOD.job_metadata().items()
        if k not in ("expect/success_within_seconds", "expect/trigger_stale_seconds")
    },
)
multiprocess = _make("multiprocess_job", executor=dg.multiprocess_executor)
unrouted = _make("unrouted_job", owners=["team:nobody"])
unguarded = _make("unguarded_job", guarded=False)
leaky_settings = _make("leaky_settings_job", automation=LEAKY)
overrun = _make(
    "overrun_job",
    metadata={**GOOD.job_metadata(), "expect/max_runs_per_hour": 30},
    cron="* * * * *",
)


@dg.op(pool=GOOD.pool)
@classify_errors(LOCAL_IO)
def plain_op() -> int:
    """Classified, with the retry policy its job gives it."""
    return 1


@dg.job(
    name="job_level_retry_job",
    tags=GOOD.job_tags(),
    owners=[GOOD.owner],
    metadata=GOOD.job_metadata(),
    description=GOOD.describe("Retries come from the job."),
    op_retry_policy=LOCAL_IO_RETRY,
    hooks={alert_on_failure_hook},
    executor_def=dg.in_process_executor,
)
def job_level_retry_job():
    plain_op()


@GOOD.sensor(
    name="job_level_retry_sensor",
    job=job_level_retry_job,
    minimum_interval_seconds=60,
    description="Never asks for a run.",
)
def job_level_retry_sensor(context: dg.SensorEvaluationContext):
    return dg.SkipReason("fixture")


job_level_retry = dg.Definitions(
    jobs=[job_level_retry_job], resources=RESOURCES, sensors=[job_level_retry_sensor]
)

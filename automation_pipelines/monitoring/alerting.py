"""Sensors that turn finished runs into alerts and deliver the outbox.

Dagster's run-failure sensor advances its cursor even when the alert code raises, and the alert is
lost. This sensor reads finished runs itself and moves its cursor only after every run up to it
is in the outbox; a run is recorded at most once, so re-reading is harmless. A successful run that
set items aside (`flag_run`'s tags) is a success here: it closes incidents and is only counted, the
digest lists its items.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import NamedTuple

import dagster as dg

from automation_pipelines import settings
from automation_pipelines.reliability import breaker
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.automation import unguarded
from automation_pipelines.reliability.deadletters import set_aside_of
from automation_pipelines.reliability.identity import (
    automation_jobs,
    job_automation,
    job_setting,
    run_identity,
)
from automation_pipelines.reliability.messages import FailureDetail, RunFacts
from automation_pipelines.reliability.secrets import redact
from automation_pipelines.reliability.tags import (
    BREAKER_KEY,
    ROOT_RUN_TAG,
    RUNBOOK_PREFIX,
    WILL_RETRY_TAG,
)

UNOWNED = "unowned"
#: On its very first tick the sensor looks back this far, so a fresh start misses nothing recent.
FIRST_LOOKBACK_SECONDS = 3600
#: Runs whose update time equals the cursor are read again; recording is idempotent.
CURSOR_OVERLAP_SECONDS = 5
#: A failed run without a will-retry decision yet is waited for this long.
RETRY_DECISION_WAIT_SECONDS = 60
RUNS_PER_TICK = 200
#: How often queued alerts are delivered. Nothing else in the daemon delivers, so this bounds
#: how long a queued alert waits; a tick with nothing due is one query.
OUTBOX_INTERVAL_SECONDS = 10


#: Run-level causes Dagster reports in engine and run-failure events, most telling first.
RUN_LEVEL_CAUSES = {
    "MaxRuntimeExceeded": re.compile(r"maximum runtime", re.I),
    "RunWorkerCrashed": re.compile(r"terminated by signal|unexpectedly|exit code", re.I),
    "RunStartTimeout": re.compile(r"start timeout|did not start|failed to start", re.I),
}


def failure_details(outbox, instance: dg.DagsterInstance, run_id: str) -> list[FailureDetail]:
    """The hook's op details, led by the run-level cause when the run died from outside."""
    recorded = outbox.failure_details(run_id)
    run_level = _run_level_detail(instance, run_id)
    if run_level.error_class in RUN_LEVEL_CAUSES:
        return [run_level, *recorded]
    return recorded or [run_level]


def _run_level_detail(instance: dg.DagsterInstance, run_id: str) -> FailureDetail:
    """Explain a run that failed outside any op: a crash, a max-runtime kill, a failed launch."""
    records = instance.get_records_for_run(run_id, ascending=False, limit=200).records
    step_failures = [
        r.event_log_entry
        for r in records
        if r.event_log_entry.dagster_event_type == dg.DagsterEventType.STEP_FAILURE
    ]
    if step_failures:
        entry = step_failures[0]
        error = entry.dagster_event.step_failure_data.error
        return FailureDetail(
            op=entry.step_key,
            error_class=error.cls_name if error else "StepFailure",
            message=redact(error.message.strip() if error else entry.message),
        )
    messages = [
        r.event_log_entry.message or ""
        for r in records
        if r.event_log_entry.dagster_event_type
        in (dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.ENGINE_EVENT)
    ]
    for kind, pattern in RUN_LEVEL_CAUSES.items():
        found = next((m for m in messages if pattern.search(m)), None)
        if found:
            return FailureDetail(op=None, error_class=kind, message=redact(found.strip()))
    message = messages[0] if messages else "the run failed"
    return FailureDetail(op=None, error_class="RunFailure", message=redact(message.strip()))


def pause_hint(job: str, repository: dg.RepositoryDefinition) -> str:
    """How to stop the triggers that launch `job`: the automation's own switch, which the
    watchdog respects (a sensor turned off in the UI is reported as `trigger_stopped`)."""
    triggers = [("schedule", s.name) for s in repository.schedule_defs if s.job_name == job] + [
        ("sensor", s.name)
        for s in repository.sensor_defs
        if any(t.job_name == job for t in s.targets)
    ]
    if not triggers:
        return "nothing in this code location launches it; stop whoever does"
    names = [name for _, name in triggers]
    automation = job_automation(repository.get_job(job)) if repository.has_job(job) else None
    if not automation:
        return "; ".join(f"dagster {kind} stop {name} -w workspace.yaml" for kind, name in triggers)
    return (
        f'automation-pipelines pause {automation} --reason "…" (holds {", ".join(names)}; '
        f"`automation-pipelines resume {automation}` undoes it)"
    )


def run_facts(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    repository: dg.RepositoryDefinition | None,
    details: list[FailureDetail],
) -> RunFacts:
    """Everything an alert says about `run`, gathered from the instance and the definitions."""
    root = run.tags.get(ROOT_RUN_TAG)
    attempt = 1
    if root:
        attempt += len(instance.get_run_ids(filters=dg.RunsFilter(tags={ROOT_RUN_TAG: root})))
        attempt -= 1 if run.run_id == root else 0
    runbook = pause = None
    if repository is not None and repository.has_job(run.job_name):
        description = repository.get_job(run.job_name).description or ""
        match = re.search(re.escape(RUNBOOK_PREFIX) + r"(\S+)", description)
        runbook = settings.runbook_url(match.group(1)) if match else None
        pause = pause_hint(run.job_name, repository)
    identity = run_identity(run, repository)
    return RunFacts(
        run_id=run.run_id,
        job=run.job_name,
        owner=identity.owner or UNOWNED,
        automation=identity.automation,
        run_attempt=max(1, attempt),
        details=tuple(details),
        runbook=runbook,
        pause=pause,
    )


def breaker_threshold(repository: dg.RepositoryDefinition | None, job: str) -> int | None:
    """The consecutive failures after which `job`'s automation is stopped, as its definition
    declares it now (None for a job this code location does not know)."""
    if repository is None or not repository.has_job(job):
        return None
    return job_setting(repository.get_job(job), BREAKER_KEY)


def trip_breaker(
    instance: dg.DagsterInstance,
    outbox,
    run: dg.DagsterRun,
    facts: RunFacts,
    repository: dg.RepositoryDefinition | None,
) -> None:
    """Stop the automation's triggers after its declared number of consecutive failures."""
    automation = facts.automation
    threshold = breaker_threshold(repository, run.job_name)
    if not automation or not threshold or threshold < 1:
        return
    jobs = automation_jobs(repository, automation) or (run.job_name,)
    reason = breaker.trip_if_due(instance, automation, jobs, threshold)
    if reason is None:
        return
    outbox.enqueue_message(
        facts.owner,
        f"[CIRCUIT BREAKER] {automation} stopped after {reason}",
        "\n".join(
            [
                f"The circuit breaker of automation {automation} opened after {reason}: its "
                "schedules and sensors request no more runs until someone resumes it.",
                f"Last failed run: {facts.run_id} ({facts.job}): {facts.main.error_class}: "
                f"{facts.main.message}",
                f"Runbook: {facts.runbook or '-'}",
                f"Resume, once the cause is fixed: automation-pipelines resume {automation}",
            ]
        ),
        dedup_key=f"breaker:{automation}:{run.run_id}",
    )


class Processed(NamedTuple):
    """What one tick recorded: the new cursor, new alerts, recovery notices, and successful runs
    that set items aside (counted, never alerted: the digest lists their items)."""

    cursor: float
    failures: int
    successes: int
    set_aside: int = 0


def process_finished_runs(context: dg.SensorEvaluationContext, alerts: AlertRouter) -> Processed:
    """Record every run finished since the cursor."""
    instance = context.instance
    outbox = alerts.outbox(instance)
    cursor = float(context.cursor) if context.cursor else time.time() - FIRST_LOOKBACK_SECONDS
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS],
            updated_after=datetime.fromtimestamp(cursor - CURSOR_OVERLAP_SECONDS, tz=UTC),
        ),
        order_by="update_timestamp",
        ascending=True,
        limit=RUNS_PER_TICK,
    )
    repository = getattr(context, "repository_def", None)
    new_cursor, failures, successes, set_aside = cursor, 0, 0, 0
    for record in records:
        run = record.dagster_run
        updated = record.update_timestamp.timestamp()
        if run.status == dg.DagsterRunStatus.FAILURE:
            decided = WILL_RETRY_TAG in run.tags or not instance.run_retries_enabled
            if not decided and time.time() - updated < RETRY_DECISION_WAIT_SECONDS:
                break  # Dagster tags the run in a moment; read it again next tick
            if run.tags.get(WILL_RETRY_TAG) == "true":
                outbox.mark_processed(run.run_id, "will_retry")
            elif not outbox.is_processed(run.run_id):
                details = failure_details(outbox, instance, run.run_id)
                facts = run_facts(instance, run, repository, details)
                if outbox.process_failure(facts):
                    failures += 1
                trip_breaker(instance, outbox, run, facts, repository)
        else:
            if outbox.process_success(run_facts(instance, run, repository, [])):
                successes += 1
            if any(set_aside_of(run.tags)) and updated > cursor:
                set_aside += 1
        new_cursor = max(new_cursor, updated)
    return Processed(new_cursor, failures, successes, set_aside)


@dg.sensor(
    name="run_failure_alert_sensor",
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    metadata=unguarded(
        "alerts are never held by a pause switch: a paused or tripped automation's failures must "
        "still reach its owner, and this sensor is what trips the circuit breakers"
    ),
    description=(
        "Turns every failed run of every job into one alert for its owner (after Dagster's own "
        "retries), folds repeats into the open incident, and sends a recovery notice on the next "
        "success. Covers failures no hook sees: crashed run workers, runs that never started, "
        "max-runtime kills."
    ),
)
def run_failure_alert_sensor(context: dg.SensorEvaluationContext, alerts: AlertRouter):
    done = process_finished_runs(context, alerts)  # queued; alert_outbox_sensor delivers
    context.update_cursor(str(done.cursor))
    aside = f", {done.set_aside} successful run(s) set items aside" if done.set_aside else ""
    return dg.SkipReason(
        f"{done.failures} new alert(s), {done.successes} recovery notice(s){aside} queued"
    )


@dg.sensor(
    name="alert_outbox_sensor",
    minimum_interval_seconds=OUTBOX_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    metadata=unguarded(
        "it only delivers alerts already queued; holding it would hold every owner's alerts, "
        "including those about the automation that was paused"
    ),
    description=(
        "The one deliverer of alerts inside Dagster: runs and the other sensors only queue them, "
        "so a channel that hangs holds no run. Delivers queued alerts and retries the ones a "
        "channel refused, with backoff, until every channel has accepted them. A tick fails "
        "(red in the UI) while alerts cannot be delivered, so a broken channel is itself visible."
    ),
)
def alert_outbox_sensor(context: dg.SensorEvaluationContext, alerts: AlertRouter):
    report = alerts.outbox(context.instance).deliver_due(
        budget_seconds=alerts.delivery_budget_seconds
    )
    if report.errors and not report.sent:
        raise RuntimeError("alerts are waiting: " + "; ".join(sorted(set(report.errors))[:5]))
    return dg.SkipReason(
        f"delivered {report.sent}, failed {report.failed}, unrouted {report.unrouted}"
        + (f"; problems: {'; '.join(sorted(set(report.errors))[:3])}" if report.errors else "")
    )

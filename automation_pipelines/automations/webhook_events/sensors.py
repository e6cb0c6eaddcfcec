"""The inbox sensor: new inbox rows become load runs in capped batches, failed batches are run
again, and a batch that failed too often is dead-lettered for a person.

The inbox itself is the source of truth: a row belongs to at most one batch (its key is written
on the row when the run is requested, or when the batch's first run starts, for events that came
while it waited), and a batch is finished when none of its rows is pending.
So nothing depends on the sensor's cursor surviving, and an event re-queued by `events replay`
simply becomes part of a new batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events import AUTOMATION
from automation_pipelines.automations.webhook_events.jobs import load_webhook_events_job
from automation_pipelines.automations.webhook_events.ops import batch_run_key, batch_runs
from automation_pipelines.automations.webhook_events.resources import EventWarehouse
from automation_pipelines.reliability import listening, pacing
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.identity import records_of
from automation_pipelines.reliability.tags import RUN_KEY_TAG, WILL_RETRY_TAG
from automation_pipelines.webhooks import inbox

MAX_EVENTS_PER_RUN = 2000
#: Every round of Dagster's sensor daemon (every 5 s, a constant of its loop): an interval of 5 s
#: would be missed by a hair every other round, a 10 s cadence.
SENSOR_INTERVAL_SECONDS = 1
MAX_RUNS_PER_TICK = 5
#: A batch whose runs failed this many times is dead-lettered instead of run again.
MAX_FAILED_RUNS = 3
#: A batch with no run at all this long after it was requested is requested again, under its
#: first run key: a daemon killed mid-tick loses the request, and should the run exist after all,
#: Dagster drops the repeat by its run key.
LOST_REQUEST_SECONDS = 30
#: How long a failed run that Dagster said it will retry may wait for that retry.
RETRY_WAIT_SECONDS = 300
#: How long a failed run may go without Dagster's will-retry decision before we decide.
RETRY_DECISION_WAIT_SECONDS = 60
#: New events gather for the next batch only behind a run created this recently. One that has
#: waited longer is not about to start (a run orphaned in STARTING by a killed daemon waits for
#: run monitoring's start timeout, minutes), and events must not wait with it.
GATHER_AT_MOST_SECONDS = 30
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
WAITING = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
]


def run_request(batch: str, run_key: str) -> dg.RunRequest:
    """A load run of `batch`. It carries no tag of its own: `batch_runs` finds it by its run
    key, and what it loaded is its materialization's metadata."""
    return dg.RunRequest(
        run_key=run_key,
        run_config={
            "ops": {
                "load_events": {
                    "config": {"batch": batch, "take_waiting_up_to": MAX_EVENTS_PER_RUN}
                }
            }
        },
    )


@dataclass
class Decision:
    """What one tick decided, for the tick's log line and the tests."""

    requests: list[dg.RunRequest]
    new_events: int = 0
    rerun_batches: int = 0
    waiting_batches: int = 0
    dead_batches: int = 0
    dead_events: int = 0
    left_for_next_tick: bool = False
    #: New events wait for the run that waits to start, to go in the next (bigger) batch.
    gathering: bool = False

    def sentence(self) -> str:
        return (
            f"{self.new_events} new event(s) in {len(self.requests) - self.rerun_batches} run(s); "
            f"{self.rerun_batches} failed batch(es) run again; {self.waiting_batches} batch(es) "
            f"in flight; {self.dead_batches} batch(es) dead-lettered ({self.dead_events} events)"
            + ("; more waiting for the next tick" if self.left_for_next_tick else "")
            + (
                "; new events wait for the run about to start, which takes them"
                if self.gathering
                else ""
            )
        )


def _failure_reason(instance: dg.DagsterInstance, run: dg.DagsterRun, recorded: str | None) -> str:
    """The error the loader recorded, else what Dagster says ended the run."""
    if recorded:
        return f"{recorded} (last run {run.run_id})"
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE, ascending=False, limit=1
    ).records
    message = records[0].event_log_entry.message if records else None
    return f"run {run.run_id} ended {run.status.value}: {message or 'no reason recorded'}"


def _review_batch(
    instance: dg.DagsterInstance,
    engine: sa.Engine,
    batch: sa.Row,
    now: float,
    decision: Decision,
    dead: list[tuple[str, int, str]],
) -> None:
    """Leave a batch in flight, request it again, or dead-letter it."""
    runs = batch_runs(instance, batch.batch)
    if any(run.status not in FINISHED for run in runs):
        decision.waiting_batches += 1
        return
    if not runs:
        if now - (batch.requested_at or now) < LOST_REQUEST_SECONDS:
            decision.waiting_batches += 1
            return
    else:
        latest = runs[0]  # newest first
        record = instance.get_run_record_by_id(latest.run_id)
        ended = record.update_timestamp.timestamp() if record else now
        if latest.status == dg.DagsterRunStatus.FAILURE and instance.run_retries_enabled:
            # Dagster may run it again itself: wait for its retry, or for its decision.
            will_retry = latest.tags.get(WILL_RETRY_TAG)
            patience = {"true": RETRY_WAIT_SECONDS, None: RETRY_DECISION_WAIT_SECONDS}
            if will_retry in patience and now - ended < patience[will_retry]:
                decision.waiting_batches += 1
                return
        failed = sum(1 for run in runs if run.status in FAILED)
        if failed >= MAX_FAILED_RUNS:
            reason = _failure_reason(instance, latest, batch.last_error)
            with engine.begin() as conn:
                rows = inbox.pending_in_batch(conn, batch.batch)
                inbox.mark_dead(
                    conn,
                    AUTOMATION.name,
                    [(row, f"failed {failed} runs: {reason}") for row in rows],
                    now,
                )
            dead.append((batch.batch, len(rows), reason))
            decision.dead_batches += 1
            decision.dead_events += len(rows)
            return
    decision.rerun_batches += 1
    requested = len({run.tags.get(RUN_KEY_TAG) for run in runs})  # retries keep their key
    decision.requests.append(run_request(batch.batch, batch_run_key(batch.batch, requested + 1)))


def _run_waiting_to_start(instance: dg.DagsterInstance, now: float) -> bool:
    """A run of the automation, created in the last `GATHER_AT_MOST_SECONDS`, is queued or
    starting: new events join the next batch."""
    waiting = records_of(
        instance,
        AUTOMATION.job_names,
        statuses=WAITING,
        created_after=datetime.fromtimestamp(now - GATHER_AT_MOST_SECONDS, tz=UTC),
        page_size=1,
    )
    return next(waiting, None) is not None


def evaluate_inbox(
    instance: dg.DagsterInstance,
    engine: sa.Engine,
    now: float,
    max_runs: int = MAX_RUNS_PER_TICK,
) -> tuple[Decision, list[tuple[str, int, str]]]:
    """This tick's run requests (at most `max_runs`: the automation's pace may allow fewer
    than the cap per tick) and the batches dead-lettered by it. New events become a batch only
    while no run of the automation waits to start: a new batch's run takes the events that
    came while it waited as it starts, so under load they go in bigger batches instead of a
    queue of small runs, and under a trickle they need no tick and no run start of their own."""
    decision = Decision(requests=[])
    dead: list[tuple[str, int, str]] = []
    for batch in inbox.in_flight_batches(engine):
        if len(decision.requests) >= max_runs:
            decision.left_for_next_tick = True
            break
        _review_batch(instance, engine, batch, now, decision, dead)

    room = max_runs - len(decision.requests)
    if room > 0 and _run_waiting_to_start(instance, now):
        decision.gathering = bool(inbox.unbatched(engine, 1))
        room = 0
    if room > 0:
        ids = [row.id for row in inbox.unbatched(engine, room * MAX_EVENTS_PER_RUN + 1)]
        if len(ids) > room * MAX_EVENTS_PER_RUN:
            decision.left_for_next_tick = True
            ids = ids[: room * MAX_EVENTS_PER_RUN]
        stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%dT%H%M%S%f")[:-3]
        for start in range(0, len(ids), MAX_EVENTS_PER_RUN):
            chunk = ids[start : start + MAX_EVENTS_PER_RUN]
            batch = f"ev-{chunk[0]}-{chunk[-1]}-{stamp}"
            taken = inbox.assign_batch(engine, chunk, batch, now)
            if taken:
                decision.new_events += taken
                decision.requests.append(run_request(batch, batch_run_key(batch, 1)))
    return decision, dead


def alert_dead_batches(alerts: AlertRouter, instance, dead: list[tuple[str, int, str]]) -> None:
    """One alert per dead-lettered batch, with the command that re-queues it."""
    outbox = alerts.outbox(instance)
    for batch, events, reason in dead:
        outbox.enqueue_message(
            AUTOMATION.owner,
            f"[DEAD LETTER] webhook_events: {events} event(s) gave up after "
            f"{MAX_FAILED_RUNS} failed runs",
            "\n".join(
                [
                    f"Batch {batch}: {events} event(s) were moved to the dead letters.",
                    f"Last error: {reason}",
                    f"Runbook: {AUTOMATION.runbook_ref}",
                    "List them: automation-pipelines events dead",
                    "Once the cause is fixed: automation-pipelines events replay --all",
                ]
            ),
            dedup_key=f"events-dead:{batch}",
        )


@AUTOMATION.sensor(
    name="webhook_inbox_sensor",
    job=load_webhook_events_job,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    description=(
        f"Turns new webhook inbox rows into load runs, at most {MAX_EVENTS_PER_RUN} events per "
        f"run and {MAX_RUNS_PER_TICK} runs per tick; runs failed batches again and dead-letters "
        f"a batch after {MAX_FAILED_RUNS} failed runs."
    ),
)
def webhook_inbox_sensor(
    context: dg.SensorEvaluationContext, warehouse: EventWarehouse, alerts: AlertRouter
):
    engine = warehouse.engine(context.instance)
    max_runs = pacing.allowed_runs(MAX_RUNS_PER_TICK)
    listened = listening.listen(
        lambda: evaluate_inbox(context.instance, engine, time.time(), max_runs),
        has_work=lambda found: bool(found[0].requests or found[1]),
        stamp=lambda: inbox.newest_id(engine),
        window=warehouse.listen_seconds,
        # The run new events gather behind may start at any moment: look at every poll.
        due_soon=lambda found: found[0].gathering,
        go_on=lambda: AUTOMATION.blocked(context) is None,
    )
    decision, dead = listened.look
    if dead:
        alert_dead_batches(alerts, context.instance, dead)
    previous = json.loads(context.cursor) if context.cursor else {}
    context.update_cursor(
        json.dumps(
            {
                "events_requested": previous.get("events_requested", 0) + decision.new_events,
                "batches_dead_lettered": previous.get("batches_dead_lettered", 0)
                + decision.dead_batches,
            },
            sort_keys=True,
        )
    )
    sentence = listened.describe(pacing.with_pace(decision.sentence(), MAX_RUNS_PER_TICK))
    if not decision.requests:
        return dg.SkipReason(f"nothing to run: {sentence}")
    context.log.info(sentence)
    return decision.requests

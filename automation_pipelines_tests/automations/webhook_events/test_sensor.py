"""The inbox sensor's scenarios on a real instance, on SQLite and PostgreSQL: first events, nothing
new, a burst over the caps, a lost request, a failed run run again, a batch dead-lettered after
its third failed run (with one alert), a replayed event batched anew, and the pause switch."""

from __future__ import annotations

import json
import re
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events import sensors
from automation_pipelines.automations.webhook_events.jobs import load_webhook_events_job
from automation_pipelines.automations.webhook_events.ops import MAX_BATCH_REQUESTS, batch_of
from automation_pipelines.automations.webhook_events.resources import EventWarehouse
from automation_pipelines.automations.webhook_events.sensors import (
    GATHER_AT_MOST_SECONDS,
    MAX_EVENTS_PER_RUN,
    MAX_RUNS_PER_TICK,
    evaluate_inbox,
    webhook_inbox_sensor,
)
from automation_pipelines.reliability import breaker, store
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.deadletters import open_dead_letters
from automation_pipelines.reliability.listening import POLL_SECONDS
from automation_pipelines.reliability.tags import WILL_RETRY_TAG
from automation_pipelines.webhooks import inbox
from automation_pipelines_tests.automations.webhook_events.events import (
    daemon_tags,
    push,
    seed,
)

NOW = 1_790_000_000.0


@pytest.fixture
def engine(events_db_url) -> sa.Engine:
    return store.engine(events_db_url)


def _seed(engine: sa.Engine, n: int, prefix: str = "d") -> list[int]:
    return seed(engine, [("github", f"{prefix}{i}", "push", push()) for i in range(n)])


def _batches(engine: sa.Engine) -> dict[str, int]:
    return {row.batch: row.rows for row in inbox.in_flight_batches(engine)}


def _failed_run(instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.DagsterRun:
    """A finished, failed run of the request that Dagster will not retry."""
    run = instance.create_run_for_job(
        load_webhook_events_job, run_config=request.run_config, tags=daemon_tags(request)
    )
    instance.report_run_failed(run, message="the warehouse is unreachable")
    instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "false"})
    return run


def test_nothing_new(sqlite_instance, engine) -> None:
    decision, dead = evaluate_inbox(sqlite_instance, engine, NOW)
    assert decision.requests == [] and dead == []
    assert "0 new event(s)" in decision.sentence()


def test_first_events(sqlite_instance, engine) -> None:
    _seed(engine, 5)
    decision, _ = evaluate_inbox(sqlite_instance, engine, NOW)
    [request] = decision.requests
    batch = batch_of(request)
    assert request.run_key == batch and request.tags == {}
    assert request.run_config == {
        "ops": {"load_events": {"config": {"batch": batch, "take_waiting_up_to": 2000}}}
    }
    assert _batches(engine) == {batch: 5}
    # The next tick sees the batch in flight (requested, no run yet) and asks for nothing.
    again, _ = evaluate_inbox(sqlite_instance, engine, NOW + 5)
    assert again.requests == [] and again.waiting_batches == 1


def test_burst_is_capped(sqlite_instance, engine) -> None:
    total = MAX_EVENTS_PER_RUN * MAX_RUNS_PER_TICK + 7
    _seed(engine, total)
    first, _ = evaluate_inbox(sqlite_instance, engine, NOW)
    assert len(first.requests) == MAX_RUNS_PER_TICK
    assert first.new_events == MAX_EVENTS_PER_RUN * MAX_RUNS_PER_TICK
    assert first.left_for_next_tick
    assert sorted(_batches(engine).values()) == [MAX_EVENTS_PER_RUN] * MAX_RUNS_PER_TICK
    second, _ = evaluate_inbox(sqlite_instance, engine, NOW + 5)
    assert second.new_events == 7 and len(second.requests) == 1
    assert len(inbox.unbatched(engine, 10)) == 0


def test_lost_request_is_made_again(sqlite_instance, engine) -> None:
    _seed(engine, 3)
    [request] = evaluate_inbox(sqlite_instance, engine, NOW)[0].requests
    later, _ = evaluate_inbox(sqlite_instance, engine, NOW + sensors.LOST_REQUEST_SECONDS + 1)
    [again] = later.requests
    assert batch_of(again) == batch_of(request)
    # The same run key: had the run been created after all, Dagster would drop the repeat.
    assert again.run_key == request.run_key


def test_running_batch_is_left_alone(sqlite_instance, engine) -> None:
    _seed(engine, 3)
    [request] = evaluate_inbox(sqlite_instance, engine, NOW)[0].requests
    sqlite_instance.create_run_for_job(
        load_webhook_events_job,
        run_config=request.run_config,
        tags=daemon_tags(request),
        status=dg.DagsterRunStatus.STARTED,
    )
    decision, _ = evaluate_inbox(sqlite_instance, engine, NOW + 10_000)
    assert decision.requests == [] and decision.waiting_batches == 1


def test_new_events_gather_while_a_run_waits_to_start(sqlite_instance, engine) -> None:
    """Under load runs batch more: while a load run is queued, new events wait for the next
    batch instead of lining up as one small run each; a running run does not hold them."""
    _seed(engine, 3)
    [request] = evaluate_inbox(sqlite_instance, engine, NOW)[0].requests
    run = sqlite_instance.create_run_for_job(  # as the daemon makes it: the job's tags too
        load_webhook_events_job,
        run_config=request.run_config,
        tags=daemon_tags(request),
        status=dg.DagsterRunStatus.NOT_STARTED,
    )
    _seed(engine, 4, prefix="later")
    waiting, _ = evaluate_inbox(sqlite_instance, engine, NOW + 5)
    assert waiting.requests == [] and waiting.gathering
    assert "new events wait for the run about to start" in waiting.sentence()
    _seed(engine, 5, prefix="more")
    sqlite_instance.handle_run_event(
        run.run_id,
        dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_START.value,
            job_name=run.job_name,
        ),
    )
    started, _ = evaluate_inbox(sqlite_instance, engine, NOW + 10)
    [bigger] = started.requests
    assert started.new_events == 9 and not started.gathering
    assert _batches(engine)[batch_of(bigger)] == 9


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING])
def test_a_run_stuck_waiting_to_start_does_not_hold_new_events(
    sqlite_instance, engine, status
) -> None:
    """A run orphaned in STARTING (its daemon was killed) waits minutes for run monitoring;
    events that come meanwhile get a run of their own as soon as the run is no longer young."""
    _seed(engine, 3)
    [request] = evaluate_inbox(sqlite_instance, engine, NOW)[0].requests
    sqlite_instance.create_run_for_job(
        load_webhook_events_job,
        run_config=request.run_config,
        tags=daemon_tags(request),
        status=status,
    )
    _seed(engine, 4, prefix="later")
    young, _ = evaluate_inbox(sqlite_instance, engine, time.time())
    assert young.requests == [] and young.gathering
    old, _ = evaluate_inbox(sqlite_instance, engine, time.time() + GATHER_AT_MOST_SECONDS + 1)
    [fresh] = old.requests
    assert old.new_events == 4 and not old.gathering and _batches(engine)[batch_of(fresh)] == 4


def test_the_pace_caps_the_runs_of_a_tick(sqlite_instance, engine) -> None:
    _seed(engine, MAX_EVENTS_PER_RUN * 3)
    decision, _ = evaluate_inbox(sqlite_instance, engine, NOW, max_runs=1)
    assert len(decision.requests) == 1 and decision.left_for_next_tick
    assert decision.new_events == MAX_EVENTS_PER_RUN


def test_failed_batch_runs_again_then_is_dead_lettered(
    sqlite_instance, engine, events_db_url, alert_routes, monkeypatch, json_receiver
) -> None:
    monkeypatch.setenv("TEST_DEFAULT_URLS", json_receiver.url)
    _seed(engine, 4)
    [request] = evaluate_inbox(sqlite_instance, engine, NOW)[0].requests
    batch = batch_of(request)
    inbox.record_error(engine, batch, "OperationalError: could not connect to server")

    keys = []
    for failures in range(1, sensors.MAX_FAILED_RUNS):
        _failed_run(sqlite_instance, request)
        decision, dead = evaluate_inbox(sqlite_instance, engine, NOW + 10 * failures)
        assert dead == [] and decision.rerun_batches == 1
        [request] = decision.requests
        keys.append(request.run_key)
    assert keys == [f"{batch}/run-2", f"{batch}/run-3"]

    _failed_run(sqlite_instance, request)
    alerts = AlertRouter(database_url=events_db_url, routes_file=str(alert_routes))
    context = dg.build_sensor_context(
        instance=sqlite_instance,
        resources={
            "warehouse": EventWarehouse(database_url=events_db_url, reports_dir="unused"),
            "alerts": alerts,
        },
    )
    result = webhook_inbox_sensor(context)
    assert isinstance(result, dg.SkipReason)
    assert "1 batch(es) dead-lettered (4 events)" in result.skip_message
    assert json.loads(context.cursor)["batches_dead_lettered"] == 1
    assert inbox.counts(engine) == {("github", "dead"): 4}
    letters = open_dead_letters(engine, "webhook_events")
    assert len(letters) == 4
    assert all("failed 3 runs: OperationalError: could not connect" in x.reason for x in letters)

    alerts.outbox().deliver_due(budget_seconds=10)
    [alert] = json_receiver.received
    assert "4 event(s) gave up after 3 failed runs" in alert["title"]
    assert "automation-pipelines events replay --all" in alert["message"]

    # Replayed, the events are batched anew with a fresh run key.
    assert inbox.replay(engine, everything=True) == 4
    replayed, _ = evaluate_inbox(sqlite_instance, engine, NOW + 100)
    [fresh] = replayed.requests
    assert batch_of(fresh) != batch and replayed.new_events == 4


def test_failed_run_without_retry_decision_is_waited_for(sqlite_instance, engine) -> None:
    _seed(engine, 2)
    [request] = evaluate_inbox(sqlite_instance, engine, NOW)[0].requests
    run = sqlite_instance.create_run_for_job(
        load_webhook_events_job, run_config=request.run_config, tags=daemon_tags(request)
    )
    sqlite_instance.report_run_failed(run)
    sqlite_instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "true"})
    decision, _ = evaluate_inbox(sqlite_instance, engine, time.time())
    assert decision.requests == [] and decision.waiting_batches == 1


def test_paused_automation_requests_nothing(sqlite_instance, events_db_url, engine) -> None:
    _seed(engine, 2)
    breaker.pause(breaker.engine_for(sqlite_instance), "webhook_events", "maintenance", by="test")
    context = dg.build_sensor_context(
        instance=sqlite_instance,
        resources={
            "warehouse": EventWarehouse(database_url=events_db_url, reports_dir="unused"),
            "alerts": AlertRouter(database_url=events_db_url),
        },
    )
    result = webhook_inbox_sensor(context)
    assert isinstance(result, dg.SkipReason)
    assert "paused" in result.skip_message and "maintenance" in result.skip_message
    assert len(inbox.unbatched(engine, 10)) == 2


def listening_context(instance, events_db_url: str) -> dg.SensorEvaluationContext:
    """A tick's context whose sensor listens for 3 s."""
    return dg.build_sensor_context(
        instance=instance,
        resources={
            "warehouse": EventWarehouse(
                database_url=events_db_url, reports_dir="unused", listen_seconds=3.0
            ),
            "alerts": AlertRouter(database_url=events_db_url),
        },
    )


def test_a_pause_during_a_listening_tick_stops_it_before_it_takes_anything(
    sqlite_instance, events_db_url, engine
) -> None:
    """`pause` while a tick listens: events stored after it stay in the inbox, unbatched,
    instead of going into a run the tick would request seconds after the pause."""
    import threading

    context = listening_context(sqlite_instance, events_db_url)
    switches = breaker.engine_for(sqlite_instance)
    threading.Timer(0.3, breaker.pause, (switches, "webhook_events", "maintenance")).start()
    threading.Timer(0.8, _seed, (engine, 2)).start()
    result = webhook_inbox_sensor(context)
    assert isinstance(result, dg.SkipReason), result
    assert "the automation was paused or stopped" in result.skip_message
    assert len(inbox.unbatched(engine, 10)) == 2


def test_a_listening_tick_takes_events_stored_during_the_tick(
    sqlite_instance, events_db_url, engine
) -> None:
    """A tick that finds nothing keeps watching the inbox: events stored while it listens go in
    a run requested by that same tick; with nothing new it listens its whole window."""
    import threading

    context = listening_context(sqlite_instance, events_db_url)
    threading.Timer(0.5, _seed, (engine, 3)).start()
    [request] = webhook_inbox_sensor(context)
    assert _batches(engine)[batch_of(request)] == 3
    quiet = webhook_inbox_sensor(context)
    assert isinstance(quiet, dg.SkipReason)
    listened = re.search(r"listened ([0-9.]+) s, 1 look", quiet.skip_message)
    assert listened and float(listened[1]) >= 3.0 - POLL_SECONDS  # the window, nothing new


def test_a_retried_run_keeps_its_key_and_every_request_of_a_batch_stays_findable(
    sqlite_instance, engine
) -> None:
    """A batch's runs are found by their run keys: Dagster's retry of a run (same key) is not
    a new request, and a batch is dead-lettered before it runs out of findable keys."""
    assert sensors.MAX_FAILED_RUNS <= MAX_BATCH_REQUESTS
    _seed(engine, 2)
    [request] = evaluate_inbox(sqlite_instance, engine, NOW)[0].requests
    _failed_run(sqlite_instance, request)
    _failed_run(sqlite_instance, request)  # Dagster's retry: the same run key
    decision, dead = evaluate_inbox(sqlite_instance, engine, NOW + 10)
    assert dead == [] and [r.run_key for r in decision.requests] == [f"{batch_of(request)}/run-2"]

"""The load job in process on SQLite and PostgreSQL: events land in the warehouse once, their inbox
rows are marked done in the same transaction, invalid events are dead-lettered with their reason
while the rest load, the owner gets one alert, the run is tagged and its materialization says
how many were dead-lettered, running the batch again changes nothing, and a replayed event's
dead letter stays open until the event loads."""

from __future__ import annotations

import time

import dagster as dg
import pytest
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events.jobs import load_webhook_events_job
from automation_pipelines.automations.webhook_events.ops import WAREHOUSE_ASSET_KEY
from automation_pipelines.automations.webhook_events.resources import EventWarehouse
from automation_pipelines.automations.webhook_events.sensors import (
    MAX_EVENTS_PER_RUN,
    evaluate_inbox,
)
from automation_pipelines.automations.webhook_events.warehouse import (
    events_table,
    github_pushes_table,
    stripe_payments_table,
)
from automation_pipelines.reliability import store
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.deadletters import DEAD_LETTERED_TAG, open_dead_letters
from automation_pipelines.reliability.numbers import automation_key
from automation_pipelines.webhooks import inbox
from automation_pipelines_tests.alert_peers import deliver_queued
from automation_pipelines_tests.automations.webhook_events.events import (
    daemon_tags,
    payment,
    push,
    seed,
)


@pytest.fixture
def loader(events_db_url, sqlite_instance, alert_routes, tmp_path, monkeypatch, json_receiver):
    monkeypatch.setenv("TEST_DEFAULT_URLS", json_receiver.url)
    resources = {
        "warehouse": EventWarehouse(database_url=events_db_url, reports_dir=str(tmp_path / "r")),
        "alerts": AlertRouter(database_url=events_db_url, routes_file=str(alert_routes)),
    }

    class Loader:
        def __call__(
            self, batch: str, chunk_size: int = 200, request: dg.RunRequest | None = None
        ) -> dg.ExecuteInProcessResult:
            if request is None:
                config = {"batch": batch, "chunk_size": chunk_size}
                request = dg.RunRequest(run_config={"ops": {"load_events": {"config": config}}})
            return load_webhook_events_job.execute_in_process(
                instance=sqlite_instance,
                resources=resources,
                run_config=request.run_config,
                tags=daemon_tags(request),
            )

        def tags(self, run_id: str) -> dict[str, str]:
            return sqlite_instance.get_run_by_id(run_id).tags

        def deliver(self) -> str:
            """What the daemon's alert_outbox_sensor does: send what the runs queued."""
            return deliver_queued(sqlite_instance, resources["alerts"])

    return Loader()


def _count(engine: sa.Engine, table: sa.Table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar()


def _materializations(result) -> tuple[dg.AssetMaterialization, dict]:
    """The run's materialization of the warehouse, and its numbers on the automation's asset."""
    events = {e.asset_key: e for e in result.asset_materializations_for_node("load_events")}
    assert set(events) == {WAREHOUSE_ASSET_KEY, automation_key("webhook_events")}
    numbers = events[automation_key("webhook_events")].metadata
    return events[WAREHOUSE_ASSET_KEY], {k: v.value for k, v in numbers.items()}


def test_batch_loads_once_and_bad_events_are_dead_lettered(
    loader, events_db_url, json_receiver
) -> None:
    engine = store.engine(events_db_url)
    events = [("github", f"push-{i}", "push", push(commits=i % 4)) for i in range(430)]
    events += [
        ("stripe", f"evt_{i}", "payment_intent.succeeded", payment(100 * i, event_id=f"evt_{i}"))
        for i in range(40)
    ]
    events += [
        ("github", "broken-json", "push", "{oops"),
        ("github", "no-repo", "push", {"ref": "refs/heads/x", "commits": []}),
        ("stripe", "evt_bad", "payment_intent.succeeded", {**payment(), "data": {}}),
    ]
    arrived = time.time() - 45  # the first came 45 s before its run
    ids = seed(engine, events, received_at=arrived)
    assert inbox.assign_batch(engine, ids, "ev-test", now=1.0) == len(events)

    result = loader("ev-test", chunk_size=100)
    ended = time.time()

    assert result.success
    assert _count(engine, events_table) == 470
    assert _count(engine, github_pushes_table) == 430
    assert _count(engine, stripe_payments_table) == 40
    assert _count(engine, events_table, events_table.c.load_count != 1) == 0
    counts = inbox.counts(engine)
    assert counts == {
        ("github", "done"): 430,
        ("github", "dead"): 2,
        ("stripe", "done"): 40,
        ("stripe", "dead"): 1,
    }
    letters = {
        row.item.split(" ")[0]: row.reason for row in open_dead_letters(engine, "webhook_events")
    }
    assert set(letters) == {"github/broken-json", "github/no-repo", "stripe/evt_bad"}
    assert "payload is not JSON" in letters["github/broken-json"]
    assert "required field repository.full_name is missing" in letters["github/no-repo"]
    assert "data.object.id" in letters["stripe/evt_bad"]

    materialization, numbers = _materializations(result)
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["events_loaded"] == 470 and metadata["events_dead_lettered"] == 3
    # The automation's plots: the run's numbers on automations/webhook_events.
    assert (numbers["items"], numbers["items_dead_lettered"]) == (470, 3)
    # Latency counts from the first event's arrival at the receiver, not from the run's start.
    assert numbers["items_quarantined"] == 0
    assert 45 <= numbers["latency_seconds"] <= ended - arrived
    assert metadata["by_type"]["github/push"] == 430
    assert materialization.description.startswith("3 event(s) DEAD-LETTERED, 470 loaded")
    for delivery in ("broken-json", "no-repo", "evt_bad"):
        assert delivery in metadata["dead_letters"]
    # The run list shows it beside the green status.
    assert loader.tags(result.run_id)[DEAD_LETTERED_TAG] == "3"

    # One alert for the run, naming each dead-lettered event and the replay command, queued by
    # the run and sent by the outbox sensor.
    assert json_receiver.received == []
    loader.deliver()
    assert len(json_receiver.received) == 1
    alert = json_receiver.received[0]
    assert "[DEAD LETTER] webhook_events: 3 event(s) failed validation" in alert["title"]
    for delivery in ("broken-json", "no-repo", "evt_bad"):
        assert delivery in alert["message"]
    assert "automation-pipelines events replay --id" in alert["message"]

    # The same batch again: nothing pending, nothing loaded twice, no second alert.
    again = loader("ev-test")
    assert again.success
    assert again.output_for_node("load_events")["events_loaded"] == 0
    assert DEAD_LETTERED_TAG not in loader.tags(again.run_id)
    quiet, quiet_numbers = _materializations(again)
    assert (quiet_numbers["items"], quiet_numbers["items_dead_lettered"]) == (0, 0)
    assert "dead_letters" not in quiet.metadata
    assert "DEAD-LETTERED" not in quiet.description
    assert _count(engine, events_table, events_table.c.load_count != 1) == 0
    assert len(json_receiver.received) == 1


def test_replayed_event_loads_after_the_fix(loader, events_db_url) -> None:
    engine = store.engine(events_db_url)
    ids = seed(engine, [("github", "late", "push", {"ref": "r", "commits": []})])
    inbox.assign_batch(engine, ids, "ev-1", now=1.0)
    assert loader("ev-1").success
    assert inbox.counts(engine) == {("github", "dead"): 1}

    # The sender's payload was incomplete; after fixing the data the event is replayed.
    with engine.begin() as conn:
        conn.execute(
            inbox.inbox_table.update()
            .where(inbox.inbox_table.c.id == ids[0])
            .values(body='{"ref": "r", "commits": [], "repository": {"full_name": "a/b"}}')
        )
    assert inbox.replay(engine, ids=ids) == 1
    # Re-queued is not handled: the digest still lists it until it loads.
    [letter] = open_dead_letters(engine, "webhook_events")
    assert letter.item.startswith("github/late ")
    inbox.assign_batch(engine, ids, "ev-2", now=2.0)
    assert loader("ev-2").success
    assert inbox.counts(engine) == {("github", "done"): 1}
    assert _count(engine, github_pushes_table) == 1
    assert open_dead_letters(engine, "webhook_events") == []


def test_a_batch_first_run_loads_the_events_that_came_while_it_waited_to_start(
    loader, events_db_url, sqlite_instance
) -> None:
    """Events that arrive between the run's request and its start join it instead of waiting
    for the next tick and a run of their own; the tick after it finds nothing new."""
    engine = store.engine(events_db_url)
    seed(engine, [("github", f"early-{i}", "push", push()) for i in range(3)])
    [request] = evaluate_inbox(sqlite_instance, engine, 1_790_000_000.0)[0].requests
    assert request.run_config["ops"]["load_events"]["config"]["take_waiting_up_to"] == (
        MAX_EVENTS_PER_RUN
    )
    seed(engine, [("github", f"late-{i}", "push", push()) for i in range(4)], 1_790_000_002.0)

    result = loader("", request=request)

    assert result.success
    assert inbox.counts(engine) == {("github", "done"): 7}
    assert _count(engine, github_pushes_table) == 7
    assert result.output_for_node("load_events")["events_pending_at_start"] == 7
    again, _ = evaluate_inbox(sqlite_instance, engine, 1_790_000_005.0)
    assert again.requests == [] and again.new_events == 0


def test_a_run_of_a_named_batch_loads_only_that_batch(loader, events_db_url) -> None:
    """A run launched by hand with just a batch (or a batch run again) takes no other events."""
    engine = store.engine(events_db_url)
    own = seed(engine, [("github", "own", "push", push())])
    inbox.assign_batch(engine, own, "ev-own", now=1.0)
    seed(engine, [("github", "other", "push", push())], 1_790_000_002.0)

    assert loader("ev-own").success

    assert inbox.counts(engine) == {("github", "done"): 1, ("github", "pending"): 1}
    assert len(inbox.unbatched(engine, 10)) == 1


def test_a_batch_run_again_takes_no_late_events(loader, events_db_url, sqlite_instance) -> None:
    """A batch whose first run failed before it touched a row (the database was down) is run
    again as it was: events that came meanwhile wait for a batch of their own."""
    engine = store.engine(events_db_url)
    seed(engine, [("github", "own", "push", push())])
    [request] = evaluate_inbox(sqlite_instance, engine, 1_790_000_000.0)[0].requests
    failed = sqlite_instance.create_run_for_job(
        load_webhook_events_job, run_config=request.run_config, tags=daemon_tags(request)
    )
    sqlite_instance.report_run_failed(failed, message="the warehouse is unreachable")
    late = seed(engine, [("github", "late", "push", push())], 1_790_000_002.0)

    assert loader("", request=request).success

    assert inbox.counts(engine) == {("github", "done"): 1, ("github", "pending"): 1}
    assert [row.id for row in inbox.unbatched(engine, 10)] == late

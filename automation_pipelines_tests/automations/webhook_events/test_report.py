"""The daily report on SQLite and PostgreSQL: exact counts, first/last seen and per-type figures per
day (day boundaries in UTC), stored as table rows and a CSV; recomputing partitions in any order
gives identical rows and bytes; a day with events still in the inbox is not reported early; amounts
are converted to major units by each currency's ISO 4217 exponent (JPY 0, USD 2, BHD 3, CLF 4)
and summed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.automations.webhook_events import report as report_module
from automation_pipelines.automations.webhook_events.ops import load_batch
from automation_pipelines.automations.webhook_events.report import (
    stored_report,
    webhook_daily_report,
)
from automation_pipelines.automations.webhook_events.resources import EventWarehouse
from automation_pipelines.automations.webhook_events.warehouse import major_units
from automation_pipelines.reliability import store
from automation_pipelines.reliability.errors import TransientError
from automation_pipelines.webhooks import inbox
from automation_pipelines_tests.automations.webhook_events.events import (
    at,
    payment,
    pull_request,
    push,
    seed,
)

DAYS = ["2026-03-01", "2026-03-02", "2026-03-03"]


def _load(engine, events, received_at: float, batch: str) -> None:
    ids = seed(engine, events, received_at=received_at)
    inbox.assign_batch(engine, ids, batch, now=received_at)
    load_batch(engine, batch, "test-run", chunk_size=50)


@pytest.fixture
def loaded(events_db_url, tmp_path: Path) -> EventWarehouse:
    engine = store.engine(events_db_url)
    _load(
        engine,
        [("github", f"p{i}", "push", push(commits=i)) for i in (1, 2, 3)],
        at(DAYS[0], 9),
        "b1",
    )
    _load(
        engine,
        [
            ("github", "pr1", "pull_request", pull_request("opened", additions=10)),
            ("github", "pr2", "pull_request", pull_request("closed", merged=True, additions=5)),
        ],
        at(DAYS[0], 23, 59) + 59.5,  # the last second of the day still counts for it
        "b2",
    )
    _load(
        engine,
        [
            ("stripe", "e1", "payment_intent.succeeded", payment(1000, "usd", "e1")),
            ("stripe", "e2", "payment_intent.succeeded", payment(2550, "usd", "e2")),
            ("stripe", "e3", "charge.succeeded", payment(500, "eur", "e3")),
        ],
        at(DAYS[1], 0, 0),  # midnight belongs to the new day
        "b3",
    )
    _load(
        engine,
        [("partner", "m1", "order.created", {"type": "order.created"})],
        at(DAYS[2], 6),
        "b4",
    )
    return EventWarehouse(database_url=events_db_url, reports_dir=str(tmp_path / "reports"))


def _materialize(warehouse: EventWarehouse, instance, day: str) -> dict:
    result = dg.materialize(
        [webhook_daily_report],
        partition_key=day,
        instance=instance,
        resources={"warehouse": warehouse},
    )
    assert result.success
    [event] = result.asset_materializations_for_node("webhook_daily_report")
    return {key: value.value for key, value in event.metadata.items()}


def test_each_day_is_reported_exactly(loaded: EventWarehouse, sqlite_instance) -> None:
    metadata = {day: _materialize(loaded, sqlite_instance, day) for day in DAYS}
    rows = stored_report(loaded.engine())
    assert rows == [
        (
            "2026-03-01",
            "github",
            "pull_request",
            2,
            "2026-03-01T23:59:59.500000Z",
            "2026-03-01T23:59:59.501000Z",
            json.dumps({"lines_added": 15.0, "merged": 1.0, "opened": 1.0}),
        ),
        (
            "2026-03-01",
            "github",
            "push",
            3,
            "2026-03-01T09:00:00.000000Z",
            "2026-03-01T09:00:00.002000Z",
            json.dumps({"commits": 6.0, "repositories": 1}),
        ),
        (
            "2026-03-02",
            "stripe",
            "charge.succeeded",
            1,
            "2026-03-02T00:00:00.002000Z",
            "2026-03-02T00:00:00.002000Z",
            json.dumps({"amount_eur": 5.0}),
        ),
        (
            "2026-03-02",
            "stripe",
            "payment_intent.succeeded",
            2,
            "2026-03-02T00:00:00.000000Z",
            "2026-03-02T00:00:00.001000Z",
            json.dumps({"amount_usd": 35.5}),
        ),
        (
            "2026-03-03",
            "partner",
            "order.created",
            1,
            "2026-03-03T06:00:00.000000Z",
            "2026-03-03T06:00:00.000000Z",
            "{}",
        ),
    ]
    assert metadata["2026-03-01"]["events"] == 5
    assert metadata["2026-03-01"]["events_github"] == 5
    assert metadata["2026-03-02"]["event_types"] == 2
    csv = (Path(loaded.reports_dir) / "2026-03-02.csv").read_text()
    assert csv.splitlines()[0] == "day,source,event_type,events,first_seen,last_seen,figures"
    assert len(csv.splitlines()) == 3


def test_recomputing_gives_identical_rows_and_files(
    loaded: EventWarehouse, sqlite_instance
) -> None:
    for day in DAYS:
        _materialize(loaded, sqlite_instance, day)
    first_rows = stored_report(loaded.engine())
    reports = Path(loaded.reports_dir)
    first_files = {p.name: p.read_bytes() for p in sorted(reports.iterdir())}
    for path in reports.iterdir():
        path.unlink()
    for day in reversed(DAYS):  # a backfill runs partitions in any order
        _materialize(loaded, sqlite_instance, day)
    assert stored_report(loaded.engine()) == first_rows
    assert {p.name: p.read_bytes() for p in sorted(reports.iterdir())} == first_files


def test_empty_day_gives_an_empty_report(loaded: EventWarehouse, sqlite_instance) -> None:
    metadata = _materialize(loaded, sqlite_instance, "2026-03-05")
    assert metadata["events"] == 0
    assert stored_report(loaded.engine(), ["2026-03-05"]) == []
    assert (Path(loaded.reports_dir) / "2026-03-05.csv").read_text().startswith("day,source")


def test_day_with_events_still_in_the_inbox_waits(loaded: EventWarehouse) -> None:
    seed(loaded.engine(), [("github", "slow", "push", push())], received_at=at(DAYS[2], 8))
    context = dg.build_asset_context(partition_key=DAYS[2], resources={"warehouse": loaded})
    with pytest.raises(dg.RetryRequested) as retried:  # transient: retried with backoff
        webhook_daily_report(context)
    cause = retried.value.__cause__ or retried.value.__context__
    assert isinstance(cause, TransientError)
    assert "1 event(s) received on 2026-03-03 are still waiting" in str(cause)
    assert stored_report(loaded.engine(), [DAYS[2]]) == []


def test_schedule_reports_the_day_that_ended_and_skips_while_paused(sqlite_instance) -> None:
    from datetime import UTC, datetime

    from automation_pipelines.automations.webhook_events.report import (
        webhook_report_daily_schedule,
    )
    from automation_pipelines.definitions import defs
    from automation_pipelines.reliability import breaker

    tick = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)

    def context() -> dg.ScheduleEvaluationContext:
        return dg.build_schedule_context(
            instance=sqlite_instance,
            scheduled_execution_time=tick,
            repository_def=defs.get_repository_def(),
        )

    [request] = webhook_report_daily_schedule.evaluate_tick(context()).run_requests
    assert (request.partition_key, request.run_key) == ("2026-03-01", "report-2026-03-01")

    breaker.pause(breaker.engine_for(sqlite_instance), "webhook_events", reason="schema change")
    paused = webhook_report_daily_schedule.evaluate_tick(context())
    assert paused.run_requests == []
    assert "webhook_events is paused" in paused.skip_message


@pytest.mark.parametrize(
    ("minor", "currency", "major"),
    [
        (1999, "usd", 19.99),
        (1999, "EUR", 19.99),
        (500, "jpy", 500.0),
        (50000, "krw", 50000.0),
        (1500, "clp", 1500.0),
        (1234, "bhd", 1.234),
        (1000, "kwd", 1.0),
        (5005, "jod", 5.005),
        (1, "omr", 0.001),
        (12345, "tnd", 12.345),
        (10000, "clf", 1.0),
        (2**63 - 1, "usd", 92233720368547758.07),
    ],
)
def test_amounts_use_the_currencys_minor_unit(minor: int, currency: str, major: float) -> None:
    assert major_units(minor, currency) == major


def test_report_sums_each_currency_in_its_own_unit(events_db_url, sqlite_instance, tmp_path):
    engine = store.engine(events_db_url)
    day = "2026-04-01"
    payments = [(1000, "jpy"), (250, "jpy"), (1234, "bhd"), (1999, "usd"), (1, "usd")]
    # Two amounts near the BIGINT limit: their sum overflows an int64 but not the report.
    payments += [(2**62, "eur"), (2**62, "eur")]
    _load(
        engine,
        [
            ("stripe", f"m{i}", "charge.succeeded", payment(amount, currency, f"m{i}"))
            for i, (amount, currency) in enumerate(payments)
        ],
        at(day, 12),
        "money",
    )
    warehouse = EventWarehouse(database_url=events_db_url, reports_dir=str(tmp_path / "r"))
    _materialize(warehouse, sqlite_instance, day)
    [row] = stored_report(engine, [day])
    assert json.loads(row[6]) == {
        "amount_bhd": 1.234,
        "amount_eur": 2**63 / 100,
        "amount_jpy": 1250.0,
        "amount_usd": 20.0,
    }


def test_a_permanent_error_in_the_report_is_not_retried(
    loaded: EventWarehouse, sqlite_instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asset's retry policy is for transient errors: a bug or a bad row fails the run at
    once (one attempt), where a plain policy retried it five times with backoff."""

    def broken(_engine, _day):
        raise ValueError("a row the report cannot read")

    monkeypatch.setattr(report_module, "build_report", broken)
    result = dg.materialize(
        [webhook_daily_report],
        partition_key=DAYS[0],
        instance=sqlite_instance,
        resources={"warehouse": loaded},
        raise_on_error=False,
    )
    assert not result.success
    kinds = [event.event_type for event in result.all_events]
    assert kinds.count(dg.DagsterEventType.STEP_START) == 1
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in kinds
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "a row the report cannot read" in str(failure.event_specific_data.error)

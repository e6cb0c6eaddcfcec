"""The daily report: per source and event type, what arrived on one UTC day.

A daily-partitioned asset computed with pandas from the warehouse. A day's report depends only
on the events received that day, so recomputing a partition (a backfill from the UI, a re-run)
gives the same table rows and the same CSV bytes.
"""

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events import AUTOMATION
from automation_pipelines.automations.webhook_events.ops import WAREHOUSE_ASSET_KEY
from automation_pipelines.automations.webhook_events.resources import EventWarehouse
from automation_pipelines.automations.webhook_events.warehouse import SCHEMAS, events_table
from automation_pipelines.reliability import store
from automation_pipelines.reliability.errors import DATABASE, TransientError

if TYPE_CHECKING:  # pandas is imported when a report is made: a run worker of another job
    import pandas as pd  # starts faster without it
from automation_pipelines.reliability.files import atomic_write_bytes
from automation_pipelines.reliability.tags import EXPECT_SUCCESS_KEY
from automation_pipelines.webhooks.inbox import PENDING, inbox_table

DAILY = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC")
REPORT_KEY = dg.AssetKey("webhook_daily_report")
#: A report for yesterday is made each night; 26 h without one means the nightly run is missing.
FRESH_WITHIN = timedelta(hours=26)

report_table = sa.Table(
    "wh_daily_report",
    store.metadata,
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("event_type", sa.String(255), primary_key=True),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("first_seen", sa.String(32), nullable=False),
    sa.Column("last_seen", sa.String(32), nullable=False),
    sa.Column("figures", sa.Text, nullable=False),
)

COLUMNS = ["day", "source", "event_type", "events", "first_seen", "last_seen", "figures"]


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _day_bounds(day: str) -> tuple[float, float]:
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def build_report(engine: sa.Engine, day: str) -> "pd.DataFrame":
    """The report rows for one UTC day, sorted, with figures as canonical JSON."""
    import pandas as pd

    start, end = _day_bounds(day)
    window = sa.and_(events_table.c.received_at >= start, events_table.c.received_at < end)
    with engine.connect() as conn:
        events = pd.read_sql(
            sa.select(
                events_table.c.source,
                events_table.c.event_type,
                events_table.c.delivery_id,
                events_table.c.received_at,
            ).where(window),
            conn,
        )
        typed: dict[tuple[str, str], pd.DataFrame] = {}
        for (source, event_type), schema in SCHEMAS.items():
            table = schema.table
            joined = (
                sa.select(table)
                .join(
                    events_table,
                    sa.and_(
                        events_table.c.source == table.c.source,
                        events_table.c.delivery_id == table.c.delivery_id,
                    ),
                )
                .where(
                    window,
                    events_table.c.source == source,
                    events_table.c.event_type == event_type,
                )
            )
            typed[(source, event_type)] = pd.read_sql(joined, conn)
    if events.empty:
        return pd.DataFrame(columns=COLUMNS)
    summary = (
        events.groupby(["source", "event_type"], sort=True)
        .agg(
            events=("delivery_id", "size"),
            first_seen=("received_at", "min"),
            last_seen=("received_at", "max"),
        )
        .reset_index()
    )
    figures = []
    for row in summary.itertuples():
        schema = SCHEMAS.get((row.source, row.event_type))
        frame = typed.get((row.source, row.event_type))
        values = schema.figures(frame) if schema is not None and frame is not None else {}
        figures.append(json.dumps({k: values[k] for k in sorted(values)}, sort_keys=True))
    summary["figures"] = figures
    summary["first_seen"] = summary["first_seen"].map(_iso)
    summary["last_seen"] = summary["last_seen"].map(_iso)
    summary["events"] = summary["events"].astype(int)
    summary.insert(0, "day", day)
    return summary[COLUMNS].reset_index(drop=True)


def waiting_in_inbox(engine: sa.Engine, day: str) -> int:
    """Events received on `day` that are not loaded yet (dead letters do not count)."""
    start, end = _day_bounds(day)
    query = sa.select(sa.func.count()).where(
        inbox_table.c.status == PENDING,
        inbox_table.c.received_at >= start,
        inbox_table.c.received_at < end,
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def store_report(engine: sa.Engine, day: str, frame: "pd.DataFrame") -> None:
    """Replace the day's rows in one transaction."""
    with engine.begin() as conn:
        conn.execute(report_table.delete().where(report_table.c.day == day))
        if not frame.empty:
            conn.execute(report_table.insert(), frame.to_dict(orient="records"))


def stored_report(engine: sa.Engine, days: list[str] | None = None) -> list[tuple]:
    """The stored rows (all days, or only `days`), in a stable order."""
    query = sa.select(*[report_table.c[name] for name in COLUMNS]).order_by(
        report_table.c.day, report_table.c.source, report_table.c.event_type
    )
    if days is not None:
        query = query.where(report_table.c.day.in_(days))
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


@AUTOMATION.asset(
    key=REPORT_KEY,
    errors=DATABASE,
    partitions_def=DAILY,
    deps=[WAREHOUSE_ASSET_KEY],
    kinds={"pandas", "csv"},
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=FRESH_WITHIN),
    description="Per source and event type, the webhook events received on one UTC day: count, "
    "first and last seen, and per-type figures (commits pushed, pull requests merged, amounts "
    "paid). Stored in wh_daily_report and as a CSV file per day.",
)
def webhook_daily_report(
    context: dg.AssetExecutionContext, warehouse: EventWarehouse
) -> dg.MaterializeResult:
    day = context.partition_key
    engine = warehouse.engine(context.instance)
    waiting = waiting_in_inbox(engine, day)
    if waiting:
        # A report without them would be wrong and look right; retrying gives the loader time,
        # and if it stays stuck the failed run alerts the owner.
        raise TransientError(f"{waiting} event(s) received on {day} are still waiting to load")
    frame = build_report(engine, day)
    store_report(engine, day, frame)
    path = warehouse.reports / f"{day}.csv"
    atomic_write_bytes(path, frame.to_csv(index=False, lineterminator="\n").encode())
    per_source = frame.groupby("source")["events"].sum() if not frame.empty else {}
    return dg.MaterializeResult(
        metadata={
            "events": dg.MetadataValue.int(int(frame["events"].sum()) if not frame.empty else 0),
            "event_types": dg.MetadataValue.int(len(frame)),
            **{
                f"events_{source}": dg.MetadataValue.int(int(count))
                for source, count in per_source.items()
            },
            "csv": dg.MetadataValue.path(str(path)),
            "report": dg.MetadataValue.md(
                frame.drop(columns=["day"]).to_markdown(index=False) if not frame.empty else "-"
            ),
        }
    )


webhook_daily_report_job = AUTOMATION.asset_job(
    "webhook_daily_report_job",
    selection=[REPORT_KEY],
    metadata={EXPECT_SUCCESS_KEY: int(FRESH_WITHIN.total_seconds())},
    description="Computes the daily webhook report for one UTC day (a partition). Backfill it "
    "from the UI to recompute past days; each day's result depends only on that day's events.",
)


def _previous_day(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """The report of the UTC day that ended before the tick."""
    scheduled = context.scheduled_execution_time or datetime.now(tz=UTC)
    day = (scheduled.astimezone(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=f"report-{day}", partition_key=day)


webhook_report_daily_schedule = AUTOMATION.schedule(
    name="webhook_report_daily_schedule",
    job=webhook_daily_report_job,
    cron_schedule="30 0 * * *",
    description="At 00:30 UTC, reports on the day that just ended.",
    request=_previous_day,
)

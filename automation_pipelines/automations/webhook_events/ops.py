"""Load a batch of inbox events into the warehouse, a chunk per transaction.

Each chunk's warehouse upsert and its inbox "done" mark commit together, so a run killed at any
point leaves every event either loaded and done, or untouched and pending for the next run.
One bad event never fails its batch: each event is checked on its own against its schema and
the columns' real limits before the write, and is dead-lettered alone with its reason. Should the
database still refuse a chunk for a reason in the data, the chunk is bisected in fresh
transactions until the refused events are found; they are dead-lettered and the rest commit.
A database that is down or locked is not the events' fault: that error fails the run, to be
retried, and dead-letters nothing.
"""

from __future__ import annotations

import time

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events import AUTOMATION
from automation_pipelines.automations.webhook_events.resources import EventWarehouse
from automation_pipelines.automations.webhook_events.warehouse import (
    Loadable,
    Validated,
    WriteRefused,
    count_types,
    validate,
    write,
)
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.deadletters import flag_run
from automation_pipelines.reliability.errors import DATABASE
from automation_pipelines.reliability.numbers import report_run
from automation_pipelines.reliability.tags import RUN_KEY_TAG
from automation_pipelines.webhooks import inbox

WAREHOUSE_ASSET_KEY = dg.AssetKey("webhook_events_warehouse")
#: Run keys the sensor gives one batch: `<batch>` for its first run, `<batch>/run-N` for the
#: N-th request. Its runs are found by these keys, so no tag of their own crowds the run list.
MAX_BATCH_REQUESTS = 10


def batch_run_key(batch: str, request: int) -> str:
    """The run key of the `request`-th run the sensor asks for `batch` (1 for the first)."""
    return batch if request == 1 else f"{batch}/run-{request}"


def batch_runs(instance: dg.DagsterInstance, batch: str, limit: int | None = None):
    """The runs of `batch`, newest first: those the sensor requested under its run keys, and
    Dagster's retries of them, which keep their run key."""
    keys = [batch_run_key(batch, n) for n in range(1, MAX_BATCH_REQUESTS + 1)]
    return instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: keys}), limit=limit)


def batch_of(run: dg.DagsterRun | dg.RunRequest) -> str | None:
    """The batch a load run (or a request for one) loads, from its run config."""
    config = (run.run_config or {}).get("ops", {}).get("load_events", {}).get("config", {})
    return config.get("batch")


class LoadConfig(dg.Config):
    """The sensor's batch key, how many events share one transaction (default: the warehouse
    resource's `load_chunk_size`), and up to how many events the batch's first run may hold
    once it has taken the events that came while it waited to start (0: only its own)."""

    batch: str
    chunk_size: int | None = None
    take_waiting_up_to: int = 0


def _commit(conn: sa.Connection, events: list[Loadable], run_id: str, now: float) -> int:
    """Write events and mark them done (resolving dead letters of replayed ones) together."""
    write(conn, events)
    return inbox.mark_loaded(conn, AUTOMATION.name, [event.row for event in events], run_id, now)


def _still_pending(conn: sa.Connection, events: list[Loadable]) -> list[Loadable]:
    ids = {event.row.id for event in events}
    table = inbox.inbox_table
    pending = set(
        conn.execute(
            sa.select(table.c.id).where(table.c.id.in_(ids), table.c.status == inbox.PENDING)
        ).scalars()
    )
    return [event for event in events if event.row.id in pending]


def _isolate(
    engine: sa.Engine, checked: Validated, run_id: str, now: float
) -> tuple[int, list[Loadable], list[tuple[sa.Row, str]]]:
    """Bisect a chunk the database refused: halves that write commit with their done marks,
    halves that are refused are split again, and a single refused event is dead-lettered with
    the database's reason. Returns (rows marked done, events loaded, events refused)."""
    done, loaded, refused = 0, [], []
    groups = [checked.events]
    while groups:
        group = groups.pop()
        try:
            with engine.begin() as conn:
                pending = _still_pending(conn, group)
                done += _commit(conn, pending, run_id, now)
            loaded.extend(pending)
        except WriteRefused as error:
            if len(group) == 1:
                refused.append((group[0].row, f"the warehouse refused it: {error}"))
            else:
                middle = len(group) // 2
                groups += [group[middle:], group[:middle]]
    with engine.begin() as conn:
        inbox.mark_dead(conn, AUTOMATION.name, [*checked.invalid, *refused], now)
    return done, loaded, refused


def load_batch(
    engine, batch: str, run_id: str, chunk_size: int, log=None, take_waiting_up_to: int = 0
) -> dict:
    """Load every pending event of `batch`, first joined by the events that came while its
    first run waited to start (up to `take_waiting_up_to` in all); return counts for the run's
    metadata."""
    joined = inbox.take_waiting(engine, batch, take_waiting_up_to, time.time())
    if joined and log is not None:
        log.info(f"{joined} event(s) that came while the run waited to start joined the batch")
    attempted = inbox.count_attempt(engine, batch, run_id)
    loaded, by_type, dead_rows, refused_count = 0, {}, [], 0
    arrived = None  # when the earliest event handled reached the receiver
    while True:
        now = time.time()
        checked = None
        try:
            with engine.begin() as conn:
                rows = inbox.pending_in_batch(conn, batch, limit=chunk_size)
                if not rows:
                    break
                first = min(row.received_at for row in rows)
                arrived = first if arrived is None else min(arrived, first)
                checked = validate(rows, now)
                done = _commit(conn, checked.events, run_id, now)
                inbox.mark_dead(conn, AUTOMATION.name, checked.invalid, now)
            written, dead = checked.events, list(checked.invalid)
        except WriteRefused as error:
            if checked is None:
                raise
            if log is not None:
                log.warning(
                    f"the database refused a chunk of {len(checked.events)} event(s) the checks "
                    f"passed ({error}); bisecting it to find the event(s) at fault"
                )
            done, written, refused = _isolate(engine, checked, run_id, now)
            dead = [*checked.invalid, *refused]
            refused_count += len(refused)
        loaded += done
        dead_rows.extend(dead)
        for name, n in count_types(written).items():
            by_type[name] = by_type.get(name, 0) + n
    return {
        "pending_at_start": attempted,
        "loaded": loaded,
        "dead_lettered": len(dead_rows),
        "refused_by_database": refused_count,
        "by_type": by_type,
        "dead_rows": dead_rows,
        "arrived": arrived,
    }


@AUTOMATION.op(DATABASE)
def load_events(
    context: dg.OpExecutionContext,
    config: LoadConfig,
    warehouse: EventWarehouse,
    alerts: AlertRouter,
) -> dict:
    """Load the batch; a database error retries the op (done events are not loaded again), and
    the last error is kept on the events for the dead letter if the retries run out. A run that
    dead-lettered events says so in its tags and its materialization, not only in its logs."""
    started = time.monotonic()
    engine = warehouse.engine(context.instance)
    try:
        chunk_size = config.chunk_size or warehouse.load_chunk_size
        take = config.take_waiting_up_to if _first_run(context, config.batch) else 0
        result = load_batch(
            engine, config.batch, context.run_id, chunk_size, context.log, take_waiting_up_to=take
        )
    except Exception as exc:
        try:
            inbox.record_error(engine, config.batch, f"{type(exc).__name__}: {exc}")
        except Exception as also:  # the database may be what failed
            context.log.warning(f"could not record the error on the batch: {also}")
        raise
    dead_rows = result["dead_rows"]
    if dead_rows:
        flag_run(context, dead_lettered=len(dead_rows))
        _alert_dead_letters(context, alerts, dead_rows)
    summary = {
        "events_loaded": result["loaded"],
        "events_dead_lettered": result["dead_lettered"],
        "events_refused_by_database": result["refused_by_database"],
        "events_pending_at_start": result["pending_at_start"],
    }
    seconds = round(time.monotonic() - started, 3)
    metadata = {
        **{key: dg.MetadataValue.int(int(value)) for key, value in summary.items()},
        "seconds": dg.MetadataValue.float(seconds),
        "by_type": dg.MetadataValue.json(dict(sorted(result["by_type"].items()))),
    }
    description = f"{result['loaded']} event(s) loaded from batch {config.batch}"
    if dead_rows:
        description = (
            f"{len(dead_rows)} event(s) DEAD-LETTERED, {result['loaded']} loaded, from batch "
            f"{config.batch}; see dead_letters for each event and why, and the runbook for replay"
        )
        metadata["dead_letters"] = dg.MetadataValue.md(_dead_letter_table(dead_rows))
    context.log_event(
        dg.AssetMaterialization(
            asset_key=WAREHOUSE_ASSET_KEY, description=description, metadata=metadata
        )
    )
    report_run(
        context,
        AUTOMATION.name,
        items=result["loaded"],
        dead_lettered=len(dead_rows),
        arrived=result["arrived"],
    )
    return {**summary, "seconds": seconds, "by_type": result["by_type"]}


def _first_run(context: dg.OpExecutionContext, batch: str) -> bool:
    """No other run has tried this batch: only then may late events join it (a batch run again
    may fail again, and late events must not share its failures)."""
    return all(run.run_id == context.run_id for run in batch_runs(context.instance, batch, 2))


def _dead_letter_table(rows, limit: int = 50) -> str:
    """The dead-lettered events as a Markdown table for the materialization."""

    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")[:300]

    lines = ["| inbox id | event | reason |", "| --- | --- | --- |"]
    lines += [
        f"| {row.id} | {cell(f'{row.source}/{row.delivery_id}')} | {cell(why)} |"
        for row, why in rows[:limit]
    ]
    if len(rows) > limit:
        lines.append(f"| … | {len(rows) - limit} more | `automation-pipelines events dead` |")
    return "\n".join(lines)


def _alert_dead_letters(context: dg.OpExecutionContext, alerts: AlertRouter, rows) -> None:
    """One alert per run naming each invalid event and why, with the replay command."""
    outbox = alerts.outbox(context.instance)
    lines = [f"- inbox id {row.id}: {row.source}/{row.delivery_id}: {why}" for row, why in rows]
    ids = " ".join(str(row.id) for row, _ in rows[:20])
    outbox.enqueue_message(
        AUTOMATION.owner,
        f"[DEAD LETTER] webhook_events: {len(rows)} event(s) failed validation",
        "\n".join(
            [
                f"Run {context.run_id} dead-lettered these events; the rest of the batch loaded.",
                *lines[:50],
                *(["…"] if len(lines) > 50 else []),
                f"Link: {alerts.ui_base_url.rstrip('/')}/runs/{context.run_id}",
                f"Runbook: {AUTOMATION.runbook_ref}",
                "After fixing the schema or the sender: "
                f"automation-pipelines events replay --id {ids}",
            ]
        ),
        dedup_key=f"events-invalid:{context.run_id}",
    )

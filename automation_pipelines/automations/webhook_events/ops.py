"""Load a batch of inbox events into the warehouse, a chunk per transaction.

Each chunk's warehouse upsert and its inbox "done" mark commit together, so a run killed at any
point leaves every event either loaded and done, or untouched and pending for the next run.
Events that can never be valid are dead-lettered in that same transaction and the owner is told;
the rest of the batch loads.
"""

from __future__ import annotations

import time

import dagster as dg

from automation_pipelines.automations.webhook_events import AUTOMATION
from automation_pipelines.automations.webhook_events.resources import EventWarehouse
from automation_pipelines.automations.webhook_events.warehouse import validate, write
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.errors import DATABASE, reliable_op
from automation_pipelines.webhooks import inbox

WAREHOUSE_ASSET_KEY = dg.AssetKey("webhook_events_warehouse")


class LoadConfig(dg.Config):
    """The sensor's batch key, and how many events share one transaction (default: the
    warehouse resource's `load_chunk_size`)."""

    batch: str
    chunk_size: int | None = None


def load_batch(engine, batch: str, run_id: str, chunk_size: int) -> dict:
    """Load every pending event of `batch`; return counts for the run's metadata."""
    attempted = inbox.count_attempt(engine, batch, run_id)
    loaded, dead, by_type, dead_rows = 0, 0, {}, []
    while True:
        now = time.time()
        with engine.begin() as conn:
            rows = inbox.pending_in_batch(conn, batch, limit=chunk_size)
            if not rows:
                break
            validated = validate(rows, now)
            write(conn, validated)
            loaded += inbox.mark_done(conn, validated.valid_ids, run_id, now)
            dead += len(inbox.mark_dead(conn, AUTOMATION.name, validated.invalid, now))
        dead_rows.extend(validated.invalid)
        for name, n in validated.by_type.items():
            by_type[name] = by_type.get(name, 0) + n
    return {
        "pending_at_start": attempted,
        "loaded": loaded,
        "dead_lettered": dead,
        "by_type": by_type,
        "dead_rows": dead_rows,
    }


@reliable_op(DATABASE)
def load_events(
    context: dg.OpExecutionContext,
    config: LoadConfig,
    warehouse: EventWarehouse,
    alerts: AlertRouter,
) -> dict:
    """Load the batch; a database error retries the op (done events are not loaded again), and
    the last error is kept on the events for the dead letter if the retries run out."""
    started = time.monotonic()
    engine = warehouse.engine(context.instance)
    try:
        chunk_size = config.chunk_size or warehouse.load_chunk_size
        result = load_batch(engine, config.batch, context.run_id, chunk_size)
    except Exception as exc:
        try:
            inbox.record_error(engine, config.batch, f"{type(exc).__name__}: {exc}")
        except Exception as also:  # the database may be what failed
            context.log.warning(f"could not record the error on the batch: {also}")
        raise
    if result["dead_rows"]:
        _alert_dead_letters(context, alerts, result["dead_rows"])
    summary = {
        "events_loaded": result["loaded"],
        "events_dead_lettered": result["dead_lettered"],
        "events_pending_at_start": result["pending_at_start"],
        "seconds": round(time.monotonic() - started, 3),
    }
    context.log_event(
        dg.AssetMaterialization(
            asset_key=WAREHOUSE_ASSET_KEY,
            description=f"{result['loaded']} event(s) loaded, {result['dead_lettered']} "
            f"dead-lettered from batch {config.batch}",
            metadata={
                **{k: dg.MetadataValue.float(float(v)) for k, v in summary.items()},
                "by_type": dg.MetadataValue.json(dict(sorted(result["by_type"].items()))),
            },
        )
    )
    return {**summary, "by_type": result["by_type"]}


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
    outbox.deliver_due(budget_seconds=alerts.delivery_budget_seconds)

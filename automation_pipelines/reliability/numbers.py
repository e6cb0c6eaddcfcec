"""Each automation's own asset, `automations/<name>`: one page per automation in the UI.

Its asset check `healthy` is the automation's health (the watchdog reports it, see
monitoring/health.py), and every run of the automation records its numbers on it as a
materialization — latency from the trigger's request to the result, items handled, items
quarantined, items dead-lettered — which the asset's page plots over time
(*Overview → Metadata → Plots*). The keys are the
same for every automation, so the plots read alike.
"""

from __future__ import annotations

import time

import dagster as dg

#: The first part of each automation's asset key: `automations/web_images`.
AUTOMATION_ASSET_PREFIX = "automations"
#: Metadata keys of a run's numbers (the same for every automation).
LATENCY_KEY = "latency_seconds"
ITEMS_KEY = "items"
QUARANTINED_KEY = "items_quarantined"
DEAD_LETTERED_KEY = "items_dead_lettered"


def automation_key(automation: str) -> dg.AssetKey:
    """The asset key of an automation's own asset."""
    return dg.AssetKey([AUTOMATION_ASSET_PREFIX, automation])


def latency_seconds(
    context: dg.OpExecutionContext, now: float | None = None, arrived: float | None = None
) -> float:
    """Seconds until now, when the run has its result: from `arrived`, when the oldest item
    the run handled arrived (a photo in the inbox, an event at the receiver), which counts the
    sensor's looks and the wait for a run too; else from the moment the run was requested (by
    its schedule, sensor or a person)."""
    ended = time.time() if now is None else now
    if arrived is None:
        record = context.instance.get_run_record_by_id(context.run_id)
        if record is None or record.create_timestamp is None:
            return 0.0
        arrived = record.create_timestamp.timestamp()
    return round(max(0.0, ended - arrived), 3)


def run_numbers(
    context: dg.OpExecutionContext,
    *,
    items: int,
    quarantined: int = 0,
    dead_lettered: int = 0,
    now: float | None = None,
    arrived: float | None = None,
) -> dict[str, dg.MetadataValue]:
    """A run's numbers as metadata the UI plots: numbers only, under the same keys everywhere."""
    return {
        LATENCY_KEY: dg.MetadataValue.float(latency_seconds(context, now, arrived)),
        ITEMS_KEY: dg.MetadataValue.int(int(items)),
        QUARANTINED_KEY: dg.MetadataValue.int(int(quarantined)),
        DEAD_LETTERED_KEY: dg.MetadataValue.int(int(dead_lettered)),
    }


def report_run(
    context: dg.OpExecutionContext,
    automation: str,
    *,
    items: int,
    quarantined: int = 0,
    dead_lettered: int = 0,
    arrived: float | None = None,
) -> dict[str, dg.MetadataValue]:
    """Record this run's numbers on `automations/<automation>` (a materialization in the run's
    event log, so each point of the plots links to its run); return the metadata. `arrived`:
    when the oldest item the run handled arrived, if it handled any."""
    metadata = run_numbers(
        context,
        items=items,
        quarantined=quarantined,
        dead_lettered=dead_lettered,
        arrived=arrived,
    )
    set_aside = (
        f", {quarantined} quarantined, {dead_lettered} dead-lettered"
        if quarantined or dead_lettered
        else ""
    )
    context.log_event(
        dg.AssetMaterialization(
            asset_key=automation_key(automation),
            description=f"{items} item(s) handled{set_aside}"
            f" in {metadata[LATENCY_KEY].value:g} s from "
            + ("the oldest one's arrival" if arrived is not None else "the run's request"),
            metadata=metadata,
        )
    )
    return metadata

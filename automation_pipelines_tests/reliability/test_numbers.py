"""A run's numbers for the plots: latency to its result (from the oldest item's arrival, or
from the run's request), items, items quarantined and dead-lettered, as numbers on the
automation's own asset, the same keys for all."""

import dagster as dg

from automation_pipelines.reliability.numbers import (
    automation_key,
    latency_seconds,
    report_run,
)


@dg.op
def handle_items(context: dg.OpExecutionContext) -> dict:
    record = context.instance.get_run_record_by_id(context.run_id)
    requested = record.create_timestamp.timestamp()
    return {
        "latency_later": latency_seconds(context, now=requested + 42.5),
        "from_arrival": latency_seconds(context, now=requested + 2, arrived=requested - 88),
        "arrived_later": latency_seconds(context, now=requested, arrived=requested + 5),
        "reported": report_run(context, "sample", items=7, quarantined=2, dead_lettered=1),
    }


@dg.job
def sample_job():
    handle_items()


def test_a_run_reports_its_numbers_on_its_automations_asset(sqlite_instance) -> None:
    result = sample_job.execute_in_process(instance=sqlite_instance)
    assert result.success
    output = result.output_for_node("handle_items")
    assert output["latency_later"] == 42.5
    assert output["from_arrival"] == 90.0  # the item waited 88 s for its run
    assert output["arrived_later"] == 0.0  # another machine's clock ahead: never negative
    [event] = result.asset_materializations_for_node("handle_items")
    assert event.asset_key == dg.AssetKey(["automations", "sample"]) == automation_key("sample")
    values = {key: value.value for key, value in event.metadata.items()}
    assert {k: values[k] for k in ("items", "items_quarantined", "items_dead_lettered")} == {
        "items": 7,
        "items_quarantined": 2,
        "items_dead_lettered": 1,
    }
    assert 0 < values["latency_seconds"] < 120
    # Numbers only, so the UI plots every one of them.
    assert all(
        isinstance(v, dg.FloatMetadataValue | dg.IntMetadataValue) for v in event.metadata.values()
    )
    assert "7 item(s) handled, 2 quarantined, 1 dead-lettered" in (event.description or "")
    assert "from the run's request" in (event.description or "")
    stored = sqlite_instance.fetch_materializations(automation_key("sample"), limit=5).records
    assert len(stored) == 1 and stored[0].run_id == result.run_id

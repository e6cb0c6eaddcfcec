"""Dead letters: an item set aside is kept until resolved by name, and a run that set items aside
carries tags that the UI's run list shows."""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.reliability import store
from automation_pipelines.reliability.deadletters import (
    DEAD_LETTERED_TAG,
    QUARANTINED_TAG,
    flag_run,
    open_dead_letters,
    record_dead_letter,
    resolve_items,
)


def test_items_are_resolved_by_name_within_their_automation(events_db_url: str) -> None:
    engine: sa.Engine = store.engine(events_db_url)
    record_dead_letter(engine, "web_images", "a.jpg", "truncated")
    record_dead_letter(engine, "web_images", "b.jpg", "not an image")
    record_dead_letter(engine, "other", "a.jpg", "elsewhere")

    assert resolve_items(engine, "web_images", ["a.jpg", "missing.jpg"]) == 1
    assert resolve_items(engine, "web_images", ["a.jpg"]) == 0  # already resolved

    left = [(row.automation, row.item) for row in open_dead_letters(engine)]
    assert left == [("web_images", "b.jpg"), ("other", "a.jpg")]


@dg.op
def sets_things_aside(context) -> None:
    flag_run(context, quarantined=2)
    flag_run(context, dead_lettered=0)


@dg.job
def aside_job():
    sets_things_aside()


def test_a_run_that_set_items_aside_is_tagged(sqlite_instance: dg.DagsterInstance) -> None:
    result = aside_job.execute_in_process(instance=sqlite_instance)

    tags = sqlite_instance.get_run_by_id(result.run_id).tags
    assert tags[QUARANTINED_TAG] == "2"
    assert DEAD_LETTERED_TAG not in tags

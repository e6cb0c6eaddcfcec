"""Runs that set items aside (quarantined files, dead-lettered events): they carry the
`result/quarantined` / `result/dead_lettered` tags the run list shows, the digest counts them as
successful runs that set items aside, and no part of the monitoring takes them for failures: the
run-failure sensor sends a recovery notice, the breaker count is reset and the watchdog sees a
success."""

import time
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.monitoring import watchdog
from automation_pipelines.monitoring.alerting import run_failure_alert_sensor
from automation_pipelines.monitoring.digest import build_digest
from automation_pipelines.reliability import breaker
from automation_pipelines.reliability.automation import Automation, Expectation
from automation_pipelines.reliability.deadletters import (
    DEAD_LETTERED_TAG,
    QUARANTINED_TAG,
    flag_run,
    record_dead_letter,
)
from automation_pipelines_tests.alert_peers import deliver_queued

RUNBOOK = Path(__file__).parent.parent / "reliability" / "fixture_runbooks" / "complete"
SORTER = Automation(
    name="sorter",
    owner="team:test",
    folder=RUNBOOK,
    expect=Expectation(success_within_hours=1),
    breaker_after_failures=3,
)


class Batch(dg.Config):
    fail: bool = False
    quarantined: int = 0
    dead_lettered: int = 0


@dg.op
def sort_batch(context: dg.OpExecutionContext, config: Batch) -> None:
    if config.fail:
        raise ValueError("the batch manifest is unreadable")
    flag_run(context, quarantined=config.quarantined, dead_lettered=config.dead_lettered)


@SORTER.job(name="sort_batch_job", description="Sorts a batch, setting bad items aside.")
def sort_batch_job():
    sort_batch()


@pytest.fixture
def world(sqlite_instance, alert_router, monkeypatch, json_receiver):
    monkeypatch.setenv("TEST_ALERT_URLS", json_receiver.url)
    defs = dg.Definitions(
        jobs=[sort_batch_job],
        sensors=[run_failure_alert_sensor],
        resources={"alerts": alert_router},
    )
    cursor: list[str | None] = [None]

    class World:
        instance = sqlite_instance
        engine = alert_router.outbox().engine
        repository = defs.get_repository_def()

        def run(self, **batch) -> str:
            result = defs.get_job_def("sort_batch_job").execute_in_process(
                instance=sqlite_instance,
                run_config={"ops": {"sort_batch": {"config": batch}}},
                raise_on_error=False,
            )
            return result.run_id

        def alert_tick(self) -> str:
            context = dg.build_sensor_context(
                instance=sqlite_instance,
                cursor=cursor[0],
                repository_def=defs.get_repository_def(),
                resources={"alerts": alert_router},
            )
            result = run_failure_alert_sensor(context)
            cursor[0] = context.cursor
            deliver_queued(sqlite_instance, alert_router)  # the outbox sensor's next tick
            return result.skip_message

        def watchdog_findings(self) -> list:
            now = time.time()
            jobs, triggers = watchdog.observe(
                sqlite_instance, defs.get_repository_def(), {"job:sort_batch_job": now - 7200}, now
            )
            return watchdog.evaluate(jobs, triggers, now)

    return World()


def test_a_run_that_set_items_aside_is_a_success_everywhere(world, json_receiver) -> None:
    world.run(fail=True)
    world.run(fail=True)
    world.alert_tick()
    assert [t.split(" ")[0] for t in json_receiver.titles()] == ["[FAILED]"]
    assert breaker.consecutive_failures(world.instance, SORTER.job_names) == 2

    run_id = world.run(quarantined=2, dead_lettered=1)
    tags = world.instance.get_run_by_id(run_id).tags
    assert (tags[QUARANTINED_TAG], tags[DEAD_LETTERED_TAG]) == ("2", "1")
    flagged = world.instance.get_runs(filters=dg.RunsFilter(tags={QUARANTINED_TAG: "2"}))
    assert [run.run_id for run in flagged] == [run_id]

    summary = world.alert_tick()
    assert [t.split(" ")[0] for t in json_receiver.titles()] == ["[FAILED]", "[RECOVERED]"]
    assert "1 successful run(s) set items aside" in summary
    assert breaker.consecutive_failures(world.instance, SORTER.job_names) == 0
    assert breaker.get_state(breaker.engine_for(world.instance), "sorter") is None
    assert [f.kind for f in world.watchdog_findings()] == []


def test_the_digest_counts_runs_that_set_items_aside(world) -> None:
    world.run(quarantined=2)
    world.run(quarantined=1, dead_lettered=3)
    world.run()
    world.run(fail=True)
    record_dead_letter(world.engine, "sorter", "batch-7/item-3", "no price")

    title, body = build_digest(
        world.instance, world.engine, time.time(), repository=world.repository
    )["team:test"]
    assert title.endswith(
        "team:test: 1 automation(s), 1 failed run(s), 0 open incident(s), 2 run(s) set items aside"
    )
    assert "Runs in the last 24 h: 4 (3 succeeded, 1 failed, 0 failed and retried, 0 other)" in body
    assert (
        "  Runs that succeeded but set items aside: 2 (3 quarantined, 3 dead-lettered item(s))\n"
    ) in body
    assert "Open dead-lettered/quarantined items: 1\n" in body

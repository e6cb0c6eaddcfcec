"""Pool limits: each automation's pool holds the limit it declares, set by its triggers and the
watchdog before its runs queue, on instances made from the project's dagster.yaml and
deploy/postgres/dagster.yaml. (The run queue keeping runs within their pools, with the real
daemon: e2e/test_pools_e2e.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.definitions import defs
from automation_pipelines.instance import DEFAULT_CONFIG, prepare_home
from automation_pipelines.reliability import pools
from automation_pipelines_tests.conftest import POSTGRES_CONFIG

REPOSITORY = defs.get_repository_def()
AUTOMATIONS = ("backups", "disk_space", "monitoring", "web_images", "webhook_events")


@pytest.fixture(params=["sqlite", "postgres"])
def instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    if request.param == "postgres":
        request.getfixturevalue("postgres_env")
        home = prepare_home(tmp_path / "home", POSTGRES_CONFIG)
    else:
        home = prepare_home(tmp_path / "home", DEFAULT_CONFIG)
    made = dg.DagsterInstance.from_config(str(home))
    pools.forget()
    try:
        yield made
    finally:
        pools.forget()
        made.dispose()


def test_the_declared_limits_are_one_per_automation_and_two_for_web_images() -> None:
    assert pools.declared(REPOSITORY) == {name: 1 for name in AUTOMATIONS} | {"web_images": 2}


def test_hold_sets_the_declared_limit_once_and_restores_one_changed_by_hand(
    instance: dg.DagsterInstance,
) -> None:
    assert pools.current_limits(instance) == {}
    said = pools.hold(instance, "web_images", 2, now=0.0)
    assert said == "pool web_images: limit set to 2 run(s) at once (was unset)"
    assert pools.current_limits(instance) == {"web_images": 2}
    # Someone sets 5 in the UI's Concurrency page: within a minute it is 2 again.
    instance.event_log_storage.set_concurrency_slots("web_images", 5)
    assert pools.hold(instance, "web_images", 2, now=30.0) is None
    said = pools.hold(instance, "web_images", 2, now=61.0)
    assert said == "pool web_images: limit set to 2 run(s) at once (was 5)"
    assert pools.current_limits(instance) == {"web_images": 2}
    assert pools.hold(instance, "web_images", 2, now=200.0) is None


def test_a_pool_the_instances_default_made_is_made_the_automations_own(
    instance: dg.DagsterInstance,
) -> None:
    """A pool Dagster created from `default_limit` follows that setting; the declaration's
    limit is written over it, so a later change of the default cannot loosen it."""
    instance.event_log_storage.initialize_concurrency_limit_to_default("disk_space")
    [made] = instance.event_log_storage.get_pool_limits()
    assert (made.limit, made.from_default) == (1, True)
    assert pools.hold(instance, "disk_space", 1) == (
        "pool disk_space: limit set to 1 run(s) at once (was 1)"
    )
    [held] = instance.event_log_storage.get_pool_limits()
    assert (held.limit, held.from_default) == (1, False)


def test_the_watchdog_and_each_trigger_set_the_pools_before_runs_queue(
    instance: dg.DagsterInstance,
) -> None:
    schedule = REPOSITORY.get_schedule_def("disk_space_hourly_schedule")
    requests = schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests
    assert requests and pools.current_limits(instance) == {"disk_space": 1}

    said = pools.hold_all(instance, REPOSITORY)
    assert "pool web_images: limit set to 2 run(s) at once (was unset)" in said
    assert not [s for s in said if s.startswith("pool disk_space")]
    assert pools.current_limits(instance) == {name: 1 for name in AUTOMATIONS} | {"web_images": 2}

"""A run's automation and owner come from its job's definition, so runs need not repeat them,
and an alert goes to the owner the code names now; a run of a job the code location does not
define is read from its own tags."""

from __future__ import annotations

import time

import dagster as dg
import pytest

from automation_pipelines.monitoring.alerting import UNOWNED, run_facts
from automation_pipelines.monitoring.digest import build_digest
from automation_pipelines.reliability import breaker, pacing, store
from automation_pipelines.reliability.identity import (
    Identity,
    automation_jobs,
    records_of,
    run_identity,
)
from automation_pipelines.reliability.tags import AUTOMATION_TAG, OWNER_TAG
from automation_pipelines_tests.monitoring import alert_fixtures as fx


@pytest.fixture
def repository(alert_router) -> dg.RepositoryDefinition:
    return fx.make_defs(alert_router).get_repository_def()


def stored_run(instance: dg.DagsterInstance, job_name: str, tags: dict) -> dg.DagsterRun:
    """A failed run as the instance keeps it, with exactly `tags` (none of its job's)."""
    run = dg.DagsterRun(job_name=job_name, tags=tags, status=dg.DagsterRunStatus.FAILURE)
    instance.add_run(run)
    return instance.get_run_by_id(run.run_id)


def test_a_run_without_identity_tags_is_read_through_its_job(sqlite_instance, repository) -> None:
    run = stored_run(sqlite_instance, "upstream_job", {})
    assert run_identity(run, repository) == Identity("alert_fixture", "team:test")
    facts = run_facts(sqlite_instance, run, repository, [])
    assert (facts.owner, facts.automation) == ("team:test", "alert_fixture")


def test_the_owner_the_code_names_now_wins_over_the_one_a_run_recorded(
    sqlite_instance, repository
) -> None:
    old = {OWNER_TAG: "team:before", AUTOMATION_TAG: "alert_fixture"}
    run = stored_run(sqlite_instance, "upstream_job", old)
    assert run_identity(run, repository).owner == "team:test"
    assert run_facts(sqlite_instance, run, repository, []).owner == "team:test"


def test_a_job_the_location_does_not_define_is_read_from_the_run(
    sqlite_instance, repository
) -> None:
    tags = {OWNER_TAG: "team:gone", AUTOMATION_TAG: "retired"}
    run = stored_run(sqlite_instance, "retired_job", tags)
    assert run_identity(run, repository) == Identity("retired", "team:gone")
    assert run_identity(run, None) == Identity("retired", "team:gone")
    bare = stored_run(sqlite_instance, "retired_job", {})
    assert run_identity(bare, repository) == Identity(None, None)
    assert run_facts(sqlite_instance, bare, repository, []).owner == UNOWNED


def test_an_automations_runs_are_its_jobs_runs_merged_newest_first(sqlite_instance) -> None:
    made = [
        stored_run(sqlite_instance, job, {}).run_id
        for job in ["a_job", "b_job", "b_job", "a_job", "c_job", "a_job", "b_job"]
    ]
    for page_size in (1, 2, 100):
        records = records_of(sqlite_instance, ["a_job", "b_job"], page_size=page_size)
        expected = [run_id for run_id, job in zip(made, "abbacab", strict=True) if job != "c"]
        assert [r.dagster_run.run_id for r in records] == expected[::-1]


def test_pacing_and_the_breaker_count_runs_that_carry_no_identity(
    sqlite_instance, repository
) -> None:
    jobs = automation_jobs(repository, "alert_fixture")
    assert jobs == fx.AUTOMATION.job_names == ("upstream_job",)
    for _ in range(2):
        stored_run(sqlite_instance, "upstream_job", {})
    stored_run(sqlite_instance, "other_job", {AUTOMATION_TAG: "alert_fixture"})  # not its job
    assert pacing.pace(sqlite_instance, jobs, 60, time.time()).hour_count == 2
    assert breaker.consecutive_failures(sqlite_instance, jobs) == 2
    reason = breaker.trip_if_due(sqlite_instance, "alert_fixture", jobs, threshold=2)
    assert reason == "2 consecutive failed runs"


def test_the_digest_groups_and_addresses_runs_by_their_jobs(
    sqlite_instance, repository, alert_router
) -> None:
    stored_run(sqlite_instance, "upstream_job", {})
    engine = store.engine(alert_router.database_url)
    digests = build_digest(sqlite_instance, engine, time.time() + 1, 24, repository)
    assert list(digests) == ["team:test"]
    assert "alert_fixture" in digests["team:test"][1]
    assert list(build_digest(sqlite_instance, engine, time.time() + 1, 24)) == [UNOWNED]

"""A run's automation and owner come from its job's definition, so runs need not repeat them,
and an alert goes to the owner the code names now; a run of a job the code location does not
define is read from its own tags."""

from __future__ import annotations

import dagster as dg
import pytest

from automation_pipelines.monitoring.alerting import UNOWNED, run_facts
from automation_pipelines.reliability.identity import Identity, run_identity
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

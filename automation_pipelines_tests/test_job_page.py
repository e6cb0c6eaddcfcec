"""What the UI shows of every job: its runs carry no tag of their own, only what Dagster acts on
(which its run list hides), so 10 runs fit the run list; the owner is the job's `owners`, and
the automation and the declaration's settings (expectation, breaker, runbook link) are the
job's metadata, shown once on its page."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

import dagster as dg
import pytest

from automation_pipelines import discovery
from automation_pipelines.definitions import defs
from automation_pipelines.monitoring.jobs import MONITORING
from automation_pipelines.reliability.automation import Automation, Expectation
from automation_pipelines.reliability.identity import job_automation, job_setting
from automation_pipelines.reliability.tags import (
    BREAKER_KEY,
    EXPECT_MAX_RUNS_KEY,
    EXPECT_SUCCESS_KEY,
    EXPECT_TRIGGER_KEY,
    RUNBOOK_KEY,
)

#: Tags a run carries: Dagster's max runtime and run-retry switch, which its run list hides.
RUN_TAG_LIMIT = 2
#: The declaration's settings: on the job's page, never on its runs.
SETTINGS = (BREAKER_KEY, EXPECT_MAX_RUNS_KEY, EXPECT_SUCCESS_KEY, EXPECT_TRIGGER_KEY)

JOBS = [job for job in defs.get_repository_def().get_all_jobs() if not job.name.startswith("__")]


def declaration(name: str) -> Automation:
    """The `Automation` an automation folder (or the monitoring layer) declares."""
    if name == MONITORING.name:
        return MONITORING
    assert name in dict(discovery.folders()), name
    return importlib.import_module(f"automation_pipelines.automations.{name}").AUTOMATION


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job.name)
def test_a_run_carries_few_tags_and_none_of_the_settings(job: dg.JobDefinition) -> None:
    ours = dict(job.run_tags)  # what Dagster puts on every run of the job, whoever starts it

    assert [key for key in {*ours, *job.tags} if not key.startswith("dagster/")] == []
    assert len(ours) <= RUN_TAG_LIMIT, sorted(ours)
    assert job.owners == [declaration(job_automation(job)).owner]
    assert not [key for key in ours if key.startswith(("expect/", "breaker/"))]


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job.name)
def test_the_settings_are_on_the_job_page(job: dg.JobDefinition) -> None:
    automation = declaration(job_automation(job))
    assert job_setting(job, BREAKER_KEY) == automation.breaker_after_failures
    assert automation.expect is not None
    assert job_setting(job, EXPECT_TRIGGER_KEY) == automation.expect.trigger_stale_minutes * 60
    if automation.expect.max_runs_per_hour is not None:
        assert job_setting(job, EXPECT_MAX_RUNS_KEY) == automation.expect.max_runs_per_hour
    runbook = job.metadata[RUNBOOK_KEY]
    assert isinstance(runbook, dg.UrlMetadataValue)
    assert urlsplit(runbook.value).scheme in ("http", "https")
    assert runbook.value.endswith(automation.runbook_path)


def test_settings_given_to_one_job_go_to_its_metadata(tmp_path) -> None:
    """A job's own setting (the daily report's success window) joins the declaration's."""
    expect = Expectation(max_runs_per_hour=4)
    automation = Automation("scratch", "team:scratch", tmp_path, expect, breaker_after_failures=2)

    @dg.op
    def step() -> None:
        return None

    @automation.job(name="scratch_job", metadata={EXPECT_SUCCESS_KEY: 7200})
    def scratch_job():
        step()

    assert {key: job_setting(scratch_job, key) for key in SETTINGS} == {
        BREAKER_KEY: 2,
        EXPECT_MAX_RUNS_KEY: 4,
        EXPECT_SUCCESS_KEY: 7200,
        EXPECT_TRIGGER_KEY: 600,
    }
    assert not set(SETTINGS) & set(scratch_job.run_tags)

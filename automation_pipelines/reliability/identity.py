"""Which automation a run belongs to, and who answers for it, read from its job.

Every job of an automation says its name in its metadata (`Automation.job_metadata`) and its
owner in Dagster's job `owners`, both on the job's page; its runs carry neither, because
Dagster's run list gives each tag of a run a line of its own. A run is read through its job's
current definition, so an alert goes to the owner the code names today; a run of a job this
code location no longer defines (or knows nothing of) is read from its own tags (runs made
before carried `automation` and `owner` tags).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import NamedTuple

import dagster as dg

from automation_pipelines.reliability.tags import AUTOMATION_KEY, AUTOMATION_TAG, OWNER_TAG


class Identity(NamedTuple):
    automation: str | None
    owner: str | None


def job_automation(job) -> str | None:
    """The automation a job (a definition, resolved or not) belongs to: its metadata's, else
    its `automation` tag (a job declared the earlier way)."""
    value = (getattr(job, "metadata", None) or {}).get(AUTOMATION_KEY)
    value = getattr(value, "value", value)
    tags = getattr(job, "tags", None) or {}
    return (str(value) if value else None) or tags.get(AUTOMATION_TAG) or None


def job_setting(job, key: str) -> int | None:
    """A declaration's setting from a job's metadata (`EXPECT_*_KEY`, `BREAKER_KEY`,
    `RUNS_AT_ONCE_KEY`), None when the job declares none or something that is not a whole
    number."""
    value = (job.metadata or {}).get(key)
    value = getattr(value, "value", value)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def job_owner(job) -> str | None:
    """Who answers for a job (a definition, resolved or not): the first of its `owners`, else
    its `owner` tag (a job declared the earlier way)."""
    owners = getattr(job, "owners", None) or ()
    tags = getattr(job, "tags", None) or {}
    return next(iter(owners), None) or tags.get(OWNER_TAG) or None


def run_identity(run: dg.DagsterRun, repository: dg.RepositoryDefinition | None) -> Identity:
    """`run`'s automation and owner: its job's in `repository`, else the run's own tags."""
    automation = owner = None
    if repository is not None and repository.has_job(run.job_name):
        job = repository.get_job(run.job_name)
        automation, owner = job_automation(job), job_owner(job)
    return Identity(
        automation=automation or run.tags.get(AUTOMATION_TAG) or None,
        owner=owner or run.tags.get(OWNER_TAG) or None,
    )


def repository_of(context) -> dg.RepositoryDefinition | None:
    """The definitions the run of an op `context` executes in; None for a job executed alone
    (`execute_in_process`), where Dagster has none to give and says so by raising."""
    try:
        return context.repository_def
    except Exception:  # Dagster's invariant error, not a public type
        return None


def automation_jobs(repository: dg.RepositoryDefinition | None, automation: str) -> tuple[str, ...]:
    """The names of `repository`'s jobs that belong to `automation` (none without one)."""
    if repository is None:
        return ()
    return tuple(job.name for job in repository.get_all_jobs() if job_automation(job) == automation)


def records_of(
    instance: dg.DagsterInstance,
    jobs: Iterable[str],
    *,
    statuses: Sequence[dg.DagsterRunStatus] | None = None,
    created_after: datetime | None = None,
    page_size: int = 100,
) -> Iterator[dg.RunRecord]:
    """The run records of `jobs`, newest first, read a page of each job at a time (so a caller
    that stops early reads little)."""

    def of(job: str) -> Iterator[dg.RunRecord]:
        cursor = None
        while True:
            page = instance.get_run_records(
                filters=dg.RunsFilter(
                    job_name=job, statuses=statuses or None, created_after=created_after
                ),
                limit=page_size,
                cursor=cursor,
            )
            yield from page
            if len(page) < page_size:
                return
            cursor = page[-1].dagster_run.run_id

    streams = [of(job) for job in dict.fromkeys(jobs)]
    return heapq.merge(*streams, key=lambda record: record.create_timestamp, reverse=True)

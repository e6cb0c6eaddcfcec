"""Which automation a run belongs to, and who answers for it, read from its job.

Every job of an automation carries its name and owner as job tags (`Automation.job_tags`), which
the job's page shows once. A run is read through its job's current definition, so an alert goes
to the owner the code names today, and a run needs no identity of its own; a run of a job this
code location no longer defines (or knows nothing of) is read from its own tags.
"""

from __future__ import annotations

from typing import NamedTuple

import dagster as dg

from automation_pipelines.reliability.tags import AUTOMATION_TAG, OWNER_TAG


class Identity(NamedTuple):
    automation: str | None
    owner: str | None


def run_identity(run: dg.DagsterRun, repository: dg.RepositoryDefinition | None) -> Identity:
    """`run`'s automation and owner: its job's tags in `repository`, else the run's own."""
    declared: dict[str, str] = {}
    if repository is not None and repository.has_job(run.job_name):
        declared = dict(repository.get_job(run.job_name).tags)
    return Identity(
        automation=declared.get(AUTOMATION_TAG) or run.tags.get(AUTOMATION_TAG) or None,
        owner=declared.get(OWNER_TAG) or run.tags.get(OWNER_TAG) or None,
    )

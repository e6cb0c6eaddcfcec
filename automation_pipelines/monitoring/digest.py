"""A daily digest per owner: what each automation did, and what is still waiting for a person.

Alerts speak only when something breaks. The digest also shows the quiet trouble: an automation
that has not succeeded for days, incidents left open, runs that succeeded but set items aside
(their `result/quarantined` / `result/dead_lettered` tags), and every item still open, with its
age and the command that resolves it. It goes through the alert outbox, so it is durable, routed
like any alert, and sent at most once per owner per day.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.monitoring.watchdog import MONITORING_NAME
from automation_pipelines.reliability.alerts import Outbox, incidents_table
from automation_pipelines.reliability.deadletters import age_text, open_dead_letters, set_aside_of
from automation_pipelines.reliability.errors import LOCAL_IO, reliable_op
from automation_pipelines.reliability.identity import (
    automation_jobs,
    job_owner,
    records_of,
    repository_of,
    run_identity,
)
from automation_pipelines.reliability.messages import TITLE_LIMIT
from automation_pipelines.reliability.tags import AUTOMATION_TAG, OWNER_TAG, WILL_RETRY_TAG

UNOWNED = "unowned"
#: Open incidents and items listed one by one per automation; the rest are only counted.
MAX_LISTED = 10


@dataclass
class _Group:
    """One automation (or, for a job of no automation, one job) in the digest."""

    name: str
    is_job: bool
    owner: str
    runs: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    last_success: float | None = None
    #: Successful runs that set items aside, and how many items they quarantined/dead-lettered.
    set_aside_runs: int = 0
    quarantined: int = 0
    dead_lettered: int = 0
    incidents: list[sa.Row] = field(default_factory=list)
    dead_letters: list[sa.Row] = field(default_factory=list)
    #: The jobs whose runs are the automation's (its definition's, and those of runs seen).
    jobs: set[str] = field(default_factory=set)

    @property
    def other(self) -> int:
        return self.runs - self.succeeded - self.failed - self.retried

    @property
    def needs_attention(self) -> bool:
        return bool(self.failed or self.incidents or self.dead_letters or self.set_aside_runs)


def _utc(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, tz=UTC)


def _when(moment: float | None) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "never"


def _one_line(text: str | None, limit: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _last_success(instance: dg.DagsterInstance, group: _Group, now: float) -> float | None:
    """When the group's latest successful run (created before `now`) ended; None if never."""
    if group.is_job or group.jobs:
        jobs = [group.name] if group.is_job else sorted(group.jobs)
        success = dg.DagsterRunStatus.SUCCESS
        records = records_of(instance, jobs, statuses=[success], page_size=20)
        record = next((r for r in records if r.create_timestamp.timestamp() < now), None)
    else:  # an automation this code location does not define: its runs' own tags
        found = instance.get_run_records(
            filters=dg.RunsFilter(
                statuses=[dg.DagsterRunStatus.SUCCESS],
                created_before=_utc(now),
                tags={AUTOMATION_TAG: group.name},
            ),
            limit=1,
        )
        record = found[0] if found else None
    if record is None:
        return None
    return record.end_time or record.update_timestamp.timestamp()


def _owner_of(
    instance: dg.DagsterInstance, automation: str, repository: dg.RepositoryDefinition | None
) -> str:
    """The owner of an automation with no run in the window: its jobs', else the owner tag of
    its latest run."""
    for job in automation_jobs(repository, automation):
        owner = job_owner(repository.get_job(job))
        if owner:
            return owner
    records = instance.get_run_records(
        filters=dg.RunsFilter(tags={AUTOMATION_TAG: automation}), limit=1
    )
    return (records[0].dagster_run.tags.get(OWNER_TAG) if records else None) or UNOWNED


def _collect(
    instance: dg.DagsterInstance,
    engine: sa.Engine,
    now: float,
    window_hours: float,
    repository: dg.RepositoryDefinition | None = None,
) -> list[_Group]:
    groups: dict[tuple[bool, str], _Group] = {}
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            created_after=_utc(now - window_hours * 3600), created_before=_utc(now)
        )
    )
    for record in records:  # newest first, so a group's owner is that of its latest run
        run = record.dagster_run
        automation, owner = run_identity(run, repository)
        key = (automation is None, automation or run.job_name)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(name=key[1], is_job=key[0], owner=owner or UNOWNED)
        group.jobs.add(run.job_name)
        group.runs += 1
        if run.status == dg.DagsterRunStatus.SUCCESS:
            group.succeeded += 1
            quarantined, dead_lettered = set_aside_of(run.tags)
            if quarantined or dead_lettered:
                group.set_aside_runs += 1
                group.quarantined += quarantined
                group.dead_lettered += dead_lettered
        elif run.status == dg.DagsterRunStatus.FAILURE:
            # A run Dagster retries is not a failure yet; its last attempt is counted instead.
            if run.tags.get(WILL_RETRY_TAG) == "true":
                group.retried += 1
            else:
                group.failed += 1

    with engine.connect() as conn:
        incidents = conn.execute(
            sa.select(incidents_table)
            .where(incidents_table.c.closed_at.is_(None))
            .order_by(incidents_table.c.opened_at)
        ).all()
    for incident in incidents:
        key = (incident.automation is None, incident.automation or incident.job)
        if key not in groups:
            groups[key] = _Group(name=key[1], is_job=key[0], owner=incident.owner or UNOWNED)
        groups[key].incidents.append(incident)

    for letter in open_dead_letters(engine):
        # Dead letters name an automation; a job without one may have used its job name.
        key = (False, letter.automation)
        if key not in groups and (True, letter.automation) in groups:
            key = (True, letter.automation)
        if key not in groups:
            owner = _owner_of(instance, letter.automation, repository)
            groups[key] = _Group(name=letter.automation, is_job=False, owner=owner)
        groups[key].dead_letters.append(letter)

    for group in groups.values():
        if not group.is_job:
            group.jobs.update(automation_jobs(repository, group.name))
        group.last_success = _last_success(instance, group, now)
    return list(groups.values())


def _listed(rows: Sequence[sa.Row], line) -> list[str]:
    lines = [f"    - {line(row)}" for row in rows[:MAX_LISTED]]
    if len(rows) > MAX_LISTED:
        lines.append(f"    … and {len(rows) - MAX_LISTED} more")
    return lines


def _block(group: _Group, window_hours: float, now: float) -> str:
    kind = "job of no automation" if group.is_job else "automation"
    lines = [
        f"{group.name} ({kind}, owner {group.owner})",
        f"  Runs in the last {window_hours:g} h: {group.runs} ({group.succeeded} succeeded, "
        f"{group.failed} failed, {group.retried} failed and retried, {group.other} other)",
        f"  Failed runs: {group.failed}",
    ]
    if group.set_aside_runs:
        lines.append(
            f"  Runs that succeeded but set items aside: {group.set_aside_runs} "
            f"({group.quarantined} quarantined, {group.dead_lettered} dead-lettered item(s))"
        )
    lines += [
        f"  Last successful run: {_when(group.last_success)}",
        f"  Open incidents: {len(group.incidents)}",
    ]
    lines += _listed(
        group.incidents,
        lambda i: (
            f"#{i.id} {i.job}: {_one_line(i.summary)} (open since {_when(i.opened_at)}, "
            f"{i.failure_count} failed run(s), last run {i.last_run_id or '-'})"
        ),
    )
    lines.append(f"  Open dead-lettered/quarantined items: {len(group.dead_letters)}")
    lines += _listed(
        group.dead_letters,
        lambda d: (
            f"#{d.id} {_one_line(d.item, 120)}: {_one_line(d.reason)} "
            f"(open {age_text(now - d.created_at)}, since {_when(d.created_at)})"
        ),
    )
    if group.dead_letters:
        lines += [
            f"    All of them: automation-pipelines deadletters list --automation {group.name}",
            "    Once handled: automation-pipelines deadletters resolve ID [ID ...] (or "
            f"--automation {group.name} --all); reprocessing an item resolves it by itself",
        ]
    return "\n".join(lines)


def _day(now: float) -> str:
    return _utc(now).strftime("%Y-%m-%d")


def build_digest(
    instance: dg.DagsterInstance,
    engine: sa.Engine,
    now: float,
    window_hours: float = 24,
    repository: dg.RepositoryDefinition | None = None,
) -> dict[str, tuple[str, str]]:
    """Owner → (title, body) for every owner whose automations ran in the window or have
    open incidents or dead-lettered items; reads only, sends nothing. With `repository`, runs
    are read through their jobs' definitions (who owns them now)."""
    by_owner: dict[str, list[_Group]] = defaultdict(list)
    for group in _collect(instance, engine, now, window_hours, repository):
        by_owner[group.owner].append(group)
    digests: dict[str, tuple[str, str]] = {}
    for owner, groups in sorted(by_owner.items()):
        groups.sort(key=lambda g: (not g.needs_attention, g.name))
        failed = sum(g.failed for g in groups)
        incidents = sum(len(g.incidents) for g in groups)
        set_aside = sum(g.set_aside_runs for g in groups)
        title = _one_line(
            f"[DIGEST {_day(now)}] {owner}: {len(groups)} automation(s), {failed} failed run(s), "
            f"{incidents} open incident(s)"
            + (f", {set_aside} run(s) set items aside" if set_aside else ""),
            TITLE_LIMIT,
        )
        intro = (
            f"Daily digest for {owner}: the {window_hours:g} h up to {_when(now)}. "
            f"Open dead-lettered/quarantined items: {sum(len(g.dead_letters) for g in groups)}."
        )
        body = "\n\n".join([intro, *(_block(g, window_hours, now) for g in groups)])
        digests[owner] = (title, body)
    return digests


def queue_digest(
    outbox: Outbox,
    instance: dg.DagsterInstance,
    engine: sa.Engine,
    now: float,
    window_hours: float = 24,
    repository: dg.RepositoryDefinition | None = None,
) -> int:
    """Put each owner's digest in the outbox once per UTC day; return how many were queued."""
    queued = 0
    digests = build_digest(instance, engine, now, window_hours, repository)
    for owner, (title, body) in digests.items():
        key = f"digest:{_day(now)}:{owner}"
        if outbox.enqueue_message(owner, title, body, dedup_key=key) is not None:
            queued += 1
    return queued


@reliable_op(
    LOCAL_IO,
    pool=MONITORING_NAME,
    required_resource_keys={"alerts"},
    description=(
        "Queues each owner's daily digest in the alert outbox (once per day, so a retried op "
        "queues nothing twice); alert_outbox_sensor delivers it, so no channel holds the run."
    ),
)
def send_daily_digest(context: dg.OpExecutionContext) -> int:
    alerts = context.resources.alerts
    outbox = alerts.outbox(context.instance)
    repository = repository_of(context)
    queued = queue_digest(outbox, context.instance, outbox.engine, time.time(), 24, repository)
    context.add_output_metadata({"digests_queued": queued})
    return queued

"""Silence is a failure: the watchdog compares what each automation declared as healthy with
Dagster's own tick and run history, and alerts on what is missing.

It finds missed or late schedule ticks, schedules and sensors that are stopped while they should
run, stalled sensors, triggers whose last ticks errored, jobs with no success within their window,
and jobs whose runs arrive more often than declared. `observe` reads the instance; `evaluate` is
pure, so every finding is tested with time moved forward. `watch` does both once per tick, and
the same `Watch` gives the alerts (`report`) and each automation's health in the UI
(`Watch.health`, reported as the asset check `healthy` of `automations/<name>`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import dagster as dg
from croniter import croniter

from automation_pipelines import settings
from automation_pipelines.reliability import breaker, pools
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.automation import (
    finding_runbook,
    runbook_links,
    unguarded,
)
from automation_pipelines.reliability.conditions import Finding, report_findings
from automation_pipelines.reliability.health import Health, health_of, report_health
from automation_pipelines.reliability.identity import job_automation, job_owner, job_setting
from automation_pipelines.reliability.numbers import AUTOMATION_ASSET_PREFIX
from automation_pipelines.reliability.tags import (
    EXPECT_MAX_RUNS_KEY,
    EXPECT_SUCCESS_KEY,
    EXPECT_TRIGGER_KEY,
    WILL_RETRY_TAG,
)

WATCHDOG_SENSOR = "watchdog_sensor"
MONITORING_OWNER = "team:platform"
#: The monitoring layer's own automation (declared in monitoring/jobs.py), also its pool.
MONITORING_NAME = "monitoring"
KINDS = frozenset(
    {
        "missed_tick",
        "trigger_stopped",
        "trigger_stalled",
        "trigger_erroring",
        "no_success",
        "too_many_runs",
    }
)
#: A schedule tick this late is missed (the scheduler can be busy for a while).
TICK_GRACE_SECONDS = 300
#: Ticks in a row that must have failed before a trigger counts as erroring.
ERRORING_TICKS = 3
#: Final runs read back to count a job's failures in a row (health shows it failing from one).
FAILING_LOOKBACK = 10
DEFAULT_STALE_SECONDS = 600


@dataclass(frozen=True)
class TriggerView:
    """What the watchdog knows of one schedule or sensor."""

    name: str
    kind: str  # schedule | sensor
    automation: str | None
    owner: str
    running: bool
    paused: bool
    watched_since: float
    last_tick_at: float | None = None
    recent_ticks: tuple[str, ...] = ()  # newest first: SUCCESS, SKIPPED, FAILURE, STARTED
    last_error: str | None = None
    cron: str | None = None
    timezone: str = "UTC"
    min_interval: float = 30
    stale_after: float = DEFAULT_STALE_SECONDS

    @property
    def subject(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class JobView:
    """What the watchdog knows of one job with a declared expectation."""

    name: str
    automation: str | None
    owner: str
    paused: bool
    watched_since: float
    success_within: float | None = None
    max_runs_per_hour: int | None = None
    last_success_at: float | None = None
    runs_last_hour: int = 0
    #: Final runs (not the attempts Dagster's run retries repeat) that failed since the last
    #: success, newest first, up to FAILING_LOOKBACK; and when the newest of them ended.
    failures_in_a_row: int = 0
    last_failure_at: float | None = None

    @property
    def subject(self) -> str:
        return f"job:{self.name}"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def _last_due_tick(trigger: TriggerView, now: float) -> float:
    """The latest cron time that should have ticked by now, allowing for the grace period."""
    zone = ZoneInfo(trigger.timezone)
    start = datetime.fromtimestamp(now - TICK_GRACE_SECONDS, tz=zone)
    return croniter(trigger.cron, start).get_prev(datetime).timestamp()


def _trigger_findings(trigger: TriggerView, now: float) -> Iterable[Finding]:
    def finding(kind: str, sentence: str) -> Finding:
        return Finding(trigger.subject, kind, trigger.owner, trigger.automation, sentence)

    label = f"{trigger.kind.capitalize()} {trigger.name}"
    what = f"automation {trigger.automation}" if trigger.automation else "what it launches"
    if not trigger.running:
        pause = f"automation-pipelines pause {trigger.automation}" if trigger.automation else ""
        yield finding(
            "trigger_stopped",
            f"{label} is stopped, so {what} does not run: start it in the UI"
            + (f", or pause the automation on purpose with `{pause}`." if pause else "."),
        )
        return
    recent = trigger.recent_ticks[:ERRORING_TICKS]
    if len(recent) == ERRORING_TICKS and all(status == "FAILURE" for status in recent):
        yield finding(
            "trigger_erroring",
            f"The last {ERRORING_TICKS} ticks of {trigger.kind} {trigger.name} failed "
            f"({(trigger.last_error or 'no error text').strip()[:200]}), so {what} is not "
            "being launched: fix the error shown on its tick history.",
        )
    reference = max(trigger.last_tick_at or 0.0, trigger.watched_since)
    if trigger.kind == "schedule" and trigger.cron:
        due = _last_due_tick(trigger, now)
        if due > reference + 60:
            yield finding(
                "missed_tick",
                f"{label} did not tick at {_when(due)} (last tick: {_when(trigger.last_tick_at)}): "
                "check that the daemon's scheduler is running (Deployment → Daemons).",
            )
    elif trigger.kind == "sensor":
        limit = max(trigger.stale_after, 3 * trigger.min_interval)
        if now - reference > limit:
            yield finding(
                "trigger_stalled",
                f"{label} has not ticked for {int((now - reference) // 60)} min (limit "
                f"{int(limit // 60)} min; last tick: {_when(trigger.last_tick_at)}): check that "
                "the daemon's sensor loop is running (Deployment → Daemons).",
            )


def _job_findings(job: JobView, now: float) -> Iterable[Finding]:
    def finding(kind: str, sentence: str) -> Finding:
        return Finding(job.subject, kind, job.owner, job.automation, sentence)

    if job.success_within:
        reference = job.last_success_at or job.watched_since
        if now - reference > job.success_within:
            hours = job.success_within / 3600
            yield finding(
                "no_success",
                f"No successful run of {job.name} in the last {hours:g} h (last success: "
                f"{_when(job.last_success_at)}): look at its recent runs and its trigger.",
            )
    if job.max_runs_per_hour is not None and job.runs_last_hour > job.max_runs_per_hour:
        pause = f"automation-pipelines pause {job.automation}" if job.automation else "its trigger"
        yield finding(
            "too_many_runs",
            f"{job.runs_last_hour} runs of {job.name} started in the last hour, more than the "
            f"{job.max_runs_per_hour} declared: a runaway loop? Stop it with `{pause}`.",
        )


def evaluate(jobs: Sequence[JobView], triggers: Sequence[TriggerView], now: float) -> list[Finding]:
    """Every finding for the given views at time `now`; paused automations are left alone."""
    findings: list[Finding] = []
    for trigger in triggers:
        if not trigger.paused:
            findings.extend(_trigger_findings(trigger, now))
    for job in jobs:
        if not job.paused:
            findings.extend(_job_findings(job, now))
    return findings


def switches_of(instance: dg.DagsterInstance) -> dict[str, breaker.SwitchState]:
    """Every automation's pause switch and breaker as last set (open or resumed), by name."""
    return {s.automation: s for s in breaker.all_states(breaker.engine_for(instance))}


def _failures_in_a_row(
    instance: dg.DagsterInstance, job_name: str, since: float = 0.0
) -> tuple[int, float | None]:
    """(final runs of the job that failed since its last success and since `since` — its
    automation's last resume, after which the breaker counts afresh too —, when the newest
    ended)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=job_name,
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
        ),
        limit=FAILING_LOOKBACK,
    )
    count, newest = 0, None
    for record in records:
        run = record.dagster_run
        if run.status == dg.DagsterRunStatus.SUCCESS or record.create_timestamp.timestamp() < since:
            break
        if run.tags.get(WILL_RETRY_TAG) == "true":
            continue
        count += 1
        if newest is None and record.end_time:
            newest = float(record.end_time)
    return count, newest


def observe(
    instance: dg.DagsterInstance,
    repository: dg.RepositoryDefinition,
    first_seen: dict[str, float],
    now: float,
    switches: Mapping[str, breaker.SwitchState] | None = None,
) -> tuple[list[JobView], list[TriggerView]]:
    """Read the views from the instance; `first_seen` (updated here) remembers when watching
    began, so a new job or trigger is not reported silent before it had its chance. `switches`
    (every automation's, see `switches_of`) are read here unless given."""
    states = {state.instigator_name: state for state in instance.all_instigator_state()}
    switches = switches_of(instance) if switches is None else switches
    open_switches = {name for name, switch in switches.items() if switch.open}

    def since(subject: str) -> float:
        return first_seen.setdefault(subject, now)

    def job_of(job_name: str | None) -> dg.JobDefinition | None:
        if job_name and repository.has_job(job_name):
            return repository.get_job(job_name)
        return None

    triggers: list[TriggerView] = []
    definitions: list[tuple[str, object, dg.JobDefinition | None]] = [
        ("schedule", schedule, job_of(schedule.job_name)) for schedule in repository.schedule_defs
    ]
    for sensor in repository.sensor_defs:
        if sensor.name == WATCHDOG_SENSOR:
            continue
        names = [target.job_name for target in sensor.targets]
        definitions.append(("sensor", sensor, job_of(names[0] if names else None)))
    for kind, definition, job in definitions:
        stale_after = job_setting(job, EXPECT_TRIGGER_KEY) if job else None
        state = states.get(definition.name)
        default_running = definition.default_status.value == "RUNNING"
        running = (state.status.value != "STOPPED") if state else default_running
        ticks = (
            instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=ERRORING_TICKS)
            if state
            else []
        )
        automation = job_automation(job) if job else None
        last_error = next((t.error.message for t in ticks if t.error), None)
        triggers.append(
            TriggerView(
                name=definition.name,
                kind=kind,
                automation=automation,
                owner=(job_owner(job) if job else None) or MONITORING_OWNER,
                running=running,
                paused=automation in open_switches,
                watched_since=since(f"{kind}:{definition.name}"),
                last_tick_at=ticks[0].timestamp if ticks else None,
                recent_ticks=tuple(t.status.value for t in ticks),
                last_error=last_error,
                cron=getattr(definition, "cron_schedule", None) if kind == "schedule" else None,
                timezone=getattr(definition, "execution_timezone", None) or "UTC",
                min_interval=float(getattr(definition, "minimum_interval_seconds", None) or 30),
                stale_after=float(stale_after or DEFAULT_STALE_SECONDS),
            )
        )

    jobs: list[JobView] = []
    hour_ago = datetime.fromtimestamp(now - 3600, tz=UTC)
    for job in repository.get_all_jobs():
        success_within = job_setting(job, EXPECT_SUCCESS_KEY)
        max_runs_per_hour = job_setting(job, EXPECT_MAX_RUNS_KEY)
        if success_within is None and max_runs_per_hour is None:
            continue
        success = instance.get_run_records(
            filters=dg.RunsFilter(job_name=job.name, statuses=[dg.DagsterRunStatus.SUCCESS]),
            limit=1,
        )
        ended = success[0].end_time if success else None
        automation = job_automation(job)
        switch = switches.get(automation) if automation else None
        failures, failed_at = _failures_in_a_row(
            instance, job.name, since=switch.changed_at if switch else 0.0
        )
        jobs.append(
            JobView(
                name=job.name,
                automation=automation,
                owner=job_owner(job) or MONITORING_OWNER,
                paused=automation in open_switches,
                watched_since=since(f"job:{job.name}"),
                success_within=success_within,
                max_runs_per_hour=max_runs_per_hour,
                last_success_at=float(ended) if ended else None,
                runs_last_hour=instance.get_runs_count(
                    filters=dg.RunsFilter(job_name=job.name, created_after=hour_ago)
                ),
                failures_in_a_row=failures,
                last_failure_at=failed_at,
            )
        )
    return jobs, triggers


@dataclass(frozen=True)
class Watch:
    """One evaluation of every automation: what was observed, what was found, and each
    automation's switch. The alerts and the health in the UI are both read from it."""

    jobs: list[JobView]
    triggers: list[TriggerView]
    findings: list[Finding]
    switches: dict[str, breaker.SwitchState]

    @property
    def held_subjects(self) -> list[str]:
        """Subjects of paused or tripped automations: not evaluated, their incidents held."""
        return [view.subject for view in (*self.jobs, *self.triggers) if view.paused]

    def health(self) -> list[Health]:
        """Each automation's state for the UI, from this evaluation."""
        automations = {v.automation for v in (*self.jobs, *self.triggers) if v.automation}
        failing: dict[str, str] = {}
        for job in self.jobs:
            if job.automation and job.failures_in_a_row and not job.paused:
                more = "+" if job.failures_in_a_row >= FAILING_LOOKBACK else ""
                failing[job.automation] = (
                    f"The last {job.failures_in_a_row}{more} run(s) of {job.name} failed (last "
                    f"at {_when(job.last_failure_at)}), with no success since."
                )
        return health_of(automations, self.findings, self.switches, failing)


def watch(
    instance: dg.DagsterInstance,
    repository: dg.RepositoryDefinition,
    first_seen: dict[str, float],
    now: float,
) -> Watch:
    """Observe and evaluate every automation once (see `observe`, `evaluate`)."""
    switches = switches_of(instance)
    jobs, triggers = observe(instance, repository, first_seen, now, switches=switches)
    return Watch(jobs, triggers, evaluate(jobs, triggers, now), switches)


def report(
    outbox,
    findings: Sequence[Finding],
    kinds: Iterable[str] = KINDS,
    held_subjects: Iterable[str] = (),
    runbooks: Mapping[str, str] | None = None,
) -> int:
    """`report_findings` for the watchdog's kinds: one alert per new finding (with its
    automation's runbook link, from `runbooks`), a recovery notice per cleared one; paused
    subjects are held as they are."""
    return report_findings(outbox, findings, kinds, held_subjects, finding_runbook(runbooks or {}))


def interval_seconds() -> int:
    """How often the watchdog looks (WATCHDOG_INTERVAL_SECONDS): how late a finding, an alert
    and each automation's health in the UI may be."""
    return settings.integer("WATCHDOG_INTERVAL_SECONDS", 60, minimum=5, maximum=3600)


#: Read as the code location loads.
INTERVAL_SECONDS = interval_seconds()


@dg.sensor(
    name=WATCHDOG_SENSOR,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    metadata=unguarded(
        "it watches every automation and holds the findings of a paused one itself; a switch "
        "that silenced it would silence the watch on all the others"
    ),
    description=(
        "Compares what every automation declared as healthy with Dagster's tick and run history, "
        "and alerts the owner once per finding (missed schedule ticks, stopped, stalled or "
        "erroring triggers, no success within the window, too many runs), with a recovery notice "
        "when it clears. Each tick also sets every automation's health in the UI: the asset "
        "check `healthy` of `automations/<name>`. `automation-pipelines watchdog` watches this "
        "sensor from outside."
    ),
)
def watchdog_sensor(context: dg.SensorEvaluationContext, alerts: AlertRouter):
    cursor = json.loads(context.cursor) if context.cursor else {}
    first_seen: dict[str, float] = cursor.get("first_seen", {})
    now = time.time()
    try:  # the pools keep each automation's runs apart; see reliability/pools.py
        for said in pools.hold_all(context.instance, context.repository_def):
            context.log.info(said)
    except Exception as error:  # the watch itself matters more; the next tick tries again
        context.log.warning(f"could not set the automations' pool limits: {error!r}")
    seen = watch(context.instance, context.repository_def, first_seen, now)
    outbox = alerts.outbox(context.instance)
    links = runbook_links(context.repository_def)
    opened = report(  # the outbox sends
        outbox, seen.findings, held_subjects=seen.held_subjects, runbooks=links
    )
    healths = seen.health()
    reported = report_health(context.instance, healths, cursor.get("health", {}), now, links)
    context.update_cursor(json.dumps({"first_seen": first_seen, "health": reported}))
    findings = seen.findings
    summary = "; ".join(f.sentence for f in findings[:3])
    unhealthy = [f"{h.automation} {h.label}" for h in healths if not h.passed]
    return dg.SkipReason(
        f"{len(seen.jobs)} job(s), {len(seen.triggers)} trigger(s) watched; {len(findings)} "
        f"finding(s), {opened} new"
        + (f": {summary}" if summary else "")
        + f"; health: {', '.join(unhealthy) or 'all healthy'}"
    )


OUTSIDE_KINDS = frozenset({"daemon_down", "watchdog_silent"})


def sensor_cursor(instance: dg.DagsterInstance) -> dict:
    """The watchdog sensor's cursor as its last tick left it in the instance ({} if none)."""
    for state in instance.all_instigator_state():
        if state.instigator_name == WATCHDOG_SENSOR and state.instigator_data:
            cursor = getattr(state.instigator_data, "cursor", None)
            if cursor:
                return json.loads(cursor)
    return {}


def automations_in_ui(instance: dg.DagsterInstance) -> list[str]:
    """The automations whose health the UI shows: those the watchdog sensor has set it for,
    and those whose runs recorded numbers on `automations/<name>`."""
    names = set(sensor_cursor(instance).get("health", {}))
    names.update(key.path[-1] for key in instance.get_asset_keys(prefix=[AUTOMATION_ASSET_PREFIX]))
    return sorted(names)


def check_from_outside(
    instance: dg.DagsterInstance, now: float, max_heartbeat_age: float, max_watchdog_age: float
) -> list[Finding]:
    """What `automation-pipelines watchdog` (cron, systemd) finds without any Dagster process:
    daemons whose heartbeat is old or missing, else a watchdog sensor that stopped ticking."""

    def finding(subject: str, kind: str, sentence: str) -> Finding:
        return Finding(subject, kind, MONITORING_OWNER, "monitoring", sentence)

    findings = []
    heartbeats = instance.get_daemon_heartbeats()
    stale = []
    for daemon in instance.get_required_daemon_types():
        beat = heartbeats.get(daemon)
        if beat is None or now - beat.timestamp > max_heartbeat_age:
            stale.append(f"{daemon} ({'never' if beat is None else _when(beat.timestamp)})")
    if stale:
        findings.append(
            finding(
                "daemon",
                "daemon_down",
                f"The Dagster daemon has sent no heartbeat for over {int(max_heartbeat_age)} s "
                f"(last: {', '.join(stale)}): no schedule, sensor or queued run moves. Restart "
                "it (`make run`, or the dagster-daemon service).",
            )
        )
    if stale:
        return findings  # a dead daemon silences the sensor too: one alert says it all
    state = next(
        (s for s in instance.all_instigator_state() if s.instigator_name == WATCHDOG_SENSOR), None
    )
    ticks = (
        instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1) if state else []
    )
    last = ticks[0].timestamp if ticks else None
    if last is None or now - last > max_watchdog_age:
        findings.append(
            finding(
                f"sensor:{WATCHDOG_SENSOR}",
                "watchdog_silent",
                f"The watchdog sensor has not ticked for over {int(max_watchdog_age)} s (last: "
                f"{_when(last)}): silent automations would go unnoticed. Check that it is running "
                "and that its ticks do not fail.",
            )
        )
    return findings

"""The production-readiness checklist as code, run by `automation-pipelines check` and in CI.

Each rule looks at one job and either passes or names what is missing. Rules live in `RULES`;
a later concern (alerting, silence expectations, secrets) adds its rule with `@rule(...)`.
Sensors that start no job get a row of their own for the `guarded` rule, so the monitoring
layer's sensors are held to it too.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from croniter import croniter

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.automation import (
    MAX_RUNTIME_TAG,
    RUNBOOK_PREFIX,
    Trigger,
    metadata_text,
    trigger_guard_problem,
)
from automation_pipelines.reliability.errors import is_classified
from automation_pipelines.reliability.hooks import HOOK_NAME
from automation_pipelines.reliability.identity import job_automation, job_owner, job_setting
from automation_pipelines.reliability.pacing import PACED_KEY, most_in_an_hour
from automation_pipelines.reliability.routes import Routes
from automation_pipelines.reliability.secrets import literal_secrets
from automation_pipelines.reliability.tags import (
    AUTOMATION_KEY,
    EXPECT_MAX_RUNS_KEY,
    EXPECT_TRIGGER_KEY,
    RUNS_AT_ONCE_KEY,
)

#: Sections a runbook must have, matched case-insensitively against its `##` headings.
RUNBOOK_SECTIONS = ("What it does", "What it touches", "How to pause", "Failure modes")


@dataclass(frozen=True)
class CheckContext:
    """What rules may look at besides the job: every trigger and the instance configuration."""

    repository: dg.RepositoryDefinition
    instance_config: Mapping[str, Any]
    routes: Routes
    project_root: Path = PROJECT_ROOT
    triggers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


RuleFn = Callable[[dg.JobDefinition, CheckContext], str | None]


@dataclass(frozen=True)
class Rule:
    """One checklist item: `check` returns None when the job passes, else the reason it fails."""

    name: str
    summary: str
    check: RuleFn


@dataclass(frozen=True)
class Finding:
    """One cell of the report: `job` names a job, or (kind "trigger") a schedule or sensor that
    starts no job, checked by the `guarded` rule only."""

    job: str
    rule: str
    ok: bool
    reason: str = ""
    kind: str = "job"


RULES: list[Rule] = []


def rule(name: str, summary: str) -> Callable[[RuleFn], RuleFn]:
    """Register a checklist rule; its name becomes a column of the report."""

    def register(fn: RuleFn) -> RuleFn:
        if any(existing.name == name for existing in RULES):
            raise ValueError(f"readiness rule {name!r} is registered twice")
        RULES.append(Rule(name=name, summary=summary, check=fn))
        return fn

    return register


@rule("owner", "an owner (the job's `owners`) names who is alerted and answers for the job")
def _owner(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    owner = (job_owner(job) or "").strip()
    if not owner:
        return "no owner (the job's `owners`): nobody is alerted when it fails"
    return None


def _runbook_link(description: str | None, project_root: Path) -> tuple[str, Path] | None:
    """The runbook a description links, as written and as a path; None without a link."""
    match = re.search(re.escape(RUNBOOK_PREFIX) + r"(\S+\.md)", description or "")
    if not match:
        return None
    path = Path(match.group(1))
    return match.group(1), path if path.is_absolute() else project_root / path


def runbook_problem(description: str | None, project_root: Path) -> str | None:
    """Why the runbook linked from a description is missing or incomplete, or None if it is fine."""
    link = _runbook_link(description, project_root)
    if link is None:
        return f"description has no '{RUNBOOK_PREFIX}<path>/README.md' line"
    written, path = link
    if not path.is_file():
        return f"runbook {written} does not exist"
    headings = [
        line.lstrip("#").strip().lower()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    ]
    missing = [s for s in RUNBOOK_SECTIONS if not any(h.startswith(s.lower()) for h in headings)]
    if missing:
        return f"runbook {written} lacks section(s): " + ", ".join(f"'## {s}'" for s in missing)
    return None


@rule("runbook", "the description links a runbook README with the required sections")
def _runbook(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    return runbook_problem(job.description, ctx.project_root)


def runbook_folder(description: str | None, project_root: Path) -> Path | None:
    """The folder of the runbook a description links: the automation's own folder."""
    link = _runbook_link(description, project_root)
    return link[1].parent if link else None


@rule("trigger", "at least one schedule or sensor starts the job")
def _trigger(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    if not ctx.triggers.get(job.name):
        return "no schedule or sensor targets it: it only runs when somebody remembers to"
    return None


def _op_retries(
    nodes: Sequence[Any], inherited: dg.RetryPolicy | None, prefix: str = ""
) -> Iterator[tuple[str, bool, bool]]:
    """(path, has a retry policy, body classified) of every op under `nodes`."""
    for node in nodes:
        policy = node.retry_policy or inherited
        definition = node.definition
        if isinstance(definition, dg.GraphDefinition):
            yield from _op_retries(definition.nodes, policy, f"{prefix}{node.name}.")
        else:
            retried = bool(policy or getattr(definition, "retry_policy", None))
            yield f"{prefix}{node.name}", retried, is_classified(definition)


@rule(
    "retries",
    "every op has a retry policy (its own or the job's) and a classified body, so that only "
    "transient errors are retried",
)
def _retries(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    ops = list(_op_retries(job.graph.nodes, job.op_retry_policy))
    problems = []
    if missing := [path for path, retried, _ in ops if not retried]:
        problems.append("op(s) without a retry policy: " + ", ".join(missing))
    if blind := [path for path, retried, classified in ops if retried and not classified]:
        problems.append(
            "op(s) retried whatever the error, permanent ones too (wrap the body in "
            "classify_errors or use reliable_op): " + ", ".join(blind)
        )
    return "; ".join(problems) or None


@rule("max_runtime", f"a `{MAX_RUNTIME_TAG}` tag bounds how long a run may take")
def _max_runtime(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    value = job.run_tags.get(MAX_RUNTIME_TAG)
    if value is None:
        return f"no `{MAX_RUNTIME_TAG}` tag: a hung run would hold its slot for the default limit"
    try:
        seconds = float(value)
    except ValueError:
        return f"`{MAX_RUNTIME_TAG}` is {value!r}, not a number of seconds"
    if seconds <= 0:
        return f"`{MAX_RUNTIME_TAG}` is {value!r}; it must be a positive number of seconds"
    monitoring = ctx.instance_config.get("run_monitoring") or {}
    if not monitoring.get("enabled"):
        return f"`{MAX_RUNTIME_TAG}` does nothing: run_monitoring is not enabled in the instance"
    return None


#: Dagster's own tag namespace: its run list keeps these tags out of sight ("View all tags").
SYSTEM_TAG_PREFIX = "dagster/"


@rule("run_list", "its runs carry no tag of their own, so 10 runs fit on one screen")
def _run_list(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    # Measured at 1440x900: a row is 65 px with Dagster's tags only, 93 with one of ours, 121
    # with two; 10 rows fit only with none. The webserver gives runs launched from the UI the
    # job's tags, whatever its `run_tags`, so both count.
    own = sorted(k for k in {*job.tags, *job.run_tags} if not k.startswith(SYSTEM_TAG_PREFIX))
    if own:
        return (
            f"its runs would carry {', '.join(own)}: the run list gives each tag outside "
            f"`{SYSTEM_TAG_PREFIX}` a line of the run's row, so fewer than 10 runs fit a screen; "
            "the automation and owner belong to the job (AUTOMATION.job / asset_job), counts "
            "to the run's metadata"
        )
    return None


def pool_settings(instance_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The instance's `concurrency.pools` settings (empty when it has none)."""
    return (instance_config.get("concurrency") or {}).get("pools") or {}


@rule("concurrency", "its ops are in its automation's pool, limited by the instance per run")
def _concurrency(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    pools = pool_settings(ctx.instance_config)
    if pools.get("granularity") != "run":
        return (
            "the instance's concurrency.pools.granularity is not `run`: pools would limit ops, "
            "not runs, so two runs of one automation could overlap"
        )
    if pools.get("default_limit") != 1:
        return (
            f"the instance's concurrency.pools.default_limit is {pools.get('default_limit')!r}, "
            "not 1: a pool whose limit is not set yet would let runs overlap (or, at 0, never "
            "start)"
        )
    automation = job_automation(job)
    if not automation:
        return f"no `{AUTOMATION_KEY}` in its metadata, so no pool keeps its runs apart"
    outside = sorted(op.name for op in job.graph.iterate_op_defs() if op.pool != automation)
    if outside:
        return (
            f"op(s) {', '.join(outside)} are not in the pool `{automation}`, so its runs could "
            "overlap the automation's others: make them with AUTOMATION.op / asset / "
            "multi_asset_check"
        )
    at_once = job_setting(job, RUNS_AT_ONCE_KEY)
    if at_once is None or at_once < 1:
        return (
            f"no `{RUNS_AT_ONCE_KEY}` of at least 1 in the job's metadata: its triggers would "
            "not know the pool's limit (make the job with AUTOMATION.job / asset_job)"
        )
    return None


#: Executors whose steps are not children of the run worker: the multiprocess executor's are.
#: Celery's run on long-lived workers fed by a broker; an automation that chooses it makes a
#: step of an ended run do nothing (web_images checks under its tree's lock).
STEP_EXECUTORS = frozenset({dg.in_process_executor.name, "celery"})


@rule("in_process", "its ops run inside the run worker, so a killed worker leaves no step behind")
def _in_process(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    if job.executor_def.name not in STEP_EXECUTORS:
        return (
            f"executor {job.executor_def.name!r} runs steps in processes of their own, which "
            "outlive a killed run worker and overlap the next run: use dg.in_process_executor"
        )
    return None


@rule("alerting", f"the `{HOOK_NAME}` failure hook records failed ops for the owner's alert")
def _alerting(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    if not any(hook.name == HOOK_NAME for hook in job.hook_defs):
        return f"no `{HOOK_NAME}`: a failed op would not say which op failed, or why"
    return None


@rule("alert_route", "alert_routes.yaml names where the owner's alerts go")
def _alert_route(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    owner = job_owner(job)
    if owner and not ctx.routes.has_route(owner):
        return f"owner {owner!r} has no entry in alert_routes.yaml: its alerts have nowhere to go"
    return None  # a job without an owner already fails the `owner` rule


@rule("silence", "an Expectation says what healthy means (silence is a failure)")
def _silence(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    if job_setting(job, EXPECT_TRIGGER_KEY) is None:
        return (
            "no expectation: declare Automation(expect=Expectation(success_within_hours=…)) so "
            "the watchdog notices when it stops running"
        )
    return None


def _triggers_of(job_name: str, repository: dg.RepositoryDefinition) -> list[Trigger]:
    schedules = [s for s in repository.schedule_defs if s.job_name == job_name]
    sensors = [s for s in repository.sensor_defs if any(t.job_name == job_name for t in s.targets)]
    return [*schedules, *sensors]


@rule("guarded", "every schedule and sensor that starts it obeys the pause switch and breaker")
def _guarded(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    automation = job_automation(job)
    problems = [
        problem
        for trigger in _triggers_of(job.name, ctx.repository)
        if (problem := trigger_guard_problem(trigger, automation))
    ]
    return "; ".join(problems) or None


#: How often Dagster's sensor daemon goes round (a constant of its loop): the fastest a sensor
#: that requests one run per round can go.
SENSOR_DAEMON_ROUND_SECONDS = 5
#: Cron fire times are looked at over this long to find the busiest hour.
CRON_WEEK = timedelta(days=8)


def schedule_runs_per_hour(schedule: dg.ScheduleDefinition) -> int:
    """The most times the schedule fires within any hour (of a week from a fixed Monday)."""
    crons = schedule.cron_schedule
    crons = [crons] if isinstance(crons, str) else list(crons)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    fires: list[float] = []
    for cron in crons:
        moments = croniter(cron, start)
        while True:
            moment = moments.get_next(datetime)
            if moment - start > CRON_WEEK:
                break
            fires.append(moment.timestamp())
    return most_in_an_hour(sorted(fires))


def trigger_rate_problem(trigger: Trigger, declared: int) -> str | None:
    """Why a schedule or sensor can start more runs an hour than `declared`, or None."""
    if isinstance(trigger, dg.ScheduleDefinition):
        most = schedule_runs_per_hour(trigger)
        if most > declared:
            return (
                f"schedule {trigger.name} fires up to {most} times an hour, over its "
                f"max_runs_per_hour of {declared}"
            )
        return None
    paced = metadata_text(trigger, PACED_KEY)
    if not paced:
        return (
            f"sensor {trigger.name} is not paced: it may request runs at every round of the "
            f"sensor daemon ({3600 // SENSOR_DAEMON_ROUND_SECONDS} an hour, more with several "
            f"per round), over its max_runs_per_hour of {declared}; make it with "
            "@AUTOMATION.sensor(...) and ask pacing.allowed_runs() before requesting"
        )
    if int(paced) > declared:
        return f"sensor {trigger.name} is paced to {paced} runs an hour, over {declared}"
    return None


@rule("paced", "its triggers cannot start more runs an hour than its max_runs_per_hour")
def _paced(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    declared = job_setting(job, EXPECT_MAX_RUNS_KEY)
    if declared is None:
        return None
    problems = [
        problem
        for trigger in _triggers_of(job.name, ctx.repository)
        if (problem := trigger_rate_problem(trigger, declared))
    ]
    return "; ".join(problems) or None


#: Where a secret belongs instead of a settings file, for the report.
SECRET_ADVICE = (
    "keep secrets out of files the code reads (they end up in git and, as resource or run "
    "config, in clear in Dagster's job snapshots shown in the UI): put the value in an "
    "environment variable and name that variable (a `*_env` setting, `{env: NAME}` in "
    "dagster.yaml, a dg.EnvVar resource field); for PostgreSQL use PGPASSWORD or ~/.pgpass"
)


@functools.lru_cache(maxsize=256)
def _file_secrets(path: Path, stamp: tuple[int, int]) -> tuple[str, ...]:
    """Secrets written into one YAML file (cached per modification time and size)."""
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return (f"cannot be read, so it cannot be checked for secrets ({reason})",)
    return tuple(found for document in documents for found in literal_secrets(document))


def settings_files(project_root: Path, automation_folder: Path | None = None) -> list[Path]:
    """The YAML files the code reads: those at the project root (backups.yaml, alert_routes.yaml,
    webhook_sources.yaml, dagster.yaml, …) and those in the automation's own folder."""
    folders = [project_root, *([automation_folder] if automation_folder else [])]
    found = {
        path.resolve()
        for folder in folders
        if folder.is_dir()
        for pattern in ("*.yaml", "*.yml")
        for path in folder.glob(pattern)
        if path.is_file()
    }
    return sorted(found)


def _label(path: Path, project_root: Path) -> str:
    try:
        return path.relative_to(project_root.resolve()).as_posix()
    except ValueError:
        return f"{path.parent.name}/{path.name}"


@rule("settings_secrets", "no settings file it depends on holds a password, token or key")
def _settings_secrets(job: dg.JobDefinition, ctx: CheckContext) -> str | None:
    problems = [f"instance config: {found}" for found in literal_secrets(ctx.instance_config)]
    folder = runbook_folder(job.description, ctx.project_root)
    for path in settings_files(ctx.project_root, folder):
        stat = path.stat()
        label = _label(path, ctx.project_root)
        problems += [
            f"{label}: {found}" for found in _file_secrets(path, (stat.st_mtime_ns, stat.st_size))
        ]
    if not problems:
        return None
    return "; ".join(problems) + f". {SECRET_ADVICE}"


def _user_jobs(repository: dg.RepositoryDefinition) -> list[dg.JobDefinition]:
    """Jobs people declared; Dagster's implicit asset jobs are checked through their triggers."""
    return [job for job in repository.get_all_jobs() if not job.name.startswith("__")]


def triggers_by_job(repository: dg.RepositoryDefinition) -> dict[str, tuple[str, ...]]:
    """Map each job name to the schedules and sensors that can start it."""
    found: dict[str, list[str]] = {}
    for schedule in repository.schedule_defs:
        found.setdefault(schedule.job_name, []).append(schedule.name)
    for sensor in repository.sensor_defs:
        for target in sensor.targets:
            found.setdefault(target.job_name, []).append(sensor.name)
    return {job: tuple(names) for job, names in found.items()}


def _routes_of(defs: dg.Definitions) -> Routes:
    """The routes of the definitions' own alert router, else the project's routes file."""
    router = (defs.resources or {}).get("alerts")
    return router.routes() if isinstance(router, AlertRouter) else Routes.load()


def load_instance_config(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def run_checks(
    defs: dg.Definitions,
    instance_config: Mapping[str, Any],
    *,
    rules: Sequence[Rule] | None = None,
    project_root: Path = PROJECT_ROOT,
    routes: Routes | None = None,
) -> list[Finding]:
    """Check every declared job against every rule; an empty project is itself a finding."""
    repository = defs.get_repository_def()
    ctx = CheckContext(
        repository=repository,
        instance_config=instance_config,
        routes=routes or _routes_of(defs),
        project_root=project_root,
        triggers=triggers_by_job(repository),
    )
    jobs = _user_jobs(repository)
    if not jobs:
        return [Finding(job="(none)", rule="jobs", ok=False, reason="no jobs are defined")]
    findings = []
    selected = RULES if rules is None else rules
    for job in sorted(jobs, key=lambda j: j.name):
        for item in selected:
            reason = item.check(job, ctx)
            findings.append(Finding(job.name, item.name, reason is None, reason or ""))
    if any(item.name == "guarded" for item in selected):
        findings += _jobless_trigger_findings(repository)
    return findings


def _jobless_trigger_findings(repository: dg.RepositoryDefinition) -> list[Finding]:
    """A row per sensor that starts no job (the monitoring sensors): guarded, or exempt."""
    findings = []
    for sensor in sorted(repository.sensor_defs, key=lambda s: s.name):
        if any(target.job_name for target in sensor.targets):
            continue
        reason = trigger_guard_problem(sensor)
        findings.append(
            Finding(f"sensor:{sensor.name}", "guarded", reason is None, reason or "", "trigger")
        )
    return findings


def format_report(findings: Sequence[Finding]) -> str:
    """Jobs by rules, ✓ or ✗, then a line per failure naming the job, the rule and why."""
    rules = list(dict.fromkeys(f.rule for f in findings))
    jobs = list(dict.fromkeys(f.job for f in findings))
    cell = {(f.job, f.rule): "✓" if f.ok else "✗" for f in findings}
    width = max(len("job"), *(len(j) for j in jobs))
    lines = ["  ".join(["job".ljust(width), *rules])]
    for job in jobs:
        cells = [cell.get((job, r), "-").center(len(r)) for r in rules]
        lines.append("  ".join([job.ljust(width), *cells]))
    failures = [f for f in findings if not f.ok]
    triggers = {f.job for f in findings if f.kind == "trigger"}
    lines.append("")
    if failures:
        lines.extend(f"✗ {f.job} · {f.rule}: {f.reason}" for f in failures)
        failing_jobs = len({f.job for f in failures if f.kind == "job"})
        failing_triggers = len({f.job for f in failures if f.kind == "trigger"})
        where = [
            *([f"{failing_jobs} job(s)"] if failing_jobs else []),
            *([f"{failing_triggers} trigger(s)"] if failing_triggers else []),
        ]
        lines.append(f"\n{len(failures)} problem(s) in {' and '.join(where)}.")
    else:
        lines.append(f"All {len(jobs) - len(triggers)} job(s) pass all {len(rules)} rule(s).")
        if triggers:
            lines.append(
                f"All {len(triggers)} sensor(s) that start no job are guarded or declared exempt."
            )
    return "\n".join(lines)


def load_definitions(target: str) -> dg.Definitions:
    """Import `module` or `module:attribute` (from the working folder too, as `python -m` does)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    if attribute:
        found = getattr(module, attribute)
    else:
        candidates = [v for v in vars(module).values() if isinstance(v, dg.Definitions)]
        if len(candidates) != 1:
            raise ValueError(
                f"{module_name} holds {len(candidates)} Definitions; name one as module:attr"
            )
        found = candidates[0]
    if not isinstance(found, dg.Definitions):
        raise TypeError(f"{target} is a {type(found).__name__}, not dg.Definitions")
    return found

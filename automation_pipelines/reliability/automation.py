"""The declaration every automation makes: who owns it, where its runbook is, and its limits.

One `Automation` per automation folder is the single source for the tags, owners, job metadata,
concurrency pool and descriptions the readiness check looks for, so an automation cannot forget
one of them. Runs carry only the tags Dagster acts on, which its run list keeps out of sight:
the owner is the job's (Dagster's `owners`), and the automation's name and the declaration's
settings (expectation, breaker, runbook link) are job metadata, shown once on the job's page.
Its ops are in the automation's pool, so its runs never overlap. Its schedules and sensors
check the pause switch and circuit breaker, and say so in their metadata (`GUARDED_BY_KEY`), so
the readiness check can tell them from a plain `dg.ScheduleDefinition` that would bypass both.
`Automation.definitions` builds the folder's `defs` from what these methods made, refuses
anything made around them, and adds the resources the alert hook needs, so that each folder's
definitions load on their own.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from automation_pipelines import settings
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import breaker, pacing, pools
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.errors import (
    RetryPreset,
    classify_errors,
    is_classified,
    reliable_op,
)
from automation_pipelines.reliability.hooks import HOOK_NAME, alert_on_failure_hook
from automation_pipelines.reliability.identity import job_automation, job_owner
from automation_pipelines.reliability.signatures import keep_signature
from automation_pipelines.reliability.tags import (
    AUTOMATION_KEY,
    AUTOMATION_TAG,
    BREAKER_KEY,
    EXPECT_MAX_RUNS_KEY,
    EXPECT_SUCCESS_KEY,
    EXPECT_TRIGGER_KEY,
    MAX_RUNTIME_TAG,
    RETRY_ON_OP_FAILURE_TAG,
    RUNBOOK_KEY,
    RUNBOOK_PREFIX,
    RUNS_AT_ONCE_KEY,
)

# Dagster calls a job's `owners` beta; it is where the UI shows a job's owner (its page's
# Owners), and a tag there would land on every run launched from the UI, a line in the run list.
warnings.filterwarnings("ignore", message=r"Parameter `owners` of .* is currently in beta")

#: Trigger metadata: the automation whose switch the trigger checks before it requests a run.
GUARDED_BY_KEY = "automation/guarded_by"
#: Trigger metadata: why a trigger deliberately runs whatever the switches say.
UNGUARDED_KEY = "automation/unguarded_because"


def unguarded(reason: str) -> dict[str, str]:
    """Metadata declaring a trigger exempt from the pause switch and breaker, and why; the
    readiness check accepts it only with a reason a reviewer can judge."""
    if not reason.strip():
        raise ValueError("an unguarded trigger needs a reason")
    return {UNGUARDED_KEY: reason.strip()}


Trigger = dg.ScheduleDefinition | dg.SensorDefinition


def metadata_text(trigger: Trigger, key: str) -> str:
    """A trigger's metadata value under `key` as plain text ('' when absent)."""
    value = (trigger.metadata or {}).get(key)
    return str(getattr(value, "value", value) or "").strip()


def runbook_links(repository: dg.RepositoryDefinition) -> dict[str, str]:
    """Each automation's runbook URL, from its jobs' metadata: for alerts about a trigger or an
    asset, which name the automation rather than a job."""
    links = {}
    for job in repository.get_all_jobs():
        automation, link = job_automation(job), (job.metadata or {}).get(RUNBOOK_KEY)
        if automation and link is not None:
            links.setdefault(automation, str(getattr(link, "value", link)))
    return links


def finding_runbook(links: Mapping[str, str]) -> Callable[[object], list[str]]:
    """`report_findings`'s `details`: the runbook line of the finding's automation, if any."""
    return lambda f: [f"Runbook: {links[f.automation]}"] if f.automation in links else []


def trigger_guard_problem(trigger: Trigger, automation: str | None = None) -> str | None:
    """Why a schedule or sensor may request runs while its automation is paused or tripped, or
    None when it checks the switch (or is declared exempt with a reason)."""
    kind = "schedule" if isinstance(trigger, dg.ScheduleDefinition) else "sensor"
    if metadata_text(trigger, UNGUARDED_KEY):
        return None
    guard = metadata_text(trigger, GUARDED_BY_KEY)
    if not guard:
        return (
            f"{kind} {trigger.name} does not check the pause switch or the circuit breaker: make "
            "it with AUTOMATION.schedule(...) / @AUTOMATION.sensor(...), or declare it exempt "
            "with metadata=unguarded(reason)"
        )
    if automation and guard != automation:
        return (
            f"{kind} {trigger.name} checks the switch of automation {guard!r}, not of "
            f"{automation!r}: pausing {automation} would not stop it"
        )
    return None


@dataclass(frozen=True)
class Expectation:
    """What healthy means for an automation; the watchdog sensor alerts when reality differs."""

    #: A successful run at least this often (e.g. 26 for a nightly job); None for automations
    #: driven by events that may not come (their sensor's ticking is what must not stop).
    success_within_hours: float | None = None
    #: More runs than this in an hour is a runaway loop.
    max_runs_per_hour: int | None = None
    #: A sensor of the automation must have ticked within this many minutes.
    trigger_stale_minutes: float = 10.0

    def metadata(self) -> dict[str, int]:
        """The expectation as job metadata, in seconds and runs."""
        metadata = {EXPECT_TRIGGER_KEY: int(self.trigger_stale_minutes * 60)}
        if self.success_within_hours is not None:
            metadata[EXPECT_SUCCESS_KEY] = int(self.success_within_hours * 3600)
        if self.max_runs_per_hour is not None:
            metadata[EXPECT_MAX_RUNS_KEY] = self.max_runs_per_hour
        return metadata


@dataclass(frozen=True)
class Automation:
    """Who owns an automation, where its runbook lives, and how long one run may take."""

    name: str
    owner: str
    folder: Path
    expect: Expectation | None = None
    max_runtime_seconds: int = 3600
    breaker_after_failures: int = 5
    #: Runs that may run at once: the limit of the automation's concurrency pool (see `pools`).
    #: 1 (the default): runs never overlap. More only for an automation whose runs cannot clash
    #: (their own lock, idempotent writes): the next run's process then starts while one still
    #: works.
    side_by_side: int = 1
    #: The names of the jobs `job` and `asset_job` made, in order: the automation's runs are
    #: theirs, which pacing, the breaker and the digest count, whatever tags a run carries.
    _jobs: dict[str, None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"automation name {self.name!r} must be a lower-case identifier")
        if not self.owner.strip():
            raise ValueError(f"automation {self.name!r} needs an owner")
        if self.max_runtime_seconds <= 0:
            raise ValueError(f"automation {self.name!r}: max_runtime_seconds must be positive")
        if self.breaker_after_failures < 1:
            raise ValueError(f"automation {self.name!r}: breaker_after_failures must be >= 1")
        if self.side_by_side < 1:
            raise ValueError(f"automation {self.name!r}: side_by_side must be >= 1")

    @classmethod
    def here(cls, module_file: str, *, owner: str, **settings) -> Automation:
        """Declare the automation whose folder holds `module_file`; the folder name is its name."""
        folder = Path(module_file).resolve().parent
        return cls(name=folder.name, owner=owner, folder=folder, **settings)

    @property
    def job_names(self) -> tuple[str, ...]:
        """The jobs made by this declaration so far (all of them once its definitions loaded)."""
        return tuple(self._jobs)

    @property
    def runbook(self) -> Path:
        return self.folder / "README.md"

    @property
    def runbook_path(self) -> str:
        """The runbook path as a reader of the repository sees it (the readiness check opens
        it from the descriptions)."""
        try:
            return self.runbook.relative_to(PROJECT_ROOT).as_posix()
        except ValueError:
            return self.runbook.as_posix()

    @property
    def runbook_ref(self) -> str:
        """The runbook as alerts and the job's page link it: its URL at `RUNBOOK_BASE_URL`, which
        opens from Slack or e-mail where a repository path does not."""
        return settings.runbook_url(self.runbook_path)

    @property
    def pool(self) -> str:
        """The concurrency pool of every op, asset and check of this automation."""
        return self.name

    def job_tags(self, **extra: str) -> dict[str, str]:
        """Tags of this automation's jobs, which every run of them carries, however started
        (Dagster gives a run the job's tags from a sensor, the Launchpad, a backfill or a
        retry alike): only what Dagster acts on (the max runtime, no run retry after an op
        failure), which its run list keeps out of sight. Every other tag would take a line of
        the run's row: the automation is the job's metadata and the owner its `owners`
        (`identity`), settings are `job_metadata`, and what a run did is its
        materialization's metadata; a run that set items aside says so (`result/…`)."""
        return {
            MAX_RUNTIME_TAG: str(self.max_runtime_seconds),
            RETRY_ON_OP_FAILURE_TAG: "false",
            **extra,
        }

    def job_metadata(self, **extra) -> dict:
        """Metadata every job of this automation carries, shown once on its page: the
        automation's name, the runbook link, the breaker's threshold, the runs it lets in at
        once and what healthy means."""
        return {
            AUTOMATION_KEY: self.name,
            RUNBOOK_KEY: dg.MetadataValue.url(self.runbook_ref),
            BREAKER_KEY: self.breaker_after_failures,
            RUNS_AT_ONCE_KEY: self.side_by_side,
            **(self.expect.metadata() if self.expect else {}),
            **extra,
        }

    def describe(self, text: str) -> str:
        """A description for a job, schedule or sensor that ends with the runbook's path."""
        return f"{text.strip()}\n\n{RUNBOOK_PREFIX}{self.runbook_path} (owner: {self.owner})"

    def job(self, **kwargs):
        """`dg.job` with this automation's tags, owner and metadata, the alerting hook and the
        in-process executor; the description gets the runbook link."""
        kwargs.setdefault("executor_def", dg.in_process_executor)
        kwargs["tags"] = {**self.job_tags(), **kwargs.get("tags", {})}
        kwargs["owners"] = [self.owner]
        kwargs["metadata"] = self.job_metadata(**kwargs.get("metadata", {}))
        kwargs["hooks"] = {alert_on_failure_hook, *kwargs.get("hooks", ())}
        if "description" in kwargs:
            kwargs["description"] = self.describe(kwargs["description"])
        make = dg.job(**kwargs)

        def decorator(fn):
            job = make(fn)
            self._jobs[job.name] = None
            return job

        return decorator

    def asset_job(
        self,
        name: str,
        *,
        selection: dg.AssetSelection | Iterable[dg.AssetKey],
        description: str,
        tags: Mapping[str, str] | None = None,
        metadata: Mapping[str, object] | None = None,
    ):
        """`dg.define_asset_job` with what `job` adds: this automation's tags and metadata, the
        alerting hook, the in-process executor and the runbook link."""
        self._jobs[name] = None
        return dg.define_asset_job(
            name,
            selection=selection,
            tags=self.job_tags(**(tags or {})),
            owners=[self.owner],
            metadata=self.job_metadata(**(metadata or {})),
            hooks={alert_on_failure_hook},
            executor_def=dg.in_process_executor,
            description=self.describe(description),
        )

    def op(self, errors: RetryPreset, **op_kwargs):
        """`reliable_op` in this automation's pool: classified retries under `errors`, and a
        run holding it waits for the automation's other runs."""
        return reliable_op(errors, pool=self.pool, **op_kwargs)

    def _asset_attributes(self, kwargs: dict, description: str) -> dict:
        kwargs.setdefault("group_name", self.name)
        kwargs["owners"] = [self.owner, *(o for o in kwargs.get("owners", ()) if o != self.owner)]
        kwargs["tags"] = {**kwargs.get("tags", {}), AUTOMATION_TAG: self.name}
        kwargs["description"] = self.describe(description)
        return kwargs

    def asset(self, *, errors: RetryPreset, description: str, **asset_kwargs):
        """`dg.asset` of this automation: its owner, tag and group, the runbook link, and a body
        run through `classify_errors(errors)` under that preset's retry policy, so only
        transient errors are retried."""
        asset_kwargs = self._asset_attributes(asset_kwargs, description)

        def decorator(fn):
            return dg.asset(retry_policy=errors.policy, pool=self.pool, **asset_kwargs)(
                classify_errors(errors)(fn)
            )

        return decorator

    def multi_asset_check(self, *, errors: RetryPreset, description: str, **check_kwargs):
        """`dg.multi_asset_check` with `asset`'s classified retries and the runbook link."""

        def decorator(fn):
            return dg.multi_asset_check(
                retry_policy=errors.policy,
                pool=self.pool,
                description=self.describe(description),
                **check_kwargs,
            )(classify_errors(errors)(fn))

        return decorator

    def spec(self, key: dg.AssetKey | str, *, description: str, **spec_kwargs) -> dg.AssetSpec:
        """A `dg.AssetSpec` for what a job of this automation writes, owned like `asset`."""
        return dg.AssetSpec(key, **self._asset_attributes(spec_kwargs, description))

    def definitions(
        self,
        *,
        jobs: Iterable = (),
        schedules: Iterable[dg.ScheduleDefinition] = (),
        sensors: Iterable[dg.SensorDefinition] = (),
        assets: Iterable[dg.AssetsDefinition | dg.AssetSpec] = (),
        asset_checks: Iterable[dg.AssetChecksDefinition] = (),
        resources: Mapping[str, object] | None = None,
    ) -> dg.Definitions:
        """The folder's `defs`. Every job, schedule, sensor and asset must have been made by this
        declaration (`job`/`asset_job`, `schedule`/`sensor`, `asset`/`spec`); one made around
        it is refused here, naming it, because it would lack the tags, the alert hook, the
        runbook link or the pause switch. The `alerts` resource the hook needs is added."""
        jobs, schedules, sensors = list(jobs), list(schedules), list(sensors)
        assets, asset_checks = list(assets), list(asset_checks)
        problems = [
            *(p for job in jobs if (p := self._job_problem(job))),
            *(p for t in [*schedules, *sensors] if (p := trigger_guard_problem(t, self.name))),
            *(p for asset in assets for p in self._asset_problems(asset)),
            *(p for checks in asset_checks if (p := self._checks_problem(checks))),
        ]
        if problems:
            raise ValueError(
                f"automation {self.name!r}: made around its declaration: " + "; ".join(problems)
            )
        return dg.Definitions(
            assets=assets,
            asset_checks=asset_checks,
            jobs=jobs,
            schedules=schedules,
            sensors=sensors,
            resources={"alerts": AlertRouter.deployed(), **(resources or {})},
        )

    def _job_problem(self, job) -> str | None:
        hooks = getattr(job, "hook_defs", None) or getattr(job, "hooks", None) or ()
        if job_automation(job) != self.name or job_owner(job) != self.owner:
            return (
                f"job {job.name} lacks its automation or owner: make it with AUTOMATION.job / "
                "asset_job"
            )
        if not any(hook.name == HOOK_NAME for hook in hooks):
            return f"job {job.name} has no {HOOK_NAME}: make it with AUTOMATION.job / asset_job"
        if isinstance(job, dg.JobDefinition):
            outside = [op.name for op in job.graph.iterate_op_defs() if op.pool != self.pool]
            if outside:
                return (
                    f"job {job.name}: op(s) {', '.join(sorted(outside))} are not in the pool "
                    f"{self.pool}, so its runs could overlap: make them with AUTOMATION.op"
                )
        return None

    def _checks_problem(self, checks: dg.AssetChecksDefinition) -> str | None:
        """A check made around `multi_asset_check` lacks the runbook link, and its retries (if
        any) would not be classified."""
        description = checks.op.description or ""
        linked = f"{RUNBOOK_PREFIX}{self.runbook_path}" in description
        if not linked or not is_classified(checks.op) or checks.op.pool != self.pool:
            return (
                f"asset check {checks.op.name} lacks the runbook link, classified retries or "
                f"the pool {self.pool}: make it with AUTOMATION.multi_asset_check"
            )
        return None

    def _asset_problems(self, asset) -> list[str]:
        specs = [asset] if isinstance(asset, dg.AssetSpec) else list(asset.specs)
        problems = [
            f"asset {spec.key.to_user_string()} is not owned by {self.name}: make it with "
            "AUTOMATION.asset / AUTOMATION.spec"
            for spec in specs
            if self.owner not in spec.owners or spec.tags.get(AUTOMATION_TAG) != self.name
        ]
        executable = isinstance(asset, dg.AssetsDefinition) and asset.is_executable
        if executable and asset.op.pool != self.pool:
            problems.append(
                f"asset {asset.key.to_user_string()} is not in the pool {self.pool}: make it "
                "with AUTOMATION.asset"
            )
        return problems

    def blocked(self, context) -> dg.SkipReason | None:
        """A SkipReason naming the breaker when the automation is paused or tripped. Otherwise
        the trigger is about to request runs: its pool gets the declared limit first."""
        reason = breaker.blocked(context.instance, self.name)
        if reason:
            return dg.SkipReason(reason)
        changed = pools.hold(context.instance, self.pool, self.side_by_side)
        if changed:
            context.log.info(changed)
        return None

    def schedule(
        self,
        *,
        name: str,
        cron_schedule: str,
        job: dg.JobDefinition,
        description: str,
        execution_timezone: str = "UTC",
        run_config: dict | None = None,
        request: Callable[[dg.ScheduleEvaluationContext], dg.RunRequest] | None = None,
    ) -> dg.ScheduleDefinition:
        """A schedule (running by default) that requests nothing while the breaker is open.
        `request` builds the run request from the tick (e.g. to pick a partition); by default
        the request carries `run_config`."""

        def evaluate(context: dg.ScheduleEvaluationContext):
            blocked = self.blocked(context)
            if blocked:
                return blocked
            return request(context) if request else dg.RunRequest(run_config=run_config or {})

        return dg.ScheduleDefinition(
            name=name,
            cron_schedule=cron_schedule,
            job=job,
            execution_fn=evaluate,
            execution_timezone=execution_timezone,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=self.describe(description),
            metadata={GUARDED_BY_KEY: self.name},
        )

    @property
    def max_runs_per_hour(self) -> int | None:
        return self.expect.max_runs_per_hour if self.expect else None

    def sensor(self, **sensor_kwargs):
        """`dg.sensor` (running by default) that is skipped while the breaker is open and, when
        the automation declares `max_runs_per_hour`, paced: the function asks
        `pacing.allowed_runs(cap)` how many runs it may request, and asking for more fails the
        tick instead of starting them."""
        sensor_kwargs.setdefault("default_status", dg.DefaultSensorStatus.RUNNING)
        metadata = {**sensor_kwargs.get("metadata", {}), GUARDED_BY_KEY: self.name}
        maximum = self.max_runs_per_hour
        if maximum is not None:
            metadata[pacing.PACED_KEY] = str(pacing.budget(maximum))
        sensor_kwargs["metadata"] = metadata
        if "description" in sensor_kwargs:
            sensor_kwargs["description"] = self.describe(sensor_kwargs["description"])

        def decorator(fn):
            @functools.wraps(fn)
            def guarded(context, *args, **kwargs):
                blocked = self.blocked(context)
                if blocked:
                    return blocked
                if maximum is None:
                    return fn(context, *args, **kwargs)
                now = time.time()
                current = pacing.pace(context.instance, self.job_names, maximum, now)
                with pacing.pacing(current):
                    result = fn(context, *args, **kwargs)
                    if isinstance(result, Iterator):
                        result = list(result)
                asked = pacing.count_requests(result)
                if asked > current.allowed:
                    raise RuntimeError(
                        f"{self.name}: the sensor asked for {asked} run(s) with room for "
                        f"{current.allowed} ({current.sentence()}); it must ask "
                        "pacing.allowed_runs() first"
                    )
                return result

            return dg.sensor(**sensor_kwargs)(keep_signature(guarded, fn))

        return decorator

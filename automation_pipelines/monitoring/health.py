"""One page per automation in Dagster's UI: the asset `automations/<name>`.

Its asset check `healthy` says whether the automation is healthy, late, stalled, failing, stopped
by its circuit breaker or paused, with the sentence that names the cause and what to do. The
watchdog sensor sets it on every tick from the evaluation its alerts come from (see
`watchdog.Watch`); *Execute* on the check in the UI evaluates it at once the same way. Every run
of the automation records its numbers on the same asset (`reliability.numbers`), which the
*Overview → Metadata → Plots* draw: latency from trigger to result, items, items quarantined
and dead-lettered.
"""

import time
from collections.abc import Iterable, Iterator, Mapping

import dagster as dg

from automation_pipelines.monitoring import watchdog
from automation_pipelines.reliability.automation import runbook_links
from automation_pipelines.reliability.health import HEALTH_CHECK, Health, check_evaluation
from automation_pipelines.reliability.identity import job_automation, job_owner
from automation_pipelines.reliability.numbers import automation_key
from automation_pipelines.reliability.tags import AUTOMATION_TAG

GROUP_CHECK_NAME = "automation_health"


def automations_of(definitions: Iterable[dg.Definitions]) -> dict[str, str]:
    """Every automation that has a job in `definitions`, with its owner."""
    found: dict[str, str] = {}
    for defs in definitions:
        for job in defs.jobs or ():
            automation = job_automation(job)
            if automation:
                found.setdefault(automation, job_owner(job) or "")
    return dict(sorted(found.items()))


def automation_asset(name: str, owner: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        automation_key(name),
        group_name=name,
        owners=[owner] if owner else [],
        tags={AUTOMATION_TAG: name},
        description=f"Automation {name}: its health (the check `{HEALTH_CHECK}`, set by "
        "watchdog_sensor every minute: healthy, late, stalled, failing, breaker open or paused, "
        "with the cause and what to do) and the numbers of each run (Overview, Metadata, Plots: "
        "latency from trigger to result, items, items quarantined and dead-lettered).",
    )


def _watchdog_first_seen(instance: dg.DagsterInstance) -> dict[str, float]:
    """When the watchdog began watching each job and trigger (its cursor), so that the check
    run by hand judges as its last tick did."""
    return dict(watchdog.sensor_cursor(instance).get("first_seen", {}))


def evaluate_now(
    instance: dg.DagsterInstance, repository: dg.RepositoryDefinition, automations: Iterable[str]
) -> list[dg.AssetCheckResult]:
    """The check `healthy` of each of `automations`, evaluated now as the watchdog's tick does
    (from its cursor's first sightings)."""
    seen = watchdog.watch(instance, repository, _watchdog_first_seen(instance), time.time())
    links = runbook_links(repository)
    healths = {h.automation: h for h in seen.health()}
    results = []
    for name in automations:
        health = healths.get(name) or Health(
            name, "late", f"The watchdog sees no job or trigger of {name}.", "see the runbook"
        )
        evaluation = check_evaluation(health, links)
        results.append(
            dg.AssetCheckResult(
                asset_key=evaluation.asset_key,
                check_name=HEALTH_CHECK,
                passed=evaluation.passed,
                severity=evaluation.severity,
                description=evaluation.description,
                metadata=evaluation.metadata,
            )
        )
    return results


def health_checks(automations: Mapping[str, str]) -> dg.AssetChecksDefinition:
    """The check `healthy` of every automation's asset; executed by hand it evaluates now."""

    @dg.multi_asset_check(
        name=GROUP_CHECK_NAME,
        specs=[
            dg.AssetCheckSpec(
                HEALTH_CHECK,
                asset=automation_key(name),
                description=f"Is {name} healthy? Set by watchdog_sensor from the evaluation "
                "its alerts come from; red or yellow with the cause and what to do.",
            )
            for name in automations
        ],
        description="Every automation's health, evaluated now as watchdog_sensor does.",
    )
    def automation_health(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        yield from evaluate_now(context.instance, context.repository_def, automations)

    return automation_health


def definitions(loaded: Iterable[dg.Definitions]) -> dg.Definitions:
    """The asset of every automation of `loaded`, with its health check."""
    automations = automations_of(loaded)
    return dg.Definitions(
        assets=[automation_asset(name, owner) for name, owner in automations.items()],
        asset_checks=[health_checks(automations)],
    )

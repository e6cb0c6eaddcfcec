"""Each automation's health in one word, its reason and what to do: what the UI shows as the
asset check `healthy` on the automation's asset (`automations/<name>`).

The state is derived from what the watchdog already evaluated — its findings, the pause switch
and circuit breaker it read, the runs it counted — never from a second look at the instance, so
the UI and the alerts cannot disagree. `health_of` is pure; `report_health` records the states
that changed as runless asset check evaluations (green when healthy, yellow or red otherwise).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from automation_pipelines.reliability.breaker import SwitchState
from automation_pipelines.reliability.conditions import Finding
from automation_pipelines.reliability.numbers import automation_key

#: The asset check on `automations/<name>` that holds the automation's health.
HEALTH_CHECK = "healthy"
#: States from the worst to act on first to healthy; an automation shows the first that applies.
STATES = ("paused", "breaker_open", "failing", "stalled", "late", "healthy")
#: The state each kind of watchdog finding puts its automation in.
STATE_OF_KIND = {
    "trigger_erroring": "failing",
    "too_many_runs": "failing",
    "trigger_stopped": "stalled",
    "trigger_stalled": "stalled",
    "missed_tick": "late",
    "no_success": "late",
}
#: Red in the UI; the other unhealthy states are yellow (a pause is on purpose, late may pass).
ERROR_STATES = frozenset({"breaker_open", "failing", "stalled"})
#: A state reported unchanged is reported again after this long, so its time stays recent.
REFRESH_SECONDS = 3600.0


@dataclass(frozen=True)
class Health:
    """One automation's state, the sentence that names its cause, and what to do about it."""

    automation: str
    state: str
    sentence: str
    to_act: str
    kinds: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.state == "healthy"

    @property
    def severity(self) -> dg.AssetCheckSeverity:
        if self.state in ERROR_STATES:
            return dg.AssetCheckSeverity.ERROR
        return dg.AssetCheckSeverity.WARN

    @property
    def label(self) -> str:
        return self.state.replace("_", " ")

    def signature(self) -> str:
        """What makes a new report worth it: the state and its causes, not the minutes counted
        in a sentence."""
        return "|".join([self.state, *self.kinds, self.to_act])


def _trigger_of(subject: str) -> str:
    return subject.split(":", 1)[1] if ":" in subject else subject


def _to_act(automation: str, finding: Finding) -> str:
    name = _trigger_of(finding.subject)
    return {
        "trigger_stopped": f"turn {name} on in the UI (Automation), or pause {automation} on "
        f"purpose: `automation-pipelines pause {automation} --reason …`",
        "trigger_stalled": "`automation-pipelines watchdog` (are the daemon's heartbeats "
        "recent?), then Deployment → Daemons in the UI",
        "missed_tick": "`automation-pipelines watchdog` (are the daemon's heartbeats recent?), "
        "then Deployment → Daemons in the UI",
        "trigger_erroring": f"read the tick errors of {name} in the UI (Automation → {name})",
        "no_success": f"read its latest runs (Runs, tag automation={automation}) and its runbook",
        "too_many_runs": f"`automation-pipelines pause {automation} --reason …`, then fix the "
        "trigger's cursor or run keys",
    }.get(finding.kind, "see the runbook")


def health_of(
    automations: Iterable[str],
    findings: Sequence[Finding],
    switches: Mapping[str, SwitchState],
    failing: Mapping[str, str],
) -> list[Health]:
    """Each automation's health from one watchdog evaluation: its open switch (paused, or
    stopped by the breaker), else its runs failing in a row (`failing`: the sentence per
    automation), else its worst finding, else healthy."""
    by_automation: dict[str, list[Finding]] = {}
    for finding in findings:
        if finding.automation:
            by_automation.setdefault(finding.automation, []).append(finding)
    healths = []
    for name in sorted(set(automations) | set(by_automation) | set(switches)):
        switch = switches.get(name)
        resume = f"`automation-pipelines resume {name}`"
        if switch is not None and switch.open:
            if switch.status == "paused":
                healths.append(Health(name, "paused", f"Paused: {switch.explain()}.", resume))
            else:
                healths.append(
                    Health(
                        name,
                        "breaker_open",
                        f"Circuit breaker open: {switch.explain()}.",
                        f"fix the cause (its runbook), then {resume}",
                    )
                )
            continue
        found = by_automation.get(name, [])
        kinds = tuple(sorted({f.kind for f in found}))
        if name in failing:
            also = "; ".join(f.sentence for f in found)
            sentence = failing[name] + (f" Also: {also}" if also else "")
            to_act = f"read the failed runs (Runs, tag automation={name}) and its runbook"
            healths.append(Health(name, "failing", sentence, to_act, kinds))
            continue
        if found:
            rank = {state: i for i, state in enumerate(STATES)}
            worst = min(found, key=lambda f: rank[STATE_OF_KIND.get(f.kind, "late")])
            state = STATE_OF_KIND.get(worst.kind, "late")
            others = [f.sentence for f in found if f is not worst]
            sentence = worst.sentence + (f" Also: {'; '.join(others)}" if others else "")
            healths.append(Health(name, state, sentence, _to_act(name, worst), kinds))
            continue
        healths.append(
            Health(
                name,
                "healthy",
                "Healthy: its triggers tick, its runs succeed within what it declared, and it "
                "is neither paused nor stopped by its breaker.",
                "nothing",
            )
        )
    return healths


def check_evaluation(
    health: Health, runbooks: Mapping[str, str] | None = None
) -> dg.AssetCheckEvaluation:
    """The health as the asset check `healthy` of `automations/<name>` shows it."""
    metadata: dict[str, dg.MetadataValue] = {
        "state": dg.MetadataValue.text(health.label),
        "finding": dg.MetadataValue.text(health.sentence),
        "to_act": dg.MetadataValue.text(health.to_act),
    }
    runbook = (runbooks or {}).get(health.automation)
    if runbook:
        metadata["runbook"] = dg.MetadataValue.url(runbook)
    return dg.AssetCheckEvaluation(
        asset_key=automation_key(health.automation),
        check_name=HEALTH_CHECK,
        passed=health.passed,
        severity=health.severity,
        description=f"{health.label.upper()}: {health.sentence} To act: {health.to_act}",
        metadata=metadata,
    )


def report_health(
    instance: dg.DagsterInstance,
    healths: Sequence[Health],
    reported: Mapping[str, Sequence] | None,
    now: float,
    runbooks: Mapping[str, str] | None = None,
) -> dict[str, list]:
    """Record each health whose state or cause changed since `reported` (or that was last
    reported over an hour ago) as a runless check evaluation; return what is reported now, for
    the next call (the watchdog keeps it in its cursor). A health the UI does not show at the
    moment is recorded whatever `reported` says: someone else (the watchdog run from cron, while
    the daemon was down) recorded another since. With `reported` None, the UI's latest
    evaluation alone decides."""
    current: dict[str, list] = {}
    for health in healths:
        digest = hashlib.sha1(health.signature().encode()).hexdigest()[:12]
        if reported is None:
            shown_at = _shown_at(instance, health)
            before = None if shown_at is None else [digest, shown_at]
        else:
            before = reported.get(health.automation)
        if (
            before
            and before[0] == digest
            and now - float(before[1]) < REFRESH_SECONDS
            # The instance is asked only when the cursor says nothing changed.
            and (reported is None or _shown_at(instance, health) is not None)
        ):
            current[health.automation] = list(before)
            continue
        instance.report_runless_asset_event(check_evaluation(health, runbooks))
        current[health.automation] = [digest, now]
    return current


def _shown_at(instance: dg.DagsterInstance, health: Health) -> float | None:
    """When the UI's latest evaluation of the automation's health was recorded, if it shows
    this state and this way to act; else None."""
    key = dg.AssetCheckKey(automation_key(health.automation), HEALTH_CHECK)
    record = instance.get_latest_asset_check_evaluation_record(key)
    event = record.event if record else None
    evaluation = event.dagster_event.event_specific_data if event and event.dagster_event else None
    metadata = getattr(evaluation, "metadata", None) or {}
    shown = {name: getattr(metadata.get(name), "value", None) for name in ("state", "to_act")}
    if event is None or shown != {"state": health.label, "to_act": health.to_act}:
        return None
    return event.timestamp


def unwatched(automations: Iterable[str], finding: Finding) -> list[Health]:
    """Each automation's health while the part that evaluates it is down (`finding`, of the
    watchdog run from outside Dagster): a dead daemon runs nothing (stalled); a silent watchdog
    sensor leaves the health it set before standing, which may no longer be true (late)."""
    if finding.kind == "daemon_down":
        state, lead = "stalled", "Nothing of it runs"
        to_act = (
            "restart the Dagster daemon (`make run`, or the dagster-daemon service); "
            "`automation-pipelines watchdog` says when it is back"
        )
    else:
        state, lead = "late", "Its health here is not current"
        to_act = (
            "turn watchdog_sensor on in the UI (Automation), or read its tick errors; "
            "`automation-pipelines watchdog` says when it ticks again"
        )
    return [
        Health(name, state, f"{lead}: {finding.sentence}", to_act, (finding.kind,))
        for name in sorted(set(automations))
    ]

"""Stale assets alert their owner: open-source Dagster shows an asset's FreshnessPolicy in the UI
but tells nobody when it fails.

A time-window policy fails when the last materialization is older than its fail window; a cron
policy fails when the asset was not materialized in the window before the latest deadline. An
asset never materialized gets a grace period from when this sensor first saw it (kept in the
cursor), so a fresh deployment does not alert at once. `observe_freshness` reads the instance;
`evaluate_freshness` is pure, so every case is tested with time moved forward.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote
from zoneinfo import ZoneInfo

import dagster as dg
from croniter import croniter

from automation_pipelines.monitoring.watchdog import MONITORING_OWNER
from automation_pipelines.reliability import breaker
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.automation import finding_runbook, runbook_links, unguarded
from automation_pipelines.reliability.conditions import Finding, report_findings
from automation_pipelines.reliability.identity import job_automation, job_owner
from automation_pipelines.reliability.tags import AUTOMATION_TAG

FRESHNESS_SENSOR = "freshness_alert_sensor"
STALE_KIND = "stale_asset"


@dataclass(frozen=True)
class AssetFreshnessView:
    """What the freshness sensor knows of one asset with a freshness policy."""

    key: str  # as the UI writes it: path parts joined by "/"
    policy: dg.FreshnessPolicy
    last_materialized_at: float | None
    owner: str
    automation: str | None
    first_seen: float
    paused: bool = False

    @property
    def subject(self) -> str:
        return f"asset:{self.key}"


def _now() -> float:
    return time.time()


def _zone_label(timezone: str) -> str:
    return "UTC" if timezone in ("UTC", "Etc/UTC") else timezone


def _at(timestamp: float, timezone: str = "UTC", fmt: str = "%Y-%m-%d %H:%M") -> str:
    local = datetime.fromtimestamp(timestamp, tz=ZoneInfo(timezone))
    return f"{local.strftime(fmt)} {_zone_label(timezone)}"


def _span(seconds: float) -> str:
    """A duration as people say it: minutes below an hour, days from two days on."""
    if seconds < 3600:
        return f"{round(seconds / 60, 1):g} min"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600, 1):g} h"
    return f"{round(seconds / 86400, 1):g} d"


def last_deadline(cron: str, timezone: str, now: float) -> float:
    """The latest tick of `cron` (in `timezone`) at or before `now`."""
    zone = ZoneInfo(timezone)
    tick = croniter(cron, datetime.fromtimestamp(now, tz=zone)).get_prev(datetime)
    following = croniter(cron, tick).get_next(datetime)
    return following.timestamp() if following.timestamp() <= now else tick.timestamp()


def _time_window_sentence(asset: AssetFreshnessView, now: float) -> str | None:
    window = asset.policy.fail_window.to_timedelta().total_seconds()
    allows = f"its freshness policy allows {_span(window)}"
    last = asset.last_materialized_at
    if last is None:
        if now - asset.first_seen < window:
            return None
        return (
            f"{asset.key} has not been materialized in the {_span(now - asset.first_seen)} since "
            f"this sensor first saw it ({_at(asset.first_seen)}); {allows}."
        )
    if now - last < window:  # Dagster's UI calls an age equal to the window failing, too
        return None
    return f"{asset.key} last materialized {_span(now - last)} ago ({_at(last)}); {allows}."


def _cron_sentence(asset: AssetFreshnessView, now: float) -> str | None:
    policy = asset.policy
    deadline = last_deadline(policy.deadline_cron, policy.timezone, now)
    start = deadline - policy.lower_bound_delta.total_seconds()
    last = asset.last_materialized_at
    if last is not None and last >= start:
        return None
    if last is None and start < asset.first_seen:
        return None  # not yet known for a whole window: give it until the next deadline
    same_day = _at(start, policy.timezone, "%Y-%m-%d") == _at(deadline, policy.timezone, "%Y-%m-%d")
    deadline_text = _at(deadline, policy.timezone, "%H:%M" if same_day else "%Y-%m-%d %H:%M")
    previous = (
        f"last materialized {_at(last, policy.timezone)}"
        if last is not None
        else f"never materialized since this sensor first saw it at {_at(asset.first_seen)}"
    )
    return (
        f"{asset.key} was not materialized between {_at(start, policy.timezone)} and the "
        f"{deadline_text} deadline ({previous})."
    )


def stale_sentence(asset: AssetFreshnessView, now: float) -> str | None:
    """Why `asset` fails its policy at `now`, or None while it passes (or the policy is one this
    sensor does not know)."""
    if hasattr(asset.policy, "fail_window"):
        return _time_window_sentence(asset, now)
    if hasattr(asset.policy, "deadline_cron"):
        return _cron_sentence(asset, now)
    return None


def evaluate_freshness(assets: Sequence[AssetFreshnessView], now: float) -> list[Finding]:
    """One finding per stale asset at time `now`; assets of paused automations are left alone."""
    findings = []
    for asset in assets:
        sentence = None if asset.paused else stale_sentence(asset, now)
        if sentence:
            findings.append(
                Finding(asset.subject, STALE_KIND, asset.owner, asset.automation, sentence)
            )
    return findings


def asset_url(ui_base_url: str, key: str) -> str:
    """The asset's page in the Dagster UI."""
    return f"{ui_base_url.rstrip('/')}/assets/" + "/".join(quote(p) for p in key.split("/"))


def observe_freshness(
    instance: dg.DagsterInstance,
    repository: dg.RepositoryDefinition,
    first_seen: dict[str, float],
    now: float,
) -> list[AssetFreshnessView]:
    """A view of every asset with a freshness policy, owned by its first owner, else by the owner
    of its automation's jobs, else by monitoring. `first_seen` (updated here, and pruned of assets
    that no longer have a policy) remembers when each was first watched."""
    graph = repository.asset_graph
    open_switches = {
        s.automation for s in breaker.all_states(breaker.engine_for(instance)) if s.open
    }
    automation_owners: dict[str, str] = {}
    for job in repository.get_all_jobs():
        automation, owner = job_automation(job), job_owner(job)
        if automation and owner:
            automation_owners.setdefault(automation, owner)

    views = []
    for asset_key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(asset_key)
        policy = node.freshness_policy_or_from_metadata
        if policy is None:
            continue
        key = asset_key.to_user_string()
        tags = dict(node.tags or {})
        automation = tags.get(AUTOMATION_TAG)
        owners = [*(node.owners or ()), automation_owners.get(automation or ""), MONITORING_OWNER]
        event = instance.get_latest_materialization_event(asset_key)
        views.append(
            AssetFreshnessView(
                key=key,
                policy=policy,
                last_materialized_at=event.timestamp if event else None,
                owner=next(owner for owner in owners if owner),
                automation=automation,
                first_seen=first_seen.setdefault(key, now),
                paused=automation in open_switches,
            )
        )
    for gone in set(first_seen) - {view.key for view in views}:
        del first_seen[gone]
    return views


def report_stale(
    outbox,
    findings: Sequence[Finding],
    ui_base_url: str,
    held_subjects: Iterable[str] = (),
    runbooks: Mapping[str, str] | None = None,
) -> int:
    """Open an incident per newly stale asset (with a link to it and to its automation's
    runbook) and close those that are fresh again with a recovery notice; `held_subjects`
    (paused) stay as they are. Return how many alerts were opened."""
    runbook = finding_runbook(runbooks or {})
    return report_findings(
        outbox,
        findings,
        kinds={STALE_KIND},
        held_subjects=held_subjects,
        details=lambda f: [
            f"Asset: {asset_url(ui_base_url, f.subject.removeprefix('asset:'))}",
            *runbook(f),
        ],
    )


@dg.sensor(
    name=FRESHNESS_SENSOR,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    metadata=unguarded(
        "it watches the assets of every automation and holds the alerts of a paused one itself; "
        "one automation's switch must not hide the stale assets of the others"
    ),
    description=(
        "Checks every asset that has a FreshnessPolicy (time window or cron deadline) against "
        "its latest materialization, and alerts the asset's owner once when it goes stale, with "
        "a recovery notice when it is fresh again. Open-source Dagster shows freshness in the UI "
        "but alerts nobody."
    ),
)
def freshness_alert_sensor(context: dg.SensorEvaluationContext, alerts: AlertRouter):
    cursor = json.loads(context.cursor) if context.cursor else {}
    first_seen: dict[str, float] = cursor.get("first_seen", {})
    now = _now()
    assets = observe_freshness(context.instance, context.repository_def, first_seen, now)
    findings = evaluate_freshness(assets, now)
    outbox = alerts.outbox(context.instance)
    paused = [asset.subject for asset in assets if asset.paused]
    links = runbook_links(context.repository_def)
    opened = report_stale(outbox, findings, alerts.ui_base_url, paused, links)
    context.update_cursor(json.dumps({"first_seen": first_seen}))
    summary = "; ".join(f.sentence for f in findings[:3])
    return dg.SkipReason(
        f"{len(assets)} asset(s) with freshness policies; {len(findings)} stale, {opened} new"
        + (f": {summary}" if summary else "")
    )

"""`automation-pipelines watchdog`: the check that runs outside Dagster (cron, a systemd timer).

A watchdog that needs the daemon to deliver its alert is not a watchdog. This one reads the
instance itself, records each finding in the outbox (so the daemon, once back, does not send it
again) and delivers it at once through apprise, shows it as every automation's health in the UI
(the watchdog sensor, dead with the daemon, would leave there what it last set), pings the
dead-man's switch (`/fail` with the findings as the body), and sends a recovery notice when the
daemon is back. When the instance cannot be read at all (PostgreSQL down, settings missing) it
alerts straight through apprise, once per outage, with a marker file in the instance home
standing in for the outbox.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from automation_pipelines.instance import home_path, instance_home
from automation_pipelines.monitoring.watchdog import (
    MONITORING_OWNER,
    OUTSIDE_KINDS,
    automations_in_ui,
    check_from_outside,
    report,
)
from automation_pipelines.reliability import store
from automation_pipelines.reliability.alerts import AlertRouter, DeliveryReport, Outbox
from automation_pipelines.reliability.conditions import Finding
from automation_pipelines.reliability.health import report_health, unwatched
from automation_pipelines.reliability.routes import send_apprise
from automation_pipelines.reliability.secrets import redact
from automation_pipelines.settings import ConfigurationError

UNREACHABLE = "instance_unreachable"
#: Marks an outage already alerted while the outbox itself could not be reached.
MARKER = ".watchdog_unreachable.json"
#: A reminder while the instance stays unreadable, like the outbox's fold window.
REMIND_AFTER_SECONDS = 3600.0
PING_TIMEOUT = 10


@dataclass
class Outcome:
    """What one check found and did, for the command to print; `healthy` sets the exit code."""

    findings: list[Finding] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.findings


def check(
    router: AlertRouter,
    *,
    ping_url: str | None,
    max_heartbeat_age: float,
    max_watchdog_age: float,
    now: float | None = None,
) -> Outcome:
    """Read the instance, alert on what is stale, ping the dead-man's switch."""
    now = time.time() if now is None else now
    outcome = Outcome()
    try:
        home = instance_home()
        url = store.check_reachable(home)
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            outcome.findings = check_from_outside(
                instance, now, max_heartbeat_age, max_watchdog_age
            )
            outcome.lines += show_in_ui(instance, outcome.findings, now)
        finally:
            instance.dispose()
    except Exception as error:  # unreadable for whatever reason: that is the finding
        finding = _unreachable(error)
        outcome.findings = [finding]
        outcome.lines.append(f"✗ {finding.sentence}")
        outcome.lines += _alert_directly(router, finding, now)
        outcome.lines += ping(ping_url, outcome.findings)
        return outcome
    outbox = router.outbox_at(url)
    report(outbox, outcome.findings, OUTSIDE_KINDS)
    _clear_marker(outbox, now)
    delivery = deliver_now(outbox, budget_seconds=60)
    outcome.lines += [f"✗ {finding.sentence}" for finding in outcome.findings]
    outcome.lines += [f"✗ alert not delivered: {error}" for error in delivery.errors]
    outcome.lines += ping(ping_url, outcome.findings)
    if outcome.healthy:
        outcome.lines.append("✓ daemon heartbeats and the watchdog sensor are current")
    return outcome


def show_in_ui(instance: dg.DagsterInstance, findings: Sequence[Finding], now: float) -> list[str]:
    """While the daemon, or the watchdog sensor in it, is down, the health the UI shows is what
    the sensor set before it stopped (often "healthy"): each automation's check says what is
    down instead, until the sensor's next tick sets it again. Return what went wrong, if
    anything, as lines to print; the alert goes out whatever happens here."""
    down = next((finding for finding in findings if finding.kind in OUTSIDE_KINDS), None)
    if down is None:
        return []
    try:
        report_health(instance, unwatched(automations_in_ui(instance), down), None, now)
    except Exception as error:  # the alert matters more than the UI
        return [f"✗ the UI's health could not be set: {type(error).__name__}: {error}"]
    return []


def deliver_now(outbox: Outbox, budget_seconds: float) -> DeliveryReport:
    """Deliver what is due without the daemon. Inside Dagster only alert_outbox_sensor delivers
    (runs and the other sensors queue), so no channel holds a run; this is for the few that must
    not wait for it: this watchdog (the daemon may be down), the supervisor telling that one of
    its processes died, and the operator's `alerts test` and `alerts deliver`."""
    return outbox.deliver_due(budget_seconds=budget_seconds)


def send_directly(urls: Sequence[str], title: str, body: str) -> tuple[int, list[str]]:
    """Send to these channels without the outbox, for when the store that holds it cannot be
    reached; return how many accepted and what the others said."""
    accepted, errors = 0, []
    for url in urls:
        ok, error = send_apprise(url, title, redact(body))
        accepted += ok
        if not ok:
            errors.append(error or "the channel refused it")
    return accepted, errors


def ping(url: str | None, findings: Sequence[Finding]) -> list[str]:
    """Ping a Healthchecks.io-style switch: the URL when healthy, `<url>/fail` with the findings
    as the body when not. Return what went wrong, if anything, as lines to print."""
    if not url:
        return []
    if findings:
        target = url.rstrip("/") + "/fail"
        body = "\n".join(f.sentence for f in findings).encode()
        request = urllib.request.Request(
            target, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
    else:
        target = url
        request = urllib.request.Request(target, method="GET")
    try:
        urllib.request.urlopen(request, timeout=PING_TIMEOUT).close()
    except (OSError, urllib.error.HTTPError) as error:
        return [f"✗ dead-man's switch ping to {target.split('?')[0]} failed: {error}"]
    return []


def _unreachable(error: BaseException) -> Finding:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not isinstance(error, ConfigurationError):
        reason = f"{type(error).__name__}: {reason}"
    return Finding(
        "instance",
        UNREACHABLE,
        MONITORING_OWNER,
        "monitoring",
        f"The watchdog cannot read the Dagster instance ({redact(reason)[:400]}): whether "
        "schedules, sensors and runs still move is unknown. Fix the setting or bring the "
        "database back.",
    )


def _marker() -> Path:
    return home_path() / MARKER


def _alert_directly(router: AlertRouter, finding: Finding, now: float) -> list[str]:
    """Send `finding` straight to its owner's channels, once per outage (and an hourly
    reminder), since the outbox lives in the store that cannot be reached."""
    marker = _marker()
    try:
        state = json.loads(marker.read_text())
    except (OSError, ValueError):
        state = {}
    alerted_at = float(state.get("alerted_at", 0.0))
    if alerted_at and now - alerted_at < REMIND_AFTER_SECONDS:
        return ["  (already alerted for this outage)"]
    prefix = "[STILL UNREACHABLE]" if alerted_at else "[INSTANCE UNREACHABLE]"
    title = f"{prefix} monitoring: the watchdog cannot read the Dagster instance"
    body = "\n".join(
        [
            finding.sentence,
            f"Owner: {finding.owner}",
            f"Instance home: {home_path()}",
            "Sent by `automation-pipelines watchdog` directly: the alert outbox is unreachable.",
        ]
    )
    urls = router.routes().urls(finding.owner)
    if not urls:
        names = " or ".join(router.routes().env_names(finding.owner))
        return [f"✗ alert not delivered: no alert URLs for owner {finding.owner}: set {names}"]
    accepted, errors = send_directly(urls, title, body)
    lines = [f"✗ alert not delivered: {error}" for error in errors]
    if accepted:
        first = state.get("first_at", now)
        try:
            marker.write_text(json.dumps({"alerted_at": now, "first_at": first}))
        except OSError as error:
            lines.append(f"✗ cannot remember the alert in {marker}: {error}")
    return lines


def _clear_marker(outbox, now: float) -> None:
    """The instance is readable again: one recovery notice for an outage alerted directly."""
    marker = _marker()
    try:
        state = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(state.get("first_at", now))))
    outbox.enqueue_message(
        MONITORING_OWNER,
        "[RECOVERED] monitoring: the watchdog can read the Dagster instance again",
        f"The instance was unreadable from {since} until "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(now))}.",
        dedup_key=f"{UNREACHABLE}-cleared:{state.get('first_at', now)}",
    )
    marker.unlink(missing_ok=True)

"""The monitoring layer's own jobs: the daily digest and the optional dead-man's-switch ping.

The monitoring layer is declared like any automation (owner, runbook, expectation), so the
readiness check and the watchdog hold it to the same standard.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import dagster as dg

from automation_pipelines.monitoring.digest import send_daily_digest
from automation_pipelines.monitoring.watchdog import MONITORING_NAME, MONITORING_OWNER
from automation_pipelines.reliability.automation import Automation, Expectation
from automation_pipelines.reliability.errors import NETWORK

DEADMAN_URL_ENV = "DEADMAN_PING_URL"

MONITORING = Automation(
    name=MONITORING_NAME,
    owner=MONITORING_OWNER,
    folder=Path(__file__).resolve().parent,
    expect=Expectation(success_within_hours=26),
    max_runtime_seconds=600,
)


@MONITORING.job(
    name="send_daily_digest_job",
    description="Sends each owner one message a day: runs, failures, last success, open "
    "incidents and quarantined or dead-lettered items of each of their automations.",
)
def send_daily_digest_job():
    send_daily_digest()


digest_daily_schedule = MONITORING.schedule(
    name="digest_daily_schedule",
    cron_schedule="0 7 * * *",
    job=send_daily_digest_job,
    description="Sends the daily digest at 07:00 UTC.",
)


@MONITORING.op(NETWORK)
def ping_deadman_switch() -> None:
    """Tell an outside service (Healthchecks.io style) that schedules still launch runs here."""
    url = os.environ[DEADMAN_URL_ENV]
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read(1024)


@MONITORING.job(
    name="ping_deadman_switch_job",
    description="Pings the dead-man's-switch URL, so an outside service notices when this "
    "machine, its daemon or its run launcher has stopped.",
)
def ping_deadman_switch_job():
    ping_deadman_switch()


deadman_ping_every_10_minutes_schedule = MONITORING.schedule(
    name="deadman_ping_every_10_minutes_schedule",
    cron_schedule="*/10 * * * *",
    job=ping_deadman_switch_job,
    description=f"Pings ${DEADMAN_URL_ENV} every 10 minutes (only defined when it is set).",
)


def monitoring_jobs() -> tuple[list[dg.JobDefinition], list[dg.ScheduleDefinition]]:
    """The digest always; the dead-man's-switch ping only when its URL is configured."""
    jobs, schedules = [send_daily_digest_job], [digest_daily_schedule]
    if os.environ.get(DEADMAN_URL_ENV):
        jobs.append(ping_deadman_switch_job)
        schedules.append(deadman_ping_every_10_minutes_schedule)
    return jobs, schedules

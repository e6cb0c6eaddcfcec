"""The README's cron line (`cd <deployment> && .venv/bin/automation-pipelines watchdog`, run with
`env -i` so only PATH and HOME are set) against a real daemon, on a SQLite and a PostgreSQL
deployment side by side. Everything it knows comes from the deployment's `.env`.

Healthy: exit 0, the dead-man's switch gets its ping, nobody is alerted. Daemon killed: exactly one
DAEMON DOWN alert reaches the owner's HTTP endpoint while the daemon is still dead (the command
delivers it itself), and the switch gets `/fail` with the finding as its body. Daemon back: one
recovery notice, a plain ping, and the daemon does not send the alert a second time. On the
PostgreSQL deployment, `pause` from the same empty environment pauses the deployment the daemon
runs: its sensor skips, naming the pause. The UI says what the alert says: with the daemon dead,
every automation's health reads stalled, naming the daemon; once it is back, its watchdog sensor
sets each one's own again.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.monitoring.watchdog import automations_in_ui
from automation_pipelines.reliability import store
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.health import HEALTH_CHECK
from automation_pipelines.reliability.numbers import automation_key
from automation_pipelines.reliability.processes import ProcessGroup
from automation_pipelines_tests.alert_peers import JsonReceiver
from automation_pipelines_tests.deployment import Deployment, make_deployment
from automation_pipelines_tests.e2e.harness import (
    sensor_ticks,
    wait_for,
    wait_until_heartbeats_are_older_than,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

HEARTBEAT_AGE = 40  # the daemon beats every 30 s
#: How each automation's health in the UI begins while the daemon is down.
DOWN = "Nothing of it runs: The Dagster daemon has sent no heartbeat"


class Site:
    """One deployment with its own alert endpoint and its own daemon."""

    def __init__(self, name: str, deployment: Deployment, receiver: JsonReceiver) -> None:
        self.name = name
        self.deployment = deployment
        self.receiver = receiver
        self.group = ProcessGroup()
        self.daemon = None
        self.log = deployment.root / "daemon.log"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def start_daemon(self) -> None:
        with self.log.open("ab") as handle:
            self.daemon = self.group.start(
                [str(self.deployment.bin / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                env=self.deployment.environment(),
                cwd=self.deployment.root,
                stdout=handle,
                stderr=handle,
            )

    def kill_daemon(self) -> None:
        os.killpg(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait(timeout=30)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.deployment.home))

    def ping(self) -> tuple[str, str]:
        return self.receiver.pings[-1], self.receiver.ping_bodies[-1]

    def watchdog(self) -> tuple[int, str]:
        done = self.deployment.cron("watchdog")
        return done.returncode, done.stdout + done.stderr


def heartbeats_fresh(instance: dg.DagsterInstance, since: float) -> bool:
    beats = instance.get_daemon_heartbeats()
    wanted = {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"}
    return wanted <= set(beats) and all(beats[name].timestamp > since for name in wanted)


def health_in_ui(instance: dg.DagsterInstance) -> dict[str, tuple[str, str]]:
    """(state, finding) of each automation's latest health evaluation, as the UI shows it."""
    shown = {}
    for name in automations_in_ui(instance):
        key = dg.AssetCheckKey(automation_key(name), HEALTH_CHECK)
        record = instance.get_latest_asset_check_evaluation_record(key)
        metadata = record.event.dagster_event.event_specific_data.metadata
        shown[name] = (metadata["state"].value, metadata["finding"].value)
    return shown


@pytest.mark.timeout(600)
def test_cron_watchdog_alerts_on_its_own(
    tmp_path: Path, postgres_database: dict[str, str], postgres_env, json_receiver
) -> None:
    second = JsonReceiver()
    second.start()
    sites = []
    for name, receiver in (("sqlite", json_receiver), ("postgres", second)):
        deployment = make_deployment(tmp_path / name)
        settings = {
            "ALERT_URLS": receiver.url,
            "DEADMAN_PING_URL": f"http://127.0.0.1:{receiver.port}/ping/{name}",
            "WATCHDOG_MAX_HEARTBEAT_AGE": str(HEARTBEAT_AGE),
            "WATCHDOG_INTERVAL_SECONDS": "15",  # its health in the UI comes back sooner
            "WEB_IMAGES_ROOT": str(tmp_path / name / "photos"),
            "WEBHOOK_REPORTS_DIR": str(tmp_path / name / "reports"),
            "BACKUP_DESTINATION": str(tmp_path / name / "backups"),
        }
        if name == "postgres":
            settings.update(postgres_env)
        deployment.write_env(settings)
        sites.append(Site(name, deployment, receiver))
    pg_site = sites[1]
    try:
        for site in sites:
            made = site.deployment.cron("status")  # makes the home the deployment runs on
            assert made.returncode == 0, made.stderr
            site.instance().get_daemon_heartbeats()  # storage created before the daemon opens it
            site.start_daemon()
        for site in sites:
            instance = site.instance()
            wait_for(
                f"the {site.name} watchdog sensor's first tick",
                lambda instance=instance: sensor_ticks(instance, "watchdog_sensor"),
                180,
                site.logs,
            )
            instance.dispose()

        for site in sites:
            code, out = site.watchdog()
            assert code == 0, out
            assert "✓ daemon heartbeats and the watchdog sensor are current" in out
            assert site.ping() == (f"/ping/{site.name}", "")
            assert site.receiver.received == []

        for site in sites:
            site.kill_daemon()
        for site in sites:
            instance = site.instance()
            try:
                wait_until_heartbeats_are_older_than(
                    HEARTBEAT_AGE,
                    lambda instance=instance: {
                        daemon: beat.timestamp
                        for daemon, beat in instance.get_daemon_heartbeats().items()
                    },
                    site.logs,
                )
            finally:
                instance.dispose()

        for site in sites:
            code, out = site.watchdog()
            assert code == 1, out
            titles = site.receiver.titles()
            assert len(titles) == 1, titles
            assert titles[0].startswith("[DAEMON DOWN] monitoring: The Dagster daemon"), titles
            path, body = site.ping()
            assert path == f"/ping/{site.name}/fail"
            assert f"has sent no heartbeat for over {HEARTBEAT_AGE} s" in body
            again, _ = site.watchdog()
            assert again == 1 and len(site.receiver.received) == 1  # one incident, one alert
            instance = site.instance()
            shown = health_in_ui(instance)
            instance.dispose()
            assert {"web_images", "webhook_events", "backups"} <= set(shown), shown
            for state, finding in shown.values():
                assert state == "stalled", shown
                assert finding.startswith(DOWN), shown

        # `pause` from the same empty environment acts on the PostgreSQL deployment.
        paused = pg_site.deployment.cron("pause", "web_images", "--reason", "cron-test")
        assert paused.returncode == 0, paused.stderr

        restarted = time.time()
        for site in sites:
            site.start_daemon()
        for site in sites:
            instance = site.instance()
            wait_for(
                f"{site.name} heartbeats after the restart",
                lambda instance=instance: heartbeats_fresh(instance, restarted),
                120,
                site.logs,
            )
            instance.dispose()
        pg_instance = pg_site.instance()
        wait_for(
            "the photo sensor skipping because of the pause",
            lambda: any(
                "paused" in (t.skip_reason or "") and t.timestamp > restarted
                for t in sensor_ticks(pg_instance, "photo_inbox_sensor")
            ),
            90,
            pg_site.logs,
        )
        pg_instance.dispose()
        for site in sites:
            instance = site.instance()
            wait_for(
                f"the {site.name} watchdog sensor setting each automation's own health again",
                lambda instance=instance: (
                    not any(
                        finding.startswith(DOWN) for _, finding in health_in_ui(instance).values()
                    )
                ),
                150,
                site.logs,
            )
            shown = health_in_ui(instance)
            instance.dispose()
            if site is pg_site:
                assert shown["web_images"][0] == "paused", shown

        for site in sites:
            code, out = site.watchdog()
            assert code == 0, out
            titles = site.receiver.titles()
            assert len(titles) == 2 and titles[1].startswith("[RECOVERED] monitoring"), titles
            assert site.ping() == (f"/ping/{site.name}", "")
            # Recorded as delivered in the outbox: the daemon's outbox sensor has nothing to send.
            outbox = AlertRouter().outbox_at(store.database_url(site.deployment.home))
            assert [(a.title[:13], a.status) for a in outbox.alerts()] == [
                ("[DAEMON DOWN]", "delivered"),
                ("[RECOVERED] m", "delivered"),
            ]
        store.dispose_all()
    finally:
        for site in sites:
            site.group.stop()
        second.stop()

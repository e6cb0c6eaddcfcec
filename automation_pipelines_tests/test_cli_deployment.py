"""Commands run as cron runs them (`env -i`, only PATH and HOME, `cd` into a deployment) act on the
instance the deployment's `.env` configures: a PostgreSQL deployment is paused in PostgreSQL, not
in a new SQLite file; with PostgreSQL down every command exits non-zero naming the setting, and
the watchdog still alerts and pings the dead-man's switch; ports come from `.env`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg2
import pytest

from automation_pipelines.local_stack import free_port
from automation_pipelines.reliability import store
from automation_pipelines_tests.deployment import CRON_PATH, Deployment, make_deployment
from automation_pipelines_tests.e2e.harness import http_ok, wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return make_deployment(tmp_path / "deployment")


def pg_settings(db: dict[str, str], **override: str) -> dict[str, str]:
    return {
        "DAGSTER_PG_HOST": db["host"],
        "DAGSTER_PG_PORT": db["port"],
        "DAGSTER_PG_DB": db["dbname"],
        "DAGSTER_PG_USERNAME": db["user"],
        "DAGSTER_PG_PASSWORD": db["password"],
        **override,
    }


def test_cron_commands_act_on_the_postgres_instance(deployment, postgres_database) -> None:
    deployment.write_env(pg_settings(postgres_database))

    paused = deployment.cron("pause", "web_images", "--reason", "'disk swap'")
    assert paused.returncode == 0, paused.stderr
    with psycopg2.connect(connect_timeout=3, **postgres_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT automation, status, reason FROM ap_automation_state")
        assert cur.fetchall() == [("web_images", "paused", "disk swap")]

    status = deployment.cron("status")
    assert status.returncode == 0, status.stderr
    assert "web_images: automation web_images is paused" in status.stdout
    assert "webhook_events: active" in status.stdout
    events = deployment.cron("events", "status")
    assert (events.returncode, events.stdout.strip()) == (0, "The inbox is empty.")
    alerts = deployment.cron("alerts", "pending")
    assert (alerts.returncode, alerts.stdout.strip()) == (0, "0 alert(s) waiting for delivery")
    resumed = deployment.cron("resume", "web_images")
    assert resumed.returncode == 0 and "it was paused" in resumed.stdout

    # The home links the PostgreSQL config and holds no SQLite project database.
    assert (deployment.home / "dagster.yaml").resolve().parts[-3:] == (
        "deploy",
        "postgres",
        "dagster.yaml",
    )
    assert not (deployment.home / store.DB_FILE).exists()


@pytest.mark.parametrize(
    "command",
    [
        ("pause", "web_images"),
        ("resume", "web_images"),
        ("status",),
        ("alerts", "pending"),
        ("alerts", "deliver"),
        ("events", "status"),
        ("events", "dead"),
        ("events", "replay", "--all"),
    ],
)
def test_postgres_down_fails_naming_the_setting(deployment, postgres_server, command) -> None:
    deployment.write_env(pg_settings({**postgres_server, "port": str(free_port())}))

    done = deployment.cron(*command)

    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot reach the project database" in done.stderr
    assert "DAGSTER_PG_HOST, DAGSTER_PG_PORT" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (deployment.home / store.DB_FILE).exists()


def test_missing_postgres_setting_is_named(deployment, postgres_server) -> None:
    settings = pg_settings({**postgres_server, "dbname": "x"})
    del settings["DAGSTER_PG_USERNAME"]
    deployment.write_env(settings)

    done = deployment.cron("status")

    assert done.returncode == 2
    assert "DAGSTER_PG_USERNAME is not set" in done.stderr
    assert not (deployment.home / store.DB_FILE).exists()


def test_watchdog_alerts_and_pings_while_postgres_is_down(
    deployment, postgres_database, json_receiver
) -> None:
    reachable = pg_settings(postgres_database)
    alerting = {
        "ALERT_URLS": json_receiver.url,
        "DEADMAN_PING_URL": f"http://127.0.0.1:{json_receiver.port}/ping/abc",
    }
    deployment.write_env({**reachable, "DAGSTER_PG_PORT": str(free_port()), **alerting})

    first = deployment.cron("watchdog")
    second = deployment.cron("watchdog")

    assert first.returncode == 1 and second.returncode == 1, first.stdout + first.stderr
    assert "cannot read the Dagster instance" in first.stdout
    assert json_receiver.titles() == [
        "[INSTANCE UNREACHABLE] monitoring: the watchdog cannot read the Dagster instance"
    ]
    assert json_receiver.pings == ["/ping/abc/fail", "/ping/abc/fail"]
    assert "cannot reach the project database" in json_receiver.ping_bodies[0]

    deployment.write_env({**reachable, **alerting})
    back = deployment.cron("watchdog")

    assert back.returncode == 1  # readable again, but no daemon has ever run here
    titles = json_receiver.titles()
    assert any(t.startswith("[RECOVERED] monitoring: the watchdog can read") for t in titles)
    assert any(t.startswith("[DAEMON DOWN]") for t in titles)
    assert len(titles) == 3


def test_a_watchdog_age_its_own_interval_can_exceed_is_refused(deployment, json_receiver) -> None:
    """A sensor that looks every 10 minutes is not silent when its last tick is 10 minutes
    old: the command refuses those settings, naming both, and alerts nobody."""
    alerting = {"ALERT_URLS": json_receiver.url}
    deployment.write_env({**alerting, "WATCHDOG_INTERVAL_SECONDS": "600"})

    refused = deployment.cron("watchdog")

    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "looks every 600 s (WATCHDOG_INTERVAL_SECONDS)" in refused.stderr
    assert "WATCHDOG_MAX_SENSOR_AGE" in refused.stderr and "at least 1200 s" in refused.stderr
    assert json_receiver.received == []

    deployment.write_env(
        {**alerting, "WATCHDOG_INTERVAL_SECONDS": "600", "WATCHDOG_MAX_SENSOR_AGE": "1200"}
    )
    taken = deployment.cron("watchdog")

    assert taken.returncode == 1, taken.stdout + taken.stderr  # no daemon has run here
    assert "WATCHDOG_INTERVAL_SECONDS" not in taken.stderr
    assert any(t.startswith("[DAEMON DOWN]") for t in json_receiver.titles())


def test_ports_come_from_the_env_file(deployment, tmp_path: Path) -> None:
    port = free_port()
    deployment.write_env({"WEBHOOKS_PORT": str(port)})
    log = (tmp_path / "serve.log").open("wb")
    command = f"cd {deployment.root} && exec .venv/bin/automation-pipelines webhooks serve"
    server = subprocess.Popen(
        ["env", "-i", f"PATH={CRON_PATH}", f"HOME={deployment.root}", "sh", "-c", command],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            "the receiver on WEBHOOKS_PORT",
            lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
            60,
            lambda: (tmp_path / "serve.log").read_text(errors="replace"),
        )
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()

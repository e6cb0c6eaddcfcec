"""The production topology (`automation-pipelines prod`, what `make run-prod` starts) on a real
PostgreSQL: a gRPC code server, the webserver and daemon reading it, and the webhook receiver.

A signed webhook event reaches the warehouse, a dropped photo becomes web images, and a failed
run alerts a loopback HTTP server. Then every process is stopped and started again: run history,
sensor cursors and a webhook event still pending in the inbox all survive, nothing is alerted or
processed twice, and the pending event loads once the automation is resumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import psutil
import pytest
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events.warehouse import events_table
from automation_pipelines.demo import post_github
from automation_pipelines.local_stack import free_port
from automation_pipelines.reliability import store
from automation_pipelines.reliability.processes import ProcessGroup
from automation_pipelines.webhooks import inbox
from automation_pipelines_tests.automations.web_images.photos import photo
from automation_pipelines_tests.automations.webhook_events.events import push
from automation_pipelines_tests.e2e.harness import graphql, http_get, venv_script, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SECRET = "prod-e2e-github-secret"
WATCHED_SENSORS = ("webhook_inbox_sensor", "photo_inbox_sensor", "run_failure_alert_sensor")


class Topology:
    """`automation-pipelines prod` in its own process group, logging to a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.ports = [free_port() for _ in range(3)]
        self.ui = f"http://127.0.0.1:{self.ports[0]}"
        self.webhooks = f"http://127.0.0.1:{self.ports[1]}"
        self.group = ProcessGroup()
        self.process: subprocess.Popen | None = None
        self.log = tmp_path / "prod.log"
        self.starts = 0

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def start(self) -> None:
        self.starts += 1
        argv = [venv_script("automation-pipelines"), "prod", "--port", str(self.ports[0])]
        argv += ["--webhooks-port", str(self.ports[1]), "--code-server-port", str(self.ports[2])]
        with self.log.open("ab") as handle:
            handle.write(f"\n=== start {self.starts}\n".encode())
            self.process = self.group.start(
                argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT
            )
        wait_for(
            "the UI", lambda: (http_get(f"{self.ui}/server_info") or (0,))[0] == 200, 180, self.logs
        )
        wait_for(
            "the webhook receiver",
            lambda: (http_get(f"{self.webhooks}/healthz") or (0,))[0] == 200,
            120,
            self.logs,
        )
        wait_for("every daemon healthy", self.daemons_healthy, 120, self.logs)

    def daemons_healthy(self) -> bool:
        try:
            health = graphql(
                self.ui, "{ instance { daemonHealth { allDaemonStatuses { healthy } } } }"
            )
        except (urllib.error.URLError, OSError):
            return False
        statuses = health["instance"]["daemonHealth"]["allDaemonStatuses"]
        return bool(statuses) and all(s["healthy"] for s in statuses)

    def stop(self) -> None:
        """SIGTERM the supervisor; it must take every process of the topology with it."""
        members = [p for p in self.group.members() if p.pid != self.process.pid]
        os.kill(self.process.pid, signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0, self.logs()
        _, alive = psutil.wait_procs(members, timeout=10)
        assert alive == [], [p.cmdline() for p in alive]

    def cleanup(self) -> None:
        self.group.stop()


def post_push(base_url: str, delivery: str) -> int:
    return post_github(base_url, SECRET, delivery, "push", push(commits=2))


def launch(ui: str, job: str) -> str:
    mutation = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
    params = {
        "selector": {
            "repositoryLocationName": "automation_pipelines",
            "repositoryName": "__repository__",
            "jobName": job,
        }
    }
    request = urllib.request.Request(
        f"{ui}/graphql",
        data=json.dumps({"query": mutation, "variables": {"p": params}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())["data"]["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def cursors(instance: dg.DagsterInstance) -> dict[str, str | None]:
    states = {s.name: s for s in instance.all_instigator_state()}
    return {
        name: getattr(states[name].instigator_data, "cursor", None) if name in states else None
        for name in WATCHED_SENSORS
    }


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [venv_script("automation-pipelines"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(900)
def test_topology_serves_restarts_and_loses_nothing(
    postgres_env, json_receiver, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    (photos / "inbox").mkdir(parents=True)
    home = tmp_path / "prod_home"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "ALERT_URLS": json_receiver.url,
        "WEB_IMAGES_ROOT": str(photos),
        "WEBHOOK_REPORTS_DIR": str(tmp_path / "reports"),
        "BACKUP_DESTINATION": str(tmp_path / "backup-disk-not-mounted"),
        "AUTOMATION_INSTANCE_CONFIG": "",
    }
    topology = Topology(tmp_path, env)
    engine = None
    try:
        topology.start()
        engine = store.engine(store.database_url(home))  # the project database: PostgreSQL
        assert engine.url.get_backend_name() == "postgresql"
        instance = dg.DagsterInstance.from_config(str(home))
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"

        # A webhook event reaches the warehouse; a photo becomes web images.
        status = post_push(topology.webhooks, "prod-1")
        assert status == 202, (status, topology.logs())
        staged = photo(tmp_path / "staging" / "street.jpg", 1800)
        staged.rename(photos / "inbox" / "street.jpg")
        wait_for("the event in the warehouse", lambda: _loaded(engine) == 1, 180, topology.logs)
        wait_for(
            "the web images",
            lambda: all(
                any((photos / "web").glob(f"street.jpg-{w}.*.webp")) for w in (1600, 800, 400)
            ),
            240,
            topology.logs,
        )

        # A failing run (the backup disk is not mounted) alerts the owner's channel.
        failed_run = launch(topology.ui, "backup_snapshots_job")
        wait_for(
            "the failure alert",
            lambda: any("backup_snapshots_job" in t for t in json_receiver.titles()),
            180,
            topology.logs,
        )
        [alert] = [a for a in json_receiver.received if "backup_snapshots_job" in a["title"]]
        assert "backup-disk-not-mounted does not exist" in alert["message"]
        assert failed_run in alert["message"]

        # An event waits in the inbox while its automation is paused.
        cli(env, "pause", "webhook_events", "--reason", "restart test")
        assert post_push(topology.webhooks, "prod-pending") == 202
        wait_for("the first pause skip", lambda: _skipped(instance), 60, topology.logs)
        runs_before = {r.run_id for r in instance.get_runs()}
        cursors_before = cursors(instance)
        assert all(cursors_before.values()), cursors_before
        alerts_before = len(json_receiver.received)

        topology.stop()
        topology.start()

        instance = dg.DagsterInstance.from_config(str(home))
        baseline = _newest_tick(instance)
        assert runs_before <= {r.run_id for r in instance.get_runs()}
        failed = instance.get_run_by_id(failed_run)
        assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE
        wait_for(
            "a sensor tick after the restart",
            lambda: _newest_tick(instance) > baseline,
            60,
            topology.logs,
        )
        after = cursors(instance)
        assert after["webhook_inbox_sensor"] == cursors_before["webhook_inbox_sensor"]
        assert after["photo_inbox_sensor"] == cursors_before["photo_inbox_sensor"]
        assert after["run_failure_alert_sensor"] is not None
        assert _pending(engine) == 1  # the event is still waiting, not lost
        assert len(json_receiver.received) == alerts_before  # the old failure is not re-alerted
        renders = instance.get_runs(filters=dg.RunsFilter(job_name="render_web_images_job"))
        assert len(renders) == 1  # the photo was not processed again

        cli(env, "resume", "webhook_events")
        wait_for("the pending event loaded", lambda: _loaded(engine) == 2, 180, topology.logs)
        with engine.connect() as conn:
            counts = conn.execute(sa.select(events_table.c.load_count)).scalars().all()
        assert counts == [1, 1]
        topology.stop()
    finally:
        topology.cleanup()
        store.dispose_all()


def _loaded(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar()


def _pending(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(inbox.inbox_table)
            .where(inbox.inbox_table.c.status == inbox.PENDING)
        ).scalar()


def _sensor_ticks(instance: dg.DagsterInstance, name: str) -> list:
    states = {s.name: s for s in instance.all_instigator_state()}
    state = states.get(name)
    if state is None:
        return []
    return instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)


def _skipped(instance: dg.DagsterInstance) -> bool:
    return any(
        "paused" in (tick.skip_reason or "")
        for tick in _sensor_ticks(instance, "webhook_inbox_sensor")
    )


def _newest_tick(instance: dg.DagsterInstance) -> float:
    ticks = _sensor_ticks(instance, "webhook_inbox_sensor")
    return ticks[0].timestamp if ticks else 0.0

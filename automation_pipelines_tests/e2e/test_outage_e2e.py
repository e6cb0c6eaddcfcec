"""The production topology (`automation-pipelines prod`, what `make run-prod` runs) on a PostgreSQL
server the test starts and stops itself, run from a deployment folder as an operator would: only
PATH and HOME in the environment, everything else from the deployment's `.env`.

- PostgreSQL stopped for 60 s while a sender keeps posting, and the receiver SIGKILLed during
  the outage: nothing gives up; once PostgreSQL is back every process is up again within 30 s
  without a person, every event that was acknowledged (202) reaches the warehouse exactly once,
  and one outage alert and one recovery notice reach a loopback HTTP server.
- SIGKILL of each process in turn: exactly one alert per crash, and no zombie that stays in the
  process table afterwards.
- The README's cron line, run with `env -i`, alerts while the daemon is frozen (SIGSTOP).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events.warehouse import events_table
from automation_pipelines.local_stack import free_port
from automation_pipelines.reliability.processes import ProcessGroup
from automation_pipelines_tests.deployment import CRON_PATH, make_deployment
from automation_pipelines_tests.e2e.harness import (
    TOPOLOGY_PROCESSES,
    Sender,
    find_process,
    graphql,
    heartbeats_in_ui,
    http_get,
    wait_for,
    wait_until_heartbeats_are_older_than,
)
from automation_pipelines_tests.pg_server import PrivateServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SECRET = "outage-e2e-secret"
OUTAGE_SECONDS = 60
HEARTBEAT_AGE = 40
PROCESSES = TOPOLOGY_PROCESSES


def healthy(ui: str, hooks: str) -> bool:
    answer = http_get(f"{hooks}/healthz")
    if answer is None or answer[0] != 200:
        return False
    try:
        statuses = graphql(ui, "{ instance { daemonHealth { allDaemonStatuses { healthy } } } }")
        entries = graphql(
            ui, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
        )
    except (urllib.error.URLError, OSError, KeyError, TypeError):
        return False
    daemons = statuses["instance"]["daemonHealth"]["allDaemonStatuses"]
    locations = entries["workspaceOrError"]["locationEntries"]
    return (
        bool(daemons)
        and all(d["healthy"] for d in daemons)
        and [e["loadStatus"] for e in locations] == ["LOADED"]
    )


def zombies(supervisor: psutil.Process) -> set[str]:
    """Zombies the project's own processes must reap, as "pid name (parent pid)": children of
    the supervisor (its services, and the orphans it adopts as a subreaper) and of the
    receiver's parent (its forked workers). Runs keep starting and ending (a run worker is a
    zombie for the moment between its exit and its parent's wait), so what must not happen is
    a zombie that stays. A run worker of Dagster's code server is not counted: Python's
    subprocess module reaps it when that server next starts a process, which may be long after
    the last run."""
    found = set()
    for child in supervisor.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
            parent = child.ppid()
            ours = parent == supervisor.pid or "webhooks" in psutil.Process(parent).cmdline()
            if ours:
                found.add(f"{child.pid} {child.name()} (parent {parent})")
        except psutil.Error:
            continue
    return found


def titles_starting(receiver, prefix: str) -> list[str]:
    return [title for title in receiver.titles() if title.startswith(prefix)]


@pytest.mark.timeout(900)
def test_production_rides_out_an_outage_and_tells_someone(tmp_path: Path, json_receiver) -> None:
    server = PrivateServer()
    group = ProcessGroup()
    sender: Sender | None = None
    try:
        server.start()
        deployment = make_deployment(tmp_path / "deployment")
        ports = {"UI_PORT": free_port(), "WEBHOOKS_PORT": free_port()}
        deployment.write_env(
            {
                **server.settings(),
                **{name: str(port) for name, port in ports.items()},
                "CODE_SERVER_PORT": str(free_port()),
                "GITHUB_WEBHOOK_SECRET": SECRET,
                "ALERT_URLS": json_receiver.url,
                "WATCHDOG_MAX_HEARTBEAT_AGE": str(HEARTBEAT_AGE),
                "WEB_IMAGES_ROOT": str(tmp_path / "photos"),
                "WEBHOOK_REPORTS_DIR": str(tmp_path / "reports"),
                "BACKUP_DESTINATION": str(tmp_path / "backups"),
            }
        )
        ui, hooks = (
            f"http://127.0.0.1:{ports['UI_PORT']}",
            f"http://127.0.0.1:{ports['WEBHOOKS_PORT']}",
        )
        log = tmp_path / "prod.log"
        command = f"cd {deployment.root} && exec .venv/bin/automation-pipelines prod"
        with log.open("wb") as handle:
            prod = group.start(
                ["env", "-i", f"PATH={CRON_PATH}", f"HOME={deployment.root}", "sh", "-c", command],
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

        def logs() -> str:
            return log.read_text(errors="replace")[-8000:]

        wait_for("the topology", lambda: healthy(ui, hooks), 240, logs)
        supervisor = psutil.Process(prod.pid)
        sender = Sender(hooks, SECRET, "outage", interval=0.2)
        sender.start()
        time.sleep(3)

        # 1. A 60-second outage with a receiver crash in the middle of it.
        server.stop()
        time.sleep(5)
        os.kill(find_process(group, PROCESSES["webhook receiver"]).pid, signal.SIGKILL)
        time.sleep(OUTAGE_SECONDS - 5)
        assert prod.poll() is None, logs()
        assert titles_starting(json_receiver, "[GIVEN UP]") == []
        server.start()
        wait_for("every process back after the outage", lambda: healthy(ui, hooks), 30, logs)
        wait_for(
            "the recovery notice",
            lambda: titles_starting(json_receiver, "[RECOVERED] PostgreSQL"),
            60,
            logs,
        )
        assert len(titles_starting(json_receiver, "[OUTAGE] PostgreSQL")) == 1
        assert len(titles_starting(json_receiver, "[RECOVERED] PostgreSQL")) == 1
        time.sleep(3)
        sender.halt.set()
        sender.join(timeout=30)
        answers = {answer for _, answer in sender.answers}
        assert 503 in answers, answers  # during the outage: "deliver again later"

        # 2. Each process killed in turn: one alert per crash, no zombie left.
        before = len(titles_starting(json_receiver, "[RESTARTED]"))
        for name, needle in PROCESSES.items():
            victim = find_process(group, needle)
            os.kill(victim.pid, signal.SIGKILL)
            wait_for(
                f"the {name} back",
                lambda needle=needle, old=victim.pid: (
                    (found := find_process(group, needle)) is not None
                    and found.pid != old
                    and healthy(ui, hooks)
                ),
                90,
                logs,
            )
        wait_for(
            "one alert per crash",
            lambda: len(titles_starting(json_receiver, "[RESTARTED]")) >= before + 4,
            60,
            logs,
        )
        restarted = titles_starting(json_receiver, "[RESTARTED]")[before:]
        assert sorted(t.split(":")[0] for t in restarted) == sorted(
            f"[RESTARTED] {name}" for name in PROCESSES
        ), restarted
        seen = zombies(supervisor)
        wait_for(
            f"no zombie of {sorted(seen)} left",
            lambda: not (seen & zombies(supervisor)),
            60,
            logs,
        )

        # 3. Every acknowledged event reaches the warehouse exactly once.
        engine = sa.create_engine(
            f"postgresql+psycopg2://postgres@127.0.0.1:{server.port}/postgres",
            poolclass=sa.pool.NullPool,
        )

        def loaded() -> dict[str, int]:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(events_table.c.delivery_id, events_table.c.load_count)
                )
                return dict(rows.all())

        acknowledged = sender.acknowledged()
        wait_for(
            f"the {len(acknowledged)} acknowledged events in the warehouse",
            lambda: acknowledged <= set(loaded()),
            240,
            logs,
        )
        assert set(loaded().values()) == {1}

        # 4. The cron line alerts while the daemon is frozen.
        daemon = find_process(group, PROCESSES["daemon"])
        daemon.suspend()
        try:
            wait_until_heartbeats_are_older_than(HEARTBEAT_AGE, lambda: heartbeats_in_ui(ui), logs)
            done = deployment.cron("watchdog")
            assert done.returncode == 1, done.stdout + done.stderr
            assert titles_starting(json_receiver, "[DAEMON DOWN]"), json_receiver.titles()
        finally:
            daemon.resume()

        os.kill(prod.pid, signal.SIGTERM)
        assert prod.wait(timeout=30) == 0, logs()
    finally:
        if sender is not None:
            sender.halt.set()
        group.stop()
        server.remove()

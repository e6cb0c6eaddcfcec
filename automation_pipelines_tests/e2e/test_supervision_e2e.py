"""`make run` (the `dev` supervisor) when a part dies: the daemon, the webserver, the code server
and the webhook receiver are each killed with SIGKILL in turn while a sender keeps posting signed
webhooks. Every POST is answered 202 — events land in the inbox while the daemon is down, and
while the receiver itself restarts, connections wait on the socket the supervisor keeps open
instead of being refused — each killed process is back within 60 s while the others kept their
pids, the owner gets exactly one alert per restart from the supervisor itself, and every event
acknowledged reaches the warehouse exactly once. (Only the one request the receiver is handling at
the instant it is SIGKILLed may lose its connection, unanswered; its sender delivers it again.)"""

from __future__ import annotations

import os
import signal
import urllib.error
from pathlib import Path

import pytest
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events.warehouse import events_table
from automation_pipelines.local_stack import free_port
from automation_pipelines.reliability import store
from automation_pipelines.reliability.processes import ProcessGroup
from automation_pipelines_tests.e2e.harness import (
    TOPOLOGY_PROCESSES,
    Sender,
    dev_environment,
    find_process,
    graphql,
    http_ok,
    start_dev,
    wait_for,
)

pytestmark = pytest.mark.e2e

SECRET = "supervision-e2e-secret"
#: What identifies each supervised process in the process table.
VICTIMS = TOPOLOGY_PROCESSES
LOCATION = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
DAEMONS = "{ instance { daemonHealth { allDaemonStatuses { healthy required } } } }"


def healthy(ui: str) -> bool:
    try:
        entries = graphql(ui, LOCATION)["workspaceOrError"]["locationEntries"]
        statuses = graphql(ui, DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
    except (urllib.error.URLError, OSError, KeyError, TypeError):
        return False
    daemons_ok = all(s["healthy"] for s in statuses if s["required"])
    return bool(entries) and entries[0]["loadStatus"] == "LOADED" and daemons_ok


def loaded(engine: sa.Engine) -> dict[str, int]:
    """Delivery id → how many times it was loaded."""
    with engine.connect() as conn:
        query = sa.select(events_table.c.delivery_id, events_table.c.load_count)
        return dict(conn.execute(query).all())


@pytest.mark.timeout(600)
def test_each_part_dies_alone_and_the_owner_hears_once(tmp_path: Path, json_receiver) -> None:
    ports = [free_port() for _ in range(3)]
    ui, hooks = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
    env = dev_environment(tmp_path, GITHUB_WEBHOOK_SECRET=SECRET, ALERT_URLS=json_receiver.url)
    log = tmp_path / "run.log"
    group = ProcessGroup()
    sender = Sender(hooks, SECRET, "supervised")

    def logs() -> str:
        return log.read_text(errors="replace")[-8000:]

    try:
        start_dev(group, ports[0], ports[1], env, log, code_server_port=ports[2])
        wait_for("the receiver", lambda: http_ok(f"{hooks}/healthz"), 180, logs)
        wait_for("the UI, its code location and the daemon", lambda: healthy(ui), 180, logs)
        sender.start()

        for name, needle in VICTIMS.items():
            victim = find_process(group, needle)
            assert victim is not None, f"no {name} in {[p.cmdline() for p in group.members()]}"
            others = {n: find_process(group, s).pid for n, s in VICTIMS.items() if n != name}
            os.kill(victim.pid, signal.SIGKILL)

            def back(needle: str = needle, old: int = victim.pid) -> bool:
                found = find_process(group, needle)
                return found is not None and found.pid != old and healthy(ui)

            wait_for(f"the {name} back, and everything healthy", back, 60, logs)
            assert {
                n: find_process(group, s).pid for n, s in VICTIMS.items() if n != name
            } == others
            wait_for(
                f"the alert about the {name}",
                lambda name=name: any(
                    t.startswith(f"[RESTARTED] {name}: killed by SIGKILL")
                    for t in json_receiver.titles()
                ),
                60,
                logs,
            )

        sender.halt.set()
        sender.join(timeout=30)
        # The one request the receiver was handling when it was SIGKILLed may lose its
        # connection (the sender delivers it again); no request is ever refused or failed.
        # It shows as RemoteDisconnected or as a reset, depending on where the kill finds it.
        lost = ("RemoteDisconnected", "ConnectionResetError")
        dropped = [(d, a) for d, a in sender.answers if str(a).startswith(lost)]
        failed = [(d, a) for d, a in sender.answers if a != 202 and (d, a) not in dropped]
        assert failed == [] and len(dropped) <= 1, (failed[:5], dropped)
        restarts = [t for t in json_receiver.titles() if t.startswith("[RESTARTED]")]
        assert sorted(t.split(":")[0] for t in restarts) == sorted(
            f"[RESTARTED] {name}" for name in VICTIMS
        ), restarts

        engine = store.engine(store.database_url(tmp_path / "home"))
        acknowledged = sender.acknowledged()
        wait_for(
            f"all {len(acknowledged)} acknowledged events in the warehouse",
            lambda: acknowledged <= set(loaded(engine)),
            240,
            logs,
        )
        counts = loaded(engine)
        assert set(counts) <= {d for d, _ in sender.answers}
        assert set(counts.values()) == {1}
    finally:
        sender.halt.set()
        group.stop()
        store.dispose_all()

"""The end-to-end tests' side of a local deployment: `make run` started as a user starts it, the
processes of a topology found in the process table, a signed sender. The processes themselves
come from the package's `local_stack`, which the benchmarks use too; its helpers are named
here so the tests import them from one place."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from automation_pipelines.local_stack import (
    LOCAL_BROKER,
    CeleryWorker,
    DagsterProcesses,
    WaitTimedOut,
    celery_attempts,
    delete_queue,
    free_port,
    http_get,
    http_ok,
    venv_script,
    wait_for,
)
from automation_pipelines.reliability.processes import ProcessGroup

__all__ = [
    "LOCAL_BROKER",
    "CeleryWorker",
    "DagsterProcesses",
    "WaitTimedOut",
    "celery_attempts",
    "delete_queue",
    "free_port",
    "http_get",
    "http_ok",
    "venv_script",
    "wait_for",
]


def dev_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `make run` on a fresh SQLite home in `tmp_path`, with every folder an
    automation writes inside `tmp_path` too."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "WEB_IMAGES_ROOT": str(tmp_path / "photos"),
        "WEBHOOK_REPORTS_DIR": str(tmp_path / "reports"),
        "BACKUP_DESTINATION": str(tmp_path / "backups"),
        **extra,
    }
    for name in ("AUTOMATION_DB_URL", "AUTOMATION_INSTANCE_CONFIG", "DAGSTER_PG_HOST"):
        env.pop(name, None)
    return env


def start_dev(
    group: ProcessGroup,
    port: int,
    webhooks_port: int,
    env: dict[str, str],
    log: Path,
    code_server_port: int | None = None,
) -> subprocess.Popen:
    """`automation-pipelines dev` (what `make run` runs) in `group`, its output in `log`."""
    argv = [venv_script("automation-pipelines"), "dev", "--port", str(port)]
    argv += ["--webhooks-port", str(webhooks_port)]
    argv += ["--code-server-port", str(code_server_port or free_port())]
    with log.open("wb") as handle:
        return group.start(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)


def graphql(base_url: str, query: str, variables: dict | None = None, timeout=10) -> dict:
    request = urllib.request.Request(
        f"{base_url}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["data"]


def wait_until_heartbeats_are_older_than(
    age: float, beats: Callable[[], dict[str, float | None]], logs: Callable[[], str]
) -> None:
    """Wait until every daemon's newest heartbeat (`beats`: daemon -> its time) is more than
    `age` seconds old, and a second more: what the watchdog then reads as a dead daemon. The
    daemon beats every 30 s, so after a kill or a freeze this takes `age - 30` to `age` s,
    where a sleep had to take the worst case."""

    def old_enough() -> bool:
        found = beats()
        now = time.time()
        return bool(found) and all(t is not None and now - t > age + 1 for t in found.values())

    wait_for(f"every daemon heartbeat over {age:g} s old", old_enough, age + 60, logs, 1.0)


def sensor_ticks(instance, sensor: str, limit: int = 5) -> list:
    """The newest ticks of `sensor` in `instance`, newest first ([] before its first)."""
    states = [s for s in instance.all_instigator_state() if s.instigator_name == sensor]
    if not states:
        return []
    return instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id, limit=limit)


def heartbeats_in_ui(base_url: str) -> dict[str, float | None]:
    """Each required daemon's last heartbeat as the webserver reports it ({} if it cannot)."""
    fields = "daemonType required lastHeartbeatTime"
    query = f"{{ instance {{ daemonHealth {{ allDaemonStatuses {{ {fields} }} }} }} }}"
    try:
        statuses = graphql(base_url, query)["instance"]["daemonHealth"]["allDaemonStatuses"]
    except (OSError, KeyError, TypeError, ValueError):
        return {}
    return {s["daemonType"]: s["lastHeartbeatTime"] for s in statuses if s["required"]}


@contextmanager
def project_ui(root: Path, **env: str) -> Iterator[tuple[DagsterProcesses, str, dict[str, Path]]]:
    """The project's code location served by a daemon and a webserver on a temp instance, its
    automations' folders under `root`, with settings `env`: (processes, the UI's URL, the
    folders by name)."""
    folders = {name: root / name for name in ("reports", "photos", "backups")}
    for folder in folders.values():
        folder.mkdir()
    processes = DagsterProcesses(
        root / "dagster",
        "automation_pipelines.definitions",
        env={
            "WEBHOOK_REPORTS_DIR": str(folders["reports"]),
            "WEB_IMAGES_ROOT": str(folders["photos"]),
            "BACKUP_DESTINATION": str(folders["backups"]),
            **env,
        },
    )
    try:
        # Create the SQLite storage before any Dagster process opens it: processes that create it
        # at the same moment can both stamp its alembic version and then none can open it.
        processes.instance.get_runs(limit=1)
        processes.start_daemon()
        yield processes, processes.start_webserver(free_port()), folders
    finally:
        processes.stop()


#: What identifies each process of `make run` / `make run-prod` in the process table.
TOPOLOGY_PROCESSES = {
    "code server": "code-server start",
    "webserver": "dagster-webserver",
    "daemon": "dagster-daemon run",
    "webhook receiver": "webhooks serve",
}


def find_process(group: ProcessGroup, needle: str) -> psutil.Process | None:
    """The process of `group` whose command line holds `needle` (not its setpriv wrapper, nor
    a worker it forked, whose command line is its parent's)."""

    def matches(process: psutil.Process) -> bool:
        return needle in " ".join(process.cmdline()) and process.name() != "setpriv"

    for process in group.members():
        try:
            parent = process.parent()
            if matches(process) and (parent is None or not matches(parent)):
                return process
        except psutil.Error:
            continue
    return None


class Sender(threading.Thread):
    """Posts a signed GitHub push every `interval` seconds and records every answer (a status,
    or the name of the connection error)."""

    def __init__(self, url: str, secret: str, prefix: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.url, self.secret, self.prefix, self.interval = url, secret, prefix, interval
        self.answers: list[tuple[str, object]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        from automation_pipelines.demo import post_github

        number = 0
        while not self.halt.is_set():
            number += 1
            delivery = f"{self.prefix}-{number}"
            payload = {
                "ref": "refs/heads/main",
                "repository": {"full_name": "acme/app"},
                "commits": [{"id": "c0"}],
                "pusher": {"name": "ci-bot"},
            }
            try:
                answer: object = post_github(self.url, self.secret, delivery, "push", payload)
            except OSError as error:  # URLError is an OSError
                answer = f"{type(error).__name__}: {error}"
            self.answers.append((delivery, answer))
            time.sleep(self.interval)

    def acknowledged(self) -> set[str]:
        return {delivery for delivery, answer in self.answers if answer == 202}

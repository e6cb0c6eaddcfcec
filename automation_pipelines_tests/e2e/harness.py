"""Start real Dagster processes (daemon, webserver) on a temp instance and always stop them.

Each process runs in a session of its own under a `ProcessGroup`, logs to a file the test can
show when it fails, and is torn down with SIGINT, then SIGTERM, then SIGKILL of the whole group.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dagster as dg
import psutil
import yaml

from automation_pipelines.instance import DEFAULT_CONFIG, prepare_home
from automation_pipelines.paths import PACKAGE_ROOT, PROJECT_ROOT
from automation_pipelines.reliability.processes import ProcessGroup, write_bytecode

T = TypeVar("T")


def venv_script(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError(f"{name} is not installed next to {sys.executable}")
    return found


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    logs: Callable[[], str],
    interval: float = 0.5,
) -> T:
    """Poll `probe` until it returns something truthy; fail with the process logs otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs()}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def http_ok(url: str) -> bool:
    """True when `url` answers 200 now."""
    answer = http_get(url)
    return answer is not None and answer[0] == 200


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
    from automation_pipelines_tests.conftest import free_port

    argv = [venv_script("automation-pipelines"), "dev", "--port", str(port)]
    argv += ["--webhooks-port", str(webhooks_port)]
    argv += ["--code-server-port", str(code_server_port or free_port())]
    with log.open("wb") as handle:
        return group.start(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)


def graphql(base_url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base_url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


class DagsterProcesses:
    """A temp instance home plus the daemon / webserver processes serving one workspace."""

    def __init__(
        self,
        root: Path,
        module: str,
        env: dict[str, str] | None = None,
        instance_overrides: dict | None = None,
    ) -> None:
        self.root = root
        write_bytecode(PACKAGE_ROOT)  # as `make run` does: run workers start as they would there
        if instance_overrides:
            self.home = root / "dagster_home"
            self.home.mkdir(parents=True)
            config = yaml.safe_load(DEFAULT_CONFIG.read_text())
            for section, values in instance_overrides.items():
                config[section] = {**(config.get(section) or {}), **values}
            (self.home / "dagster.yaml").write_text(yaml.safe_dump(config))
        else:
            self.home = prepare_home(root / "dagster_home", DEFAULT_CONFIG)
        self.workspace = root / "workspace.yaml"
        self.workspace.write_text(
            yaml.safe_dump(
                {
                    "load_from": [
                        {
                            "python_module": {
                                "module_name": module,
                                "working_directory": str(PROJECT_ROOT),
                            }
                        }
                    ]
                }
            )
        )
        self.env = {**os.environ, **(env or {}), "DAGSTER_HOME": str(self.home)}
        self.group = ProcessGroup()
        self.log_files: list[Path] = []
        self._instance: dg.DagsterInstance | None = None

    @property
    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = dg.DagsterInstance.from_config(str(self.home))
        return self._instance

    def _start(self, name: str, argv: list[str]) -> None:
        log = self.root / f"{name}.log"
        self.log_files.append(log)
        handle = log.open("wb")
        self.group.start(argv, env=self.env, cwd=self.root, stdout=handle, stderr=handle)
        handle.close()

    def logs(self, tail: int = 60) -> str:
        parts = []
        for log in self.log_files:
            lines = log.read_text(errors="replace").splitlines()[-tail:] if log.exists() else []
            parts.append(f"--- {log.name} (last {tail} lines)\n" + "\n".join(lines))
        return "\n".join(parts)

    def start_daemon(self, timeout: float = 90) -> None:
        """Start `dagster-daemon run` and wait until its sensor daemon has sent a heartbeat."""
        # Create the instance's storage here first: two processes migrating a fresh SQLite home
        # at once can leave it with two schema heads, and then nothing can open it.
        assert self.instance.get_daemon_heartbeats() is not None
        self._start("daemon", [venv_script("dagster-daemon"), "run", "-w", str(self.workspace)])
        wait_for(
            "the daemon's first heartbeats",
            lambda: (
                {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"}
                <= set(self.instance.get_daemon_heartbeats())
            ),
            timeout,
            self.logs,
        )

    def _start_http(self, name: str, argv: list[str], url: str, timeout: float) -> None:
        """Start a process and wait until `url` answers 200."""
        self._start(name, argv)
        wait_for(f"the {name}", lambda: http_ok(url), timeout, self.logs)

    def start_webserver(self, port: int, timeout: float = 90) -> str:
        """Start `dagster-webserver` and wait until /server_info answers 200; return its URL."""
        base_url = f"http://127.0.0.1:{port}"
        argv = [venv_script("dagster-webserver"), "-h", "127.0.0.1", "-p", str(port)]
        argv += ["-w", str(self.workspace)]
        self._start_http("webserver", argv, f"{base_url}/server_info", timeout)
        return base_url

    def start_webhooks(self, port: int, timeout: float = 60) -> str:
        """Start `automation-pipelines webhooks serve` on this instance's home and wait until
        /healthz answers 200; return its URL. Sources and secrets come from `env`."""
        base_url = f"http://127.0.0.1:{port}"
        argv = [venv_script("automation-pipelines"), "webhooks", "serve", "--port", str(port)]
        argv += ["--host", "127.0.0.1"]
        self._start_http("webhooks", argv, f"{base_url}/healthz", timeout)
        return base_url

    def wait_for_run(self, job_name: str, timeout: float = 120) -> dg.DagsterRun:
        """Wait until a run of `job_name` has finished, and return it."""
        finished = {
            dg.DagsterRunStatus.SUCCESS,
            dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.CANCELED,
        }

        def finished_run() -> dg.DagsterRun | None:
            runs = self.instance.get_runs(filters=dg.RunsFilter(job_name=job_name))
            return next((run for run in runs if run.status in finished), None)

        return wait_for(f"a finished run of {job_name}", finished_run, timeout, self.logs)

    def stop(self) -> None:
        try:
            self.group.stop()
        finally:
            if self._instance is not None:
                self._instance.dispose()


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

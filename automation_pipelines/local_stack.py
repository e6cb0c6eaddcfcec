"""A throwaway Dagster deployment on a temporary instance home: the daemon, the webserver, the
webhook receiver and Celery workers serving one workspace, each in a session of its own under a
`ProcessGroup` that always stops them (SIGINT, then SIGTERM, then SIGKILL of the whole group).
The benchmarks measure the automations on it, and the end-to-end tests drive it; each process
logs to a file that a failure can show."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dagster as dg
import yaml

from automation_pipelines.instance import DEFAULT_CONFIG, prepare_home
from automation_pipelines.paths import PACKAGE_ROOT, PROJECT_ROOT
from automation_pipelines.reliability.processes import ProcessGroup, write_bytecode
from automation_pipelines.topology import LOCATION, MODULE

T = TypeVar("T")

#: This machine's RabbitMQ, as it is installed (loopback only, its default account).
LOCAL_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
CELERY_WORKER_CONFIG = PROJECT_ROOT / "deploy" / "celery" / "worker.yaml"
#: What dagster-celery reports when a worker takes a step (an engine event per attempt).
CELERY_EXECUTING = "Executing steps "


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def venv_script(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError(f"{name} is not installed next to {sys.executable}")
    return found


class WaitTimedOut(AssertionError):
    """What `wait_for` raises: an AssertionError, so a test that waited in vain fails (not
    errors) with the processes' logs."""


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
    raise WaitTimedOut(f"timed out after {timeout:.0f}s waiting for {what}\n{logs()}")


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


class DagsterProcesses:
    """A temp instance home plus the daemon / webserver processes serving one workspace. The
    project's module is the code location named as configured (`topology.LOCATION`, as `make
    run` names it), so what the tests see and screenshot is what people see; a test-only module
    is a location named after itself."""

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
                                "location_name": LOCATION if module == MODULE else module,
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


class CeleryWorker:
    """`dagster-celery worker start` as an operator runs it (deploy/celery/worker.yaml, the
    venv's `celery` first on PATH, one step at a time), in a process group of its own: the CLI,
    Celery's main process and its pool process. Its log is `log`; `env` must name the instance
    home (DAGSTER_HOME), where dagster-celery writes the worker's config."""

    def __init__(self, name: str, env: dict[str, str], queue: str, log: Path) -> None:
        self.name, self.log = f"{name}@{socket.gethostname()}", log  # dagster-celery adds @%h
        self.group = ProcessGroup()
        argv = [venv_script("dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
        argv += ["-y", str(CELERY_WORKER_CONFIG), "-q", queue, "-n", name, "--loglevel", "INFO"]
        argv += ["--", "--concurrency=1", "--without-gossip", "--without-mingle"]
        path = f"{Path(venv_script('celery')).parent}{os.pathsep}{env.get('PATH', '')}"
        with log.open("wb") as handle:
            self.group.start(
                argv, env={**env, "PATH": path}, cwd=PROJECT_ROOT, stdout=handle, stderr=handle
            )

    def ready(self) -> bool:
        return "ready." in self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL of every process of the worker at once: a machine that died."""
        self.group.kill()

    def stop(self) -> None:
        self.group.stop()


def celery_attempts(instance: dg.DagsterInstance, run_id: str) -> list[tuple[float, str, str]]:
    """(when, step, worker) for every step a Celery worker took in a run, in order, from
    dagster-celery's engine events."""
    found = []
    for record in instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=5000
    ).records:
        entry = record.event_log_entry
        if CELERY_EXECUTING not in entry.message:  # "… Executing steps … in celery worker"
            continue
        metadata = entry.dagster_event.engine_event_data.metadata
        found.append((entry.timestamp, entry.step_key, metadata["Celery worker"].value))
    return sorted(found)


def delete_queue(broker: str, queue: str) -> None:
    """Delete `queue` from the broker, if it can be reached; a queue left behind only waits."""
    from kombu import Connection

    with contextlib.suppress(Exception), Connection(broker, connect_timeout=5) as connection:
        connection.default_channel.queue_delete(queue)

"""The production topology on one machine: the processes a team runs, started apart.

`dagster dev` runs everything inside one process tree that owns the code. A team server instead
runs a gRPC code server (the only process that imports the automations), the webserver and the
daemon (which reach the code only through that server, via a workspace of `grpc_server` entries),
and the webhook receiver, all on PostgreSQL. Each can then be restarted, upgraded or moved to
another machine on its own; `docs/deployment.md` shows the same split under systemd and Helm.
`automation-pipelines prod` (`make run-prod`) starts and supervises them here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from automation_pipelines.instance import CONFIG_ENV, prepare_home
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability.processes import ProcessGroup, become_subreaper

PROD_HOME = PROJECT_ROOT / ".dagster_home_prod"
PROD_CONFIG = PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml"
MODULE = "automation_pipelines.definitions"
LOCATION = "automation_pipelines"
PG_VARIABLES = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USERNAME")
#: A service that exits this many times within RESTART_WINDOW seconds stops the whole topology:
#: a crash loop is a failure to report, not to hide.
MAX_RESTARTS, RESTART_WINDOW = 5, 60.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Ports:
    host: str = "127.0.0.1"
    webserver: int = 3000
    webhooks: int = 3001
    code_server: int = 4000


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def workspace(code_host: str, code_port: int) -> dict:
    """A workspace that reaches the code location only through its gRPC server."""
    return {
        "load_from": [
            {"grpc_server": {"host": code_host, "port": code_port, "location_name": LOCATION}}
        ]
    }


@dataclass
class Service:
    """One process of the topology: how to start it, and how to tell it is ready."""

    name: str
    argv: list[str]
    ready: Callable[[], bool] = field(default=lambda: True)
    process: subprocess.Popen | None = None
    exits: list[float] = field(default_factory=list)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _code_server_ready(host: str, port: int) -> bool:
    probe = [_script("dagster"), "api", "grpc-health-check", "-h", host, "-p", str(port)]
    done = subprocess.run(probe, capture_output=True, timeout=30)
    return done.returncode == 0


def services(ports: Ports, workspace_file: Path) -> list[Service]:
    """The four processes, in the order they must start."""
    host = ports.host
    ws = ["-w", str(workspace_file)]
    return [
        Service(
            "code server",
            [
                _script("dagster"),
                "code-server",
                "start",
                "-m",
                MODULE,
                "--location-name",
                LOCATION,
                "-h",
                host,
                "-p",
                str(ports.code_server),
            ],
            ready=lambda: _code_server_ready(host, ports.code_server),
        ),
        Service(
            "webserver",
            [_script("dagster-webserver"), *ws, "-h", host, "-p", str(ports.webserver)],
            ready=lambda: _port_open(host, ports.webserver),
        ),
        Service("daemon", [_script("dagster-daemon"), "run", *ws]),
        Service(
            "webhook receiver",
            [
                _script("automation-pipelines"),
                "webhooks",
                "serve",
                "--host",
                host,
                "--port",
                str(ports.webhooks),
            ],
            ready=lambda: _port_open(host, ports.webhooks),
        ),
    ]


def check_environment(environ: Mapping[str, str], config: Path) -> str | None:
    """Why the topology cannot start on this instance config, or None."""
    if config.resolve() == PROD_CONFIG.resolve():
        missing = [name for name in PG_VARIABLES if not environ.get(name)]
        if missing:
            return (
                f"the production instance stores everything in PostgreSQL; set {', '.join(missing)}"
                " (and DAGSTER_PG_PASSWORD) in the environment or .env"
            )
    return None


def _wait_ready(service: Service, timeout: float, stop: list[str]) -> bool:
    deadline = time.monotonic() + timeout
    while not stop and time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            return False
        if service.ready():
            return True
        time.sleep(0.5)
    return bool(stop)


def run(ports: Ports, env: dict[str, str], home: Path | None = None) -> int:
    """Start the topology and keep it running until SIGINT/SIGTERM; 1 on a crash loop."""
    stop: list[str] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in _SIGNALS}
    try:
        return _run(ports, env, home, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(ports: Ports, env: dict[str, str], home: Path | None, stop: list[str]) -> int:
    config = Path(env.get(CONFIG_ENV) or PROD_CONFIG)
    config = config if config.is_absolute() else PROJECT_ROOT / config
    problem = check_environment(env, config)
    if problem:
        print(f"✗ {problem}", file=sys.stderr, flush=True)
        return 2
    home = prepare_home(Path(env.get("DAGSTER_HOME") or home or PROD_HOME), config)
    env = {**env, "DAGSTER_HOME": str(home), CONFIG_ENV: str(config)}
    workspace_file = home / "workspace.yaml"
    workspace_file.write_text(yaml.safe_dump(workspace(ports.host, ports.code_server)))
    print(
        f"Production topology on instance {home} ({config.name}): code server "
        f"{ports.host}:{ports.code_server}, UI http://{ports.host}:{ports.webserver}, webhooks "
        f"http://{ports.host}:{ports.webhooks}/hooks/<source>; Ctrl-C stops everything.",
        flush=True,
    )
    become_subreaper()
    group = ProcessGroup(reap_orphans=True)
    parent = os.getppid()
    running = services(ports, workspace_file)
    try:
        for service in running:
            service.process = group.start(service.argv, env=env, cwd=PROJECT_ROOT)
            if not _wait_ready(service, 120, stop):
                print(f"✗ the {service.name} did not start", file=sys.stderr, flush=True)
                return 1
            print(f"  {service.name} is up (pid {service.process.pid})", flush=True)
        while not stop:
            if os.getppid() != parent:
                stop.append("parent exited")
            for service in running:
                if service.process.poll() is None:
                    continue
                now = time.monotonic()
                service.exits = [t for t in service.exits if now - t < RESTART_WINDOW] + [now]
                code = service.process.returncode
                if len(service.exits) >= MAX_RESTARTS:
                    print(
                        f"✗ the {service.name} exited {len(service.exits)} times within "
                        f"{RESTART_WINDOW:.0f} s (last code {code}); stopping everything",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
                print(f"the {service.name} exited with code {code}; restarting it", flush=True)
                time.sleep(1)
                service.process = group.start(service.argv, env=env, cwd=PROJECT_ROOT)
            time.sleep(0.5)
    finally:
        group.stop()
    print(f"Stopped ({stop[0]}); every process of the topology has exited.", flush=True)
    return 0

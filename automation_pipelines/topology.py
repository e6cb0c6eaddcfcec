"""The processes of a deployment, started apart and supervised one by one (`make run`,
`make run-prod`).

Both targets run the same four processes: a gRPC code server (the only process that imports the
automations), the webserver and the daemon (which reach the code only through that server), and
the webhook receiver. `make run` does it on the instance the settings choose (SQLite by default);
`make run-prod` insists on PostgreSQL. Each process is supervised on its own
(`reliability/supervisor.py`): a crash restarts that one process, the receiver keeps filling its
inbox while the daemon is down, and the owner hears of every restart from the supervisor itself,
since the daemon's outbox sensor may be the part that died. `docs/deployment.md` shows the same
split under systemd and Helm.

With PROXY_PORT set, `make run-prod` adds a fifth process, Debian's nginx (`proxy.py`), started
last: the one way in from outside, with TLS, basic auth for the UI and limits per client, while
the others stay on loopback.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from automation_pipelines import proxy, settings
from automation_pipelines.instance import (
    CONFIG_ENV,
    HOME_ENV,
    PG_HOST_ENV,
    config_storage,
    home_path,
    instance_config_path,
    prepare_home,
)
from automation_pipelines.paths import PACKAGE_ROOT, PROJECT_ROOT
from automation_pipelines.reliability import store
from automation_pipelines.reliability.processes import become_subreaper, write_bytecode
from automation_pipelines.reliability.supervisor import (
    Dependency,
    Notice,
    Policy,
    Service,
    Supervisor,
)

MODULE = "automation_pipelines.definitions"
#: The code location's name wherever it is served (workspace.yaml, the code server, the Docker
#: image, the Helm values, the test harness, pyproject's [tool.dg]); a location loaded from the
#: module without a name would show as the module's path instead.
LOCATION = "automation_pipelines"
#: Who hears about the processes themselves (as about the watchdog).
PLATFORM_OWNER = "team:platform"
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


def _answers_http(url: str) -> bool:
    """True once something answers HTTP at `url` (503 too: serving, its database may be down)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def receiver_socket(host: str, port: int) -> socket.socket:
    """The webhook receiver's listening socket, held by the supervisor for its whole life and
    handed to each receiver process: while the receiver restarts, connections wait in its
    backlog instead of being refused."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def services(
    ports: Ports,
    workspace_file: Path,
    receiver_fd: int | None = None,
    edge: proxy.Edge | None = None,
) -> list[Service]:
    """The four processes, in the order they start; with `receiver_fd` the receiver serves
    that inherited socket, with `edge` the proxy follows once the others answer."""
    host = ports.host
    ws = ["-w", str(workspace_file)]
    listen = (
        ["--fd", str(receiver_fd)]
        if receiver_fd is not None
        else ["--host", host, "--port", str(ports.webhooks)]
    )
    started = [
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
            [_script("automation-pipelines"), "webhooks", "serve", *listen],
            ready=lambda: _answers_http(f"http://{host}:{ports.webhooks}/healthz"),
            pass_fds=(receiver_fd,) if receiver_fd is not None else (),
        ),
    ]
    return [*started, proxy.service(edge)] if edge is not None else started


class OutboxNotifier:
    """Supervisor notices go to the alert outbox and out through apprise from a thread of the
    supervisor; when the outbox cannot be reached (its database is down) straight to the
    owner's channels, so a restart is never told to nobody."""

    def __init__(self, home: Path, owner: str = PLATFORM_OWNER, say=print) -> None:
        self.home = home
        self.owner = owner
        self.say = say
        self._queue: queue.Queue[Notice | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self._thread.start()

    def __call__(self, notice: Notice) -> None:
        self._queue.put(notice)

    def close(self, timeout: float = 2.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (notice := self._queue.get()) is not None:
            try:
                self._deliver(notice)
            except Exception as error:
                self.say(f"✗ alert about the {notice.service} not delivered: {error}")

    def _deliver(self, notice: Notice) -> None:
        from automation_pipelines.monitoring.outside import deliver_now, send_directly
        from automation_pipelines.reliability.alerts import AlertRouter

        router = AlertRouter.from_env()
        try:
            outbox = router.outbox_at(store.database_url(self.home))
            outbox.enqueue_message(self.owner, notice.title, notice.body, dedup_key=notice.key)
        except Exception as error:
            urls = router.routes().urls(self.owner)
            body = f"{notice.body}\n(Sent directly: the alert outbox is unreachable: {error})"
            accepted, _ = send_directly(urls, notice.title, body)
            self.say(f"  alert sent directly to {accepted} of {len(urls)} channel(s)")
            return
        report = deliver_now(outbox, budget_seconds=30)
        for problem in report.errors:
            self.say(f"✗ alert not delivered yet: {problem}")


def busy_ports(ports: Ports, edge: proxy.ProxySettings | None = None) -> list[str]:
    """The ports someone else already listens on, each with the setting that moves it: a second
    `make run` must not start a second daemon on the same instance."""
    settings = [
        (ports.host, ports.webserver, "UI_PORT / --port"),
        (ports.host, ports.webhooks, "WEBHOOKS_PORT / --webhooks-port"),
        (ports.host, ports.code_server, "CODE_SERVER_PORT / --code-server-port"),
    ]
    if edge is not None:
        settings.append((edge.host, edge.port, proxy.PORT_ENV))
    busy = []
    for host, port, setting in settings:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                busy.append(f"{host}:{port} ({setting})")
    return busy


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def _init_instance(home: Path, say) -> None:
    """Create (or migrate) the instance's storage once, before several processes open it at the
    same moment; a storage that is down now is left to the processes, which retry."""
    import dagster as dg

    try:
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            instance.get_daemon_heartbeats()
        finally:
            instance.dispose()
    except Exception as error:
        say(
            f"✗ the instance storage is not reachable yet ({type(error).__name__}); starting anyway"
        )


DEFAULT_POLICY = Policy()


def run(ports: Ports, *, production: bool, policy: Policy = DEFAULT_POLICY) -> int:
    """Start the topology and keep it running until SIGINT/SIGTERM/SIGHUP; 2 when the settings
    do not allow it to start at all."""
    stop: list[str] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in _SIGNALS}
    try:
        return _run(ports, production, policy, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _current_env(home: Path, config: Path) -> dict[str, str]:
    """The environment for a process started now: `.env` read again (what it set before takes
    its current values; the environment proper still wins), on the instance this topology runs."""
    settings.reload_project_env()
    return {**os.environ, HOME_ENV: str(home), CONFIG_ENV: str(config)}


def _announce(edge: proxy.ProxySettings) -> None:
    print(
        f"Public edge {edge.url} (nginx): /hooks/<source> and /healthz for anyone, the UI for "
        f"the users of {edge.htpasswd}.",
        flush=True,
    )
    if not edge.tls:
        print(
            f"! the proxy serves plain HTTP ({proxy.CERT_ENV} and {proxy.KEY_ENV} are unset): run "
            "it only behind another TLS terminator, or passwords and payloads travel in clear",
            flush=True,
        )


def _run(ports: Ports, production: bool, policy: Policy, stop: list[str]) -> int:
    config = instance_config_path()
    if production and not config_storage(config).is_postgres:
        print(
            f"✗ the production topology stores everything in PostgreSQL; set {PG_HOST_ENV}, "
            "DAGSTER_PG_PORT, DAGSTER_PG_DB, DAGSTER_PG_USERNAME and DAGSTER_PG_PASSWORD in the "
            f"project's .env (or {CONFIG_ENV} to a PostgreSQL dagster.yaml)",
            file=sys.stderr,
            flush=True,
        )
        return 2
    edge_settings = proxy.from_env() if production else None
    if edge_settings is not None:
        proxy.check_upstream_host(ports.host)
        proxy.nginx_binary()
    busy = busy_ports(ports, edge_settings)
    if busy:
        print(
            f"✗ already in use: {', '.join(busy)}. Is another `make run` or `make run-prod` "
            "running? Stop it, or choose other ports.",
            file=sys.stderr,
            flush=True,
        )
        return 2
    home = prepare_home(home_path(), config)
    write_bytecode(PACKAGE_ROOT)  # each run's worker imports the code location afresh
    storage = config_storage(config)  # missing PostgreSQL settings stop here, named
    env = _current_env(home, config)
    workspace_file = home / "workspace.yaml"
    workspace_file.write_text(yaml.safe_dump(workspace(ports.host, ports.code_server)))
    edge = None
    if edge_settings is not None:
        edge = proxy.prepare(
            edge_settings,
            home,
            upstream_host=ports.host,
            webserver_port=ports.webserver,
            receiver_port=ports.webhooks,
        )
    print(
        f"Instance {home} ({_shown(config)}). Code server {ports.host}:{ports.code_server}, "
        f"UI http://{ports.host}:{ports.webserver}, webhook receiver "
        f"http://{ports.host}:{ports.webhooks}/hooks/<source>. Ctrl-C stops everything.",
        flush=True,
    )
    if edge is not None:
        _announce(edge.settings)
    listening = receiver_socket(ports.host, ports.webhooks)
    dependencies = []
    if storage.is_postgres:
        dependencies.append(
            Dependency(
                f"PostgreSQL {storage.where}",
                lambda: store.check_reachable(home, timeout=3),
            )
        )
    supervisor = Supervisor(
        services(ports, workspace_file, listening.fileno(), edge),
        env=env,
        cwd=PROJECT_ROOT,
        notify=lambda notice: None,
        policy=policy,
        dependencies=dependencies,
        refresh_env=lambda: _current_env(home, config),
    )
    notifier = OutboxNotifier(home, say=supervisor.say)
    supervisor.notify = notifier
    _init_instance(home, supervisor.say)
    become_subreaper()
    parent = os.getppid()
    try:
        supervisor.start_all(stop)
        supervisor.run(stop, parent=parent)
    finally:
        listening.close()  # new connections are refused from now on, not left waiting
        supervisor.stop()
        with contextlib.suppress(Exception):
            notifier.close()
    reason = stop[0] if stop else "stopped"
    print(f"Stopped ({reason}); every process of the topology has exited.", flush=True)
    return 0

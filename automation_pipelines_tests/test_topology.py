"""The topology's supervisor with real child processes: one crash restarts only that process,
with backoff, the exit reason and the last output in one alert per incident; a crash loop is
given up on loudly while the others keep running, then retried slowly, with a recovery notice;
adopted orphans are reaped; and `make run-prod` refuses to start without PostgreSQL."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from automation_pipelines import topology
from automation_pipelines.reliability.processes import become_subreaper
from automation_pipelines.reliability.supervisor import (
    Dependency,
    Notice,
    Policy,
    Service,
    Supervisor,
    exit_reason,
)

FAST = Policy(
    first_delay=0.2,
    max_delay=1.0,
    loop_exits=3,
    loop_window=30.0,
    slow_retry=1.0,
    stable_after=1.5,
    ready_timeout=10.0,
)
SLEEPER = [sys.executable, "-c", "import time; print('serving', flush=True); time.sleep(600)"]


def crasher(marker: Path, code: int = 3) -> list[str]:
    """Crashes (after printing) until `marker` exists, then serves."""
    script = (
        "import pathlib, sys, time\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    print('cannot reach the database', flush=True)\n"
        f"    sys.exit({code})\n"
        "print('serving', flush=True)\n"
        "time.sleep(600)\n"
    )
    return [sys.executable, "-c", script]


class Harness:
    def __init__(self, services: list[Service], tmp_path: Path, policy: Policy = FAST) -> None:
        self.notices: list[Notice] = []
        self.out = io.StringIO()
        self.supervisor = Supervisor(
            services,
            env=os.environ,
            cwd=tmp_path,
            notify=self.notices.append,
            policy=policy,
            out=self.out,
        )
        self.stop: list[str] = []

    def until(self, condition, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.supervisor.check(time.monotonic())
            self.supervisor.reap_orphans()
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; output:\n{self.out.getvalue()[-3000:]}")


@pytest.fixture
def harnesses():
    made: list[Harness] = []

    def make(*args, **kwargs) -> Harness:
        made.append(Harness(*args, **kwargs))
        return made[-1]

    yield make
    for harness in made:
        harness.supervisor.stop()


def test_a_killed_process_is_restarted_alone_and_reported_once(harnesses, tmp_path) -> None:
    steady, victim = Service("steady", SLEEPER), Service("victim", SLEEPER)
    h = harnesses([steady, victim], tmp_path, Policy(**{**FAST.__dict__, "stable_after": 8.0}))
    h.supervisor.start_all(h.stop)
    steady_pid, victim_pid = steady.process.pid, victim.process.pid
    h.until(lambda: "serving" in victim.tail())

    os.kill(victim_pid, signal.SIGKILL)
    h.until(lambda: victim.process is not None and victim.process.pid != victim_pid)

    assert steady.process.pid == steady_pid and steady.process.poll() is None
    [notice] = h.notices
    assert notice.kind == "restarted" and notice.service == "victim"
    assert notice.title.startswith("[RESTARTED] victim: killed by SIGKILL after ")
    assert "the other processes kept running" in notice.body
    assert "serving" in notice.body  # its last output
    assert "✗ the victim exited (killed by SIGKILL)" in h.out.getvalue()

    # Killed again before it stayed up: the same incident, restarted but not alerted again.
    second = victim.process.pid
    h.until(lambda: "serving" in victim.tail())
    os.kill(second, signal.SIGKILL)
    h.until(lambda: victim.process is not None and victim.process.pid != second)
    assert len(h.notices) == 1

    # Once it has stayed up, the next crash is a new incident with its own alert.
    h.until(lambda: not victim.incident_open, timeout=30)
    third = victim.process.pid
    os.kill(third, signal.SIGKILL)
    h.until(lambda: victim.process is not None and victim.process.pid != third)
    assert [n.kind for n in h.notices] == ["restarted", "restarted"]


def test_a_restarted_process_gets_the_environment_as_it_is_now(harnesses, tmp_path) -> None:
    """A secret changed in `.env` reaches the restarted process, not the one read at start."""
    seen = tmp_path / "seen"
    script = (
        "import os, pathlib, time\n"
        f"pathlib.Path({str(seen)!r}).open('a').write(os.environ['AP_ROTATED'] + '\\n')\n"
        "print('serving', flush=True)\n"
        "time.sleep(600)\n"
    )
    service = Service("receiver", [sys.executable, "-c", script])
    now = {"AP_ROTATED": "old"}
    h = harnesses([service], tmp_path)
    h.supervisor.refresh_env = lambda: {**os.environ, **now}
    h.supervisor.start_all(h.stop)
    h.until(lambda: "serving" in service.tail())
    now["AP_ROTATED"] = "new"

    first = service.process.pid
    os.kill(first, signal.SIGKILL)
    h.until(lambda: seen.exists() and seen.read_text().splitlines() == ["old", "new"])

    assert service.process.pid != first


def test_backoff_doubles_between_restarts_up_to_its_cap(harnesses, tmp_path) -> None:
    service = Service("flaky", crasher(tmp_path / "never"))
    policy = Policy(**{**FAST.__dict__, "loop_exits": 10, "first_delay": 0.1, "max_delay": 0.5})
    h = harnesses([service], tmp_path, policy)
    h.supervisor.start_all(h.stop)

    h.until(lambda: len(service.delays) >= 5)

    assert service.delays[:5] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_a_crash_loop_is_given_up_loudly_retried_slowly_and_recovers(harnesses, tmp_path) -> None:
    marker = tmp_path / "database-is-back"
    steady, looping = Service("steady", SLEEPER), Service("receiver", crasher(marker))
    h = harnesses([steady, looping], tmp_path)
    h.supervisor.start_all(h.stop)
    steady_pid = steady.process.pid

    h.until(lambda: any(n.kind == "given_up" for n in h.notices))
    given_up = next(n for n in h.notices if n.kind == "given_up")
    assert given_up.title == "[GIVEN UP] receiver crash-loops: 3 exits in 30 s"
    assert "cannot reach the database" in given_up.body
    assert "tries again every 1 s" in given_up.body
    assert steady.process.pid == steady_pid and steady.process.poll() is None

    marker.touch()  # the dependency is back: the slow retry picks it up without a person
    h.until(lambda: any(n.kind == "recovered" for n in h.notices))
    kinds = [n.kind for n in h.notices]
    assert kinds == ["restarted", "given_up", "recovered"], kinds
    assert looping.process.poll() is None and "serving" in looping.tail()
    assert steady.process.pid == steady_pid


def test_adopted_orphans_are_reaped(harnesses, tmp_path) -> None:
    # The child starts a grandchild and dies at once: the grandchild is adopted by this
    # (subreaper) process and must not stay a zombie once it exits.
    script = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.5)'])\n"
    )
    assert become_subreaper()
    service = Service("parent", [sys.executable, "-c", script])
    h = harnesses([service], tmp_path, Policy(**{**FAST.__dict__, "first_delay": 60}))
    h.supervisor.start_all(h.stop)

    def zombies() -> list[psutil.Process]:
        own = {p.pid for p in h.supervisor.group.popens}
        return [
            child
            for child in psutil.Process().children()
            if child.pid not in own and child.status() == psutil.STATUS_ZOMBIE
        ]

    time.sleep(1.5)
    assert zombies(), "the test setup made no orphan"
    h.until(lambda: not zombies(), timeout=10)


def test_exit_reasons() -> None:
    assert exit_reason(-9) == "killed by SIGKILL"
    assert exit_reason(3) == "exit code 3"
    assert exit_reason(None) == "still running"


def test_processes_die_with_the_supervisor(tmp_path) -> None:
    """SIGKILL of the supervisor itself: its children get SIGTERM from the kernel."""
    pid_file = tmp_path / "child.pid"
    child = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    )
    script = tmp_path / "supervise.py"
    script.write_text(
        "import os, sys, time\n"
        "from automation_pipelines.reliability.supervisor import Service, Supervisor\n"
        f"child = [sys.executable, '-c', {child!r}]\n"
        "s = Supervisor([Service('child', child)], env=os.environ, cwd='/', notify=print)\n"
        "s.start_all([])\n"
        "time.sleep(600)\n"
    )
    supervisor = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert supervisor.poll() is None and time.monotonic() < deadline, "no child started"
            time.sleep(0.1)
        child_process = psutil.Process(int(pid_file.read_text()))
        supervisor.kill()
        supervisor.wait(10)
        child_process.wait(timeout=10)  # psutil.TimeoutExpired if it outlives its supervisor
    finally:
        supervisor.kill()


def test_production_needs_postgres_and_says_which_settings(tmp_path, monkeypatch, capsys) -> None:
    for name in ("DAGSTER_PG_HOST", "AUTOMATION_INSTANCE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "h"))

    code = topology.run(topology.Ports(), production=True)

    assert code == 2
    err = capsys.readouterr().err
    assert "stores everything in PostgreSQL; set DAGSTER_PG_HOST" in err
    assert not (tmp_path / "h").exists()


def test_workspace_points_only_at_the_grpc_server() -> None:
    assert topology.workspace("10.1.2.3", 4100) == {
        "load_from": [
            {
                "grpc_server": {
                    "host": "10.1.2.3",
                    "port": 4100,
                    "location_name": "automation_pipelines",
                }
            }
        ]
    }


def test_a_second_start_on_taken_ports_refuses(tmp_path, monkeypatch, capsys) -> None:
    import socket

    from automation_pipelines.local_stack import free_port

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "h"))
    ports = topology.Ports("127.0.0.1", free_port(), free_port(), free_port())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.webhooks))
        taken.listen()
        code = topology.run(ports, production=False)

    assert code == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{ports.webhooks} (WEBHOOKS_PORT / --webhooks-port)" in err
    assert str(ports.webserver) not in err
    assert not (tmp_path / "h").exists()


def test_notices_go_through_the_outbox_and_straight_out_when_it_is_down(
    tmp_path, monkeypatch, json_receiver
) -> None:
    from automation_pipelines.instance import DEFAULT_CONFIG, POSTGRES_CONFIG, prepare_home
    from automation_pipelines.local_stack import free_port
    from automation_pipelines.reliability import store
    from automation_pipelines.reliability.alerts import AlertRouter

    monkeypatch.delenv("AUTOMATION_DB_URL", raising=False)
    monkeypatch.setenv("ALERT_URLS", json_receiver.url)
    monkeypatch.delenv("ALERT_URLS_PLATFORM", raising=False)
    notice = Notice("restarted", "daemon", "[RESTARTED] daemon: killed by SIGKILL", "body", "k1")

    sqlite_home = prepare_home(tmp_path / "sqlite", DEFAULT_CONFIG)
    notifier = topology.OutboxNotifier(sqlite_home, say=lambda line: None)
    notifier(notice)
    notifier.close(timeout=30)
    assert json_receiver.titles() == ["[RESTARTED] daemon: killed by SIGKILL"]
    outbox = AlertRouter().outbox_at(store.database_url(sqlite_home))
    assert [(a.title, a.status) for a in outbox.alerts()] == [
        ("[RESTARTED] daemon: killed by SIGKILL", "delivered")
    ]

    pg_home = prepare_home(tmp_path / "postgres", POSTGRES_CONFIG)
    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(free_port()),  # nothing listens: the outbox is unreachable
        "DAGSTER_PG_DB": "x",
        "DAGSTER_PG_USERNAME": "x",
        "DAGSTER_PG_PASSWORD": "",
    }.items():
        monkeypatch.setenv(name, value)
    said: list[str] = []
    notifier = topology.OutboxNotifier(pg_home, say=said.append)
    notifier(Notice("given_up", "webhook receiver", "[GIVEN UP] webhook receiver", "b", "k2"))
    notifier.close(timeout=30)
    assert json_receiver.titles()[-1] == "[GIVEN UP] webhook receiver"
    assert "the alert outbox is unreachable" in json_receiver.received[-1]["message"]
    assert said == ["  alert sent directly to 1 of 1 channel(s)"]
    store.dispose_all()


def test_an_outage_is_one_alert_is_waited_out_and_ends_with_a_notice(harnesses, tmp_path) -> None:
    database_up = tmp_path / "database-up"
    needs_database = Service("daemon", crasher(database_up, code=1))

    def probe() -> None:
        if not database_up.exists():
            raise ConnectionError("connection refused")

    dependency = Dependency("PostgreSQL db:5432/dagster", probe)
    h = harnesses([needs_database], tmp_path)
    h.supervisor.dependencies = [dependency]
    h.supervisor.look_at(dependency)
    assert h.notices == []  # one failed look is a blip, not an outage
    h.supervisor.look_at(dependency)
    [outage] = h.notices
    assert (
        outage.kind == "outage"
        and outage.title == "[OUTAGE] PostgreSQL db:5432/dagster unreachable"
    )
    assert "connection refused" in outage.body

    h.supervisor.start_all(h.stop)
    h.until(lambda: len(needs_database.exits) >= FAST.loop_exits + 1)
    assert not needs_database.given_up  # exits while its database is down are not a crash loop
    assert [n.kind for n in h.notices] == ["outage"]  # the outage is the incident
    assert "while PostgreSQL db:5432/dagster is down" in h.out.getvalue()
    h.supervisor.look_at(dependency)
    assert len(h.notices) == 1  # still down: nothing more

    database_up.touch()
    waiting = needs_database.process is None
    h.supervisor.look_at(dependency)
    assert h.notices[-1].kind == "recovered"
    assert h.notices[-1].title.startswith("[RECOVERED] PostgreSQL db:5432/dagster reachable again")
    assert "process exit(s), each restarted: daemon (exit code 1)" in h.notices[-1].body
    if waiting:
        assert needs_database.next_start_at <= time.monotonic()
    h.until(lambda: needs_database.process is not None and "serving" in needs_database.tail())

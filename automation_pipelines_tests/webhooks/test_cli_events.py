"""`automation-pipelines events status | dead | replay` on the project database of a temporary
DAGSTER_HOME (SQLite): what they print, what they change and their exit codes; and
`webhooks serve` run as the real console script: it takes a signed GitHub delivery into the
inbox and shuts down cleanly on SIGTERM, and its worker processes, posted to at once with
re-deliveries among the events, keep each event exactly once and answer each re-delivery 200."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from automation_pipelines import settings
from automation_pipelines.cli import main
from automation_pipelines.local_stack import free_port
from automation_pipelines.reliability import store
from automation_pipelines.reliability.deadletters import open_dead_letters
from automation_pipelines.webhooks import inbox
from automation_pipelines_tests.conftest import DATABASE_ENV
from automation_pipelines_tests.webhooks.conftest import (
    add_events,
    github_headers,
    inbox_rows,
    kill,
    push_body,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A DAGSTER_HOME whose project database is SQLite, for the CLI run in this process."""
    path = tmp_path / "home"
    path.mkdir()
    for name in DATABASE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(path))
    yield path
    store.dispose_all()


@pytest.fixture
def engine(home: Path) -> sa.Engine:
    return store.engine(store.database_url(home))


@pytest.fixture
def dead(engine: sa.Engine) -> dict[str, int]:
    """Dead rows github/a, github/b and stripe/c, and a pending github/new."""
    names = ["github/a", "github/b", "stripe/c", "github/new"]
    ids = dict(zip(names, add_events(engine, [tuple(n.split("/")) for n in names]), strict=True))
    kill(engine, [ids["github/a"], ids["github/b"], ids["stripe/c"]])
    return ids


def statuses(engine: sa.Engine) -> dict[str, str]:
    return {f"{row.source}/{row.delivery_id}": row.status for row in inbox_rows(engine)}


def test_status_of_an_empty_inbox(home, capsys) -> None:
    assert main(["events", "status"]) == 0

    assert capsys.readouterr().out == "The inbox is empty.\n"


def test_status_counts_per_source(dead, capsys) -> None:
    assert main(["events", "status"]) == 0

    assert (
        capsys.readouterr().out
        == "github: 1 pending, 0 done, 2 dead\nstripe: 0 pending, 0 done, 1 dead\n"
    )


def test_dead_lists_each_dead_event_with_its_error(dead, capsys) -> None:
    assert main(["events", "dead"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        f"{dead[name]}\t{name}\tpush\tpayload has no repository"
        for name in ("github/a", "github/b", "stripe/c")
    ]
    assert lines[3:] == ["3 dead-lettered event(s)."]


def test_dead_of_one_source(dead, capsys) -> None:
    assert main(["events", "dead", "--source", "stripe"]) == 0

    assert capsys.readouterr().out.splitlines() == [
        f"{dead['stripe/c']}\tstripe/c\tpush\tpayload has no repository",
        "1 dead-lettered event(s).",
    ]


def test_replay_by_id(engine, dead, capsys) -> None:
    assert main(["events", "replay", "--id", str(dead["github/a"]), str(dead["stripe/c"])]) == 0

    assert capsys.readouterr().out.startswith("2 event(s) re-queued;")
    assert statuses(engine) == {
        "github/a": inbox.PENDING,
        "github/b": inbox.DEAD,
        "stripe/c": inbox.PENDING,
        "github/new": inbox.PENDING,
    }
    # Re-queued is not handled yet: the letters close when the events load.
    assert len(open_dead_letters(engine)) == 3


def test_replay_by_source(engine, dead, capsys) -> None:
    assert main(["events", "replay", "--source", "github"]) == 0

    assert capsys.readouterr().out.startswith("2 event(s) re-queued;")
    assert statuses(engine)["stripe/c"] == inbox.DEAD
    assert list(statuses(engine).values()).count(inbox.PENDING) == 3


def test_replay_all(engine, dead, capsys) -> None:
    assert main(["events", "replay", "--all"]) == 0

    assert capsys.readouterr().out.startswith("3 event(s) re-queued;")
    assert set(statuses(engine).values()) == {inbox.PENDING}
    assert len(open_dead_letters(engine)) == 3


def test_replay_without_a_selector_exits_2_and_changes_nothing(engine, dead, capsys) -> None:
    assert main(["events", "replay"]) == 2

    assert "say which events" in capsys.readouterr().out
    assert list(statuses(engine).values()).count(inbox.DEAD) == 3


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


SERVE_SECRET = "serve-test-github-secret"


@dataclass
class Served:
    process: subprocess.Popen
    base_url: str
    home: Path
    log_path: Path

    def post(self, delivery: str, secret: str = SERVE_SECRET) -> tuple[int, dict]:
        body = push_body(delivery)
        request = urllib.request.Request(
            f"{self.base_url}/hooks/github",
            data=body,
            headers=github_headers(body, delivery, secret=secret),
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as refused:
            return refused.code, json.load(refused)

    def inbox(self) -> list[str]:
        engine = sa.create_engine(f"sqlite:///{self.home.resolve() / store.DB_FILE}")
        try:
            return [row.delivery_id for row in inbox_rows(engine)]
        finally:
            engine.dispose()


@contextlib.contextmanager
def serving(tmp_path: Path, workers: int, env_file: Path | None = None) -> Iterator[Served]:
    """`automation-pipelines webhooks serve` as the console script, with `workers` processes
    (WEBHOOKS_WORKERS), on a SQLite home of its own, once it answers /healthz with every worker up;
    killed with its session afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in DATABASE_ENV}
    env.pop("WEBHOOK_SOURCES_FILE", None)
    env.update(DAGSTER_HOME=str(home), WEBHOOKS_WORKERS=str(workers))
    env.pop(settings.FROM_FILE_ENV, None)
    if env_file is None:
        env["GITHUB_WEBHOOK_SECRET"] = SERVE_SECRET
    else:  # the secret comes from the file alone
        env.pop("GITHUB_WEBHOOK_SECRET", None)
        env[settings.ENV_FILE_ENV] = str(env_file)
    port = free_port()
    script = Path(sys.executable).with_name("automation-pipelines")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(script), "webhooks", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(process, f"http://127.0.0.1:{port}", home, log_path)
    forked = workers if workers > 1 else 0
    try:
        deadline = time.monotonic() + 30
        while not _healthy(served.base_url) or len(psutil.Process(process.pid).children()) < forked:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_takes_a_delivery_and_stops_on_sigterm(tmp_path: Path, workers: int) -> None:
    with serving(tmp_path, workers) as served:
        status, answer = served.post("serve-1")

        assert (status, answer["status"]) == (202, "accepted")
        assert served.inbox() == ["serve-1"]
        served.process.send_signal(signal.SIGTERM)
        returncode = served.process.wait(timeout=20)

    # After its graceful shutdown uvicorn re-raises the signal it caught, so -SIGTERM is clean too.
    log = served.log_path.read_text()
    assert returncode in (0, -signal.SIGTERM), log
    assert log.count("Application shutdown complete") == workers


def _writer_of(served: Served) -> psutil.Process:
    """The service's inbox writer: its one process that holds no TCP socket."""
    top = psutil.Process(served.process.pid)
    [writer] = [p for p in [top, *top.children()] if not p.net_connections(kind="tcp")]
    return writer


def _wait_gone(processes: list[psutil.Process], log_path: Path) -> None:
    _, alive = psutil.wait_procs(processes, timeout=20)
    assert not alive, log_path.read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_inbox_writer_ends_with_a_receiver_killed_outright(
    tmp_path: Path, workers: int
) -> None:
    """SIGKILL of the receiving process (the service's parent when it forks) leaves no writer
    behind: it sees its sockets close and ends."""
    with serving(tmp_path, workers) as served:
        assert served.post("before-kill")[0] == 202
        writer = _writer_of(served)
        os.kill(served.process.pid, signal.SIGKILL)
        _wait_gone([writer], served.log_path)
        assert served.inbox() == ["before-kill"]


def test_a_forked_writer_that_dies_stops_the_service_for_its_supervisor_to_restart(
    tmp_path: Path,
) -> None:
    """With worker processes the writer is one of the service's own: killed, it takes the
    service down with exit code 1 and a log line saying so, as a worker would."""
    with serving(tmp_path, 2) as served:
        assert served.post("before")[0] == 202
        everyone = psutil.Process(served.process.pid).children()
        os.kill(_writer_of(served).pid, signal.SIGKILL)
        assert served.process.wait(timeout=30) == 1, served.log_path.read_text()
        _wait_gone(everyone, served.log_path)
    log = served.log_path.read_text()
    assert "inbox writer 1 of 1 (pid " in log and "killed by SIGKILL; stopping the others" in log, (
        log
    )
    assert served.inbox() == ["before"]


def test_worker_processes_keep_each_event_once(tmp_path: Path) -> None:
    """Three processes posted to at once, re-deliveries among the events."""
    with serving(tmp_path, 3) as served:
        deliveries = [f"w-{n}" for n in range(300)] + [f"w-{n}" for n in range(0, 300, 5)]
        with ThreadPoolExecutor(24) as pool:
            statuses = [status for status, _ in pool.map(served.post, deliveries)]

        assert (statuses.count(202), statuses.count(200)) == (300, 60)
        assert sorted(served.inbox()) == sorted(set(deliveries))
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=20) == 0, served.log_path.read_text()
    assert served.log_path.read_text().count("Application shutdown complete") == 3


def test_the_runbook_rotation_keeps_both_secrets_for_the_window_then_only_the_new(
    tmp_path: Path,
) -> None:
    """The runbook's steps on the running receiver (2 workers): the new secret in the variable,
    the old one as _PREVIOUS with an end 4 s away, SIGHUP; both are accepted until the end, then
    the old one gets 401, with nothing restarted."""
    env_file = tmp_path / "rotated.env"
    env_file.write_text("GITHUB_WEBHOOK_SECRET=the-old-secret\n")
    with serving(tmp_path, 2, env_file) as served:
        pids = {served.process.pid, *(c.pid for c in psutil.Process(served.process.pid).children())}
        assert served.post("before", "the-old-secret")[0] == 202
        ends = datetime.now(UTC) + timedelta(seconds=4)
        env_file.write_text(
            "GITHUB_WEBHOOK_SECRET=the-new-secret\n"
            "GITHUB_WEBHOOK_SECRET_PREVIOUS=the-old-secret\n"
            f"GITHUB_WEBHOOK_SECRET_PREVIOUS_UNTIL={ends.isoformat()}\n"
        )
        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while served.log_path.read_text().count("webhook sources reloaded") < 2:
            assert time.monotonic() < deadline, served.log_path.read_text()
            time.sleep(0.1)
        during = [served.post(f"during-{n}-{s}", s)[0] for n in range(6) for s in OLD_NEW]
        assert datetime.now(UTC) < ends, "the window ended before it was tried"
        assert set(during) == {202}
        time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.3)
        after_old = [served.post(f"old-after-{n}", "the-old-secret")[0] for n in range(6)]
        after_new = [served.post(f"new-after-{n}", "the-new-secret")[0] for n in range(6)]
        assert (set(after_old), set(after_new)) == ({401}, {202})
        now = {served.process.pid, *(c.pid for c in psutil.Process(served.process.pid).children())}
        assert now == pids


OLD_NEW = ("the-old-secret", "the-new-secret")


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reads_a_secret_rotated_in_the_env_file(tmp_path: Path, workers: int) -> None:
    """Every worker answers with the new secret once told, none with the old one; nothing was
    restarted."""
    env_file = tmp_path / "rotated.env"
    env_file.write_text("GITHUB_WEBHOOK_SECRET=the-old-secret\n")
    with serving(tmp_path, workers, env_file) as served:
        pids = {served.process.pid, *(c.pid for c in psutil.Process(served.process.pid).children())}
        assert served.post("before", "the-old-secret")[0] == 202
        env_file.write_text("GITHUB_WEBHOOK_SECRET=the-new-secret\n")

        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while served.log_path.read_text().count("webhook sources reloaded") < workers:
            assert time.monotonic() < deadline, served.log_path.read_text()
            time.sleep(0.1)

        answers = [served.post(f"after-{n}", "the-new-secret")[0] for n in range(20)]
        refused = [served.post(f"old-{n}", "the-old-secret")[0] for n in range(20)]
        assert set(answers) == {202} and set(refused) == {401}
        now = {served.process.pid, *(c.pid for c in psutil.Process(served.process.pid).children())}
        assert now == pids

"""`make run`'s supervisor (`automation-pipelines dev`): it serves the UI and the webhook receiver,
its daemon is healthy as the UI reports it, a webhook secret rotated in `.env` as the runbook
says reaches the receiver with nothing restarted (old and new accepted until the window's end,
then only the new), and Ctrl-C or SIGTERM stops every process it started within 10 s."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from automation_pipelines import settings
from automation_pipelines.local_stack import free_port
from automation_pipelines.reliability.processes import ProcessGroup
from automation_pipelines_tests.e2e.harness import (
    graphql,
    http_get,
    start_dev,
    wait_for,
)
from automation_pipelines_tests.webhooks.conftest import github_headers, push_body

pytestmark = pytest.mark.e2e

DAEMON_HEALTH = (
    "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"
)


def _unhealthy(base_url: str) -> list[str] | None:
    statuses = graphql(base_url, DAEMON_HEALTH)["instance"]["daemonHealth"]["allDaemonStatuses"]
    required = [s for s in statuses if s["required"]]
    bad = [s["daemonType"] for s in required if not s["healthy"]]
    return bad if required else ["no daemon reported"]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_dev_serves_ui_and_stops_cleanly(tmp_path: Path, how: str) -> None:
    port, webhooks_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dev.log"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    env.pop("AUTOMATION_INSTANCE_CONFIG", None)
    env_file = tmp_path / ".env"  # the secret comes from the file alone, as in a deployment
    env_file.write_text("GITHUB_WEBHOOK_SECRET=the-old-secret\n")
    env.pop("GITHUB_WEBHOOK_SECRET", None)
    env.pop(settings.FROM_FILE_ENV, None)
    env[settings.ENV_FILE_ENV] = str(env_file)
    group = ProcessGroup()
    dev = start_dev(group, port, webhooks_port, env, log)

    def logs() -> str:
        return log.read_text(errors="replace")[-6000:]

    try:
        wait_for(
            "the UI", lambda: (http_get(f"{base_url}/server_info") or (0,))[0] == 200, 120, logs
        )
        page = http_get(base_url)
        assert page is not None and page[0] == 200 and b"<html" in page[1].lower()
        wait_for("a healthy daemon", lambda: _unhealthy(base_url) == [], 90, logs)
        health = f"http://127.0.0.1:{webhooks_port}/healthz"
        wait_for("the webhook receiver", lambda: (http_get(health) or (0,))[0] == 200, 60, logs)
        assert (tmp_path / "home" / "dagster.yaml").resolve().name == "dagster.yaml"
        started = group.members()
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for part in ("dagster-webserver", "dagster-daemon run", "code-server start"):
            assert part in names, names
        assert "webhooks serve" in names, names
        rotate_as_the_runbook_says(f"http://127.0.0.1:{webhooks_port}", env_file, group, log, logs)

        if how == "ctrl-c":
            os.killpg(dev.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        else:
            dev.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code = dev.wait(timeout=10)
        took = time.monotonic() - began
        left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"left behind after {took:.1f}s: {left}\n{logs()}"
        assert code == 0, logs()
        assert "every process of the topology has exited" in logs()
    finally:
        group.stop()


def rotate_as_the_runbook_says(
    base_url: str, env_file: Path, group: ProcessGroup, log: Path, logs
) -> None:
    """The runbook's rotation steps against the receiver `make run` started: the new secret in
    .env with the old one as _PREVIOUS until 4 s from now, SIGHUP to the receiver's processes
    (its `pkill -HUP -f 'automation-pipelines webhooks serve'`, held to this topology)."""
    posted = iter(range(1_000))

    def post(secret: str) -> int:
        delivery = f"rotation-{next(posted)}"
        body = push_body(delivery)
        request = urllib.request.Request(
            f"{base_url}/hooks/github", body, github_headers(body, delivery, secret=secret)
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as refused:
            return refused.code

    assert (post("the-old-secret"), post("the-new-secret")) == (202, 401), logs()
    ends = datetime.now(UTC) + timedelta(seconds=4)
    env_file.write_text(
        "GITHUB_WEBHOOK_SECRET=the-new-secret\n"
        "GITHUB_WEBHOOK_SECRET_PREVIOUS=the-old-secret\n"
        f"GITHUB_WEBHOOK_SECRET_PREVIOUS_UNTIL={ends.isoformat()}\n"
    )
    receivers = _receivers(group)
    # Each worker reads .env on its own; the kernel may merge the parent's forwarded SIGHUP with
    # the worker's own, so wait for one reload per worker process, named by its pid. The inbox
    # writer, forked beside them, reads no sources (and holds no TCP socket).
    workers = [
        p for p in receivers if p.parent() in receivers and p.net_connections(kind="tcp")
    ] or receivers
    read_before = len(log.read_bytes())
    for process in receivers:
        process.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        since = log.read_bytes()[read_before:].decode(errors="replace")
        return all(f"webhook sources reloaded in process {p.pid}:" in since for p in workers)

    wait_for("every receiver worker to read .env again", reloaded, 15, logs, interval=0.1)
    during = [post(secret) for _ in range(3) for secret in ("the-old-secret", "the-new-secret")]
    assert datetime.now(UTC) < ends, "the window ended before it was tried"
    assert set(during) == {202}, during
    time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.3)
    after = [post(secret) for _ in range(3) for secret in ("the-old-secret", "the-new-secret")]
    assert after == [401, 202] * 3, after
    assert _receivers(group) == receivers, "the receiver was restarted"


def _receivers(group: ProcessGroup) -> list[psutil.Process]:
    """The receiver's processes (its parent, workers and inbox writer), the ones the runbook's
    pkill signals."""
    return [p for p in group.members() if "webhooks serve" in " ".join(p.cmdline())]

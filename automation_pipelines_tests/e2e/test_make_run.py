"""`make run`'s supervisor (`automation-pipelines dev`): it serves the UI and the webhook receiver,
its daemon is healthy as the UI reports it, and Ctrl-C or SIGTERM stops every process it started
within 10 s."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from automation_pipelines.reliability.processes import ProcessGroup
from automation_pipelines_tests.conftest import free_port
from automation_pipelines_tests.e2e.harness import (
    graphql,
    http_get,
    start_dev,
    wait_for,
)

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

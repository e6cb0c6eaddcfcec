"""`automation-pipelines watchdog` from outside Dagster, against the real project code location
and a real daemon: healthy → exit 0 and nothing sent; daemon killed → exit non-zero and one
alert reaches a local HTTP server; healthy again → a recovery notice."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from automation_pipelines_tests.e2e.harness import venv_script, wait_for

pytestmark = pytest.mark.e2e
HEARTBEAT_AGE = 45  # the daemon beats every 30 s


def _watchdog(
    home: Path, receiver_url: str, receiver_port: int
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAGSTER_HOME": str(home), "ALERT_URLS": receiver_url}
    env.pop("ALERT_URLS_PLATFORM", None)
    return subprocess.run(
        [
            venv_script("automation-pipelines"),
            "watchdog",
            "--max-heartbeat-age",
            str(HEARTBEAT_AGE),
            "--max-watchdog-age",
            "300",
            "--ping-url",
            f"http://127.0.0.1:{receiver_port}/ping/abc",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(400)
def test_watchdog_cli_notices_a_dead_daemon(dagster_processes, json_receiver) -> None:
    processes = dagster_processes(
        "automation_pipelines.definitions", env={"ALERT_URLS": json_receiver.url}
    )
    processes.start_daemon()
    instance = processes.instance

    def watchdog_ticked() -> bool:
        states = [
            s for s in instance.all_instigator_state() if s.instigator_name == "watchdog_sensor"
        ]
        return bool(
            states
            and instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id, limit=1)
        )

    wait_for("the watchdog sensor's first tick", watchdog_ticked, 120, processes.logs)

    healthy = _watchdog(processes.home, json_receiver.url, json_receiver.port)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "✓ daemon heartbeats and the watchdog sensor are current" in healthy.stdout
    assert json_receiver.pings == ["/ping/abc"] and json_receiver.received == []

    daemon = processes.group.popens[0]
    os.killpg(daemon.pid, signal.SIGKILL)
    daemon.wait(timeout=30)
    time.sleep(HEARTBEAT_AGE + 5)

    down = _watchdog(processes.home, json_receiver.url, json_receiver.port)
    assert down.returncode == 1, down.stdout + down.stderr
    assert "has sent no heartbeat for over 45 s" in down.stdout
    titles = json_receiver.titles()
    assert len(titles) == 1 and titles[0].startswith("[DAEMON DOWN] monitoring: The Dagster daemon")
    assert json_receiver.pings[-1] == "/ping/abc/fail"

    again = _watchdog(processes.home, json_receiver.url, json_receiver.port)
    assert again.returncode == 1
    assert len(json_receiver.received) == 1  # still one incident, one alert
    assert json_receiver.received[0]["message"].count("Owner: team:platform") == 1

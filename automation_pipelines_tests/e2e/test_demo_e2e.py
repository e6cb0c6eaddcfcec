"""The newcomer's walkthrough: `make run` (the `dev` supervisor) on a fresh home, then
`make demo`. The demo's signed events reach the warehouse exactly once (its re-delivery is
acknowledged, not loaded again), its photos become web images, and it says where to look; without
the shared secret it refuses with what to do."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from automation_pipelines.automations.webhook_events.warehouse import events_table
from automation_pipelines.local_stack import free_port
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import store
from automation_pipelines.reliability.processes import ProcessGroup
from automation_pipelines_tests.e2e.harness import (
    dev_environment,
    http_get,
    start_dev,
    venv_script,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_make_targets_are_the_commands_this_test_runs() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^run: install\n\t\$\(BIN\)/automation-pipelines dev ", makefile, re.M)
    assert re.search(r"^demo: install\n\t\$\(BIN\)/automation-pipelines demo ", makefile, re.M)


def test_demo_without_the_secret_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_WEBHOOK_SECRET"}
    env["WEB_IMAGES_ROOT"] = str(tmp_path / "photos")
    done = subprocess.run(
        [venv_script("automation-pipelines"), "demo"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "GITHUB_WEBHOOK_SECRET is not set: add it to .env" in done.stderr
    assert not (tmp_path / "photos").exists()


@pytest.mark.timeout(420)
def test_walkthrough_demo_flows_through(tmp_path: Path) -> None:
    port, webhooks_port = free_port(), free_port()
    photos = tmp_path / "photos"
    env = dev_environment(tmp_path, GITHUB_WEBHOOK_SECRET="walkthrough-secret")
    log = tmp_path / "run.log"
    group = ProcessGroup()
    try:
        dev = start_dev(group, port, webhooks_port, env, log)
        logs = lambda: log.read_text(errors="replace")[-5000:]  # noqa: E731
        health = f"http://127.0.0.1:{webhooks_port}/healthz"
        wait_for("the receiver", lambda: (http_get(health) or (0,))[0] == 200, 120, logs)
        ui = f"http://127.0.0.1:{port}"
        wait_for("the UI", lambda: (http_get(f"{ui}/server_info") or (0,))[0] == 200, 120, logs)

        demo = subprocess.run(
            [
                venv_script("automation-pipelines"),
                "demo",
                "--ui",
                ui,
                "--receiver",
                f"http://127.0.0.1:{webhooks_port}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

        assert demo.returncode == 0, demo.stderr
        assert "Sent 12 signed webhook events (1 re-delivery acknowledged" in demo.stdout
        assert f"{ui}/assets/webhook_events_warehouse" in demo.stdout
        engine = store.engine(f"sqlite:///{tmp_path / 'home' / 'automation_pipelines.db'}")

        def loaded() -> list[int]:
            with engine.connect() as conn:
                return conn.execute(sa.select(events_table.c.load_count)).scalars().all()

        wait_for("the 12 events in the warehouse", lambda: len(loaded()) == 12, 180, logs)
        assert loaded() == [1] * 12
        wait_for(
            "three photos rendered",
            lambda: len(list((photos / "web").glob("demo-*-400.*.webp"))) == 3,
            240,
            logs,
        )
        wait_for(
            "the originals in processed/",
            lambda: len(list((photos / "processed").glob("demo-*.jpg"))) == 3,
            60,
            logs,
        )
        assert list((photos / "inbox").glob("*.jpg")) == []
        os.killpg(dev.pid, signal.SIGTERM)
        assert dev.wait(timeout=30) == 0
    finally:
        group.stop()
        store.dispose_all()

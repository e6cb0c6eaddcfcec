"""Web images with the real daemon and the project's own code location: a photo dropped in the
inbox appears as web images in the output folder, and the original moves to processed/."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines_tests.automations.web_images.photos import photo
from automation_pipelines_tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)
def test_dropped_photo_becomes_web_images(dagster_processes, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "inbox").mkdir(parents=True)
    processes = dagster_processes(
        "automation_pipelines.definitions", env={"WEB_IMAGES_ROOT": str(root)}
    )
    processes.start_daemon()
    staged = photo(tmp_path / "staging" / "holiday.jpg", 2400)
    staged.rename(root / "inbox" / "holiday.jpg")  # how a finished upload lands: one rename

    outputs = [
        root / "web" / f"holiday-{w}.{ext}" for w in (1600, 800, 400) for ext in ("webp", "jpg")
    ]
    wait_for("the web images", lambda: all(p.exists() for p in outputs), 180, processes.logs)
    wait_for(
        "the original in processed/",
        lambda: (root / "processed" / "holiday.jpg").exists(),
        60,
        processes.logs,
    )
    assert not (root / "inbox" / "holiday.jpg").exists()
    run = processes.wait_for_run("render_web_images_job")
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags.get("dagster/sensor_name") == "photo_inbox_sensor"

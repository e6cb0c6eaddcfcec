"""Web images with the real daemon and the project's own code location: a photo dropped in the
inbox appears as web images in the output folder, and the original moves to processed/; a
corpus of 78 kinds of input is published right or quarantined with reasons, and the sensor keeps
taking photos after it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.reliability.deadletters import QUARANTINED_TAG
from automation_pipelines_tests.automations.web_images import corpus
from automation_pipelines_tests.automations.web_images.photos import photo, rendition_pattern
from automation_pipelines_tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e

IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


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

    patterns = [
        rendition_pattern("holiday.jpg", w, ext)
        for w in (1600, 800, 400)
        for ext in ("webp", "jpg")
    ]

    def all_written() -> bool:
        names = [p.name for p in (root / "web").glob("holiday.jpg-*")]
        return all(any(p.fullmatch(name) for name in names) for p in patterns)

    wait_for("the web images", all_written, 180, processes.logs)
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


@pytest.mark.timeout(420)
def test_a_corpus_of_78_kinds_through_the_daemon(dagster_processes, tmp_path: Path) -> None:
    """Every good input published right, every other one quarantined with its reason (the cut
    files after their upload grace), every run a success, and the sensor still taking photos."""
    root = tmp_path / "photos"
    (root / "inbox").mkdir(parents=True)
    processes = dagster_processes(
        "automation_pipelines.definitions",
        env={
            "WEB_IMAGES_ROOT": str(root),
            "WEB_IMAGES_QUIET_SECONDS": "1",
            "WEB_IMAGES_TRUNCATED_GRACE_SECONDS": "5",
        },
    )
    processes.start_daemon()
    cases = corpus.build()
    staging = root / ".staging"
    corpus.stage(cases, staging)
    for entry in staging.iterdir():  # each a finished upload: one rename
        entry.rename(root / "inbox" / entry.name)

    def inbox_empty() -> bool:
        return not any(p for p in (root / "inbox").rglob("*") if not p.is_dir() or p.is_symlink())

    wait_for("every input handled", inbox_empty, 300, processes.logs)
    instance = processes.instance
    unfinished = dg.RunsFilter(statuses=[*IN_PROGRESS, dg.DagsterRunStatus.QUEUED])

    wait_for("the runs to end", lambda: not instance.get_runs(unfinished), 120, processes.logs)
    runs = instance.get_runs(dg.RunsFilter(job_name="render_web_images_job"))
    assert runs and {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert any(QUARANTINED_TAG in run.tags for run in runs)
    corpus.check_outputs(cases, root)
    corpus.check_quarantine(cases, root)

    photo(tmp_path / "later" / "after.jpg", 900).rename(root / "inbox" / "after.jpg")
    wait_for(
        "a photo dropped afterwards",
        lambda: len(list((root / "web").glob("after.jpg-*"))) == 4,
        120,
        processes.logs,
    )

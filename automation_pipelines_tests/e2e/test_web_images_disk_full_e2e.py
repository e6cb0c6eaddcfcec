"""web_images on a volume that fills up mid-batch, with the real daemon: the run fails with
"disk full", the owner is alerted, the sensor then requests nothing while the volume lacks space
(saying so in its tick) instead of burning runs towards the circuit breaker, and once space is
freed every waiting photo is rendered with no one touching the automation.

The photos root is a small tmpfs mounted for the test, which needs root. In CI (run as root) a
failed mount is a failure; elsewhere a non-root run skips with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.reliability import breaker
from automation_pipelines_tests.e2e import web_images_support as support
from automation_pipelines_tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e

PHOTOS = 3
WIDTH = 1000


def fill(volume: Path) -> Path:
    """A ballast file taking every free byte of the volume."""
    ballast = volume / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        os.write(os.open(volume / "probe", os.O_WRONLY | os.O_CREAT), b"x")
    assert full.value.errno == errno.ENOSPC
    return ballast


def sensor_skips(instance: dg.DagsterInstance) -> list[str]:
    states = [s for s in instance.all_instigator_state() if s.name == "photo_inbox_sensor"]
    if not states:
        return []
    ticks = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id, limit=5)
    return [tick.skip_reason or "" for tick in ticks]


def step_failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=5
    ).records
    errors = [r.event_log_entry.dagster_event.step_failure_data.error for r in records]
    return "\n".join(error.message for error in errors if error is not None)


@pytest.mark.timeout(600)
def test_a_full_disk_fails_one_run_then_photos_go_once_space_is_freed(
    dagster_processes, small_volume: Path, tmp_path: Path, json_receiver
) -> None:
    began = time.monotonic()
    root = small_volume
    names = [f"holiday-{n}.jpg" for n in range(PHOTOS)]
    support.stage_photos(root, support.make_sources(tmp_path / "sources", WIDTH), names)
    processes = dagster_processes(
        "automation_pipelines.definitions",
        env={
            "WEB_IMAGES_ROOT": str(root),
            "WEB_IMAGES_FREE_SPACE_MARGIN_MB": "1",
            "ALERT_URLS": json_receiver.url,
        },
    )
    processes.start_daemon()
    instance = processes.instance
    runs = lambda: instance.get_runs(dg.RunsFilter(job_name=support.JOB))  # noqa: E731

    # The sensor saw room for the batch and asked for a run; before its worker starts, the
    # volume fills up.
    [first] = wait_for("the first run", runs, 120, processes.logs, interval=0.05)
    ballast = fill(root)

    def failed() -> bool:
        status = instance.get_run_by_id(first.run_id).status
        assert status != dg.DagsterRunStatus.SUCCESS, "the run finished before the disk filled"
        return status == dg.DagsterRunStatus.FAILURE

    wait_for("the run to fail", failed, 180, processes.logs)
    failure = step_failure_message(instance, first.run_id)
    assert "No space left on device" in failure and "disk full" in failure, failure
    skip = wait_for(
        "the sensor to wait for disk space",
        lambda: next((s for s in sensor_skips(instance) if "waiting for disk space" in s), None),
        120,
        processes.logs,
    )
    assert f"free on {root}" in skip and f"{PHOTOS} file(s) wait" in skip, skip
    assert [r.run_id for r in runs()] == [first.run_id]  # no run wasted on a full disk
    assert sorted(p.name for p in (root / "inbox").iterdir()) == sorted(names)

    ballast.unlink()
    freed = time.monotonic()
    wait_for(
        "every photo rendered after space was freed",
        lambda: (
            (root / "processed").is_dir() and len(list((root / "processed").iterdir())) == PHOTOS
        ),
        300,
        processes.logs,
    )
    recovered = time.monotonic() - freed
    wait_for(
        "the recovery run to succeed",
        lambda: any(r.status == dg.DagsterRunStatus.SUCCESS for r in runs()),
        60,
        processes.logs,
    )
    support.check_every_photo_delivered_once(root, processes.home, names)
    statuses = [r.status for r in runs()]
    assert statuses.count(dg.DagsterRunStatus.FAILURE) == 1, statuses
    state = breaker.get_state(breaker.engine_for(instance), "web_images")
    assert state is None or not state.open, state
    alert = wait_for(
        "the owner's alert of the failed run",
        lambda: next(
            (a for a in json_receiver.received if a["title"].startswith("[FAILED]")), None
        ),
        120,
        processes.logs,
    )
    assert "render_web_images_job" in alert["title"] + alert["message"]
    print(
        f"\nphotos rendered {recovered:.0f}s after space was freed; "
        f"whole test {time.monotonic() - began:.0f}s"
    )

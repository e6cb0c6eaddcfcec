"""Inbox sensor scenarios: first files (taken on the second look), nothing new, a half-written
file waits, a burst above the cap is split across ticks, own output and temp names ignored, a
file is requested once, and the real sensor honours the circuit breaker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.automations.web_images import sensors
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability import breaker

NOW = 1_800_000_000.0


@pytest.fixture
def folders(tmp_path: Path) -> PhotoFolders:
    folders = PhotoFolders(root=str(tmp_path / "photos"))
    folders.inbox.mkdir(parents=True)
    return folders


def drop(folders: PhotoFolders, relative: str, data: bytes = b"\xff\xd8jpeg", mtime=None) -> Path:
    path = folders.inbox / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


def files_of(requests) -> list[list[str]]:
    return [r.run_config["ops"]["render_web_images"]["config"]["files"] for r in requests]


def test_first_files_are_taken_on_the_second_look(folders) -> None:
    drop(folders, "a.jpg", mtime=1)
    drop(folders, "trip/b.JPG", mtime=2)
    requests, cursor, sentence = sensors.evaluate_inbox(folders, None, NOW)
    assert requests == [] and "2 still being written" in sentence
    requests, cursor, _ = sensors.evaluate_inbox(folders, cursor, NOW + 15)
    assert files_of(requests) == [["a.jpg", "trip/b.JPG"]]
    assert requests[0].run_key.startswith("photos-")


def test_nothing_new(folders) -> None:
    requests, cursor, sentence = sensors.evaluate_inbox(folders, None, NOW)
    requests2, _, _ = sensors.evaluate_inbox(folders, cursor, NOW + 15)
    assert requests == requests2 == []
    assert "0 file(s) in 0 run(s)" in sentence


def test_half_written_file_waits_until_it_stops_changing(folders) -> None:
    path = drop(folders, "big.jpg", b"x" * 100, mtime=10)
    _, cursor, _ = sensors.evaluate_inbox(folders, None, NOW)
    path.write_bytes(b"x" * 200)  # the copy is still going
    os.utime(path, ns=(20, 20))
    requests, cursor, sentence = sensors.evaluate_inbox(folders, cursor, NOW + 15)
    assert requests == [] and "1 still being written" in sentence
    requests, cursor, _ = sensors.evaluate_inbox(folders, cursor, NOW + 30)
    assert files_of(requests) == [["big.jpg"]]


def test_burst_above_the_cap_is_split_across_ticks(folders) -> None:
    per_tick = sensors.MAX_FILES_PER_RUN * sensors.MAX_RUNS_PER_TICK
    total = per_tick + 30
    for n in range(total):
        drop(folders, f"burst/{n:04d}.jpg", mtime=n + 1)
    _, cursor, _ = sensors.evaluate_inbox(folders, None, NOW)
    first, cursor, sentence = sensors.evaluate_inbox(folders, cursor, NOW + 15)
    assert [len(f) for f in files_of(first)] == [
        sensors.MAX_FILES_PER_RUN
    ] * sensors.MAX_RUNS_PER_TICK
    assert "30 left for the next tick" in sentence
    second, cursor, _ = sensors.evaluate_inbox(folders, cursor, NOW + 30)
    assert [len(f) for f in files_of(second)] == [sensors.MAX_FILES_PER_RUN, 5]
    taken = [name for batch in files_of(first) + files_of(second) for name in batch]
    assert sorted(taken) == sorted(f"burst/{n:04d}.jpg" for n in range(total))
    assert len({r.run_key for r in first + second}) == len(first + second)


def test_own_output_temp_names_and_other_files_are_ignored(tmp_path) -> None:
    # Output folders placed inside the inbox must never feed the sensor.
    folders = PhotoFolders(root=str(tmp_path / "p"))
    folders.inbox.mkdir(parents=True)
    nested = PhotoFolders(root=str(folders.inbox))
    for folder, name in [
        (nested.output, "a-800.jpg"),
        (nested.processed, "b.jpg"),
        (nested.quarantine, "c.jpg"),
    ]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    drop(nested, ".hidden.jpg")
    drop(nested, "copying.jpg.part")
    drop(nested, "notes.txt")
    drop(nested, "real.jpg", mtime=5)
    own = [nested.output, nested.processed, nested.quarantine]
    assert [rel for rel, _, _ in sensors.scan(nested.inbox, own)] == ["real.jpg"]


def test_a_file_is_requested_once_and_again_only_after_a_long_wait(folders) -> None:
    drop(folders, "a.jpg", mtime=1)
    _, cursor, _ = sensors.evaluate_inbox(folders, None, NOW)
    first, cursor, _ = sensors.evaluate_inbox(folders, cursor, NOW + 15)
    again, cursor, _ = sensors.evaluate_inbox(folders, cursor, NOW + 30)
    assert len(first) == 1 and again == []
    late = NOW + 30 + sensors.REQUEST_AGAIN_AFTER_SECONDS
    retry, cursor, _ = sensors.evaluate_inbox(folders, cursor, late)
    assert files_of(retry) == [["a.jpg"]]
    (folders.inbox / "a.jpg").unlink()
    _, cursor, _ = sensors.evaluate_inbox(folders, cursor, late + 15)
    assert json.loads(cursor)["requested"] == {}


def test_real_sensor_honours_the_breaker(folders, sqlite_instance) -> None:
    drop(folders, "a.jpg", mtime=1)

    def tick(cursor):
        context = dg.build_sensor_context(
            instance=sqlite_instance, cursor=cursor, resources={"folders": folders}
        )
        return sensors.photo_inbox_sensor(context), context.cursor

    result, cursor = tick(None)
    assert isinstance(result, dg.SkipReason) and "1 still being written" in result.skip_message
    breaker.pause(breaker.engine_for(sqlite_instance), "web_images", "test", by="test")
    result, _ = tick(cursor)
    assert isinstance(result, dg.SkipReason) and "web_images is paused" in result.skip_message
    breaker.resume(breaker.engine_for(sqlite_instance), "web_images")
    result, _ = tick(cursor)
    assert [r.run_key for r in result] and files_of(result) == [["a.jpg"]]

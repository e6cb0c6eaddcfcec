"""Inbox sensor scenarios: quiet files taken on the first look, a renamed file waits only its
quiet time, nothing new, a half-written file waits, a burst above the cap is split across ticks,
own output and temp names ignored and every other file taken, a file is requested once, and the
real sensor honours the circuit breaker.

With the real sensor on a real instance (runs created the way the daemon creates them, carrying
the request's run key): a file whose run failed is requested again after a backoff counted from
the run's end, under a new run key; a run still queued or running, or one Dagster will retry,
is not doubled; with too little free space on the output volume nothing is requested and the
tick says how much is free, and the first tick after space is back requests the files; an
unreadable inbox folder is named and looked at again next tick."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines.automations.web_images import sensors
from automation_pipelines.automations.web_images.book import TableBook
from automation_pipelines.automations.web_images.jobs import render_web_images_job
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability import breaker
from automation_pipelines.reliability.listening import POLL_SECONDS
from automation_pipelines.reliability.tags import WILL_RETRY_TAG
from automation_pipelines_tests.automations.web_images.ticks import batch_of, look_once

NOW = 1_800_000_000.0


@pytest.fixture
def folders(tmp_path: Path) -> PhotoFolders:
    """No quiet time: these scenarios are about looks and runs (quiet time has tests of its
    own)."""
    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=0.0)
    folders.inbox.mkdir(parents=True)
    return folders


def drop(folders: PhotoFolders, relative: str, data: bytes = b"\xff\xd8jpeg", mtime=None) -> Path:
    path = folders.inbox / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


def files_of(requests, book=None) -> list[list[str]]:
    """Each request's files: listed in its config, or (the real sensor's) those `book` holds
    for its batch."""
    return [batch_of(r, book)[0] for r in requests]


def test_quiet_files_are_taken_on_the_first_look(folders) -> None:
    drop(folders, "a.jpg", mtime=1)
    drop(folders, "trip/b.JPG", mtime=2)
    requests, cursor, _ = look_once(folders, None, NOW)
    assert files_of(requests) == [["a.jpg", "trip/b.JPG"]]
    assert requests[0].run_key.startswith("photos-")
    again, _, sentence = look_once(folders, cursor, NOW + 5)
    assert again == [] and "2 waiting for their run" in sentence


def _staged(tmp_path: Path, name: str, written_ago: float) -> Path:
    """A finished upload in a staging folder beside the inbox, last written `written_ago` s ago."""
    staged = tmp_path / "staging" / name
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"\xff\xd8jpeg")
    when = time.time_ns() - int(written_ago * 1e9)
    os.utime(staged, ns=(when, when))
    return staged


def test_a_finished_upload_renamed_in_is_taken_at_once(tmp_path) -> None:
    """Its mtime is the end of the upload, long ago; the rename moved its ctime alone, and a
    rename is not a write (a sync tool's usual way to deliver)."""
    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=2.0)
    folders.inbox.mkdir(parents=True)
    _staged(tmp_path, "old.jpg", written_ago=60).rename(folders.inbox / "old.jpg")
    renamed = os.lstat(folders.inbox / "old.jpg").st_ctime
    requests, _, _ = look_once(folders, None, renamed + 0.1)
    assert files_of(requests) == [["old.jpg"]]


def test_a_file_renamed_in_right_after_its_last_write_waits_out_the_quiet_time(tmp_path) -> None:
    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=2.0)
    folders.inbox.mkdir(parents=True)
    _staged(tmp_path, "new.jpg", written_ago=0).rename(folders.inbox / "new.jpg")
    written = os.lstat(folders.inbox / "new.jpg").st_mtime
    requests, cursor, sentence = look_once(folders, None, written + 1.0)
    assert requests == [] and "1 still being written (written in the last 2 s" in sentence
    requests, _, _ = look_once(folders, cursor, written + 2.05)
    assert files_of(requests) == [["new.jpg"]]


@pytest.mark.parametrize("ahead_seconds", [60, 10 * 365 * 86400])
def test_a_file_whose_mtime_is_in_the_future_is_taken_once_its_ctime_is_quiet(
    tmp_path, ahead_seconds: int
) -> None:
    """A clock ahead (a camera's, another machine's, `touch -d`) must not hold a photo back
    until that moment: only the kernel's ctime is never ahead of now."""
    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=2.0)
    folders.inbox.mkdir(parents=True)
    drop(folders, "ahead.jpg", mtime=time.time_ns() + ahead_seconds * 10**9)
    changed = os.lstat(folders.inbox / "ahead.jpg").st_ctime
    requests, cursor, sentence = look_once(folders, None, changed + 1.0)
    assert requests == [] and "1 still being written" in sentence
    requests, _, _ = look_once(folders, cursor, changed + 2.05)
    assert files_of(requests) == [["ahead.jpg"]]


def test_nothing_new(folders) -> None:
    requests, cursor, sentence = look_once(folders, None, NOW)
    requests2, _, _ = look_once(folders, cursor, NOW + 15)
    assert requests == requests2 == []
    assert "0 file(s) in 0 run(s)" in sentence


def test_half_written_file_waits_until_it_stops_changing(tmp_path) -> None:
    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=2.0)
    folders.inbox.mkdir(parents=True)
    path = drop(folders, "big.jpg", b"x" * 100)
    requests, cursor, sentence = look_once(folders, None, time.time())
    assert requests == [] and "1 still being written" in sentence
    with path.open("ab") as copy:  # the copy is still going
        copy.write(b"x" * 100)
    written = os.lstat(path).st_ctime
    requests, cursor, _ = look_once(folders, cursor, written + 1.5)
    assert requests == []
    requests, cursor, _ = look_once(folders, cursor, written + 2.05)
    assert files_of(requests) == [["big.jpg"]]


def test_a_file_seen_different_on_the_last_look_waits_for_the_next(folders) -> None:
    """Quiet by its times, yet not what the last look saw: taken once two looks agree."""
    path = drop(folders, "a.jpg", b"x" * 100, mtime=10)
    seen = {"seen": {"a.jpg": [50, 10]}, "requested": {}}
    requests, cursor, sentence = look_once(folders, json.dumps(seen), NOW)
    assert requests == [] and "1 still being written" in sentence
    assert path.stat().st_size == 100
    requests, _, _ = look_once(folders, cursor, NOW + 5)
    assert files_of(requests) == [["a.jpg"]]


def test_burst_above_the_cap_is_split_across_ticks(folders) -> None:
    folders = PhotoFolders(root=folders.root, quiet_seconds=0.0, max_files_per_run=100)
    per_tick = 100 * sensors.MAX_RUNS_PER_TICK
    total = per_tick + 30
    for n in range(total):
        drop(folders, f"burst/{n:04d}.jpg", mtime=n + 1)
    first, cursor, sentence = look_once(folders, None, NOW)
    assert [len(f) for f in files_of(first)] == [100] * sensors.MAX_RUNS_PER_TICK
    assert "30 left for the next tick" in sentence
    second, cursor, _ = look_once(folders, cursor, NOW + 30)
    assert [len(f) for f in files_of(second)] == [30]
    taken = [name for batch in files_of(first) + files_of(second) for name in batch]
    assert sorted(taken) == sorted(f"burst/{n:04d}.jpg" for n in range(total))
    assert len({r.run_key for r in first + second}) == len(first + second)


def test_own_output_and_temp_names_are_ignored_other_files_taken(tmp_path) -> None:
    # Output folders placed inside the inbox must never feed the sensor; every other file is
    # taken, whatever its name (the run quarantines what is not a photo), and temp names are
    # noted for the tick.
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
    notes = sensors.ScanNotes()
    found = sorted(entry.rel for entry in sensors.scan(nested.inbox, own, notes=notes))
    assert found == ["notes.txt", "real.jpg"]
    assert sorted(notes.temporary) == [".hidden.jpg", "copying.jpg.part"]


def test_a_file_whose_run_is_gone_is_requested_again_after_a_long_wait(folders) -> None:
    drop(folders, "a.jpg", mtime=1)
    first, cursor, _ = look_once(folders, None, NOW + 15)
    again, cursor, _ = look_once(folders, cursor, NOW + 30)
    assert len(first) == 1 and again == []
    late = NOW + 30 + sensors.REQUEST_AGAIN_AFTER_SECONDS
    retry, cursor, _ = look_once(folders, cursor, late)
    assert files_of(retry) == [["a.jpg"]]
    (folders.inbox / "a.jpg").unlink()
    _, cursor, _ = look_once(folders, cursor, late + 15)
    assert json.loads(cursor)["requested"] == {}


def test_real_sensor_honours_the_breaker(folders, sqlite_instance) -> None:
    drop(folders, "a.jpg", mtime=1)

    def tick(cursor):
        context = dg.build_sensor_context(
            instance=sqlite_instance, cursor=cursor, resources={"folders": folders}
        )
        return sensors.photo_inbox_sensor(context), context.cursor

    breaker.pause(breaker.engine_for(sqlite_instance), "web_images", "test", by="test")
    result, cursor = tick(None)
    assert isinstance(result, dg.SkipReason) and "web_images is paused" in result.skip_message
    breaker.resume(breaker.engine_for(sqlite_instance), "web_images")
    result, _ = tick(cursor)
    assert [r.run_key for r in result] and files_of(result, book_of(sqlite_instance, folders)) == [
        ["a.jpg"]
    ]


# -- the real sensor on a real instance ----------------------------------------------------------


def tick(instance, folders, cursor):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"folders": folders}
    )
    return sensors.photo_inbox_sensor(context), context.cursor


def book_of(instance, folders: PhotoFolders) -> TableBook:
    """The sensor's per-file state of these folders, in the instance's project database."""
    return TableBook(breaker.engine_for(instance), folders.root)


def requested(result) -> list[dg.RunRequest]:
    assert isinstance(result, list), f"expected run requests, got {result}"
    return result


def skipped(result) -> str:
    assert isinstance(result, dg.SkipReason), f"expected a skip, got {result}"
    return result.skip_message


def launch(instance, request: dg.RunRequest, status=dg.DagsterRunStatus.STARTED) -> dg.DagsterRun:
    """What the daemon makes of a request: a run of the job carrying the request's run key."""
    return instance.create_run_for_job(
        render_web_images_job,
        run_config=request.run_config,
        tags={**request.tags, sensors.RUN_KEY_TAG: request.run_key},
        status=status,
    )


def record_event(instance, run, kind: dg.DagsterEventType, seconds_ago: float = 0.0) -> None:
    """A run event as the run worker or the daemon writes it, dated `seconds_ago`."""
    instance.handle_new_event(
        dg.EventLogEntry(
            error_info=None,
            level=logging.INFO,
            user_message="",
            run_id=run.run_id,
            timestamp=time.time() - seconds_ago,
            job_name=run.job_name,
            dagster_event=dg.DagsterEvent(
                event_type_value=kind.value, job_name=run.job_name, message=kind.value
            ),
        )
    )


def end(instance, run, seconds_ago: float, *, will_retry: bool = False, failed: bool = True):
    """Finish `run` as if it had ended `seconds_ago`, with Dagster's retry decision."""
    kind = dg.DagsterEventType.RUN_FAILURE if failed else dg.DagsterEventType.RUN_CANCELED
    record_event(instance, run, kind, seconds_ago)
    if failed:
        instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: str(will_retry).lower()})


def first_request(instance, folders, *names: str) -> tuple[dg.RunRequest, str]:
    for name in names:
        drop(folders, name, mtime=len(name))
    result, cursor = tick(instance, folders, None)
    [request] = requested(result)
    return request, cursor


def test_a_failed_run_is_requested_again_after_backoff_under_a_new_run_key(
    folders, sqlite_instance
) -> None:
    instance = sqlite_instance
    request_a, cursor = first_request(instance, folders, "a.jpg")
    run_a = launch(instance, request_a)
    drop(folders, "b.jpg", mtime=7)
    result, cursor = tick(instance, folders, cursor)
    [request_b] = requested(result)
    run_b = launch(instance, request_b)
    message = skipped(tick(instance, folders, cursor)[0])
    assert "2 waiting for their run" in message  # both runs are still going

    # a's run failed long enough ago, b's just now: only a is requested again.
    end(instance, run_a, seconds_ago=sensors.re_request_delay(0, request_a.run_key) + 1)
    end(instance, run_b, seconds_ago=0)
    result, cursor = tick(instance, folders, cursor)
    [again] = requested(result)
    assert files_of([again], book_of(instance, folders)) == [["a.jpg"]]
    assert again.run_key not in (request_a.run_key, request_b.run_key)
    assert again.run_key.endswith("-try2")
    assert "2 waiting for their run" in skipped(tick(instance, folders, cursor)[0])

    # The second attempt fails too: its backoff is longer than the first one was.
    run_again = launch(instance, again)
    end(instance, run_again, seconds_ago=sensors.re_request_delay(0, again.run_key) + 1)
    assert sensors.re_request_delay(1, again.run_key) > sensors.re_request_delay(0, again.run_key)
    assert "2 waiting for their run" in skipped(tick(instance, folders, cursor)[0])
    (folders.inbox / "b.jpg").unlink()  # b left the inbox after all
    _, cursor = tick(instance, folders, cursor)
    asked = book_of(instance, folders).load()["requested"]
    assert list(asked) == ["a.jpg"]  # only files still in the inbox
    assert asked["a.jpg"][3:] == [again.run_key, 1]


def test_every_backoff_is_capped_and_jittered() -> None:
    delays = [sensors.re_request_delay(attempt, "photos-x") for attempt in range(8)]
    assert delays == [sensors.re_request_delay(attempt, "photos-x") for attempt in range(8)]
    assert all(d <= sensors.RE_REQUEST_MAX_SECONDS for d in delays)
    assert delays[0] >= sensors.RE_REQUEST_BASE_SECONDS / 2
    keys = {sensors.re_request_delay(0, f"photos-{n}") for n in range(20)}
    assert len(keys) > 1  # jitter spreads files that failed together


def test_a_run_not_started_yet_or_running_is_not_requested_again(folders, sqlite_instance) -> None:
    instance = sqlite_instance
    request, cursor = first_request(instance, folders, "a.jpg")
    # Waiting in the queue: a QUEUED run needs a code location; NOT_STARTED is as unfinished.
    run = launch(instance, request, status=dg.DagsterRunStatus.NOT_STARTED)
    assert "1 waiting for their run" in skipped(tick(instance, folders, cursor)[0])
    record_event(instance, run, dg.DagsterEventType.RUN_START)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    assert "1 waiting for their run" in skipped(tick(instance, folders, cursor)[0])
    # Not even after the long fallback: the run exists and has not finished.
    later = time.time() + 10 * sensors.REQUEST_AGAIN_AFTER_SECONDS
    requests, _, _ = look_once(
        folders,
        cursor,
        later,
        runs=lambda key: sensors.run_outcome(instance, key, later),
        book=book_of(instance, folders),
    )
    assert requests == []


def test_a_run_dagster_will_retry_is_not_requested_again(folders, sqlite_instance) -> None:
    instance = sqlite_instance
    request, cursor = first_request(instance, folders, "a.jpg")
    run = launch(instance, request)
    end(instance, run, seconds_ago=sensors.RE_REQUEST_MAX_SECONDS + 1, will_retry=True)
    assert "1 waiting for their run" in skipped(tick(instance, folders, cursor)[0])
    # Dagster's retry carries the parent's run key; while it runs, nothing is requested.
    retry = launch(instance, request, status=dg.DagsterRunStatus.NOT_STARTED)
    assert "1 waiting for their run" in skipped(tick(instance, folders, cursor)[0])
    end(instance, retry, seconds_ago=sensors.RE_REQUEST_MAX_SECONDS + 1, will_retry=False)
    [again] = requested(tick(instance, folders, cursor)[0])
    assert (
        files_of([again], book_of(instance, folders)) == [["a.jpg"]]
        and again.run_key != request.run_key
    )


def test_a_canceled_run_is_requested_again_too(folders, sqlite_instance) -> None:
    instance = sqlite_instance
    request, cursor = first_request(instance, folders, "a.jpg")
    end(instance, launch(instance, request), seconds_ago=600, failed=False)
    [again] = requested(tick(instance, folders, cursor)[0])
    assert again.run_key.endswith("-try2")


def fake_disk(monkeypatch, free_bytes: dict) -> list[Path]:
    """shutil.disk_usage reporting `free_bytes["free"]`; returns the paths it was asked about."""
    asked: list[Path] = []
    real = shutil.disk_usage

    def disk_usage(path):
        asked.append(Path(path))
        usage = real(path)
        return type(usage)(usage.total, usage.total - free_bytes["free"], free_bytes["free"])

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    return asked


def test_low_free_space_requests_nothing_until_space_is_back(
    tmp_path, sqlite_instance, monkeypatch
) -> None:
    folders = PhotoFolders(
        root=str(tmp_path / "photos"), free_space_margin_mb=1.0, quiet_seconds=0.0
    )
    folders.inbox.mkdir(parents=True)
    drop(folders, "a.jpg", b"x" * 1_500_000, mtime=1)
    drop(folders, "b.jpg", b"x" * 1_500_000, mtime=2)
    disk = {"free": 2_000_000}
    asked = fake_disk(monkeypatch, disk)

    _, cursor = tick(sqlite_instance, folders, None)
    message = skipped(tick(sqlite_instance, folders, cursor)[0])
    assert message.startswith("waiting for disk space: 2.0 MB free on ")
    assert "the next 2 photo(s) need 4.0 MB (3.0 MB of photos + 1.0 MB margin)" in message
    assert "2 file(s) wait" in message
    assert asked[-1] == Path(folders.root)  # web/ does not exist yet: the root's volume
    result, cursor = tick(sqlite_instance, folders, cursor)
    skipped(result)
    assert book_of(sqlite_instance, folders).load()["requested"] == {}  # nothing asked for

    folders.output.mkdir()
    disk["free"] = 3_000_000  # room for one photo and the margin
    [one] = requested(tick(sqlite_instance, folders, cursor)[0])
    assert (
        files_of([one], book_of(sqlite_instance, folders)) == [["a.jpg"]]
        and asked[-1] == folders.output
    )
    disk["free"] = 100_000_000
    result, cursor = tick(sqlite_instance, folders, cursor)
    assert files_of(requested(result), book_of(sqlite_instance, folders)) == [
        ["b.jpg"]
    ]  # a.jpg's run is asked for already


def test_after_a_disk_full_failure_files_go_on_the_first_tick_with_space(
    folders, sqlite_instance, monkeypatch
) -> None:
    instance = sqlite_instance
    request, cursor = first_request(instance, folders, "a.jpg")
    disk = {"free": 0}
    fake_disk(monkeypatch, disk)
    end(instance, launch(instance, request), seconds_ago=sensors.RE_REQUEST_MAX_SECONDS + 1)
    for _ in range(3):  # however long the disk stays full, no run is wasted on it
        message = skipped(tick(instance, folders, cursor)[0])
        assert message.startswith("waiting for disk space: 0.0 MB free")
    disk["free"] = 10**10
    [again] = requested(tick(instance, folders, cursor)[0])
    assert (
        files_of([again], book_of(instance, folders)) == [["a.jpg"]]
        and again.run_key != request.run_key
    )


def test_an_unreadable_folder_is_named_and_looked_at_again(
    folders, sqlite_instance, monkeypatch
) -> None:
    drop(folders, "ok.jpg", mtime=1)
    drop(folders, "locked/a.jpg", mtime=2)
    real = os.scandir
    locked = {"now": True}

    def scandir(path):
        if locked["now"] and Path(path) == folders.inbox / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result, cursor = tick(sqlite_instance, folders, None)
    assert files_of(requested(result), book_of(sqlite_instance, folders)) == [["ok.jpg"]]
    assert "unreadable, looked at again next tick" in skipped(
        tick(sqlite_instance, folders, cursor)[0]
    )
    locked["now"] = False
    result, cursor = tick(sqlite_instance, folders, cursor)
    assert files_of(requested(result), book_of(sqlite_instance, folders)) == [["locked/a.jpg"]]


# -- listening ticks -----------------------------------------------------------------------------


def test_a_listening_tick_takes_a_photo_renamed_in_during_the_tick(tmp_path, sqlite_instance):
    """A tick that finds nothing keeps watching: a photo renamed in while it listens is requested
    by that same tick, once quiet, instead of waiting for the daemon's next round; one that is
    still being written when the window ends is left for the next tick."""
    import threading

    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=0.5, listen_seconds=3.0)
    folders.inbox.mkdir(parents=True)
    staged = tmp_path / "staged.jpg"
    staged.write_bytes(b"\xff\xd8jpeg")
    threading.Timer(0.4, os.replace, (staged, folders.inbox / "late.jpg")).start()
    result, cursor = tick(sqlite_instance, folders, None)
    assert files_of(requested(result), book_of(sqlite_instance, folders)) == [["late.jpg"]]
    message = skipped(tick(sqlite_instance, folders, cursor)[0])
    assert "0 file(s) in 0 run(s)" in message and "1 waiting for their run" in message
    listened = re.search(r"listened ([0-9.]+) s, 1 look", message)
    assert listened and float(listened[1]) >= 3.0 - POLL_SECONDS  # the window, nothing new


def test_a_pause_during_a_listening_tick_stops_it_before_it_takes_anything(
    tmp_path, sqlite_instance
):
    """`pause` while a tick listens: a photo renamed in after it waits for `resume` instead of
    going into a run the tick would request seconds after the pause."""
    import threading

    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=0.2, listen_seconds=3.0)
    folders.inbox.mkdir(parents=True)
    staged = tmp_path / "staged.jpg"
    staged.write_bytes(b"\xff\xd8jpeg")
    switches = breaker.engine_for(sqlite_instance)
    threading.Timer(0.3, breaker.pause, (switches, "web_images", "maintenance")).start()
    threading.Timer(0.6, os.replace, (staged, folders.inbox / "late.jpg")).start()
    result, cursor = tick(sqlite_instance, folders, None)
    assert "the automation was paused or stopped" in skipped(result)
    breaker.resume(switches, "web_images")
    time.sleep(0.3)  # quiet
    result, _ = tick(sqlite_instance, folders, cursor)
    assert files_of(requested(result), book_of(sqlite_instance, folders)) == [["late.jpg"]]


def test_a_listening_tick_leaves_a_file_still_written_at_its_end(tmp_path, sqlite_instance):
    import threading

    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=5.0, listen_seconds=1.0)
    folders.inbox.mkdir(parents=True)
    threading.Timer(0.2, drop, (folders, "slow.jpg")).start()
    message = skipped(tick(sqlite_instance, folders, None)[0])
    assert "1 still being written" in message
    assert "look(s)" in message and "listened 1 look(s)" not in message


def test_a_tick_does_not_listen_while_a_run_of_its_files_is_in_flight(tmp_path, sqlite_instance):
    """In a burst the runs move files out of the inbox all the time; a tick that listened would
    look again at every move for nothing, so while a run is in flight a tick looks once. A file
    waiting out its backoff after a failed run does not stop listening."""
    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=0.0, listen_seconds=2.0)
    folders.inbox.mkdir(parents=True)
    request, cursor = first_request(sqlite_instance, folders, "a.jpg")
    run = launch(sqlite_instance, request)
    busy = skipped(tick(sqlite_instance, folders, cursor)[0])
    listened = re.search(r"listened ([0-9.]+) s, 1 look", busy)
    assert "1 waiting for their run" in busy
    assert listened and float(listened[1]) < POLL_SECONDS  # no poll: it did not listen
    end(sqlite_instance, run, seconds_ago=0.0)
    backoff = skipped(tick(sqlite_instance, folders, cursor)[0])
    listened = re.search(r"listened ([0-9.]+) s, 1 look", backoff)
    assert "1 waiting for their run" in backoff
    assert listened and float(listened[1]) >= 2.0 - POLL_SECONDS


@pytest.mark.parametrize(
    ("waiting", "allowed", "sizes"),
    [
        (1, 4, [1]),
        (25, 4, [25]),
        (90, 4, [90]),
        (200, 4, [200]),
        (200, 1, [200]),  # paced to one run: the run takes them all
        (1000, 4, [1000]),
        (2000, 4, [2000]),
        (2500, 4, [2000]),  # the look stops at SCAN_READY_LIMIT ready files
    ],
)
def test_under_load_runs_batch_more(folders, waiting, allowed, sizes) -> None:
    """A trickle gets a run per photo; a backlog goes in one run, up to 2,000 files, so a
    burst costs few run starts."""
    for n in range(waiting):
        drop(folders, f"{n:04d}.jpg", mtime=n + 1)
    requests, _, _ = look_once(folders, None, NOW, max_runs=allowed)
    assert [len(f) for f in files_of(requests)] == sizes


def test_a_run_takes_at_most_a_gigabyte_of_photos(folders, monkeypatch) -> None:
    """Scaled down: 1,000 bytes a run, files of 400 bytes and one of 1,500 that goes alone."""
    monkeypatch.setattr(sensors, "MAX_BYTES_PER_RUN", 1000)
    for n in range(5):
        drop(folders, f"{n}.jpg", b"x" * 400, mtime=n + 1)
    drop(folders, "9-big.jpg", b"x" * 1500, mtime=10)
    requests, _, _ = look_once(folders, None, NOW)
    assert files_of(requests) == [["0.jpg", "1.jpg"], ["2.jpg", "3.jpg"], ["4.jpg"], ["9-big.jpg"]]


def test_the_most_files_per_run_is_a_setting(tmp_path) -> None:
    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=0.0, max_files_per_run=25)
    for n in range(200):
        drop(folders, f"{n:04d}.jpg", mtime=n + 1)
    requests, _, sentence = look_once(folders, None, NOW)
    assert [len(f) for f in files_of(requests)] == [25, 25, 25, 25]
    assert "100 left for the next tick" in sentence

"""A big backlog costs a tick what a small one does: the sensor's per-file memory lives in the
project database (not in the cursor Dagster stores with every tick), a look stops reading the
inbox once it has more ready files than a tick takes, a big quarantine is read a part per tick,
and no more runs are requested while enough of them wait to start.

Covered: a backlog of 2,600 files drains with every file requested exactly once while the
cursor stays a few bytes and the table holds only the files in flight and those the last look
read; the state survives on SQLite and PostgreSQL with two roots kept apart (Hypothesis drives
random state histories through the book); a cursor from before the table is adopted, so a
run already asked for is not asked for again; runs waiting to start hold the sensor back and
say so; a changed file deep in a big quarantine is found by the sweep in turn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automation_pipelines.automations.web_images import sensors
from automation_pipelines.automations.web_images.book import TableBook, empty_state, files_table
from automation_pipelines.automations.web_images.jobs import render_web_images_job
from automation_pipelines.automations.web_images.ops import files_of_run
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability import breaker, store
from automation_pipelines.reliability.files import quarantine
from automation_pipelines.reliability.tags import RUN_KEY_TAG
from automation_pipelines_tests.automations.web_images.photos import photo
from automation_pipelines_tests.automations.web_images.ticks import batch_of, look_once

NOW = 1_800_000_000.0


@pytest.fixture
def folders(tmp_path: Path) -> PhotoFolders:
    """Runs of 100 files, so a tick takes 400 of the 2,000 ready files a look reads."""
    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=0.0, max_files_per_run=100)
    folders.inbox.mkdir(parents=True)
    return folders


def drop(folders: PhotoFolders, relative: str, mtime: int) -> None:
    path = folders.inbox / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8jpeg")
    os.utime(path, ns=(mtime, mtime))


def files_of(requests, book) -> list[str]:
    return [f for r in requests for f in batch_of(r, book)[0]]


def rows(engine: sa.Engine, root: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).where(files_table.c.root == root)
        ).scalar_one()


def test_a_backlog_drains_each_file_once_with_a_cursor_of_a_few_bytes(
    folders, events_db_url
) -> None:
    total = 2 * sensors.SCAN_READY_LIMIT + 600
    for n in range(total):
        drop(folders, f"{n % 7}/{n:05d}.jpg", mtime=n + 1)
    engine = store.engine(events_db_url)
    book = TableBook(engine, folders.root)
    asked: list[str] = []
    cursor = None
    for tick in range(total // 400 + 2):
        requests, cursor, sentence = look_once(folders, cursor, NOW + tick, book=book)
        names = files_of(requests, book)
        asked += names
        assert len(cursor) <= 40, cursor
        # The table: the files just asked for, and those this look read (at most the limit
        # of ready files plus the ones in flight, which runs have moved out below).
        assert rows(engine, folders.root) <= sensors.SCAN_READY_LIMIT + 400
        if tick == 0:
            left = f"at least {sensors.SCAN_READY_LIMIT - 400:,} left for the next tick"
            assert f"{left} (this look stopped reading" in sentence
        for name in names:  # each run renders its photos and moves them out of the inbox
            (folders.inbox / name).unlink()
    assert sorted(asked) == sorted(f"{n % 7}/{n:05d}.jpg" for n in range(total))
    assert len(set(asked)) == total
    look_once(folders, cursor, NOW + 1000, book=book)
    assert rows(engine, folders.root) == 0  # every file left: nothing is remembered


def test_a_tick_stops_reading_a_big_inbox_early(folders, monkeypatch) -> None:
    for n in range(3 * sensors.SCAN_READY_LIMIT):
        drop(folders, f"{n:05d}.jpg", mtime=n + 1)
    stats = []
    real = sensors._entry
    monkeypatch.setattr(sensors, "_entry", lambda rel, e: stats.append(rel) or real(rel, e))

    book = _memory_book()
    requests, cursor, _ = look_once(folders, None, NOW, book=book)

    assert len(stats) == sensors.SCAN_READY_LIMIT and len(files_of(requests, book)) == 400
    assert json.loads(cursor) == {}


def _memory_book():
    class Memory:
        state = empty_state()

        def load(self):
            return json.loads(json.dumps(self.state))

        def save(self, state):
            self.state = state

    return Memory()


_rel = st.text(alphabet="abcxyz/é 1-", min_size=1, max_size=12).filter(
    lambda r: not r.startswith("/") and "//" not in r
)
_row = st.tuples(st.integers(0, 2**40), st.integers(0, 2**62)).map(list)
_asked = st.tuples(
    st.integers(0, 2**40),
    st.integers(0, 2**62),
    st.floats(0, 2e9, allow_nan=False),
    st.text(alphabet="photos-0123456789abcdef", min_size=1, max_size=40),
    st.integers(0, 50),
).map(list)
_state = st.fixed_dictionaries(
    {
        "seen": st.dictionaries(_rel, _row, max_size=6),
        "requested": st.dictionaries(_rel, _asked, max_size=6),
        "quarantine_seen": st.dictionaries(_rel, _row, max_size=3),
        "quarantine_requested": st.dictionaries(_rel, _asked, max_size=3),
    }
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=st.lists(st.tuples(_state, _state), min_size=1, max_size=4))
def test_the_book_gives_back_what_was_saved_and_keeps_roots_apart(events_db_url, history):
    engine = store.engine(events_db_url)
    with engine.begin() as conn:
        conn.execute(files_table.delete())
    one, other = TableBook(engine, "/photos/one"), TableBook(engine, "/photos/two")
    for mine, theirs in history:
        one.load()
        other.load()
        one.save(mine)
        other.save(theirs)
        assert TableBook(engine, "/photos/one").load() == mine
        assert TableBook(engine, "/photos/two").load() == theirs


def test_a_cursor_from_before_the_table_is_adopted(folders, events_db_url) -> None:
    drop(folders, "a.jpg", mtime=5)
    old_requests, old_cursor, _ = look_once(folders, None, NOW)  # the state in the cursor
    assert "requested" in json.loads(old_cursor)
    book = TableBook(store.engine(events_db_url), folders.root)

    again, cursor, sentence = look_once(folders, old_cursor, NOW + 5, book=book)

    assert again == [] and "1 waiting for their run" in sentence
    assert book.load()["requested"]["a.jpg"][3] == old_requests[0].run_key
    assert json.loads(cursor) == {}


def test_runs_waiting_to_start_hold_the_sensor_back(folders, sqlite_instance) -> None:
    drop(folders, "a.jpg", mtime=5)
    for n in range(sensors.MAX_WAITING_RUNS):
        sqlite_instance.create_run_for_job(
            render_web_images_job,
            run_config={"ops": {"render_web_images": {"config": {"files": [f"x{n}.jpg"]}}}},
            tags={RUN_KEY_TAG: f"photos-other-{n}"},
            status=dg.DagsterRunStatus.NOT_STARTED,
        )

    def tick():
        context = dg.build_sensor_context(
            instance=sqlite_instance, cursor=None, resources={"folders": folders}
        )
        return sensors.photo_inbox_sensor(context)

    held = tick()
    assert isinstance(held, dg.SkipReason), held
    assert held.skip_message.startswith(
        f"nothing to do: {sensors.MAX_WAITING_RUNS} run(s) of render_web_images_job wait to "
        f"start (at most {sensors.MAX_WAITING_RUNS}): new files wait for them; "
    ), held.skip_message
    assert "1 left for the next tick" in held.skip_message

    [waiting, *_] = sqlite_instance.get_runs()
    sqlite_instance.report_run_canceled(waiting)  # one of them will never start
    [request] = tick()
    book = TableBook(breaker.engine_for(sqlite_instance), folders.root)
    assert files_of([request], book) == ["a.jpg"]
    assert book.load()["requested"]["a.jpg"][3] == request.run_key


def test_a_big_quarantine_is_read_a_part_per_tick_and_a_changed_file_found_in_turn(
    folders, monkeypatch
) -> None:
    monkeypatch.setattr(sensors, "QUARANTINE_SWEEP", 10)
    for n in range(35):
        drop(folders, f"q{n:02d}.jpg", mtime=n + 1)
        name = f"q{n:02d}.jpg"
        quarantine(folders.inbox / name, folders.quarantine, Path(name), "not a photo")
    changed = folders.quarantine / "q23.jpg"
    changed.write_bytes(b"\xff\xd8 the whole upload this time")
    os.utime(changed, ns=(1, 1))  # quiet
    notes_read = []
    real = sensors.changed_since_quarantine
    monkeypatch.setattr(
        sensors, "changed_since_quarantine", lambda p: notes_read.append(p) or real(p)
    )

    cursor, revisited, ticks, book = None, [], 0, _memory_book()
    while not revisited:
        ticks += 1
        before = len(notes_read)
        requests, cursor, _ = look_once(folders, cursor, NOW + ticks, book=book)
        assert len(notes_read) - before <= 10
        revisited = [f for r in requests for f in batch_of(r, book)[1]]
        assert ticks <= 4
    assert revisited == ["q23.jpg"]


def test_requests_the_daemon_never_recorded_are_made_again_under_their_own_run_key(
    folders, events_db_url
) -> None:
    # The book is written when the look ends; the daemon records the runs after. Killed in
    # between, it leaves files asked for under run keys no run carries: they are asked for
    # again, under the same keys (Dagster drops a key that turns up after all), within a
    # minute rather than after the wait for a run deleted long after it ran.
    for n in range(3):
        drop(folders, f"{n}.jpg", mtime=n + 1)
    book = TableBook(store.engine(events_db_url), folders.root)
    first, cursor, _ = look_once(folders, None, NOW, book=book)
    assert [len(files_of([r], book)) for r in first] == [3]

    soon, cursor, sentence = look_once(folders, cursor, NOW + 30, book=book)
    assert soon == [] and "3 waiting for their run" in sentence

    later = NOW + sensors.MISSING_RUN_SECONDS + 1
    again, cursor, _ = look_once(folders, cursor, later, book=book)
    assert [(r.run_key, sorted(files_of([r], book))) for r in again] == [
        (first[0].run_key, ["0.jpg", "1.jpg", "2.jpg"])
    ]
    assert {asked[3] for asked in book.load()["requested"].values()} == {first[0].run_key}


def test_requests_made_again_keep_to_the_tick_s_run_cap(folders) -> None:
    book = _memory_book()
    cursor, keys = None, []
    for n in range(6):  # six ticks, a photo each, none of their runs recorded
        drop(folders, f"{n}.jpg", mtime=n + 1)
        [request], cursor, _ = look_once(folders, cursor, NOW + n, book=book)
        keys.append(request.run_key)

    later = NOW + sensors.MISSING_RUN_SECONDS + 10
    again, cursor, sentence = look_once(folders, cursor, later, book=book)
    rest, _, _ = look_once(folders, cursor, later + 1, book=book)

    assert len(again) == sensors.MAX_RUNS_PER_TICK and "2 left for the next tick" in sentence
    assert sorted(r.run_key for r in again + rest) == sorted(keys)


def test_a_run_of_the_sensor_s_request_renders_its_batch_from_the_book(
    tmp_path, sqlite_instance, alert_router, monkeypatch, json_receiver
) -> None:
    # The request names the batch by run key: its tick record stays small whatever the names
    # or the batch's size, and the run reads the files where the sensor wrote them.
    monkeypatch.setenv("TEST_DEFAULT_URLS", json_receiver.url)
    folders = PhotoFolders(root=str(tmp_path / "photos"), quiet_seconds=0.0)
    folders.inbox.mkdir(parents=True)
    for name in ("a long holiday name with spaces.jpg", "trip/b.jpg"):
        photo(folders.inbox / name, width=900)
        os.utime(folders.inbox / name, (NOW - 60, NOW - 60))
    context = dg.build_sensor_context(
        instance=sqlite_instance, cursor=None, resources={"folders": folders}
    )
    [request] = sensors.photo_inbox_sensor(context)
    assert request.run_config == {
        "ops": {"render_web_images": {"config": {"batch": request.run_key}}}
    }

    result = render_web_images_job.execute_in_process(
        instance=sqlite_instance,
        resources={"folders": folders, "alerts": alert_router},
        run_config=request.run_config,
    )

    assert result.success
    assert sorted(
        p.relative_to(folders.processed).as_posix() for p in folders.processed.rglob("*.jpg")
    ) == [
        "a long holiday name with spaces.jpg",
        "trip/b.jpg",
    ]
    assert list(folders.inbox.rglob("*.jpg")) == []
    logged = [e.user_message for e in sqlite_instance.all_logs(result.run_id)]
    listed = f"batch {request.run_key}: a long holiday name with spaces.jpg, trip/b.jpg"
    assert listed in logged, logged
    run = sqlite_instance.get_run_by_id(result.run_id)
    assert files_of_run(sqlite_instance, run) == [
        "a long holiday name with spaces.jpg",
        "trip/b.jpg",
    ]


def test_a_file_deep_in_folders_with_a_long_path_is_remembered_like_any_other(
    folders, events_db_url
) -> None:
    # Each name may have 255 bytes and a path 4,096: the book keys a file by a hash of its
    # path, so no path is too long for its key (nor one bad name able to stop every tick).
    deep = "/".join(["a folder with a rather long name, as people make them é"] * 30)
    rel = f"{deep}/IMG_0001.jpg"
    assert len(rel.encode()) > 1400
    drop(folders, rel, mtime=5)
    drop(folders, "short.jpg", mtime=6)
    book = TableBook(store.engine(events_db_url), folders.root)

    requests, cursor, _ = look_once(folders, None, NOW, book=book)

    assert sorted(files_of(requests, book)) == sorted([rel, "short.jpg"])
    again, _, sentence = look_once(folders, cursor, NOW + 5, book=book)
    assert again == [] and "2 waiting for their run" in sentence

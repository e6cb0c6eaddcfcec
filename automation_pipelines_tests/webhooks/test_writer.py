"""The inbox writer's commits on their own, in this process: on SQLite its write-ahead log is
copied back into the database by its checkpoint thread, beside the commits, and should that
thread fall behind, the commits' own backstop keeps the log bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from automation_pipelines.reliability import store
from automation_pipelines.webhooks import inbox, writer
from automation_pipelines.webhooks.inbox import Event


def _events(start: int, count: int, size: int) -> list[Event]:
    return [
        Event("github", f"d-{n}", "push", '{"pad": "' + "x" * size + '"}', time.time())
        for n in range(start, start + count)
    ]


def _wal(path: Path) -> int:
    return os.stat(f"{path}-wal").st_size


def _count(path: Path) -> int:
    with store.engine(f"sqlite:///{path}").connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(inbox.inbox_table)).scalar()


def test_the_log_is_checkpointed_by_the_thread_and_starts_over(tmp_path: Path) -> None:
    """About 4 MB committed wakes the checkpoint thread, which copies the log into the
    database; the next commits write the log from its start again instead of growing it."""
    path = tmp_path / "project.db"
    committer = writer.Committer(f"sqlite:///{path}", lock_path=str(tmp_path / "lock"))
    try:
        for start in range(0, 700, 100):
            committer.commit(_events(start, 100, 5000))
        assert committer._checkpoints.done == 0  # under CHECKPOINT_BYTES so far
        committer.commit(_events(700, 100, 5000))  # past it
        deadline = time.monotonic() + 30
        while committer._checkpoints.done < 1:
            assert time.monotonic() < deadline, "no checkpoint within 30 s"
            time.sleep(0.01)
        full = _wal(path)
        assert os.stat(path).st_size > writer.CHECKPOINT_BYTES  # the rows reached the file
        for start in range(800, 1200, 100):
            committer.commit(_events(start, 100, 5000))
        assert _wal(path) == full
    finally:
        committer.close()
    assert _count(path) == 1200


def test_the_log_stays_bounded_when_the_thread_falls_behind(tmp_path: Path) -> None:
    """With the thread stopped (as if it never caught up), the commits checkpoint the log
    themselves past BACKSTOP_PAGES: 25 MB committed, the log stays near that bound."""
    path = tmp_path / "project.db"
    committer = writer.Committer(f"sqlite:///{path}")
    try:
        committer.commit(_events(0, 1, 10))
        committer._checkpoints.stop()
        for start in range(1, 5001, 100):
            committer.commit(_events(start, 100, 5000))
        largest = _wal(path)
    finally:
        committer.close()
    assert largest < writer.BACKSTOP_PAGES * 4096 + 2_000_000, largest
    assert _count(path) == 5001


def test_the_writers_own_connection_leaves_checkpoints_to_the_thread(tmp_path: Path) -> None:
    committer = writer.Committer(f"sqlite:///{tmp_path / 'project.db'}")
    try:
        committer.commit(_events(0, 1, 10))
        pragma = committer._conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    finally:
        committer.close()
    assert pragma == writer.BACKSTOP_PAGES


_COMMIT_GROUPS = """
import sys, time, uuid
from automation_pipelines.webhooks import writer
from automation_pipelines.webhooks.inbox import Event
committer = writer.Committer(sys.argv[1])
body = '{"pad": "' + "x" * 5000 + '"}'
for _ in range(50):
    events = [Event("github", str(uuid.uuid4()), "push", body, time.time()) for _ in range(20)]
    assert committer.commit(events) == [True] * 20
committer.close()
"""


def test_a_large_group_commits_without_a_temporary_file(tmp_path: Path) -> None:
    """Delivery ids arrive in no order, so a group's inserts touch pages of the id index
    all over; SQLite's statement journal keeps those pages' old contents, and past 64 KB it
    went to a file in the temporary folder on most commits (an open and an unlink each
    time): the writer keeps it in memory. SQLite reads SQLITE_TMPDIR as it starts, hence
    a process of its own; the folder's mtime moves with any file made in it, even one
    unlinked at once."""
    temp = tmp_path / "sqlite-tmp"
    temp.mkdir()
    before = temp.stat().st_mtime_ns
    time.sleep(0.05)  # past the file system's clock tick
    url = f"sqlite:///{tmp_path / 'project.db'}"
    env = {**os.environ, "SQLITE_TMPDIR": str(temp)}
    subprocess.run([sys.executable, "-c", _COMMIT_GROUPS, url], env=env, check=True, timeout=120)
    assert _count(tmp_path / "project.db") == 1000
    assert temp.stat().st_mtime_ns == before, "a temporary file was made (and unlinked)"


def test_the_writer_process_starts_without_dagster() -> None:
    """A receiver started alone waits for its writer, a new interpreter, before it serves, and
    a writer that died is replaced while senders get 503s: it imports what it commits with and
    not Dagster, which took most of its start (about 0.8 s of 1.1 s)."""
    probe = f"import sys, {writer.__name__}; sys.exit('dagster' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]

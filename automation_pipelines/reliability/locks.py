"""An advisory lock on a file, exclusive or shared, released by the kernel when its holder dies.

`flock` belongs to the open file, not to a name on disk: a holder killed with SIGKILL can never
leave a stale lock behind, and there is no PID file to guess about. The holder writes who it is
into the lock file, so a process that has to wait can say for whom (a run id, a pid).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path


class LockTimeout(TimeoutError):
    """The lock stayed busy for longer than the caller was willing to wait."""


def read_holder(path: Path) -> dict | None:
    """What the current holder wrote into the lock file (None when empty, absent or garbled)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: Mapping | None) -> str:
    if not holder:
        return "an unknown holder (it wrote nothing yet)"
    who = ", ".join(f"{key} {holder[key]}" for key in ("run_id", "pid", "host") if key in holder)
    since = f" since {holder['since']}" if "since" in holder else ""
    return f"{who or 'an unnamed holder'}{since}"


@contextlib.contextmanager
def exclusive_lock(
    path: Path,
    *,
    holder: Mapping[str, object] | None = None,
    on_wait: Callable[[str], None] | None = None,
    timeout: float | None = None,
    poll_seconds: float = 0.2,
    report_every_seconds: float = 30.0,
) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the `with` block.

    While another process holds it, wait (forever by default, else raise `LockTimeout` after
    `timeout` seconds), telling `on_wait` whom we wait for at once and every
    `report_every_seconds`. `holder` (e.g. a run id) is written into the file with our pid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, path, on_wait, timeout, poll_seconds, report_every_seconds, fcntl.LOCK_EX)
        _write_holder(fd, holder)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared_lock(
    path: Path,
    *,
    on_wait: Callable[[str], None] | None = None,
    timeout: float | None = None,
    poll_seconds: float = 0.2,
    report_every_seconds: float = 30.0,
) -> Iterator[None]:
    """Hold a shared lock on `path` for the `with` block: any number of holders at once, none
    while someone holds `exclusive_lock` on it. Waiting works as there; a shared holder writes
    no note (the file names the last exclusive holder, whose note is gone when it let go)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, path, on_wait, timeout, poll_seconds, report_every_seconds, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(
    fd: int,
    path: Path,
    on_wait: Callable[[str], None] | None,
    timeout: float | None,
    poll_seconds: float,
    report_every_seconds: float,
    mode: int,
) -> None:
    started = time.monotonic()
    reported_at: float | None = None
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            if reported_at is not None and on_wait is not None:
                on_wait(f"got the lock {path} after {time.monotonic() - started:.1f}s")
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if timeout is not None and now - started >= timeout:
            raise LockTimeout(
                f"{path} is still held by {describe_holder(read_holder(path))} after {timeout:.0f}s"
            )
        due = reported_at is None or now - reported_at >= report_every_seconds
        if on_wait is not None and due:
            on_wait(f"waiting for the lock {path}, held by {describe_holder(read_holder(path))}")
            reported_at = now
        time.sleep(poll_seconds)


def _write_holder(fd: int, holder: Mapping[str, object] | None) -> None:
    """Best effort: on a full disk the lock still holds, only the note is missing."""
    note = {
        **(holder or {}),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(note, sort_keys=True).encode(), 0)

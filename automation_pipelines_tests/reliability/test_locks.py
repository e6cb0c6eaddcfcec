"""The exclusive lock web_images runs hold for their batch (reliability/locks.py), between real
processes: a second holder waits and is told whom it waits for, gets the lock the moment the
first one dies (SIGKILL included: the kernel releases it), and a bounded wait ends in
LockTimeout naming the holder."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from automation_pipelines.reliability.locks import LockTimeout, exclusive_lock, read_holder

HOLDER = """
import sys, time
from pathlib import Path
from automation_pipelines.reliability.locks import exclusive_lock

def waiting(message):
    print("WAIT " + message, flush=True)

with exclusive_lock(Path(sys.argv[1]), holder={"run_id": sys.argv[2]}, on_wait=waiting):
    print("LOCKED", flush=True)
    if sys.argv[3] == "hold":
        time.sleep(600)
"""


class Child:
    """A python process running HOLDER, its stdout lines readable with a deadline."""

    def __init__(self, lock: Path, run_id: str, mode: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock), run_id, mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float = 60) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from pid {self.process.pid} in {timeout}s") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.process.stdout.close()


@pytest.fixture
def children():
    started: list[Child] = []

    def start(lock: Path, run_id: str, mode: str = "hold") -> Child:
        child = Child(lock, run_id, mode)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


def test_a_second_process_waits_until_the_first_is_killed(tmp_path, children) -> None:
    lock = tmp_path / "root" / ".web_images.lock"
    first = children(lock, "run-first")
    assert first.next_line() == "LOCKED"
    assert read_holder(lock)["run_id"] == "run-first"
    assert read_holder(lock)["pid"] == first.process.pid

    second = children(lock, "run-second", "release")
    waiting = second.next_line()
    assert waiting.startswith("WAIT waiting for the lock")
    assert "run_id run-first" in waiting and f"pid {first.process.pid}" in waiting
    assert second.process.poll() is None and second.lines.empty()  # still waiting

    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=30)
    assert second.next_line().startswith("WAIT got the lock")
    assert second.next_line() == "LOCKED"
    assert second.process.wait(timeout=30) == 0
    assert read_holder(lock) is None  # released: the note is cleared


def test_a_bounded_wait_names_the_holder_and_the_lock_is_free_after_it_dies(
    tmp_path, children
) -> None:
    lock = tmp_path / ".web_images.lock"
    holder = children(lock, "run-1")
    assert holder.next_line() == "LOCKED"
    named = f"run_id run-1, pid {holder.process.pid}"
    with pytest.raises(LockTimeout, match=named), exclusive_lock(lock, timeout=0.5):
        pytest.fail("got a lock another process holds")
    holder.process.send_signal(signal.SIGKILL)
    holder.process.wait(timeout=30)
    with exclusive_lock(lock, holder={"run_id": "mine"}, timeout=30):
        assert read_holder(lock)["run_id"] == "mine"
        # A second open of the file in the same process is excluded too (flock is per open file).
        with pytest.raises(LockTimeout), exclusive_lock(lock, timeout=0.3):
            pytest.fail("a second holder in the same process got the lock")


def test_waiting_is_reported_once_then_every_interval(tmp_path, children) -> None:
    lock = tmp_path / ".lock"
    holder = children(lock, "run-slow")
    assert holder.next_line() == "LOCKED"
    messages: list[str] = []
    with (
        pytest.raises(LockTimeout),
        exclusive_lock(
            lock, on_wait=messages.append, timeout=1.0, poll_seconds=0.05, report_every_seconds=0
        ),
    ):
        pass
    assert len(messages) > 1
    assert all("held by run_id run-slow" in m for m in messages)

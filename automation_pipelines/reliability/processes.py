"""Start long-running Dagster processes and stop every one of them, whatever they do on a signal.

`dagster dev`, `dagster-daemon` and the webserver spawn code servers and run workers of their own,
and started without a terminal they may ignore SIGINT for a long time. A `ProcessGroup` starts each
command in a session of its own and stops it in three steps: SIGINT (the graceful path), SIGTERM,
then SIGKILL to every process of the session and every descendant seen, so nothing is left behind.
"""

from __future__ import annotations

import compileall
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux), so a process whose parent died can still be stopped."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when `parent` dies, even by SIGKILL (Linux); exit
    now if it is gone already. For a forked worker: nothing serves on unsupervised."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def pid_gone(pid: int) -> bool:
    """True only when no process on this machine has this pid (another user's counts as
    alive): what may be cleaned up after a process is judged by this alone."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def exit_reason(returncode: int | None) -> str:
    """'killed by SIGKILL', 'exit code 3' — what the operator reads first."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def run_forked(
    count: int,
    target: Callable[[int], int],
    *,
    grace: float = 15.0,
    forward: Sequence[signal.Signals] = (),
    forked: Callable[[], None] | None = None,
    names: Sequence[str] = (),
) -> int:
    """Run `target` in `count` forked processes and watch them, as one service; each is given
    its number (0 to count - 1).

    Call it before any thread is started. SIGTERM or SIGINT stops them all (SIGTERM to each,
    SIGKILL after `grace` seconds) and returns 0. A worker that exits on its own, however it
    ends, stops the others and returns 1: whatever supervises this process then restarts the
    whole, and nothing runs short-handed unnoticed. Each worker dies with this process. The
    signals in `forward` are passed on to every worker, which holds them blocked until `target`
    has set a handler of its own and unblocks them (`signal.pthread_sigmask`): one that comes
    while a worker is still starting is delivered then, not lost. `forked` is called in this
    process once every worker is started (to close what only the workers should hold). `names`
    name the workers in the log ("worker 2 of 3" otherwise).
    """
    parent = os.getpid()
    alive: dict[int, int] = {}

    def name(number: int) -> str:
        return names[number] if number < len(names) else f"worker {number + 1} of {count}"

    for number in range(count):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                die_with_parent(parent)
                if forward:
                    signal.pthread_sigmask(signal.SIG_BLOCK, forward)
                code = target(number)
            except BaseException:
                log.exception("%s failed", name(number))
            finally:
                os._exit(code)
        alive[pid] = number
    if forked is not None:
        forked()
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            _send(alive, signal.SIGTERM)

    def pass_on(signum: int, _frame: object) -> None:
        _send(alive, signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous.update({sig: signal.signal(sig, pass_on) for sig in forward})
    failed = False
    deadline = None
    try:
        while alive:
            if stopping and deadline is None:
                deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() > deadline:
                _send(alive, signal.SIGKILL)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # all reaped already
                break
            if pid == 0:
                time.sleep(0.1)
                continue
            number = alive.pop(pid, None)
            if number is not None and not stopping:
                failed = True
                log.error(
                    "%s (pid %d) ended: %s; stopping the others",
                    name(number),
                    pid,
                    exit_reason(os.waitstatus_to_exitcode(status)),
                )
                stopping = True
                _send(alive, signal.SIGTERM)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def _send(pids: Iterable[int], sig: int) -> None:
    for pid in list(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def write_bytecode(package: Path) -> bool:
    """Compile `package`'s modules to bytecode now, before the processes that import them start.

    Every Dagster run starts a Python process that imports the whole code location, and a module
    without current bytecode is compiled again in each one (in every one where
    PYTHONDONTWRITEBYTECODE is set): about 0.2 s of every run's start on a 2-core machine. False
    if some module could not be compiled or written (a read-only checkout); nothing else changes.
    """
    try:
        return bool(compileall.compile_dir(str(package), quiet=2))
    except OSError:
        return False


def _alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


def _signal_all(processes: Iterable[psutil.Process], sig: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


class ProcessGroup:
    """Processes started together and stopped together, each leader in a new session."""

    def __init__(self, *, reap_orphans: bool = False) -> None:
        """`reap_orphans`: also reap adopted orphans (a subreaper with no other children)."""
        self.popens: list[subprocess.Popen[Any]] = []
        self.reap_orphans = reap_orphans
        self._seen: dict[int, psutil.Process] = {}
        #: Each leader as it was started: its pid, and so its session's id, may be another
        #: process's once it has ended and been reaped.
        self._leaders: dict[int, psutil.Process] = {}

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stdout: IO[Any] | int | None = None,
        stderr: IO[Any] | int | None = None,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.Popen[Any]:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
        self.popens.append(popen)
        with contextlib.suppress(psutil.Error):  # not reaped yet: alive or a zombie, still ours
            self._leaders[popen.pid] = psutil.Process(popen.pid)
        return popen

    def members(self) -> list[psutil.Process]:
        """Every live process started here: leaders, their descendants and their sessions.
        A leader's pid may have gone to a newer process once the leader ended and was reaped:
        that process is no member, nor is anything in its session, which bears the same id.
        (Linux hands out no pid that is still a living process's session id, so such a session
        of ours has nothing left in it.)"""
        found: dict[int, psutil.Process] = {}
        sessions = set()
        for popen in self.popens:
            leader = self._leaders.get(popen.pid)
            if leader is None:
                continue
            with contextlib.suppress(psutil.Error):
                if not leader.is_running():
                    if psutil.pid_exists(popen.pid):
                        continue  # another process's pid now
                else:
                    found[leader.pid] = leader
                    for child in leader.children(recursive=True):
                        found[child.pid] = child
            sessions.add(popen.pid)
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(process.pid) in sessions:
                    found[process.pid] = process
        self._seen.update(found)
        return _alive(found.values())

    def stop(self, *, graceful_seconds: float = 5.0, term_seconds: float = 2.0) -> None:
        """Stop everything within about `graceful_seconds + term_seconds + 1` seconds."""
        self.members()
        for popen in self.popens:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    popen.send_signal(signal.SIGINT)
        for sig, wait in ((None, graceful_seconds), (signal.SIGTERM, term_seconds)):
            if sig is not None:
                _signal_all(self._remaining(), sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._remaining():
                self._reap()
                time.sleep(0.1)
        leftover = self._remaining()
        _signal_all(leftover, signal.SIGKILL)
        psutil.wait_procs(leftover, timeout=2)
        self._reap()

    def kill(self, *, timeout: float = 10.0) -> list[psutil.Process]:
        """SIGKILL every member at once, as when the machine dies, and again until none is left:
        a process forked after one look (a step starting its log mirror) is caught by the next.
        Returns what still lives after `timeout` seconds ([] once all are gone)."""
        deadline = time.monotonic() + timeout
        while (members := self.members()) and time.monotonic() < deadline:
            _signal_all(members, signal.SIGKILL)
            psutil.wait_procs(members, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            self._reap()
        return self.members()

    def _remaining(self) -> list[psutil.Process]:
        self.members()
        return _alive(self._seen.values())

    def _reap(self) -> None:
        for popen in self.popens:
            popen.poll()
        if not self.reap_orphans:
            return
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""ProcessGroup: a tree of processes that ignores SIGINT and SIGTERM, with a grandchild that
moved to a process group of its own, is still stopped completely. write_bytecode: a process
started where PYTHONDONTWRITEBYTECODE is set imports the package from the bytecode written
before it started. run_forked: two forked workers stop with their parent on SIGTERM (SIGKILL
after the grace for one that ignores it), die with a parent killed outright, and a worker that
ends ends the whole with exit code 1. A leader's pid handed to another program after the leader
ended makes that program no member, and stopping the group leaves it alone. Killing a group
leaves nothing alive, even of a tree that forks while it is being killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from automation_pipelines.reliability.processes import ProcessGroup, write_bytecode

STUBBORN = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if sys.argv[1] == "parent":
        subprocess.Popen([sys.executable, __file__, "child"])
        subprocess.Popen([sys.executable, __file__, "detached"])
    if sys.argv[1] == "detached":
        os.setpgid(0, 0)
    open(os.path.join(os.environ["MARK_DIR"], f"{sys.argv[1]}.{os.getpid()}"), "w").close()
    while True:
        time.sleep(0.2)
    """
)


def test_stubborn_tree_is_stopped(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    group = ProcessGroup()
    group.start([sys.executable, str(script), "parent"], env={"MARK_DIR": str(tmp_path)})
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("*.[0-9]*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = sorted(int(p.suffix[1:]) for p in tmp_path.glob("*.[0-9]*"))
    assert len(pids) == 3, "the three test processes did not start"
    assert {p.pid for p in group.members()} >= set(pids)

    group.stop(graceful_seconds=0.5, term_seconds=0.5)

    still = [
        pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]
    assert still == []
    assert group.popens[0].returncode is not None


NEXT_PID = Path("/proc/sys/kernel/ns_last_pid")


def start_with_pid(pid: int, argv: list[str]) -> subprocess.Popen:
    """A process in a session of its own that gets `pid` (free again), as a busy machine would
    hand it to some other program sooner or later; asks the kernel for it (root only)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            NEXT_PID.write_text(str(pid - 1))
        except OSError as error:
            pytest.fail(f"cannot choose the next pid ({error}): this test needs root")
        process = subprocess.Popen(argv, start_new_session=True)
        if process.pid == pid:
            return process
        process.kill()
        process.wait()
    pytest.fail(f"pid {pid} was not handed out again")


def test_a_leader_pid_taken_by_another_program_is_never_a_member(tmp_path: Path) -> None:
    group = ProcessGroup()
    leader = group.start(["sleep", "60"])
    assert [p.pid for p in group.members()] == [leader.pid]
    time.sleep(0.05)  # start times, which tell a pid's holders apart, tick every 10 ms
    leader.kill()
    leader.wait()  # reaped, its session empty: its pid, the session's id, is free for anyone
    stranger = start_with_pid(leader.pid, ["sleep", "60"])
    try:
        assert group.members() == []
        group.stop(graceful_seconds=0.5, term_seconds=0.5)
        assert stranger.poll() is None, "the group stopped a process that was never its own"
    finally:
        stranger.kill()
        stranger.wait()


SPAWNER = textwrap.dedent(
    """
    import subprocess, sys, time
    while True:
        subprocess.Popen(["sleep", "60"])
    """
)


def test_kill_leaves_nothing_even_of_a_tree_forking_while_it_is_killed(tmp_path: Path) -> None:
    """What one look at the members misses (a child forked after it) outlives one SIGKILL round:
    the Celery worker's step starting its log mirror's `tail -F` as the worker was killed."""
    script = tmp_path / "spawner.py"
    script.write_text(SPAWNER)
    group = ProcessGroup()
    group.start([sys.executable, str(script)])
    deadline = time.monotonic() + 30
    while len(group.members()) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(group.members()) >= 20, "the spawner did not start its children"
    try:
        assert group.kill() == []
        assert group.members() == []
    finally:
        group.stop(graceful_seconds=0, term_seconds=0)


def test_cooperative_process_stops_on_sigint(tmp_path: Path) -> None:
    script = tmp_path / "polite.py"
    script.write_text(
        "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
        "    open(__file__ + '.done', 'w').close()\n"
    )
    with ProcessGroup() as group:
        popen = group.start([sys.executable, str(script)])
        time.sleep(0.5)
    assert popen.returncode == 0
    assert Path(f"{script}.done").exists()


def _loaded_from(package_parent: Path) -> str:
    """Where a new interpreter that may not write bytecode takes `pkg.mod`'s code from."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(package_parent)}
    verbose = subprocess.run(
        [sys.executable, "-v", "-c", "import pkg.mod"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    [line] = [x for x in verbose.splitlines() if x.startswith("# code object from") and "mod" in x]
    return line.strip("'")


def test_processes_that_may_not_write_bytecode_start_from_what_was_written_before(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("VALUE = 1\n")
    assert _loaded_from(tmp_path).endswith("mod.py"), "compiled from source without it"

    assert write_bytecode(package)

    assert _loaded_from(tmp_path).endswith(".pyc")


FORKED = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from automation_pipelines.reliability.processes import run_forked

    def work(_number):
        if sys.argv[1] == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        Path(sys.argv[2], str(os.getpid())).touch()
        while True:
            time.sleep(0.1)

    sys.exit(run_forked(2, work, grace=1.0))
    """
)


@pytest.fixture
def forked(tmp_path: Path):
    """Start a parent of two forked workers (`how`: "polite" or "stubborn"); yields the parent
    and its workers' pids once both are up."""
    started: list[subprocess.Popen] = []

    def start(how: str = "polite") -> tuple[subprocess.Popen, list[int]]:
        marks = tmp_path / f"marks-{len(started)}"
        marks.mkdir()
        script = tmp_path / "forked.py"
        script.write_text(FORKED)
        parent = subprocess.Popen([sys.executable, str(script), how, str(marks)])
        started.append(parent)
        deadline = time.monotonic() + 30
        while len(list(marks.iterdir())) < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        return parent, sorted(int(p.name) for p in marks.iterdir())

    yield start
    for parent in started:
        with contextlib.suppress(ProcessLookupError):
            parent.kill()
        parent.wait()


def _gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_forked_workers_stop_with_their_parent_on_sigterm(forked) -> None:
    parent, workers = forked()

    parent.send_signal(signal.SIGTERM)

    assert parent.wait(timeout=10) == 0
    assert _gone(workers)


def test_a_worker_that_ends_ends_the_whole_with_a_failure(forked) -> None:
    """Whatever supervises the parent restarts the whole: nothing runs short-handed."""
    parent, workers = forked()

    os.kill(workers[0], signal.SIGKILL)

    assert parent.wait(timeout=10) == 1
    assert _gone(workers)


def test_workers_die_with_a_parent_killed_outright(forked) -> None:
    parent, workers = forked()

    parent.kill()
    parent.wait()

    assert _gone(workers)


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(forked) -> None:
    parent, workers = forked("stubborn")
    began = time.monotonic()

    parent.send_signal(signal.SIGTERM)

    assert parent.wait(timeout=10) == 0
    assert time.monotonic() - began >= 1.0
    assert _gone(workers)


FORWARDING = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from automation_pipelines.reliability.processes import run_forked

    marks = Path(sys.argv[1])

    def work(_number):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        Path(marks, f"started-{os.getpid()}").touch()
        while not Path(marks, "go").exists():  # still starting, no SIGHUP handler yet
            time.sleep(0.05)
        signal.signal(signal.SIGHUP, lambda *_: Path(marks, f"hup-{os.getpid()}").touch())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        while True:
            time.sleep(0.1)

    sys.exit(run_forked(2, work, grace=1.0, forward=(signal.SIGHUP,)))
    """
)


def test_a_forwarded_signal_that_comes_while_a_worker_starts_is_taken_once_it_is_ready(
    tmp_path: Path,
) -> None:
    """SIGHUP to the parent while its workers have no handler for it yet (a receiver still
    starting): each worker takes it once its handler is set, instead of losing it; later ones
    reach the handler at once."""
    script = tmp_path / "forwarding.py"
    script.write_text(FORWARDING)
    marks = tmp_path / "marks"
    marks.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(marks)])
    try:
        deadline = time.monotonic() + 30
        while len(list(marks.glob("started-*"))) < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        workers = sorted(int(p.name.split("-")[1]) for p in marks.glob("started-*"))
        parent.send_signal(signal.SIGHUP)
        time.sleep(0.5)  # forwarded to both workers, which are still starting
        assert parent.poll() is None and all(psutil.pid_exists(pid) for pid in workers)
        assert not list(marks.glob("hup-*"))
        (marks / "go").touch()
        while len(list(marks.glob("hup-*"))) < 2:
            assert time.monotonic() < deadline, f"taken by {list(marks.glob('hup-*'))} only"
            time.sleep(0.05)
        assert sorted(int(p.name.split("-")[1]) for p in marks.glob("hup-*")) == workers
    finally:
        parent.terminate()
        parent.wait(timeout=30)
    assert parent.returncode == 0
